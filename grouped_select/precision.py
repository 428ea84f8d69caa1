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
