"""The Pallas region-sum kernel (in Pallas' interpreter) equals the segment_sum version."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from grouped_select import regions
from grouped_select.pallas_pooling import KernelConfig, region_sums_pallas


def _inputs(shape, num_regions, seed=0):
    rng = np.random.default_rng(seed)
    features = jnp.asarray(rng.normal(size=shape).astype(np.float32)) * 1000.0
    ids = jnp.asarray(rng.integers(0, num_regions, size=shape[:3]).astype(np.int32))
    return features, ids


@functools.partial(jax.jit, static_argnums=2)
def _pallas(features, ids, num_regions):
    return region_sums_pallas(features, ids, num_regions, True)


# 16x16: whole chunks; 13x11: a ragged last chunk (padding ids -1); K = 100 pads to 128.
@pytest.mark.parametrize("shape,num_regions", [((2, 16, 16, 4), 10), ((3, 13, 11, 3), 37),
                                               ((2, 32, 32, 4), 100)])  # fmt: skip
def test_float32_sums_equal_segment_sum(shape, num_regions):
    features, ids = _inputs(shape, num_regions)
    got = _pallas(features, ids, num_regions)
    want = regions.region_sums(features, ids, num_regions)
    chex.assert_shape(got, (shape[0], num_regions, shape[3]))
    # Three bfloat16 parts keep float32's precision: only the summation order differs
    # (one bfloat16 part would be off by ~1e-3 of these sums).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.abs(want).max()))


def test_bfloat16_features_and_empty_regions():
    features, ids = _inputs((2, 16, 16, 4), 50)
    ids = jnp.where(ids == 7, 8, ids)  # region 7 empty in every image
    features = features.astype(jnp.bfloat16)
    got = _pallas(features, ids, 50)
    chex.assert_trees_all_close(got, regions.region_sums(features, ids, 50), rtol=1e-6)
    assert got.dtype == jnp.float32 and not np.any(np.asarray(got[:, 7]))


def test_gradient_gives_every_pixel_its_region_cotangent():
    features, ids = _inputs((2, 8, 8, 2), 5)
    cotangent = jax.random.normal(jax.random.key(0), (2, 5, 2))

    def loss(f, pool):
        return jnp.sum(pool(f) * cotangent)

    got = jax.jit(jax.grad(loss), static_argnums=1)(
        features, lambda f: region_sums_pallas(f, ids, 5, True)
    )
    want = jax.grad(loss)(features, lambda f: regions.region_sums(f, ids, 5))
    chex.assert_trees_all_close(got, want)


def test_rejects_too_many_channels_and_mismatched_ids():
    features, ids = _inputs((1, 8, 8, 17), 4)
    with pytest.raises(ValueError, match="at most 16 channels"):
        region_sums_pallas(features, ids, 4, True)
    with pytest.raises(ValueError, match="does not match"):
        region_sums_pallas(features[..., :4], ids[:, :4], 4, True)


def test_sizes_counted_in_the_same_pass():
    features, ids = _inputs((2, 13, 11, 4), 37)
    got = jax.jit(lambda f: region_sums_pallas(f, ids, 37, True, True))(features)
    chex.assert_shape(got, (2, 37, 5))
    chex.assert_trees_all_equal(got[..., 4], regions.region_sizes(ids, 37))
    np.testing.assert_allclose(
        got[..., :4], regions.region_sums(features, ids, 37), rtol=1e-5, atol=1e-2
    )
    with pytest.raises(ValueError, match="at most 15 channels with sizes"):
        region_sums_pallas(jnp.zeros((1, 8, 8, 16)), ids[:1, :8, :8], 37, True, True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_lowers_to_triton_for_cuda(dtype):
    """CI has no GPU: lowering for CUDA here (jax.export) checks that every op of the kernel
    has a Triton lowering rule, at the paper's shapes. Triton's own compile runs on a GPU."""
    exported = export.export(
        jax.jit(lambda f, ids: region_sums_pallas(f, ids, 100, False, True)),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(
        jax.ShapeDtypeStruct((64, 224, 224, 4), dtype),
        jax.ShapeDtypeStruct((64, 224, 224), jnp.int32),
    )
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()


@pytest.mark.parametrize(
    "config",
    [KernelConfig(chunk=64, programs_per_batch=4), KernelConfig(chunk=256, num_warps=8)],
)
def test_work_division_does_not_change_the_sums(config):
    features, ids = _inputs((2, 13, 11, 4), 37)
    got = jax.jit(lambda f: region_sums_pallas(f, ids, 37, True, False, config))(features)
    np.testing.assert_allclose(got, regions.region_sums(features, ids, 37), rtol=1e-5, atol=1e-2)
