"""The whole published P2P model (LR-ASPP selector + ViT-Ti) reproduced from its weights.

Reads golden/p2p_vit_tiny_lraspp.safetensors and golden/p2p_eval.npz (outputs of the
reference code on `x`, `ids`); assumes nothing about batch size, image size or region count
beyond what the files say.
"""

import re

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from grouped_select import budget, convert, selection

P2P_FILE = "p2p_vit_tiny_lraspp.safetensors"
EVAL_FILE = "p2p_eval.npz"
pytestmark = pytest.mark.golden


@pytest.fixture(scope="module")
def case(golden):
    data = golden(EVAL_FILE)
    model, config = convert.convert_p2p(p2p_weights=str(golden.root / P2P_FILE))
    model.eval()  # BatchNorm with the running statistics, as the reference's model.eval()
    x = data["x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    ids = data["ids"].astype(np.int32)
    num_regions = max(data[k].shape[-1] for k in data if k.endswith("_group_probs"))
    budgets = sorted({float(m.group(1)) for k in data if (m := re.match(r"tau([\d.]+)_", k))})
    assert budgets, "no per-budget outputs in the golden file"
    return model, data, x, ids, num_regions, budgets


@nnx.jit(static_argnames="num_regions")
def _at_budget(model, x, ids, tau, num_regions):
    selector = model.selector
    low, high = selector.features(x)
    pixels = selector.pixel_outputs(low, high, x.shape[1:3], tau)
    out = model.eval_forward(x, ids, num_regions=num_regions, budget=tau)
    return pixels, out


def test_every_budget_matches_the_reference(case):
    model, data, x, ids, num_regions, budgets = case
    batch = x.shape[0]
    for tau in budgets:
        key = f"tau{tau:g}"
        pixels, out = _at_budget(model, x, ids, np.full((batch,), tau, np.float32), num_regions)
        chex.assert_shape(pixels, (*x.shape[:3], 4))
        np.testing.assert_allclose(
            pixels, data[f"{key}_pixel_emb"].transpose(0, 2, 3, 1), atol=1e-4, err_msg=key
        )
        np.testing.assert_allclose(out.scores.probs, data[f"{key}_group_probs"], atol=1e-5)
        # The reference's Σ carries the jitter its Cholesky loop added (1e-6, then +1e-5, ...):
        # compare off-diagonal entries exactly and the diagonal up to that jitter.
        sigma = selection.region_covariance(out.scores.embeddings)
        reference = data[f"{key}_group_cov"]
        off = ~np.eye(reference.shape[-1], dtype=bool)
        np.testing.assert_allclose(
            np.asarray(sigma)[:, off], reference[:, off], rtol=5e-5, atol=1e-5
        )
        jitter = np.diagonal(reference, axis1=1, axis2=2) - np.diagonal(sigma, axis1=1, axis2=2)
        scale = np.abs(np.diagonal(reference, axis1=1, axis2=2))
        assert np.all((jitter > -1e-5 - 5e-5 * scale) & (jitter < 1.2e-4 + 5e-5 * scale)), (
            key,
            jitter.min(),
            jitter.max(),
        )
        np.testing.assert_array_equal(out.selected, data[f"{key}_selected"], err_msg=key)
        np.testing.assert_allclose(
            out.masked_image, data[f"{key}_masked_x"].transpose(0, 2, 3, 1), atol=1e-5
        )
        np.testing.assert_allclose(out.log_probs, data[f"{key}_log_probs"], atol=1e-4)


@pytest.mark.parametrize("method", ["grid", "while_loop"])
def test_dynamic_budget_matches_the_reference(case, method):
    model, data, x, ids, num_regions, _ = case
    certainty = float(data["dynamic_certainty"])
    search = nnx.jit(
        lambda m, x, i: budget.dynamic_budget_search(
            m, x, i, certainty, num_regions=num_regions, method=method
        )
    )(model, x, ids)
    np.testing.assert_allclose(search.budget, data["dynamic_tau"], atol=1e-5)
    np.testing.assert_allclose(search.outputs.log_probs, data["dynamic_log_probs"], atol=1e-4)
    np.testing.assert_allclose(search.outputs.scores.probs, data["dynamic_group_probs"], atol=1e-5)
    np.testing.assert_allclose(
        search.outputs.masked_image, data["dynamic_masked_x"].transpose(0, 2, 3, 1), atol=1e-5
    )
    if method == "grid":
        # Max class probability at every grid budget (the reference evaluates 0.05 ... 1).
        np.testing.assert_allclose(search.max_probs, data["dynamic_max_prob_per_tau"].T, atol=1e-4)
    # The golden model keeps its decisions far from every threshold: our margins agree.
    assert float(data["min_abs_prob_minus_certainty"]) > 1e-4
    assert np.all(jax.device_get(search.budget) <= 1.0)
