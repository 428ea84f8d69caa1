"""Objective and schedules: golden parity with the published code on every case."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select import objective, regions

FIXED_BUDGET = 0.2
COVARIANCE_WEIGHT = 0.01
SPARSITY_WEIGHT = 10.0
CASE = re.compile(r"^(kl|l1)_(fixed|dynamic)_epoch(\d+)$")


@functools.partial(jax.jit, static_argnames=("num_regions", "variant", "num_epochs"))
def _losses(logits, labels, probs, ids, budget, cov, epoch, num_regions, variant, num_epochs):
    sizes = regions.region_sizes(ids, num_regions)
    kept = regions.kept_fraction(probs, sizes)
    weight = objective.annealed_sparsity_weight(epoch, num_epochs, SPARSITY_WEIGHT)
    losses = objective.p2p_losses(
        logits,
        labels,
        kept,
        budget,
        cov,
        sparsity_weight=weight,
        covariance_weight=COVARIANCE_WEIGHT,
        variant=variant,
    )
    return losses, weight


def _cases(data):
    return sorted(k for k in data if CASE.match(k))


@pytest.mark.golden
def test_every_golden_objective_case(golden):
    data = golden("objective.npz")
    cases = _cases(data)
    assert len(cases) == 16, cases
    num_regions = data["group_probs"].shape[-1]
    for case in cases:
        variant, budget_kind, epoch = CASE.match(case).groups()
        budget = FIXED_BUDGET if budget_kind == "fixed" else data["tau"]
        losses, weight = _losses(
            data["logits"],
            data["target"].astype(np.int32),
            data["group_probs"],
            data["ids"],
            budget,
            data["cov"],
            int(epoch),
            num_regions=num_regions,
            variant=variant,
            num_epochs=100,
        )
        got = np.array([losses.cross_entropy, losses.sparsity, losses.covariance, losses.total])
        np.testing.assert_allclose(got, data[case], rtol=1e-5, atol=1e-7, err_msg=case)
        np.testing.assert_allclose(
            losses.kept_fraction, data[f"{case}_avg_weighted_group_probs"], rtol=1e-5
        )
        np.testing.assert_allclose(weight, data[f"{case}_reg_weight"], rtol=1e-6)
        chex.assert_shape(losses.total, ())


@pytest.mark.golden
def test_schedules_match_published_code(golden):
    data = golden("schedules.npz")
    lengths = sorted(
        int(k.removeprefix("temperature_epochs"))
        for k in data
        if k.startswith("temperature_epochs")
    )
    assert lengths, "no schedules in the golden file"
    for num_epochs in lengths:
        epochs = jnp.arange(num_epochs)
        temps = jax.jit(jax.vmap(lambda e, n=num_epochs: objective.temperature(e, n)))(epochs)
        weights = jax.jit(
            jax.vmap(lambda e, n=num_epochs: objective.sparsity_weight_for_epoch(e, n, 10.0))
        )(epochs)
        np.testing.assert_allclose(temps, data[f"temperature_epochs{num_epochs}"], rtol=1e-5)
        np.testing.assert_allclose(weights, data[f"reg_weight_epochs{num_epochs}"], rtol=1e-5)


def test_kl_sparsity_is_zero_under_budget_and_grows_above():
    penalty = jax.jit(objective.sparsity_penalty, static_argnames="variant")
    budget = jnp.array([0.3, 0.3])
    assert float(penalty(jnp.array([0.1, 0.3]), budget, 10.0, variant="kl")) == 0.0
    values = [
        float(penalty(jnp.array([p, p]), budget, 1.0, variant="kl")) for p in (0.4, 0.7, 0.99)
    ]
    assert 0 < values[0] < values[1] < values[2]
    # Above the budget it behaves like -log(1 - p̄) shifted: exact value check.
    np.testing.assert_allclose(
        values[1], -np.log(1 - 0.3 + 1e-6 - 0.4) + np.log(1 - 0.3 + 1e-6), rtol=1e-5
    )
    np.testing.assert_allclose(
        penalty(jnp.array([0.5, 0.2]), 0.3, 2.0, variant="l1"), 2.0 * (0.2 + 0.0) / 2, rtol=1e-6
    )
    with pytest.raises(ValueError, match="'kl' or 'l1'"):
        objective.sparsity_penalty(jnp.ones(2), 0.3, 1.0, variant="l2")


def test_mc_log_probs_averages_probabilities_not_logits():
    logits = jnp.array([[[4.0, 0.0]], [[0.0, 4.0]]])  # [M=2, B=1, C=2]
    log_probs = jax.jit(objective.mc_log_probs)(logits)
    chex.assert_shape(log_probs, (1, 2))
    np.testing.assert_allclose(np.exp(log_probs), [[0.5 + 1e-6, 0.5 + 1e-6]], rtol=1e-6)


def test_covariance_penalty_from_embeddings_matches_explicit_sigma():
    emb = np.random.default_rng(0).normal(size=(2, 7, 3)).astype(np.float32)
    sigma = np.einsum("bkd,bld->bkl", emb, emb) + 1e-3 * np.eye(7)
    got = jax.jit(objective.covariance_penalty_from_embeddings)(emb, 0.01, 1e-3)
    np.testing.assert_allclose(got, 0.01 * np.abs(sigma).mean(), rtol=1e-5)
