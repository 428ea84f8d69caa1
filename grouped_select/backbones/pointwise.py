"""1x1 convolutions as matrix products over the channel axis.

A 1x1, stride-1 convolution is a matrix product of every pixel's channels with the kernel.
Written as `lax.conv_general_dilated`, XLA's CPU backend computes its kernel gradient as a
convolution whose window is the whole image (for MobileNetV3's 16 -> 64 expansion at 112²
and batch 4: a 112 x 112 window over transposed copies of both operands), at ~10 GFLOP/s on
the 2-core CPU of `benchmarks/RESULTS.md`. As a product over rows (`rows_matmul`: batch x
height x width flattened), the kernel gradient is one matrix product contracting one axis,
which the same backend runs at 100-200 GFLOP/s, with no transposes.

`pointwise_conv(conv, x)` computes what `conv(x)` computes, from the same `nnx.Conv` and its
parameters (so checkpoints and converted weights do not change).
"""

import jax
from flax import nnx

from grouped_select.backbones.matmul import MatmulPrecision, matmul, rows_matmul


def is_pointwise(conv: nnx.Conv) -> bool:
    """Whether `conv` is a 1x1, stride-1, ungrouped, unmasked conv (a matmul per pixel)."""
    strides = conv.strides if conv.strides is not None else 1
    strides = (strides,) if isinstance(strides, int) else tuple(strides)
    return (
        all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in strides)
        and conv.feature_group_count == 1
        and conv.mask is None
        and _no_padding(conv.padding)
    )


def _no_padding(padding) -> bool:
    if isinstance(padding, str):
        return padding.upper() in ("VALID", "SAME")  # a 1x1 window pads nothing either way
    if isinstance(padding, int):
        return padding == 0
    return all((p == 0) if isinstance(p, int) else all(q == 0 for q in p) for p in padding)


def pointwise_conv(
    conv: nnx.Conv, x: jax.Array, matmul_precision: MatmulPrecision = "default"
) -> jax.Array:
    """`conv(x)` for a 1x1 conv (`is_pointwise`) as one matrix product.

    Args:
      conv: an `nnx.Conv` with a 1x1 kernel [1, 1, C_in, C_out], stride 1, no groups.
      x: [..., H, W, C_in] inputs (any leading axes).
      matmul_precision: "default" (the product in the promoted dtype, with `conv`'s precision
        settings) or "bfloat16" (`grouped_select.backbones.matmul.bfloat16_matmul`).

    Returns:
      [..., H, W, C_out] in the dtype `conv(x)` gives (its `dtype`, else the promoted dtype
      of x and the parameters).

    Raises:
      ValueError: `conv` is not a 1x1, stride-1, ungrouped conv.
    """
    if not is_pointwise(conv):
        raise ValueError(
            f"pointwise_conv needs a 1x1, stride-1, ungrouped conv; got kernel "
            f"{conv.kernel_size}, strides {conv.strides}, {conv.feature_group_count} groups."
        )
    kernel = conv.kernel[...]
    bias = conv.bias[...] if conv.bias is not None else None
    x, kernel, bias = conv.promote_dtype((x, kernel, bias), dtype=conv.dtype)
    if matmul_precision != "default":
        y = matmul(x, kernel.reshape(kernel.shape[-2:]), matmul_precision)
        return y if bias is None else y + bias
    y = rows_matmul(
        x,
        kernel.reshape(kernel.shape[-2:]),
        precision=conv.precision,
        preferred_element_type=conv.preferred_element_type,
    )
    return y if bias is None else y + bias
