"""Region ops: golden parity with the published code, both pooling implementations, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select import regions

METHODS = ["segment_sum", "one_hot"]


@functools.partial(jax.jit, static_argnames=("num_regions", "method"))
def _pool(features, ids, num_regions, method):
    return regions.pool_regions(features, ids, num_regions, method)


@functools.partial(jax.jit, static_argnames=("num_regions",))
def _sizes(ids, num_regions):
    return regions.region_sizes(ids, num_regions)


def _random_case(seed=0, batch=3, height=12, width=10, channels=4, num_regions=9):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
    ids = rng.integers(0, num_regions - 2, size=(batch, height, width)).astype(np.int32)
    return features, ids, num_regions  # the last two ids are empty regions


def _numpy_means(features, ids, num_regions):
    batch, _, _, channels = features.shape
    out = np.zeros((batch, num_regions, channels), np.float64)
    for b in range(batch):
        for k in range(num_regions):
            sel = ids[b] == k
            if sel.any():
                out[b, k] = features[b][sel].mean(axis=0)
    return out


@pytest.mark.golden
@pytest.mark.parametrize("method", METHODS)
def test_pool_matches_published_code(golden, method):
    data = golden("regions.npz")
    features = data["features"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    num_regions = data["mean"].shape[-1]
    means = _pool(features, data["ids"], num_regions=num_regions, method=method)
    chex.assert_shape(means, (features.shape[0], num_regions, features.shape[-1]))
    chex.assert_type(means, jnp.float32)
    np.testing.assert_allclose(means.transpose(0, 2, 1), data["mean"], rtol=1e-5, atol=1e-6)
    sizes = _sizes(data["ids"], num_regions=num_regions)
    np.testing.assert_array_equal(sizes, data["sizes"])


@pytest.mark.golden
@pytest.mark.parametrize("method", METHODS)
def test_gap_id_works_with_enough_regions(golden, method):
    data = golden("regions.npz")
    features = data["features"].transpose(0, 2, 3, 1)
    num_regions = data["mean_gap"].shape[-1]
    means = _pool(features, data["ids_gap"], num_regions=num_regions, method=method)
    np.testing.assert_allclose(means.transpose(0, 2, 1), data["mean_gap"], rtol=1e-5, atol=1e-6)
    assert not np.isnan(np.asarray(means)).any()


@pytest.mark.golden
def test_gap_id_beyond_num_regions_is_a_clear_error(golden):
    data = golden("regions.npz")
    features = data["features"].transpose(0, 2, 3, 1)
    too_few = data["mean"].shape[-1]
    biggest = int(data["ids_gap"].max())
    assert biggest >= too_few
    with pytest.raises(ValueError, match=f"id {biggest}.*num_regions >= {biggest + 1}"):
        regions.pool_regions(features, data["ids_gap"], too_few)


def test_validation_errors_name_the_problem():
    features, ids, k = _random_case()
    with pytest.raises(ValueError, match="negative id"):
        regions.validate_region_ids(np.where(ids == 0, -1, ids), k)
    with pytest.raises(ValueError, match="does not match the image"):
        regions.validate_region_ids(ids[:, :-1], k, features.shape)
    with pytest.raises(TypeError, match="integers"):
        regions.validate_region_ids(ids.astype(np.float32), k)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        regions.validate_region_ids(ids[0], k)
    regions.validate_region_ids(ids, k, features.shape)  # a valid batch passes


@pytest.mark.parametrize("method", METHODS)
def test_pool_matches_numpy_and_empty_regions_are_zero(method):
    features, ids, k = _random_case()
    means = _pool(features, ids, num_regions=k, method=method)
    np.testing.assert_allclose(means, _numpy_means(features, ids, k), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(means)[:, -2:], 0.0)


def test_pooling_implementations_agree():
    features, ids, k = _random_case(
        seed=3, batch=4, height=32, width=32, channels=4, num_regions=50
    )
    a = _pool(features, ids, num_regions=k, method="segment_sum")
    b = _pool(features, ids, num_regions=k, method="one_hot")
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_features_pool_close_to_float32(method):
    features, ids, k = _random_case(seed=1, height=32, width=32)
    exact = _pool(features, ids, num_regions=k, method=method)
    low = _pool(jnp.asarray(features, jnp.bfloat16), ids, num_regions=k, method=method)
    chex.assert_type(low, jnp.float32)  # accumulated and returned in float32
    np.testing.assert_allclose(low, exact, atol=2e-2)


def test_broadcast_inverts_pooling_of_region_constant_features():
    _, ids, k = _random_case(seed=2)
    values = np.random.default_rng(0).normal(size=(2, ids.shape[0], k)).astype(np.float32)
    pixels = jax.jit(regions.broadcast_to_pixels)(values, ids)
    chex.assert_shape(pixels, (2, *ids.shape))
    pooled = _pool(np.moveaxis(np.asarray(pixels), 0, -1), ids, num_regions=k, method="segment_sum")
    present = np.asarray(_sizes(ids, num_regions=k)) > 0
    np.testing.assert_allclose(
        np.moveaxis(np.asarray(pooled), -1, 0)[:, present], values[:, present], rtol=1e-6
    )


@pytest.mark.parametrize("lead", [(), (3,), (2, 20)])  # (2, 20): 40 entries, two words
def test_broadcast_selections_equals_a_lookup_per_entry(lead):
    _, ids, k = _random_case(seed=3)
    rng = np.random.default_rng(len(lead))
    selected = rng.integers(0, 2, size=(*lead, ids.shape[0], k)).astype(np.float32)
    selected[..., 0] *= 0.25  # any nonzero value counts as kept
    pixels = jax.jit(regions.broadcast_selections)(selected, ids)
    chex.assert_shape(pixels, (*lead, *ids.shape))
    chex.assert_type(pixels, jnp.float32)
    expected = np.asarray(regions.broadcast_to_pixels(selected != 0, ids), np.float32)
    np.testing.assert_array_equal(pixels, expected)
    assert 0 < expected.mean() < 1  # both values occur


def test_kept_fraction_is_size_weighted():
    _, ids, k = _random_case(seed=4)
    sizes = _sizes(ids, num_regions=k)
    probs = np.random.default_rng(1).uniform(size=(ids.shape[0], k)).astype(np.float32)
    kept = jax.jit(regions.kept_fraction)(probs, sizes)
    chex.assert_shape(kept, (ids.shape[0],))
    per_pixel = np.take_along_axis(probs, ids.reshape(ids.shape[0], -1), axis=1).mean(axis=1)
    np.testing.assert_allclose(kept, per_pixel, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(regions.kept_fraction)(np.ones_like(probs), sizes), 1.0)


def test_pool_does_not_retrace_for_new_batches_of_the_same_shape():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def pool(features, ids):
        return regions.pool_regions(features, ids, 9, "segment_sum")

    for seed in range(3):
        features, ids, _ = _random_case(seed=seed)
        pool(features, ids)


def test_pallas_method_runs_on_gpus_and_asks_for_one_elsewhere():
    """The Triton kernel runs on NVIDIA GPUs only (`pallas_pooling_test` checks its values in
    Pallas' interpreter anywhere); elsewhere the method says what to use instead."""
    ids = jnp.asarray(np.arange(16).reshape(1, 4, 4) % 3, jnp.int32)
    features = jnp.arange(32, dtype=jnp.float32).reshape(1, 4, 4, 2)
    for pool in (regions.region_sums, regions.pool_regions):
        for method in ("pallas", "pallas_runs"):
            if jax.default_backend() == "gpu":
                want = pool(features, ids, 3, "segment_sum")
                chex.assert_trees_all_close(pool(features, ids, 3, method), want, rtol=1e-6)
            else:
                with pytest.raises(ValueError, match=f"'{method}' is a GPU.*use 'auto'"):
                    pool(features, ids, 3, method)
