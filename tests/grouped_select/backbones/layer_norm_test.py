"""LayerNorm with a hand-written gradient: nnx.LayerNorm's values and gradients, less kept."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select.backbones.layer_norm import LayerNorm, layer_norm


def _modules(dim: int, dtype=jnp.float32):
    """(ours, flax's two-pass LayerNorm) with the same random scale and bias in `dtype`."""
    ours = LayerNorm(dim, epsilon=1e-6, rngs=nnx.Rngs(0))
    theirs = nnx.LayerNorm(dim, epsilon=1e-6, use_fast_variance=False, rngs=nnx.Rngs(0))
    keys = jax.random.split(jax.random.key(1), 2)
    params = {
        "scale": (1 + 0.3 * jax.random.normal(keys[0], (dim,))).astype(dtype),
        "bias": (0.2 * jax.random.normal(keys[1], (dim,))).astype(dtype),
    }
    for module in (ours, theirs):
        nnx.update(module, params)
    return ours, theirs


def _input(shape, dtype=jnp.float32):
    # An offset and spread per row, as residual streams have: the variance's two passes matter.
    x = jax.random.normal(jax.random.key(2), shape)
    return (3 + 5 * x * jnp.linspace(0.5, 2.0, shape[-1])).astype(dtype)


@pytest.mark.parametrize(
    "x_dtype, param_dtype",
    [
        (jnp.float32, jnp.float32),
        (jnp.bfloat16, jnp.bfloat16),
        (jnp.bfloat16, jnp.float32),
        (jnp.float16, jnp.float16),
    ],
)
def test_values_equal_flax_layer_norm_bit_for_bit(x_dtype, param_dtype):
    ours, theirs = _modules(48, param_dtype)
    x = _input((2, 7, 48), x_dtype)
    got = nnx.jit(lambda m, x: m(x))(ours, x)
    want = nnx.jit(lambda m, x: m(x))(theirs, x)
    assert got.dtype == want.dtype == jnp.result_type(x_dtype, param_dtype)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_gradients_equal_autodiff_through_flax_layer_norm(dtype, tolerance):
    """d x, d scale and d bias for a random output gradient, over [2, 7, 48] inputs."""
    ours, theirs = _modules(48, dtype)
    x = _input((2, 7, 48), dtype)
    grad = jax.random.normal(jax.random.key(3), x.shape).astype(dtype)

    def gradients(module):
        graphdef, params = nnx.split(module)

        @jax.jit
        def run(params, x):
            _, vjp = jax.vjp(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
            return vjp(grad)

        return run(params, x)

    got, want = gradients(ours), gradients(theirs)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
    chex.assert_trees_all_close(got, want, rtol=tolerance, atol=tolerance)
    d_x = got[1]  # LayerNorm's input gradient sums to zero over each row
    np.testing.assert_allclose(jnp.sum(d_x.astype(jnp.float32), axis=-1), 0.0, atol=10 * tolerance)


def test_second_derivatives_equal_autodiff_through_the_formula():
    """The hand-written backward pass is itself differentiable (grad of grad)."""
    scale, bias = jnp.linspace(0.5, 1.5, 16), jnp.linspace(-1.0, 1.0, 16)
    x = _input((3, 16))

    def by_formula(x, scale, bias):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(variance + 1e-6) * scale + bias

    def curvature(norm):
        def loss(x):
            return jnp.sum(jnp.sin(norm(x, scale, bias)))

        return jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2)))(x)

    got = curvature(lambda x, s, b: layer_norm(x, s, b, 1e-6))
    np.testing.assert_allclose(got, curvature(by_formula), rtol=1e-4, atol=1e-4)


def test_the_gradient_keeps_the_input_and_two_numbers_per_row():
    """What the backward pass keeps: x in its dtype, the mean and 1 / std of each row, and
    the scale; autodiff through flax's LayerNorm keeps three float32 [..., D] tensors."""
    x = _input((4, 9, 32), jnp.bfloat16)

    def kept(module):
        graphdef, params = nnx.split(module)
        vjp = jax.jit(lambda p, x: jax.vjp(lambda p, x: nnx.merge(graphdef, p)(x), p, x)[1])
        return sorted((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(vjp(params, x)))

    ours, theirs = _modules(32, jnp.bfloat16)
    assert kept(ours) == [
        ((4, 9, 1), "float32"),
        ((4, 9, 1), "float32"),
        ((4, 9, 32), "bfloat16"),
        ((32,), "bfloat16"),
    ]
    assert kept(theirs).count(((4, 9, 32), "float32")) == 3


def test_parameters_are_flax_layer_norms():
    """Same parameter names, shapes and initial values: checkpoints and weight conversion
    see no difference."""
    ours = nnx.state(LayerNorm(24, epsilon=1e-12, rngs=nnx.Rngs(0)), nnx.Param)
    theirs = nnx.LayerNorm(24, epsilon=1e-12, use_fast_variance=False, rngs=nnx.Rngs(0))
    chex.assert_trees_all_equal(ours, nnx.state(theirs, nnx.Param))
