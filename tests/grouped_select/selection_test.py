"""Selection: the low-rank logit-normal sampler, binary concrete, hard mask and masking."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select import selection

NUM_SAMPLES = 20_000


def _mean_and_embeddings(seed=0, batch=2, num_regions=6, dims=3):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(batch, num_regions)).astype(np.float32)
    emb = rng.normal(size=(batch, num_regions, dims)).astype(np.float32)
    return mean, emb


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _sample(key, mean, emb, num_samples, jitter):
    return selection.sample_region_logits(key, mean, emb, num_samples, jitter)


def test_sampler_moments_match_low_rank_covariance():
    mean, emb = _mean_and_embeddings()
    jitter = 0.05  # large enough that a missing diagonal term would be detected
    samples = np.asarray(_sample(jax.random.key(0), mean, emb, NUM_SAMPLES, jitter), np.float64)
    chex.assert_shape(samples, (NUM_SAMPLES, *mean.shape))
    cov = np.asarray(selection.region_covariance(emb, jitter), np.float64)
    for b in range(mean.shape[0]):
        empirical = np.cov(samples[:, b], rowvar=False)
        diag = np.diag(cov[b])
        # Standard error of a sample covariance entry under a Gaussian: sqrt((ΣiiΣjj + Σij²)/n).
        std_err = np.sqrt((np.outer(diag, diag) + cov[b] ** 2) / NUM_SAMPLES)
        assert np.all(np.abs(empirical - cov[b]) < 5 * std_err), (
            np.abs(empirical - cov[b]) / std_err
        )
        mean_err = np.sqrt(diag / NUM_SAMPLES)
        assert np.all(np.abs(samples[:, b].mean(0) - mean[b]) < 5 * mean_err)


def test_sampler_is_reparameterised():
    mean, emb = _mean_and_embeddings()

    def loss(mean, emb):
        return jnp.sum(_sample(jax.random.key(1), mean, emb, 4, 1e-6) ** 2)

    grad_mean, grad_emb = jax.jit(jax.grad(loss, argnums=(0, 1)))(mean, emb)
    for grad in (grad_mean, grad_emb):
        assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


@pytest.mark.parametrize("logit", [-2.0, -0.3, 0.0, 0.8, 2.5])
def test_binary_concrete_mean_tends_to_sigmoid_as_temperature_falls(logit):
    logits = jnp.full((NUM_SAMPLES,), logit, jnp.float32)
    target = 1 / (1 + np.exp(-logit))
    tolerance = 5 * np.sqrt(target * (1 - target) / NUM_SAMPLES) + 1e-3
    sample = jax.jit(selection.relaxed_bernoulli, static_argnames="straight_through")
    cold = np.asarray(sample(jax.random.key(2), logits, 0.01))
    assert abs(cold.mean() - target) < tolerance
    assert np.mean((cold > 0.01) & (cold < 0.99)) < 0.05  # nearly discrete when cold
    warm = np.asarray(sample(jax.random.key(2), logits, 1.0))
    assert np.mean((warm > 0.01) & (warm < 0.99)) > 0.5  # genuinely relaxed when warm


def test_straight_through_is_hard_forward_relaxed_backward():
    logits = jnp.linspace(-3, 3, 64)

    def forward(logits, straight_through):
        return selection.relaxed_bernoulli(jax.random.key(3), logits, 0.5, straight_through)

    hard = jax.jit(forward, static_argnums=1)(logits, True)
    relaxed = jax.jit(forward, static_argnums=1)(logits, False)
    np.testing.assert_array_equal(hard, (relaxed > 0.5).astype(np.float32))
    grad_hard = jax.jit(jax.grad(lambda v: jnp.sum(forward(v, True) * jnp.arange(64.0))))(logits)
    grad_soft = jax.jit(jax.grad(lambda v: jnp.sum(forward(v, False) * jnp.arange(64.0))))(logits)
    np.testing.assert_allclose(grad_hard, grad_soft, rtol=1e-6)
    assert np.abs(grad_hard).sum() > 0


def test_hard_selection_thresholds_probability_at_half():
    mean = jnp.array([[-1.0, -1e-3, 1e-3, 4.0]])
    chosen = jax.jit(selection.hard_selection)(mean)
    chex.assert_type(chosen, jnp.float32)
    np.testing.assert_array_equal(chosen, [[0, 0, 1, 1]])


def test_masking_writes_normalised_black():
    black = selection.black_value()
    np.testing.assert_allclose(
        black * np.array(selection.IMAGENET_STD) + np.array(selection.IMAGENET_MEAN), 0, atol=1e-6
    )
    image = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32)
    ids = np.tile(np.arange(5, dtype=np.int32), (2, 4, 1))  # region = column
    keep = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], np.float32)
    masked = jax.jit(selection.mask_regions)(image, ids, keep, black)
    chex.assert_shape(masked, image.shape)
    for b in range(2):
        for col in range(5):
            expected = image[b, :, col] if keep[b, col] else np.broadcast_to(black, (4, 3))
            np.testing.assert_allclose(masked[b, :, col], expected, rtol=1e-6)
    # Monte-Carlo axes in front of the region mask are kept.
    many = jax.jit(selection.mask_regions)(image, ids, np.stack([keep, 1 - keep]), black)
    chex.assert_shape(many, (2, *image.shape))


def test_soft_mask_image_and_its_gradients_are_the_blend():
    """x·m + b·(1 − m) with a soft mask, Monte-Carlo axis in front; both gradients (what the
    selector and the image receive in training) against the closed forms."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    mask = rng.random((3, 2, 4, 5)).astype(np.float32)
    cotangent = rng.normal(size=(3, 2, 4, 5, 3)).astype(np.float32)
    fill = selection.black_value()

    def forward_and_gradients(image, mask):
        masked, back = jax.vjp(lambda x, m: selection.mask_image(x, m, fill), image, mask)
        return masked, *back(cotangent)

    masked, d_image, d_mask = jax.jit(forward_and_gradients)(image, mask)
    m = mask[..., None]
    np.testing.assert_allclose(masked, image * m + fill * (1 - m), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d_image, (cotangent * m).sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_mask, (cotangent * (image - fill)).sum(-1), rtol=1e-5, atol=1e-5)
