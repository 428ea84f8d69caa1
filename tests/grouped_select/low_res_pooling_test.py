"""Pooling from the low-resolution map equals upsampling and then pooling (segment-sum)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select import low_res_pooling, regions

BATCH, SIZE, STRIDE, CHANNELS, NUM_REGIONS = 3, 48, 8, 4, 40


def _ids(seed: int) -> np.ndarray:
    """SLIC-like ids: random cells of a coarse grid, upsampled, so regions are compact."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, NUM_REGIONS - 5, size=(BATCH, SIZE // 6, SIZE // 6))
    return np.repeat(np.repeat(coarse, 6, 1), 6, 2).astype(np.int32)  # ids >= K - 5 empty


def test_upsampling_matrix_is_jax_bilinear_resize():
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    up = jax.image.resize(x, (48, 40), "bilinear")
    r_y, r_x = low_res_pooling.upsampling_matrix(48, 6), low_res_pooling.upsampling_matrix(40, 5)
    np.testing.assert_allclose(r_y @ x @ r_x.T, up, rtol=1e-5, atol=1e-5)
    assert ((r_y != 0).sum(axis=1) <= 2).all()
    with pytest.raises(ValueError, match="upsampling only"):
        low_res_pooling.upsampling_matrix(4, 8)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_pool_low_res_equals_upsample_then_segment_sum(dtype, tolerance):
    ids = _ids(0)
    low_hw = (SIZE // STRIDE, SIZE // STRIDE)
    rng = np.random.default_rng(1)
    low = rng.normal(size=(BATCH, *low_hw, CHANNELS)).astype(np.float32)
    weights = np.stack(
        [low_res_pooling.bilinear_region_weights(i, low_hw, NUM_REGIONS) for i in ids]
    )
    chex.assert_shape(weights, (BATCH, NUM_REGIONS, low_hw[0] * low_hw[1]))
    # Row sums are the region sizes (empty regions: 0).
    np.testing.assert_allclose(
        weights.sum(-1), regions.region_sizes(ids, NUM_REGIONS), rtol=1e-5, atol=1e-4
    )

    @jax.jit
    def reference(low, ids):
        up = jax.image.resize(low, (BATCH, SIZE, SIZE, CHANNELS), "bilinear")
        return regions.pool_regions(up, ids, NUM_REGIONS, "segment_sum")

    got = jax.jit(low_res_pooling.pool_low_res)(low.astype(dtype), weights.astype(dtype))
    want = reference(low, ids)
    chex.assert_trees_all_close(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(np.asarray(got)[:, NUM_REGIONS - 5 :], 0.0)
