"""The P2P training objective and its schedules.

total = CE(y, log p̄_MC) + sparsity(p̄, τ) + λ₂ · mean|Σ|, where p̄_MC averages the classifier's
softmax over Monte-Carlo masks and p̄ is the expected kept fraction of the image.
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from grouped_select import selection

SparsityVariant = Literal["kl", "l1"]

# Added inside logs as in the reference: log(p + 1e-6) of the averaged probabilities and
# log(1 - τ + 1e-6) in the kl sparsity term.
PROB_EPS = 1e-6


class Losses(NamedTuple):
    """The objective's terms (scalars) and the kept fraction per image ([B])."""

    cross_entropy: jax.Array
    sparsity: jax.Array
    covariance: jax.Array
    total: jax.Array
    kept_fraction: jax.Array


def mc_log_probs(logits: ArrayLike) -> jax.Array:
    """Log of the Monte-Carlo-averaged class probabilities, log(mean_m softmax(z_m) + 1e-6).

    This is what the reference calls the model's logits; with M = 1 it is log(softmax + 1e-6).

    Args:
      logits: [M, B, C] classifier logits for M masks of each image.

    Returns:
      [B, C] float32 log-probabilities.
    """
    probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1).mean(axis=0)
    return jnp.log(probs + PROB_EPS)


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Mean softmax cross-entropy, as torch's F.cross_entropy on [B, C] logits.

    Args:
      logits: [B, C] logits (P2P passes `mc_log_probs`).
      labels: [B] integer class labels.

    Returns:
      scalar float32 loss.
    """
    logits = jnp.asarray(logits, jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean()


def sparsity_penalty(
    kept: ArrayLike, budget: ArrayLike, weight: ArrayLike, variant: SparsityVariant = "kl"
) -> jax.Array:
    """Penalty on keeping more than the budget τ of the image.

    kl: λ₁ · mean[−log(1 − τ + ε − max(p̄ − τ, 0)) + log(1 − τ + ε)], zero while p̄ <= τ.
    l1: λ₁ · mean[max(p̄ − τ, 0)].

    Args:
      kept: [B] expected kept fraction p̄ per image.
      budget: scalar (fixed budget) or [B] (one τ per image).
      weight: scalar λ₁ (may be traced, e.g. from a schedule).
      variant: "kl" or "l1".

    Returns:
      scalar float32 penalty.
    """
    kept = jnp.asarray(kept, jnp.float32)
    budget = jnp.asarray(budget, jnp.float32)
    excess = jnp.maximum(kept - budget, 0.0)
    if variant == "l1":
        return weight * excess.mean()
    if variant == "kl":
        headroom = 1.0 - budget + PROB_EPS
        return weight * (-jnp.log(headroom - excess) + jnp.log(headroom)).mean()
    raise ValueError(f"sparsity variant must be 'kl' or 'l1', got {variant!r}.")


def covariance_penalty(covariance: ArrayLike, weight: ArrayLike) -> jax.Array:
    """λ₂ · mean |Σ| over all B·K·K entries (the reference's form of λ₂‖Σ‖₁).

    Args:
      covariance: [B, K, K] region-logit covariance.
      weight: scalar λ₂.

    Returns:
      scalar float32 penalty.
    """
    return weight * jnp.abs(jnp.asarray(covariance, jnp.float32)).mean()


def covariance_penalty_from_embeddings(
    region_embeddings: ArrayLike, weight: ArrayLike, jitter: float = 0.0
) -> jax.Array:
    """`covariance_penalty` of Σ = E Eᵀ + jitter·I, computed blockwise-free from E.

    Args:
      region_embeddings: [B, K, D].
      weight: scalar λ₂.
      jitter: diagonal added to Σ (its |·| adds to the diagonal entries).

    Returns:
      scalar float32 penalty.
    """
    emb = jnp.asarray(region_embeddings, jnp.float32)
    return covariance_penalty(selection.region_covariance(emb, jitter), weight)


def p2p_losses(
    log_probs: ArrayLike,
    labels: ArrayLike,
    kept: ArrayLike,
    budget: ArrayLike,
    covariance: ArrayLike,
    *,
    sparsity_weight: ArrayLike,
    covariance_weight: ArrayLike,
    variant: SparsityVariant = "kl",
) -> Losses:
    """All terms of the P2P objective.

    Args:
      log_probs: [B, C] `mc_log_probs` of the classifier on the masked images.
      labels: [B] integer labels.
      kept: [B] expected kept fraction p̄ (from the mean region logits).
      budget: scalar or [B] sparsity budget τ.
      covariance: [B, K, K] region-logit covariance Σ.
      sparsity_weight: λ₁.
      covariance_weight: λ₂.
      variant: "kl" or "l1" sparsity.

    Returns:
      `Losses` with scalar terms and the [B] kept fraction.
    """
    ce = cross_entropy(log_probs, labels)
    sparsity = sparsity_penalty(kept, budget, sparsity_weight, variant)
    cov = covariance_penalty(covariance, covariance_weight)
    return Losses(ce, sparsity, cov, ce + sparsity + cov, jnp.asarray(kept, jnp.float32))


def temperature(epoch: ArrayLike, num_epochs: int, final_temperature: float = 0.5) -> jax.Array:
    """Binary-concrete temperature for a (possibly fractional) epoch.

    T(e) = max(exp(ln(T_final) · e / (E // 2)), T_final): 1 down to T_final at mid-training.

    Args:
      epoch: scalar epoch e (int, or float = step / steps_per_epoch for per-step schedules).
      num_epochs: total epochs E.
      final_temperature: T_final.

    Returns:
      scalar float32 temperature.
    """
    half = num_epochs // 2
    if half <= 0:
        return jnp.asarray(final_temperature, jnp.float32)
    rate = jnp.log(jnp.float32(final_temperature)) / half
    value = jnp.exp(rate * jnp.asarray(epoch, jnp.float32))
    return jnp.maximum(value, jnp.float32(final_temperature))


def annealed_sparsity_weight(epoch: ArrayLike, num_epochs: int, final_weight: float) -> jax.Array:
    """λ₁ annealing as the reference's `compute_reg_weight(epoch)`.

    With start = E // 10, end = E // 2, λ_start = λ₁ / 100: λ₁ at epoch 0 and from `end` on,
    λ_start before `start`, linear from λ_start to λ₁ in between.

    Args:
      epoch: scalar epoch (int or float).
      num_epochs: total epochs E.
      final_weight: λ₁.

    Returns:
      scalar float32 weight.
    """
    epoch = jnp.asarray(epoch, jnp.float32)
    start, end = num_epochs // 10, num_epochs // 2
    start_value = final_weight / 100
    ramp = start_value + (final_weight - start_value) * (epoch - start) / max(end - start, 1)
    value = jnp.where(epoch < start, start_value, ramp)
    value = jnp.where((epoch == 0) | (epoch >= end), final_weight, value)
    return value.astype(jnp.float32)


def sparsity_weight_for_epoch(epoch: ArrayLike, num_epochs: int, final_weight: float) -> jax.Array:
    """λ₁ used while training epoch `epoch` (0-based): the reference anneals at epoch + 1."""
    return annealed_sparsity_weight(jnp.asarray(epoch, jnp.float32) + 1, num_epochs, final_weight)
