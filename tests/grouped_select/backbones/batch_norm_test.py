"""The hand-written train-mode BatchNorm equals `nnx.BatchNorm` under autodiff."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select.backbones.batch_norm import batch_norm


def _bn(channels):
    bn = nnx.BatchNorm(channels, epsilon=1e-3, momentum=0.9, use_fast_variance=False,
                       rngs=nnx.Rngs(0))  # fmt: skip
    # Non-trivial parameters and running statistics, so each one's use is checked.
    bn.scale[...] = jnp.linspace(0.5, 1.5, channels)
    bn.bias[...] = jnp.linspace(-1.0, 1.0, channels)
    bn.mean[...] = jnp.linspace(-0.2, 0.2, channels)
    bn.var[...] = jnp.linspace(0.5, 2.0, channels)
    return bn


def _run(normalize, bn, x, cotangent):
    """Jitted train-mode forward, input / scale / bias gradients and updated statistics."""
    graphdef, params, stats = nnx.split(bn, nnx.Param, nnx.BatchStat)

    @jax.jit
    def run(params, stats, x):
        # `stats` enters as an argument so the statistics updates belong to the gradient's
        # trace (as in train/steps.py).
        def loss(params, x, stats):
            module = nnx.merge(graphdef, params, stats, copy=True)
            y = normalize(module, x)
            return jnp.sum(jnp.sin(y) * cotangent), (y, nnx.state(module, nnx.BatchStat))

        (_, (y, new_stats)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
            params, x, stats
        )
        return y, grads, new_stats

    return run(params, stats, x)


@pytest.mark.parametrize("shape", [(4, 7, 5, 6), (3, 10)])
def test_train_mode_matches_flax_values_gradients_and_statistics(shape):
    # An offset mean: the two-pass variance matters.
    x = 3.0 + jax.random.normal(jax.random.key(0), shape)
    cotangent = jax.random.normal(jax.random.key(1), shape)
    got = _run(batch_norm, _bn(shape[-1]), x, cotangent)
    want = _run(lambda bn, x: bn(x), _bn(shape[-1]), x, cotangent)
    y, (d_params, d_x), stats = got
    want_y, (want_params, want_x), want_stats = want
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(stats, want_stats, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(d_params, want_params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d_x, want_x, rtol=1e-4, atol=1e-5)
    # The statistics moved: the update is really there.
    assert not np.allclose(stats["mean"], _bn(shape[-1]).mean[...])


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4])
def test_one_pass_statistics_hold_far_from_zero(offset):
    """Both moments come from one pass about a pilot value: a mean 10^4 standard deviations
    from zero still gives float32's variance (a plain E[x²] - E[x]² would be off by ~10)."""
    x = offset + jax.random.normal(jax.random.key(4), (8, 16, 16, 32))
    bn = _bn(32)
    bn.momentum = 0.0  # the running statistics become the batch's
    nnx.jit(batch_norm)(bn, x)
    x64 = np.asarray(x, np.float64).reshape(-1, 32)
    np.testing.assert_allclose(bn.var[...], x64.var(0), rtol=1e-5)
    np.testing.assert_allclose(bn.mean[...], x64.mean(0), rtol=1e-6, atol=1e-6)


def test_bfloat16_input_gradient_in_bfloat16_and_eval_mode_is_flax():
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 4)).astype(jnp.bfloat16)
    cotangent = jax.random.normal(jax.random.key(3), x.shape)
    y, (_, d_x), _ = _run(batch_norm, _bn(4), x, cotangent)
    assert d_x.dtype == jnp.bfloat16 and y.dtype == jnp.float32  # as flax: promoted output
    want_y, (_, want_x), _ = _run(lambda bn, x: bn(x), _bn(4), x, cotangent)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_x.astype(jnp.float32), want_x.astype(jnp.float32),
                               rtol=2e-2, atol=2e-2)  # fmt: skip
    bn = _bn(4)
    bn.eval()
    chex.assert_trees_all_equal(batch_norm(bn, x), bn(x))
