"""Post-hoc saliency and its evaluation, on models whose answers are known by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select import evaluation, saliency
from grouped_select.model import BlackBox

B, H, W, C = 3, 8, 8, 4
BASELINE = jnp.array([-1.0, -0.5, 0.25])


def _linear(weights):
    """classify(x) = Σ_pixels,channels x · weights[..., c]: logits [B, C]."""
    return lambda x: jnp.einsum("...hwk,hwkc->...c", x, weights)


def _images(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, H, W, 3))


def test_gradient_x_input_of_a_linear_model_is_the_weighted_input():
    weights = jax.random.normal(jax.random.key(1), (H, W, 3, C))
    x, targets = _images(), jnp.array([0, 2, 3])
    got = jax.jit(lambda x, t: saliency.gradient_x_input(_linear(weights), x, t, BASELINE))(
        x, targets
    )
    want = np.abs(np.einsum("bhwk,bhwk->bhw", x - BASELINE, np.moveaxis(weights, -1, 0)[targets]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_integrated_gradients_is_complete_for_a_quadratic_model():
    # f_c(x) = (Σ a x + k)^2 has a gradient linear along the path, so the midpoint rule is
    # exact, and the attributions (all positive here: a > 0, x > x0, Σ a x + k > 0) sum to
    # f(x) - f(x0).
    a = jax.random.uniform(jax.random.key(2), (H, W, 3), minval=0.1, maxval=1.0)

    def classify(x):
        s = jnp.einsum("...hwk,hwk->...", x, a) + 3.0 * H * W
        return jnp.stack([s**2, -s], axis=-1)

    x = BASELINE + jax.random.uniform(jax.random.key(3), (B, H, W, 3), minval=0.1)
    targets = jnp.zeros((B,), jnp.int32)
    fn = jax.jit(
        lambda x: saliency.integrated_gradients(
            classify, x, targets, BASELINE, num_steps=4, chunk=2
        )
    )
    attributions = fn(x)
    baseline_image = jnp.broadcast_to(BASELINE, x.shape)
    np.testing.assert_allclose(
        attributions.sum((1, 2)),
        classify(x)[:, 0] - classify(baseline_image)[:, 0],
        rtol=1e-4,
    )


def test_integrated_gradients_equals_gradient_x_input_for_a_linear_model():
    weights = jax.random.normal(jax.random.key(4), (H, W, 3, C))
    x, targets = _images(5), jnp.array([1, 1, 0])
    ig = saliency.saliency("integrated_gradients", _linear(weights), x, targets, BASELINE)
    gxi = saliency.saliency("gradient_x_input", _linear(weights), x, targets, BASELINE)
    np.testing.assert_allclose(ig, gxi, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="saliency method"):
        saliency.saliency("occlusion", _linear(weights), x, targets, BASELINE)


def test_top_fraction_keeps_exactly_the_highest_scores_with_ties_broken_by_position():
    scores = jnp.array([[0.1, 0.9, 0.5, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    kept = jax.jit(saliency.top_fraction)(scores, jnp.array([0.6, 0.4]))
    np.testing.assert_array_equal(kept, [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(saliency.top_fraction(scores, 0.0), np.zeros((2, 5)))
    np.testing.assert_array_equal(saliency.top_fraction(scores, 1.0), np.ones((2, 5)))


def _fractions():
    return evaluation.fidelity_fractions(0.25)


def test_saliency_on_the_object_gives_perfect_localisation():
    # Saliency = the object mask; keeping exactly the object's share of pixels keeps the
    # object: precision 1, IoU 1, PxAP 1.
    masks = np.zeros((B, H, W), np.float32)
    masks[0, 2:5, 2:6] = 1
    masks[1, :4, :] = 1
    masks[2, 6:, 1:3] = 1
    share = masks.mean((1, 2))
    images = _images(6)
    deletion, insertion = _fractions()
    weights = jax.random.normal(jax.random.key(7), (H, W, 3, C))
    fn = jax.jit(
        lambda x, m, s, k: saliency.evaluate_saliency_batch(
            _linear(weights),
            x,
            m,
            s,
            k,
            fill_value=BASELINE,
            deletion_fractions=deletion,
            insertion_fractions=insertion,
        )
    )
    results = fn(images, masks, masks + 0.01, share)
    np.testing.assert_allclose(results.mask_precision, 1.0)
    np.testing.assert_allclose(results.mask_iou, 1.0)
    np.testing.assert_allclose(results.kept_pixels, share, atol=1e-6)
    chex.assert_shape(results.deletion, (len(deletion), B))
    acc = evaluation.EvalAccumulator([str(c) for c in range(C)], deletion, insertion)
    acc.update(results, np.zeros(B, np.int32), np.ones(B, bool), np.ones(B, bool))
    assert acc.summary()["pxap"] == pytest.approx(1.0)
    # The classifier saw only the kept pixels (the rest at the fill value).
    want = _linear(weights)(jnp.where(masks[..., None] > 0, images, BASELINE))
    np.testing.assert_allclose(
        results.log_probs, np.log(jax.nn.softmax(want) + 1e-6), rtol=1e-4, atol=1e-4
    )


def test_fidelity_of_a_classifier_that_ignores_the_input_is_flat():
    deletion, insertion = _fractions()
    constant = lambda x: jnp.zeros((*x.shape[:-3], C)).at[..., 2].set(1.0)  # noqa: E731
    results = saliency.evaluate_saliency_batch(
        constant,
        _images(8),
        np.zeros((B, H, W)),
        jax.random.uniform(jax.random.key(9), (B, H, W)),
        0.3,
        fill_value=BASELINE,
        deletion_fractions=deletion,
        insertion_fractions=insertion,
    )
    np.testing.assert_array_equal(results.deletion, 1.0)
    np.testing.assert_array_equal(results.insertion, 1.0)
    np.testing.assert_allclose(results.kept_pixels, round(0.3 * H * W) / (H * W))


class _TinyClassifier(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.head = nnx.Linear(8, C, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.conv(x)).mean((1, 2)))


@pytest.mark.parametrize("method", saliency.METHODS)
def test_saliency_evaluator_explains_the_black_box_prediction(method):
    model = BlackBox(_TinyClassifier(nnx.Rngs(0)))
    deletion, insertion = _fractions()
    evaluate = saliency.saliency_evaluator(
        model, method, deletion_fractions=deletion, insertion_fractions=insertion, num_steps=4
    )
    images, masks = _images(10), np.ones((B, H, W))
    full = evaluate(images, masks, np.ones(B, np.float32))
    # Everything kept: the prediction is the black box's own and nothing is removed.
    np.testing.assert_array_equal(np.argmax(full.log_probs, -1), np.argmax(model(images), -1))
    np.testing.assert_allclose(full.kept_pixels, 1.0)
    half = evaluate(images, masks, np.full(B, 0.5, np.float32))
    np.testing.assert_allclose(half.kept_pixels, 0.5)
    assert float(half.region_probs.max()) == pytest.approx(1.0)
