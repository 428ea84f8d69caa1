"""Depthwise convolution as a sum of shifted, per-channel-scaled slices.

XLA's CPU backend lowers a grouped convolution with one channel per group
(`feature_group_count = C`) to a slow generic loop: on a 2-core CPU a 3x3 depthwise conv over
[4, 112, 112, 16] takes ~40 ms forward, and its gradient 40–300 ms at MobileNetV3's shapes.
Written as k² strided slices of the padded input times the kernel's per-channel taps, the
same computation is one fused elementwise loop: 10–90x faster there
(`benchmarks/depthwise.py`). Its gradient is written by hand (`jax.custom_vjp`): autodiff
would keep all k² shifted slices of the input for the backward pass (~450 MB by count at
MobileNetV3's shapes, batch 4, 224²); the hand-written backward keeps only the input and
recomputes each slice where it is used.

On an H200 (batch 64, 224², bfloat16 step) the shifted sum is also the faster one: the paper's
training step 46.7 -> 33.0 ms (`benchmarks/profile_step.py`, 2026-11-28); XLA's grouped
convolution and its gradients are the slow part there too. So "auto" picks the shifted sum on
CPU and GPU and keeps the convolution op on TPU, whose compiler has depthwise kernels.

Low-precision inputs (bfloat16, float16) are read and written in their dtype but every sum
(over taps, and the kernel gradient's sum over the batch) accumulates in float32, as a
convolution kernel does.
"""

import functools
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
        CPU and GPU, conv on TPU).

    Returns:
      [B, H', W', C] in the promoted dtype of `x` and `kernel`.
    """
    k = kernel.shape[0]
    channels = x.shape[-1]
    kernel = kernel.reshape(k, k, channels)
    dtype = jnp.promote_types(x.dtype, kernel.dtype)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if method == "auto":
        method = "conv" if jax.default_backend() == "tpu" else "shifted_sum"
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
    return _shifted_sum(x, kernel, stride, dilation, padding)


def _accumulator(dtype) -> jnp.dtype:
    """float32 for low-precision floats (bfloat16, float16), else `dtype` itself."""
    return jnp.promote_types(dtype, jnp.float32) if jnp.finfo(dtype).bits < 32 else dtype


def _output_size(size: int, kernel: int, stride: int, dilation: int, padding: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _taps(padded, kernel_size, stride, dilation, out_h, out_w):
    """Yields (i, j, [B, out_h, out_w, C] slice of `padded` that tap (i, j) multiplies)."""
    batch, _, _, channels = padded.shape
    for i in range(kernel_size):
        for j in range(kernel_size):
            start = (0, i * dilation, j * dilation, 0)
            limit = (
                batch,
                i * dilation + (out_h - 1) * stride + 1,
                j * dilation + (out_w - 1) * stride + 1,
                channels,
            )
            yield i, j, lax.slice(padded, start, limit, (1, stride, stride, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _shifted_sum(x, kernel, stride, dilation, padding):
    """[B, H, W, C] x [k, k, C] -> [B, H', W', C]: the sum over taps of slice * tap weights."""
    k = kernel.shape[0]
    _, height, width, _ = x.shape
    out_h = _output_size(height, k, stride, dilation, padding)
    out_w = _output_size(width, k, stride, dilation, padding)
    acc = _accumulator(x.dtype)
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = None
    for i, j, tap in _taps(padded, k, stride, dilation, out_h, out_w):
        term = tap.astype(acc) * kernel[i, j].astype(acc)
        out = term if out is None else out + term
    return out.astype(x.dtype)


def _shifted_sum_forward(x, kernel, stride, dilation, padding):
    return _shifted_sum(x, kernel, stride, dilation, padding), (x, kernel)


def _shifted_sum_backward(stride, dilation, padding, residuals, grad):
    """Input and kernel gradients from the input alone (no saved slices).

    d kernel[i, j] = sum over (b, h, w) of tap (i, j)'s input slice times `grad`.
    d x: `grad` spread back to the strided positions (interior padding stride - 1), then
    correlated with the flipped kernel: one more shifted sum, cropped to the unpadded input.
    """
    x, kernel = residuals
    k = kernel.shape[0]
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = grad.shape
    acc = _accumulator(x.dtype)
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    d_kernel = _kernel_gradient(padded, grad, k, stride, dilation).reshape(k, k, channels)
    span = dilation * (k - 1)
    padded_h, padded_w = height + 2 * padding, width + 2 * padding
    spread = lax.pad(
        grad,
        jnp.zeros((), grad.dtype),
        (
            (0, 0, 0),
            (span, padded_h - (out_h - 1) * stride - 1, stride - 1),
            (span, padded_w - (out_w - 1) * stride - 1, stride - 1),
            (0, 0, 0),
        ),
    )
    d_padded = None
    for i in range(k):
        for j in range(k):
            top, left = span - i * dilation, span - j * dilation
            window = lax.slice(
                spread, (0, top, left, 0), (batch, top + padded_h, left + padded_w, channels)
            )
            term = window.astype(acc) * kernel[i, j].astype(acc)
            d_padded = term if d_padded is None else d_padded + term
    d_x = d_padded[:, padding : padding + height, padding : padding + width, :]
    # Materialised on its own: fused into the next layer's backward reductions (the squeeze-
    # excitation's per-image sums), the 25-tap dilated sum made one H200 kernel 811 µs (of a
    # 33 ms step; reading and writing that 48 MB tensor once takes ~20 µs at its bandwidth).
    d_x = lax.optimization_barrier(d_x.astype(x.dtype))
    return d_x, d_kernel.astype(kernel.dtype)


_shifted_sum.defvjp(_shifted_sum_forward, _shifted_sum_backward)


def _kernel_gradient(
    padded: jax.Array, grad: jax.Array, kernel_size: int, stride: int, dilation: int
) -> jax.Array:
    """[k², C] in the accumulation dtype: for each tap, the sum over (b, h, w) of its input
    slice times `grad`.

    On the CPU the sums run one image at a time (`lax.map`). XLA's CPU backend writes every
    tap's input slice out before reducing it (the reduction, a YNNPACK kernel, does not fuse
    slices): k² copies of the layer's input, 75 MB for the last dilated stage at batch 4,
    which then do not stay in cache. One image's slices are a quarter of that. For that layer
    alone 23-27 -> 9-10 ms; the selector backbone's forward + backward at batch 4, 224²,
    264 -> 231 ms, and the paper's training step 755 -> 645 ms (each interleaved in one
    process, median of 10 rounds). Tried and slower in the whole backbone: all images with
    the gradient zero-padded into place instead of the input sliced (no copies for stride 1;
    1.06x), and images split further into row blocks.

    Args:
      padded: [B, H + 2p, W + 2p, C] zero-padded input.
      grad: [B, H', W', C] output gradient.
      kernel_size, stride, dilation: the convolution's.
    """
    acc = _accumulator(padded.dtype)
    _, out_h, out_w, _ = grad.shape

    def sums(padded, grad, reduce):
        taps = _taps(padded, kernel_size, stride, dilation, out_h, out_w)
        return reduce([tap.astype(acc) for _, _, tap in taps], grad.astype(acc))

    if jax.default_backend() != "cpu":
        return sums(padded, grad, _kernel_gradient_stacked)
    per_image = lax.map(
        lambda image: sums(image[0][None], image[1][None], _kernel_gradient_per_tap),
        (padded, grad),
    )
    return jnp.sum(per_image, axis=0)


def _kernel_gradient_stacked(taps: list[jax.Array], grad: jax.Array) -> jax.Array:
    """All k² tap products stacked and reduced at once (GPU, TPU).

    XLA's GPU backend makes one two-stage column reduction of the stack per layer, reading the
    input and the gradient once ([k², B, H', W', C], channels minor: coalesced). Summed tap
    by tap, it fused at most two of the k² reductions per kernel, each re-reading both
    tensors: in the paper's step compiled for an H200 (benchmarks/compile_census.py) 3,217 ->
    2,916 kernels, 35.7 -> 30.5 GB moved.
    """
    return jnp.sum(jnp.stack([tap * grad for tap in taps]), axis=(1, 2, 3))


def _kernel_gradient_per_tap(taps: list[jax.Array], grad: jax.Array) -> jax.Array:
    """Each tap's product summed on its own (CPU, one image at a time).

    XLA's CPU backend writes the stacked products out before reducing them ([25, 4, 14, 14,
    960] float32 for the last dilated stage at batch 4: 75 MB, ~12 ms per layer on the 2-core
    CPU of `benchmarks/RESULTS.md`); tap by tap, no stack of products is written. The
    selector backbone's forward + backward at batch 4, 224²: 309 -> 277 ms (interleaved in
    one process, median of 12 rounds).

    Each sum over positions is a product with a row of ones ([1, positions] x [positions,
    C]): YNNPACK's matrix-vector product sums faster than its reduction over the leading
    axes. The fifteen depthwise layers' forward + backward at batch 4, 224², float32:
    0.82-0.87x the time of `jnp.sum` per tap (interleaved, median of 9 rounds; 0.62-0.95x
    per layer, except 1.03x for the 16-channel first one).
    """
    channels = grad.shape[-1]
    ones = jnp.ones((1, grad.size // channels), grad.dtype)
    return jnp.concatenate([ones @ (tap * grad).reshape(-1, channels) for tap in taps])
