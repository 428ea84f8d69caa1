"""A 1x1 conv as a matrix product equals `nnx.Conv`'s convolution, with gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select.backbones.pointwise import is_pointwise, pointwise_conv


def _conv(use_bias: bool, **kwargs) -> nnx.Conv:
    conv = nnx.Conv(5, 7, (1, 1), use_bias=use_bias, rngs=nnx.Rngs(0), **kwargs)
    if use_bias:  # flax starts biases at zero, which would hide a missing bias
        conv.bias[...] = jax.random.normal(jax.random.key(1), (7,))
    return conv


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 4, 5), (3, 2, 1, 1, 5), (1, 1, 5)])
def test_values_and_gradients_match_the_convolution(use_bias, shape):
    """Forward and both gradients (inputs and parameters) through jit, against `conv(x)`."""
    conv = _conv(use_bias)
    x = jax.random.normal(jax.random.key(2), shape)
    cotangent = jax.random.normal(jax.random.key(3), shape[:-1] + (7,))
    graphdef, params = nnx.split(conv)

    def run(apply):
        @jax.jit
        def f(params, x):
            def loss(params, x):
                y = apply(nnx.merge(graphdef, params), x)
                return jnp.sum(y * cotangent), y

            return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

        (_, y), grads = f(params, x)
        return y, grads

    y_conv, grads_conv = run(lambda c, x: c(x))
    y_matmul, grads_matmul = run(pointwise_conv)
    chex.assert_equal_shape([y_matmul, y_conv])
    np.testing.assert_allclose(y_matmul, y_conv, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads_matmul, grads_conv, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(grads_matmul[0]["kernel"][...]))) > 0.1  # not trivially equal


def test_dtypes_follow_the_conv():
    """bfloat16 inputs with float32 parameters promote as `nnx.Conv` does; `dtype` wins."""
    x = jax.random.normal(jax.random.key(4), (2, 3, 3, 5)).astype(jnp.bfloat16)
    for conv in (_conv(True), _conv(True, dtype=jnp.bfloat16)):
        y = jax.jit(pointwise_conv)(conv, x)
        want = jax.jit(lambda c, x: c(x))(conv, x)
        assert y.dtype == want.dtype
        tolerance = 1e-5 if y.dtype == jnp.float32 else 0.05
        np.testing.assert_allclose(
            y.astype(jnp.float32), want.astype(jnp.float32), rtol=tolerance, atol=tolerance
        )


def test_only_pointwise_convs_are_accepted():
    rngs = nnx.Rngs(0)
    assert is_pointwise(nnx.Conv(4, 4, (1, 1), rngs=rngs))
    assert is_pointwise(nnx.Conv(4, 4, (1, 1), padding=((0, 0), (0, 0)), rngs=rngs))
    assert not is_pointwise(nnx.Conv(4, 4, (3, 3), rngs=rngs))
    assert not is_pointwise(nnx.Conv(4, 4, (1, 1), strides=2, rngs=rngs))
    assert not is_pointwise(nnx.Conv(4, 4, (1, 1), feature_group_count=2, rngs=rngs))
    assert not is_pointwise(nnx.Conv(4, 4, (1, 1), padding=((1, 1), (1, 1)), rngs=rngs))
    with pytest.raises(ValueError, match="1x1, stride-1"):
        pointwise_conv(nnx.Conv(4, 4, (3, 3), rngs=rngs), jnp.zeros((1, 3, 3, 4)))
