"""LayerNorm whose gradient keeps only its input and two statistics per row.

Autodiff through `nnx.LayerNorm` keeps three [..., D] tensors per layer for the backward
pass (x - mean, 2 (x - mean) from the variance's derivative, and the normalised value), each
in float32 whatever the input's dtype. The hand-written gradient (`jax.custom_vjp`) keeps
the input in its own dtype and the per-row mean and 1 / std, and recomputes the normalised
value where the backward pass reads it.

The value is `nnx.LayerNorm(use_fast_variance=False)`'s: statistics in float32 (or the
input's wider type), y = (x - mean) · (rsqrt(var + eps) · scale) + bias, in the promoted
dtype of x, scale and bias. Like the package's other hand-written gradients it has no
forward-mode derivative (`jax.jvp`); reverse mode works to any order (the backward pass is
differentiable).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """Normalises x over its last axis, then scales and shifts it.

    Args:
      x: [..., D].
      scale, bias: [D].
      epsilon: added to the variance.

    Returns:
      [..., D] in the promoted dtype of x, scale and bias.
    """
    dtype = jnp.result_type(x, scale, bias)
    return _layer_norm(x.astype(dtype), scale.astype(dtype), bias.astype(dtype), epsilon)


def _statistics(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """([..., 1] mean, [..., 1] 1 / std) over the last axis, at least in float32."""
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(wide, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(wide - mean), axis=-1, keepdims=True)
    return mean, jax.lax.rsqrt(variance + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, epsilon):
    return _layer_norm_forward(x, scale, bias, epsilon)[0]


def _layer_norm_forward(x, scale, bias, epsilon):
    mean, inv_std = _statistics(x, epsilon)
    # flax's order of operations, so that values match nnx.LayerNorm's bit for bit
    y = ((x - mean) * (inv_std * scale) + bias).astype(x.dtype)
    return y, (x, mean, inv_std, scale)


def _layer_norm_backward(epsilon, residuals, grad):
    """With x̂ = (x - mean) / std and g = grad · scale, per row of D features:
    d x = (g - mean(g) - x̂ · mean(g · x̂)) / std; d scale = Σ grad · x̂; d bias = Σ grad."""
    del epsilon
    x, mean, inv_std, scale = residuals
    wide = mean.dtype
    normalised = (x.astype(wide) - mean) * inv_std
    grad = grad.astype(wide)
    scaled = grad * scale.astype(wide)
    d_x = inv_std * (
        scaled
        - jnp.mean(scaled, axis=-1, keepdims=True)
        - normalised * jnp.mean(scaled * normalised, axis=-1, keepdims=True)
    )
    rows = tuple(range(x.ndim - 1))
    d_scale = jnp.sum(grad * normalised, axis=rows)
    d_bias = jnp.sum(grad, axis=rows)
    return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


_layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nnx.LayerNorm):
    """`nnx.LayerNorm` over the last axis (same parameters: `scale`, `bias` [D]) computed by
    `layer_norm`: same values, a lighter gradient."""

    def __init__(self, num_features: int, *, epsilon: float, rngs: nnx.Rngs):
        super().__init__(num_features, epsilon=epsilon, use_fast_variance=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., D] -> [..., D]."""
        return layer_norm(x, self.scale[...], self.bias[...], self.epsilon)
