"""Mixed precision: compute in bfloat16 while parameters and optimizer state stay float32."""

import jax
import jax.numpy as jnp


def cast_floating(tree, dtype: jnp.dtype):
    """Casts every floating-point leaf of a pytree to `dtype`; other leaves are kept.

    Use inside a loss function on the float32 parameters: gradients flow back through the
    cast to float32. Region pooling, softmax and the losses accumulate in float32 anyway.

    Args:
      tree: any pytree of arrays (e.g. `nnx.state(model, nnx.Param)`).
      dtype: target dtype, e.g. `jnp.bfloat16`.

    Returns:
      The pytree with floating leaves cast.
    """

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def materialized(x: jax.Array, *, gradient: bool = True) -> jax.Array:
    """`x` as stored in its own dtype, and its gradient as stored in the gradient's dtype.

    XLA treats a round trip float32 -> bfloat16 -> float32 as removable ("excess precision",
    on by default): when a bfloat16 layer's output feeds a layer that computes in float32, the
    tensor between the two kernels is then written and read in float32, twice the bytes.
    An optimization barrier keeps the rounding where the program has it, forward and (on the
    cotangent) backward. Use it where a low-precision activation crosses a kernel boundary
    into float32 arithmetic. No-op for 32- and 64-bit arrays.

    Args:
      x: any array.

    Returns:
      `x` (same values, dtype and shape).
    """
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits >= 32:
        return x
    return _barrier(x) if gradient else _forward_barrier(x)


@jax.custom_vjp
def _forward_barrier(x):
    return jax.lax.optimization_barrier(x)


_forward_barrier.defvjp(lambda x: (_forward_barrier(x), None), lambda _, grad: (grad,))


@jax.custom_vjp
def _barrier(x):
    return jax.lax.optimization_barrier(x)


def _barrier_forward(x):
    return _barrier(x), None


def _barrier_backward(_, grad):
    return (jax.lax.optimization_barrier(grad),)


_barrier.defvjp(_barrier_forward, _barrier_backward)
