"""The P2P model on CPU-sized backbones: training and evaluation forward passes, the budget."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select import objective, precision, regions
from grouped_select.backbones.small import SmallSelectorBackbone, small_vit_classifier
from grouped_select.model import P2P
from grouped_select.selector import Selector

BATCH, SIZE, NUM_REGIONS, NUM_CLASSES = 4, 32, 24, 5


def make_model(seed: int = 0) -> P2P:
    rngs = nnx.Rngs(seed)
    selector = Selector(SmallSelectorBackbone(rngs=rngs), rngs=rngs)
    classifier = small_vit_classifier(NUM_CLASSES, image_size=SIZE, rngs=rngs)
    return P2P(selector, classifier)


def make_batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    # Blocky regions (4x4 tiles), the last ids left empty.
    tiles = rng.integers(0, NUM_REGIONS - 2, size=(BATCH, SIZE // 4, SIZE // 4))
    ids = np.repeat(np.repeat(tiles, 4, axis=1), 4, axis=2).astype(np.int32)
    labels = rng.integers(0, NUM_CLASSES, size=(BATCH,)).astype(np.int32)
    budget = rng.uniform(0.05, 1.0, size=(BATCH,)).astype(np.float32)
    return x, ids, labels, budget


@pytest.fixture(scope="module")
def model():
    return make_model()


def _loss(model, x, ids, labels, budget, key, num_samples=2):
    out = model.train_forward(
        x,
        ids,
        key,
        num_regions=NUM_REGIONS,
        budget=budget,
        temperature=0.7,
        num_samples=num_samples,
    )
    cov = jnp.einsum("bkd,bld->bkl", out.scores.embeddings, out.scores.embeddings)
    losses = objective.p2p_losses(
        out.log_probs,
        labels,
        out.scores.kept_fraction,
        budget,
        cov,
        sparsity_weight=10.0,
        covariance_weight=0.01,
    )
    return losses.total, out


def test_train_forward_shapes_and_dtypes(model):
    x, ids, labels, budget = make_batch()
    _, out = nnx.jit(_loss, static_argnames="num_samples")(
        model, x, ids, labels, budget, jax.random.key(0), num_samples=3
    )
    chex.assert_shape(out.log_probs, (BATCH, NUM_CLASSES))
    chex.assert_shape(out.scores.logits, (BATCH, NUM_REGIONS))
    chex.assert_shape(out.scores.embeddings, (BATCH, NUM_REGIONS, 3))
    chex.assert_shape(out.region_masks, (3, BATCH, NUM_REGIONS))
    chex.assert_type([out.log_probs, out.scores.logits, out.region_masks], jnp.float32)
    np.testing.assert_allclose(np.exp(out.log_probs).sum(-1), 1 + NUM_CLASSES * 1e-6, rtol=1e-5)
    assert np.all((np.asarray(out.region_masks) >= 0) & (np.asarray(out.region_masks) <= 1))
    # Empty regions (ids that no pixel uses) score exactly 0 at every budget.
    np.testing.assert_array_equal(np.asarray(out.scores.logits)[:, -2:], 0.0)


def test_gradients_reach_selector_and_classifier(model):
    x, ids, labels, budget = make_batch()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grads(params):
        def loss(params):
            return _loss(
                nnx.merge(graphdef, params, rest), x, ids, labels, budget, jax.random.key(1)
            )[0]

        return jax.grad(loss)(params)

    g = grads(params)
    for part in ("selector", "classifier"):
        leaves = jax.tree.leaves(g[part])
        assert leaves, part
        assert all(np.all(np.isfinite(leaf)) for leaf in leaves), part
        assert sum(float(jnp.abs(leaf).sum()) for leaf in leaves) > 0, part
    for head in ("low_head", "high_head"):
        assert float(jnp.abs(g["selector"][head]["kernel"][...]).sum()) > 0
    assert float(jnp.abs(g["selector"]["backbone"]["convs"][0]["kernel"][...]).sum()) > 0


def test_train_step_compiles_once_for_batches_of_one_shape(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(params, x, ids, labels, budget, key):
        return _loss(nnx.merge(graphdef, params, rest), x, ids, labels, budget, key)[0]

    values = [float(loss(params, *make_batch(seed), jax.random.key(seed))) for seed in range(3)]
    assert len(set(values)) == 3 and all(np.isfinite(values))


def test_budget_shift_equals_injecting_budget_into_the_heads(model):
    """The selector pools once and shifts per τ; that must equal the reference's injection."""
    x, ids, _, budget = make_batch(1)

    @nnx.jit
    def both(model, x, ids, budget):
        selector = model.selector
        low, high = selector.features(x)
        injected = selector.pool(
            selector.pixel_outputs(low, high, x.shape[1:3], budget), ids, NUM_REGIONS
        )
        shifted = selector(x, ids, NUM_REGIONS, budget)
        return injected, shifted

    injected, shifted = both(model, x, ids, budget)
    chex.assert_trees_all_close(injected, shifted, rtol=1e-5, atol=1e-5)
    # The budget must matter, or the check above would be vacuous.
    assert float(jnp.abs(model.selector.budget_direction()).max()) > 1e-3


def test_eval_forward_is_the_hard_mask(model):
    x, ids, _, _ = make_batch(2)
    out = nnx.jit(lambda m, x, i: m.eval_forward(x, i, num_regions=NUM_REGIONS, budget=0.4))(
        model, x, ids
    )
    selected = np.asarray(out.selected)
    np.testing.assert_array_equal(selected, np.asarray(out.scores.probs) > 0.5)
    pixel_keep = np.take_along_axis(selected, ids.reshape(BATCH, -1), 1).reshape(ids.shape)
    black = np.asarray(model.fill_value, np.float32)
    expected = np.where(pixel_keep[..., None] > 0, x, black)
    np.testing.assert_allclose(out.masked_image, expected, rtol=1e-6)
    np.testing.assert_allclose(out.kept_pixels, pixel_keep.reshape(BATCH, -1).mean(1), rtol=1e-5)
    chex.assert_shape(out.log_probs, (BATCH, NUM_CLASSES))


def test_bfloat16_forward_close_to_float32(model):
    x, ids, _, budget = make_batch(3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def forward(params, x):
        m = nnx.merge(graphdef, params, rest)
        return m.eval_forward(x, ids, num_regions=NUM_REGIONS, budget=budget)

    exact = forward(params, x)
    low = forward(precision.cast_floating(params, jnp.bfloat16), jnp.asarray(x, jnp.bfloat16))
    chex.assert_type(low.log_probs, jnp.float32)
    np.testing.assert_allclose(low.scores.logits, exact.scores.logits, atol=5e-2)
    np.testing.assert_allclose(low.log_probs, exact.log_probs, atol=5e-2)
    # Pooled bf16 features stay region means: sizes are exact.
    np.testing.assert_array_equal(low.scores.sizes, regions.region_sizes(ids, NUM_REGIONS))
