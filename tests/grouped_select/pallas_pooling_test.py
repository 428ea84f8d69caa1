"""The Pallas region-sum kernels (in Pallas' interpreter) equal the segment_sum version."""

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


# Both algorithms; the runs' small chunks make several scan chunks, lists and tiles per program.
PIXELS = KernelConfig()
RUNS = KernelConfig(by_runs=True, chunk=16, scan_chunk=32, programs_per_batch=4)
ALGORITHMS = pytest.mark.parametrize("config", [PIXELS, RUNS], ids=["pixels", "runs"])


@functools.partial(jax.jit, static_argnums=(2, 3))
def _pallas(features, ids, num_regions, config):
    return region_sums_pallas(features, ids, num_regions, True, False, config)


# 16x16: whole chunks; 13x11: a ragged last chunk (padding ids -1); K = 100 pads to 128.
@ALGORITHMS
@pytest.mark.parametrize("shape,num_regions", [((2, 16, 16, 4), 10), ((3, 13, 11, 3), 37),
                                               ((2, 32, 32, 4), 100)])  # fmt: skip
def test_float32_sums_equal_segment_sum(shape, num_regions, config):
    features, ids = _inputs(shape, num_regions)
    got = _pallas(features, ids, num_regions, config)
    want = regions.region_sums(features, ids, num_regions)
    chex.assert_shape(got, (shape[0], num_regions, shape[3]))
    # Three bfloat16 parts keep float32's precision: only the summation order differs
    # (one bfloat16 part would be off by ~1e-3 of these sums).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.abs(want).max()))


@ALGORITHMS
def test_more_parts_than_sixteen_lanes(config):
    """8 float32 channels with sizes: 3 x 8 + 1 (every pixel) or 3 x 9 (by runs) packed parts
    need 32 lanes."""
    features, ids = _inputs((2, 9, 7, 8), 20)
    got = jax.jit(lambda f: region_sums_pallas(f, ids, 20, True, True, config))(features)
    want = regions.region_sums(features, ids, 20)
    np.testing.assert_allclose(
        got[..., :8], want, rtol=1e-5, atol=1e-6 * float(jnp.abs(want).max())
    )
    chex.assert_trees_all_equal(got[..., 8], regions.region_sizes(ids, 20))


@ALGORITHMS
def test_bfloat16_features_and_empty_regions(config):
    features, ids = _inputs((2, 16, 16, 4), 50)
    ids = jnp.where(ids == 7, 8, ids)  # region 7 empty in every image
    features = features.astype(jnp.bfloat16)
    got = _pallas(features, ids, 50, config)
    chex.assert_trees_all_close(got, regions.region_sums(features, ids, 50), rtol=1e-6)
    assert got.dtype == jnp.float32 and not np.any(np.asarray(got[:, 7]))


def _compact_ids(batch, size, cell, num_regions):
    """[B, S, S] ids in square cells (runs of `cell` pixels along rows), shifted per image."""
    rows = np.arange(size)[:, None] // cell * (-(-size // cell)) + np.arange(size)[None, :] // cell
    return jnp.asarray(np.stack([(rows + b) % num_regions for b in range(batch)]).astype(np.int32))


@pytest.mark.parametrize(
    "config", [RUNS, RUNS._replace(programs_per_batch=2, scan_chunk=64)], ids=["4", "2"]
)
def test_runs_follow_compact_regions_across_chunks_and_tiles(config):
    """Superpixel-like ids: runs of 5 pixels that cross scan-chunk and program ends, lists
    longer than a tile (16), ids outside [0, K) in the middle of runs of known ids."""
    ids = _compact_ids(2, 30, 5, 30)
    ids = ids.at[0, 3, 7:12].set(-1).at[1, 20, :4].set(45)  # unknown ids add nowhere
    features = _inputs((2, 30, 30, 3), 30)[0]
    got = jax.jit(lambda f: region_sums_pallas(f, ids, 30, True, True, config))(features)
    with_ones = jnp.concatenate([features, jnp.ones_like(features[..., :1])], axis=-1)
    # segment_sum drops ids outside [0, K) (regions.region_sums refuses them).
    want = jax.vmap(lambda f, i: jax.ops.segment_sum(f.reshape(-1, 4), i.reshape(-1), 30))(
        with_ones, ids
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.abs(want).max()))
    assert float(want[..., 3].sum()) == 2 * 30 * 30 - 9  # the 9 unknown pixels counted nowhere


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


@ALGORITHMS
def test_sizes_counted_in_the_same_pass(config):
    features, ids = _inputs((2, 13, 11, 4), 37)
    got = jax.jit(lambda f: region_sums_pallas(f, ids, 37, True, True, config))(features)
    chex.assert_shape(got, (2, 37, 5))
    chex.assert_trees_all_equal(got[..., 4], regions.region_sizes(ids, 37))
    np.testing.assert_allclose(
        got[..., :4], regions.region_sums(features, ids, 37), rtol=1e-5, atol=1e-2
    )
    with pytest.raises(ValueError, match="at most 15 channels with sizes"):
        region_sums_pallas(jnp.zeros((1, 8, 8, 16)), ids[:1, :8, :8], 37, True, True)


@ALGORITHMS
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_lowers_to_triton_for_cuda(dtype, config):
    """CI has no GPU: lowering for CUDA here (jax.export) checks that every op of the kernels
    has a Triton lowering rule, at the paper's shapes. Triton's own compile runs on a GPU (and
    `benchmarks/compile_census.py`'s deviceless H200 compile, where jax's CUDA plugin is)."""
    config = config._replace(programs_per_batch=512)
    exported = export.export(
        jax.jit(lambda f, ids: region_sums_pallas(f, ids, 100, False, True, config)),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(
        jax.ShapeDtypeStruct((64, 224, 224, 4), dtype),
        jax.ShapeDtypeStruct((64, 224, 224), jnp.int32),
    )
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 1 + config.by_runs


@pytest.mark.parametrize(
    "config",
    [
        KernelConfig(chunk=64, programs_per_batch=4),
        KernelConfig(chunk=256, num_warps=8),
        KernelConfig(by_runs=True, chunk=32, scan_chunk=64, programs_per_batch=6),
    ],
)
def test_work_division_does_not_change_the_sums(config):
    features, ids = _inputs((2, 13, 11, 4), 37)
    got = jax.jit(lambda f: region_sums_pallas(f, ids, 37, True, False, config))(features)
    np.testing.assert_allclose(got, regions.region_sums(features, ids, 37), rtol=1e-5, atol=1e-2)


@ALGORITHMS
def test_sharded_batch_runs_each_devices_images_on_that_device(config):
    """Over 8 devices (the data axis), the kernels run on each device's share of the batch:
    the same sums, sharded like the batch, and the compiled program gathers nothing; the
    gradient too."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    features, ids = _inputs((16, 12, 10, 4), 23)
    features, ids = jax.device_put(features, batch), jax.device_put(ids, batch)
    pool = jax.jit(lambda f, i: region_sums_pallas(f, i, 23, True, True, config))
    got = pool(features, ids)
    assert got.sharding.is_equivalent_to(batch, got.ndim)
    np.testing.assert_allclose(
        got[..., :4], regions.region_sums(features, ids, 23), rtol=1e-5, atol=1e-2
    )
    chex.assert_trees_all_equal(got[..., 4], regions.region_sizes(ids, 23))
    compiled = pool.lower(features, ids).compile().as_text()
    assert "all-gather" not in compiled and "all-to-all" not in compiled
    grad = jax.jit(jax.grad(lambda f: jnp.sum(pool(f, ids)[..., :4] ** 2)))(features)
    want = jax.grad(lambda f: jnp.sum(regions.region_sums(f, ids, 23) ** 2))(features)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-3 * float(jnp.abs(want).max()))


def test_vmap_over_more_images_equals_segment_sum():
    features, ids = _inputs((6, 9, 7, 3), 11)
    features, ids = features.reshape(3, 2, 9, 7, 3), ids.reshape(3, 2, 9, 7)
    got = jax.jit(jax.vmap(lambda f, i: region_sums_pallas(f, i, 11, True, True)))(features, ids)
    want = jax.vmap(lambda f, i: regions.region_sums(f, i, 11))(features, ids)
    atol = 1e-6 * float(jnp.abs(want).max())
    np.testing.assert_allclose(got[..., :3], want, rtol=1e-5, atol=atol)
    chex.assert_trees_all_equal(got[..., 3], jax.vmap(lambda i: regions.region_sizes(i, 11))(ids))
