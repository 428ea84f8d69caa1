"""Train-mode BatchNorm with a hand-written gradient: two passes backward instead of ~8 kernels.

`nnx.BatchNorm` differentiated by autodiff becomes a chain of small reductions and
elementwise passes: in the compiled H200 training step (batch 64, 224²) the MobileNetV3
selector's 47 BatchNorm + activation layers were 8 of its 15 ms, in 370 kernels backward and
306 forward (`benchmarks/profile_step.py`, 2026-11-28). The textbook gradient needs
one reduction pass (Σ dy and Σ dy·x̂ together) and one elementwise pass, with the activation's
gradient fused into both.

`batch_norm(bn, x)` computes what `bn(x)` computes (flax's `use_fast_variance=False`
statistics to float32 rounding; running statistics updated with the same momentum rule); in
eval mode it simply calls `bn`. The forward pass reads x once for both moments (shifted by a
pilot value so that E[(x-p)²] - E[x-p]² does not cancel) instead of once per moment: in the
H200 training step compiled here (cuDNN attention + remat) 2,498 -> 2,455 kernels, 17.1 ->
16.9 ms estimated (`benchmarks/compile_census.py`).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


def batch_norm(bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
    """`bn(x)` over all axes but the last, with `batch_norm_train`'s gradient in train mode.

    Args:
      bn: an `nnx.BatchNorm` over the last axis (its scale, bias, epsilon, momentum and
        running statistics are used; in train mode the statistics are updated).
      x: [..., C] activations.

    Returns:
      [..., C] normalised activations in the promoted dtype of x, the statistics (float32)
      and the parameters, as `bn(x)` returns them.
    """
    if bn.use_running_average:
        return bn(x)
    y, mean, var = batch_norm_train(x, bn.scale[...], bn.bias[...], bn.epsilon)
    mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
    bn.mean[...] = bn.momentum * bn.mean[...] + (1 - bn.momentum) * mean
    bn.var[...] = bn.momentum * bn.var[...] + (1 - bn.momentum) * var
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BatchNorm with the batch's statistics, over all axes but the last.

    Args:
      x: [..., C] activations (statistics are computed in float32 whatever their dtype).
      scale: [C] multiplier.
      bias: [C] offset.
      epsilon: added to the variance.

    Returns:
      y: [..., C] `(x - mean) * rsqrt(var + epsilon) * scale + bias`, in the promoted dtype of
        x, float32 and the parameters (as flax's `_normalize`).
      mean: [C] float32 batch mean.
      var: [C] float32 biased batch variance, mean((x - mean)²). Neither statistic carries a
        gradient (callers use them for the running averages).
    """
    y, mean, var, _ = _forward_pass(x, scale, bias, epsilon)
    return y, mean, var


def _forward_pass(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    # Both moments in one pass over x, about a pilot value (the mean of the first 16
    # positions) so that the one-pass variance does not cancel when |mean| >> std: its
    # rounding grows with 1 + (mean - pilot)² / var.
    pilot = jnp.mean(xf.reshape(-1, xf.shape[-1])[:16], axis=0)
    shifted_mean = jnp.mean(xf - pilot, axis=axes)
    var = jnp.maximum(jnp.mean(jnp.square(xf - pilot), axis=axes) - shifted_mean**2, 0.0)
    mean = pilot + shifted_mean
    rstd = lax.rsqrt(var + epsilon)
    dtype = jnp.result_type(xf, scale, bias)
    # The order of flax's `_normalize`: (x - mean) * (rsqrt(var + eps) * scale) + bias.
    y = ((xf - mean) * (rstd * scale) + bias).astype(dtype)
    return y, mean, var, rstd


def _forward(x, scale, bias, epsilon):
    y, mean, var, rstd = _forward_pass(x, scale, bias, epsilon)
    return (y, mean, var), (x, scale, bias, mean, rstd)


def _backward(epsilon, residuals, cotangents):
    """dx = scale·rstd·(dy - mean(dy) - x̂·mean(dy·x̂)); d scale = Σ dy·x̂; d bias = Σ dy."""
    del epsilon
    x, scale, bias, mean, rstd = residuals
    dy = cotangents[0].astype(jnp.float32)  # mean and var carry no gradient
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    x_hat = (x.astype(jnp.float32) - mean) * rstd
    d_bias = jnp.sum(dy, axis=axes)
    d_scale = jnp.sum(dy * x_hat, axis=axes)
    d_x = (scale * rstd) * (dy - d_bias / count - x_hat * (d_scale / count))
    return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


batch_norm_train.defvjp(_forward, _backward)
