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
    """`x` kept stored in its own dtype between kernels, and (`gradient`) its gradient too.

    XLA treats a round trip float32 -> bfloat16 -> float32 as removable ("excess precision",
    on by default): when a bfloat16 value feeds two kernels that compute in float32, XLA may
    write the unrounded float32 value once for both to read, twice the bytes. An optimization
    barrier keeps the rounding where the program has it, and so the bfloat16 tensor. Use it
    where a low-precision activation read by several float32 kernels crosses a kernel
    boundary. Values never change; differentiable in both modes. No-op for 32- and 64-bit and
    non-float arrays.

    Args:
      x: any array.
      gradient: also put a barrier on the cotangent in the backward pass (where the gradient
        is written in low precision and read by several float32 kernels); False leaves the
        backward pass to XLA.

    Returns:
      `x` (same values, dtype and shape).
    """
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits >= 32:
        return x
    # jax differentiates the barrier into a barrier on the tangent and on the cotangent.
    return jax.lax.optimization_barrier(x) if gradient else _forward_barrier(x)


@jax.custom_jvp
def _forward_barrier(x):
    return jax.lax.optimization_barrier(x)


@_forward_barrier.defjvp
def _forward_barrier_jvp(primals, tangents):
    (x,), (tangent,) = primals, tangents
    return _forward_barrier(x), tangent
