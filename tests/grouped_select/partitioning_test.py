"""`batch_partitioned`: a kernel split over devices along the batch, under jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grouped_select.partitioning import batch_partitioned


def _scale_rows(x, w, power):
    """[B, D] x [D] -> [B, D]: a stand-in for a kernel (row-wise, weights shared)."""
    return x * w**power


SCALE = batch_partitioned(
    _scale_rows, num_arrays=2, num_static=1, sharding_rule="b d, d -> b d", replicated=("d",)
)


def _inputs():
    rng = np.random.default_rng(0)
    return (
        jnp.asarray(rng.normal(size=(16, 6)).astype(np.float32)),
        jnp.asarray(rng.normal(size=(6,)).astype(np.float32)),
    )


def test_sharded_batch_stays_sharded_and_nothing_is_gathered():
    x, w = _inputs()
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    xs = jax.device_put(x, batch)
    scale = jax.jit(lambda x, w: SCALE(x, w, 2))
    got = scale(xs, w)
    assert got.sharding.is_equivalent_to(batch, got.ndim)
    np.testing.assert_allclose(got, _scale_rows(x, w, 2), rtol=1e-6)
    assert "all-gather" not in scale.lower(xs, w).compile().as_text()


@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0)])
def test_vmap_joins_the_batch_or_maps_the_replicated_argument(in_axes):
    """Mapped x joins the batch axis; a mapped w (replicated in the kernel) runs the kernel
    once per index."""
    x, w = _inputs()
    xs = jnp.stack([x, 2 * x, -x])
    ws = jnp.stack([w, w + 1, 3 * w])
    pairs = zip((x, w), (xs, ws), in_axes, strict=True)
    args = tuple(a if axis is None else b for a, b, axis in pairs)
    got = jax.jit(jax.vmap(lambda x, w: SCALE(x, w, 3), in_axes=in_axes))(*args)
    want = jax.vmap(lambda x, w: _scale_rows(x, w, 3), in_axes=in_axes)(*args)
    np.testing.assert_allclose(got, want, rtol=1e-6)
