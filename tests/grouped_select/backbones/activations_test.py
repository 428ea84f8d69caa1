"""The exact GELU: torch's values, and first and second derivatives in both autodiff modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from grouped_select.backbones.activations import exact_gelu

# Where GELU bends, its tails, and zero.
POINTS = np.concatenate([np.linspace(-9.0, 9.0, 2001), [0.0, -0.5, 1e-4, -1e-4, 30.0, -30.0]])


def _gelu64(x):
    return x * special.ndtr(x)


def _slope64(x):
    return special.ndtr(x) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


def test_values_match_the_normal_cdf_and_jax():
    x = POINTS.astype(np.float32)
    y = jax.jit(exact_gelu)(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, _gelu64(POINTS), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)


def test_float64_values_are_float64_accurate():
    with jax.enable_x64():
        y = jax.jit(exact_gelu)(jnp.asarray(POINTS, jnp.float64))
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, _gelu64(POINTS), rtol=1e-13, atol=1e-15)


def test_gradient_matches_the_analytic_slope_and_jax():
    x = POINTS.astype(np.float32)
    grad = jax.jit(jax.vmap(jax.grad(exact_gelu)))(x)
    np.testing.assert_allclose(grad, _slope64(POINTS), rtol=1e-6, atol=1e-6)
    jax_grad = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(grad, jax_grad, rtol=1e-5, atol=1e-6)


def test_forward_and_reverse_mode_agree():
    x = jnp.asarray(np.linspace(-4.0, 4.0, 64).reshape(8, 8), jnp.float32)
    tangent = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32)
    value, forward = jax.jit(lambda x, t: jax.jvp(exact_gelu, (x,), (t,)))(x, tangent)
    _, pullback = jax.vjp(exact_gelu, x)
    (reverse,) = jax.jit(pullback)(tangent)  # elementwise: the Jacobian is diagonal
    np.testing.assert_array_equal(value, exact_gelu(x))
    np.testing.assert_allclose(forward, reverse, rtol=1e-6)
    expected = _slope64(np.asarray(x, np.float64)) * tangent
    np.testing.assert_allclose(forward, expected, rtol=1e-5, atol=1e-7)


def test_second_derivative():
    # d²/dx² x Φ(x) = φ(x) (2 - x²).
    x = np.linspace(-6.0, 6.0, 241)
    second = jax.jit(jax.vmap(jax.grad(jax.grad(exact_gelu))))(x.astype(np.float32))
    expected = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi) * (2 - x * x)
    np.testing.assert_allclose(second, expected, atol=2e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_rounds_the_float32_results_once(dtype):
    x = jnp.asarray(POINTS, dtype)
    wide = x.astype(jnp.float32)
    y = jax.jit(exact_gelu)(x)
    assert y.dtype == dtype
    # Both jitted: XLA's fused float32 erf differs from the eager one's in the far tail.
    np.testing.assert_array_equal(y, jax.jit(lambda w: exact_gelu(w).astype(dtype))(wide))
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), dtype)
    (grad,) = jax.jit(lambda x, g: jax.vjp(exact_gelu, x)[1](g))(x, cotangent)
    assert grad.dtype == dtype
    slope = jax.jit(jax.vmap(jax.grad(exact_gelu)))(wide)
    expected = (cotangent.astype(jnp.float32) * slope).astype(dtype)
    np.testing.assert_array_equal(grad, expected)
