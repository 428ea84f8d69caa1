"""The shifted-sum depthwise convolution equals XLA's grouped convolution, with gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select.backbones import depthwise
from grouped_select.backbones.depthwise import depthwise_conv

# (kernel, stride, dilation) as in MobileNetV3-Large (dilated), padding (k - 1) // 2 * d.
CASES = [(3, 1, 1), (3, 2, 1), (5, 2, 1), (5, 1, 2), (3, 1, 2)]


# Odd sizes leave no input row unused by a stride of 2; even ones leave the last one unused.
@pytest.mark.parametrize("shape", [(2, 13, 11, 6), (2, 12, 10, 6)])
@pytest.mark.parametrize("k,stride,dilation", CASES)
def test_values_and_gradients_match_the_grouped_convolution(k, stride, dilation, shape):
    """The hand-written backward of the shifted sum against autodiff of the convolution."""
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (k, k, 1, 6))
    pad = (k - 1) // 2 * dilation

    def run(method):
        def f(x, kernel):
            y = depthwise_conv(
                x, kernel, stride=stride, dilation=dilation, padding=pad, method=method
            )
            return jnp.sum(jnp.sin(y)), y

        (_, y), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, kernel)
        return y, grads

    y_conv, grads_conv = run("conv")
    y_shift, grads_shift = run("shifted_sum")
    chex.assert_equal_shape([y_conv, y_shift])
    np.testing.assert_allclose(y_shift, y_conv, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads_shift, grads_conv, rtol=1e-4, atol=1e-4)


def test_bfloat16_and_method_choice():
    x = jax.random.normal(jax.random.key(2), (1, 8, 8, 4)).astype(jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(3), (3, 3, 4))
    y = depthwise_conv(x, kernel.astype(jnp.bfloat16), padding=1, method="shifted_sum")
    assert y.dtype == jnp.bfloat16
    want = depthwise_conv(x.astype(jnp.float32), kernel, padding=1, method="conv")
    np.testing.assert_allclose(y.astype(jnp.float32), want, rtol=0.05, atol=0.1)
    auto = depthwise_conv(x.astype(jnp.float32), kernel, padding=1)
    np.testing.assert_allclose(auto, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="method"):
        depthwise_conv(x, kernel, method="fft")


def test_bfloat16_accumulates_in_float32():
    """bfloat16 in and out, float32 sums: the output and both gradients are the float32
    computation on the same (bfloat16) values, rounded once. Summing 4096 products per kernel
    tap in bfloat16 would be off by far more than that one rounding."""
    x = jax.random.normal(jax.random.key(4), (1, 64, 64, 4)).astype(jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(5), (3, 3, 4)).astype(jnp.bfloat16)
    cotangent = jax.random.normal(jax.random.key(6), (1, 64, 64, 4)).astype(jnp.bfloat16)

    @jax.jit
    def forward_and_grads(x, kernel, cotangent):
        def f(x, kernel):
            return depthwise_conv(x, kernel, padding=1, method="shifted_sum")

        y, vjp = jax.vjp(f, x, kernel)
        return y, vjp(cotangent)

    y, (d_x, d_kernel) = forward_and_grads(x, kernel, cotangent)
    chex.assert_trees_all_equal_dtypes((y, d_x, d_kernel), (x, x, kernel))
    want_y, (want_dx, want_dk) = forward_and_grads(
        *(a.astype(jnp.float32) for a in (x, kernel, cotangent))
    )
    for got, want in ((y, want_y), (d_x, want_dx), (d_kernel, want_dk)):
        # One bfloat16 rounding: relative error <= 2^-9 (plus float32 reassociation).
        np.testing.assert_allclose(
            np.asarray(got, np.float32), want, rtol=2.0**-8, atol=1e-6 * np.abs(want).max()
        )


def test_kernel_gradient_per_tap_equals_stacked():
    """The CPU's tap-by-tap kernel gradient and the GPU's stacked one are the same sums
    (the gradient tests above run the CPU's; this pins the other to it)."""
    keys = jax.random.split(jax.random.key(7), 10)
    taps = [jax.random.normal(key, (2, 5, 6, 3)) for key in keys[:9]]
    grad = jax.random.normal(keys[9], (2, 5, 6, 3))
    per_tap = jax.jit(depthwise._kernel_gradient_per_tap)(taps, grad)
    stacked = jax.jit(depthwise._kernel_gradient_stacked)(taps, grad)
    want = np.stack([np.sum(np.asarray(t) * np.asarray(grad), axis=(0, 1, 2)) for t in taps])
    chex.assert_shape((per_tap, stacked), (9, 3))
    np.testing.assert_allclose(per_tap, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stacked, want, rtol=1e-5, atol=1e-5)
