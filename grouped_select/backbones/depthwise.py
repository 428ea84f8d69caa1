"""Depthwise convolution as a sum of shifted, per-channel-scaled slices.

XLA's CPU backend lowers a grouped convolution with one channel per group
(`feature_group_count = C`) to a slow generic loop: on a 2-core CPU a 3x3 depthwise conv over
[4, 112, 112, 16] takes ~40 ms forward, and its gradient 40–300 ms at MobileNetV3's shapes.
Written as k² strided slices of the padded input times the kernel's per-channel taps, the
same computation is one fused elementwise loop, forward and backward: 10–90x faster there
(`benchmarks/depthwise.py`). Accelerators keep the convolution op (cuDNN / the TPU compiler
have depthwise kernels), so `depthwise_conv(..., method="auto")` picks by backend.
"""

from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Method = Literal["auto", "conv", "shifted_sum"]


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    dilation: int = 1,
    padding: int = 0,
    method: Method = "auto",
) -> jax.Array:
    """Depthwise 2-D convolution with symmetric zero padding (cross-correlation, as torch).

    Args:
      x: [B, H, W, C] input.
      kernel: [k, k, 1, C] (flax `nnx.Conv` layout with feature_group_count = C) or [k, k, C].
      stride: spatial stride.
      dilation: kernel dilation.
      padding: zeros added on every side.
      method: "conv" (XLA's grouped convolution), "shifted_sum", or "auto" (shifted_sum on
        CPU, conv elsewhere).

    Returns:
      [B, H', W', C] in the promoted dtype of `x` and `kernel`.
    """
    k = kernel.shape[0]
    channels = x.shape[-1]
    kernel = kernel.reshape(k, k, channels)
    dtype = jnp.promote_types(x.dtype, kernel.dtype)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if method == "auto":
        method = "shifted_sum" if jax.default_backend() == "cpu" else "conv"
    if method == "conv":
        return lax.conv_general_dilated(
            x,
            kernel.reshape(k, k, 1, channels),
            (stride, stride),
            ((padding, padding), (padding, padding)),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )
    if method != "shifted_sum":
        raise ValueError(f"method must be 'auto', 'conv' or 'shifted_sum', got {method!r}.")
    batch, height, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    span = dilation * (k - 1)
    out_h = (height + 2 * padding - span - 1) // stride + 1
    out_w = (width + 2 * padding - span - 1) // stride + 1
    out = None
    for i in range(k):
        for j in range(k):
            start = (0, i * dilation, j * dilation, 0)
            limit = (
                batch,
                i * dilation + (out_h - 1) * stride + 1,
                j * dilation + (out_w - 1) * stride + 1,
                channels,
            )
            tap = lax.slice(padded, start, limit, (1, stride, stride, 1)) * kernel[i, j]
            out = tap if out is None else out + tap
    return out
