"""Region sums as a Pallas (Triton) GPU kernel: one pass over the pixels, no atomics.

`regions.region_sums` scatters every pixel into its region with `segment_sum`, whose GPU
lowering adds with atomics; neighbouring pixels share a region, so the atomics collide (on an
H200 at B = 64, 224², C = 4, K = 100: 365 µs, where reading the 64 MB once takes ~15 µs).

Here each program sums a contiguous run of one image's pixels into a private [16, K_pad]
block on the matrix units: one_hot(ids)ᵀ times the features, 128 pixels at a time. The one-hot
is exact in bfloat16; float32 features are split into three bfloat16 parts (hi + mid + lo
carry all 24 bits of the significand), so three bfloat16 products with float32 accumulation
give float32 sums. XLA then adds each image's few partial blocks.

GPU only (`interpret=True` runs the same kernel anywhere, slowly: how the tests check it).
`benchmarks/pooling.py` times it beside the other implementations: on an H200 (2026-11-28,
B = 64, 224², C = 4, K = 100, means with sizes) 237 µs in float32 and 179 µs with bfloat16
features, against segment_sum's 366 µs; still latency-bound (one configuration tried).
XLA's SPMD partitioner cannot split the kernel's custom call over devices: in a step sharded
over several GPUs it would gather the batch on each; use it on one GPU (or in `shard_map`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

LANES = 16  # channels padded to the matrix units' smallest width


class KernelConfig(NamedTuple):
    """How the kernel divides the work (the results do not depend on it).

    Attributes:
      chunk: pixels per matrix product (a [chunk, K_pad] one-hot in registers); power of 2.
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages of the pixel loop (None: Triton's).
      programs_per_batch: about this many programs in all (B x splits per image).
    """

    chunk: int = 128
    num_warps: int = 4
    num_stages: int | None = None
    programs_per_batch: int = 512  # enough to fill an H100 / H200 (132 SMs)


DEFAULT_CONFIG = KernelConfig()


def _kernel(ids_ref, features_ref, out_ref, *, chunk, chunks, channels, parts, k_pad, count):
    """Program (b, s): pixels [s * chunks * chunk, (s + 1) * chunks * chunk) of image b.

    With `count`, lane `channels` holds 1 for every pixel: its sums are the region sizes.
    """
    b, s = pl.program_id(0), pl.program_id(1)
    base = s * chunks * chunk
    regions = jnp.arange(k_pad, dtype=jnp.int32)[None, :]
    lanes = jnp.arange(LANES, dtype=jnp.int32)[None, :]

    def body(i, acc):
        pixels = pl.ds(base + i * chunk, chunk)
        one_hot = (ids_ref[b, pixels][:, None] == regions).astype(jnp.bfloat16)
        values = jnp.zeros((chunk, LANES), jnp.float32)
        for c in range(channels):  # channel c into lane c; lanes >= channels stay 0
            column = features_ref[b, pixels, c].astype(jnp.float32)
            values = jnp.where(lanes == c, column[:, None], values)
        if count:
            values = jnp.where(lanes == channels, 1.0, values)
        for _ in range(parts):  # hi, then mid, then lo: each the rest's bfloat16 rounding
            part = values.astype(jnp.bfloat16)
            values = values - part.astype(jnp.float32)
            acc += lax.dot_general(
                part, one_hot, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
            )
        return acc

    out_ref[b, s] = lax.fori_loop(0, chunks, body, jnp.zeros((LANES, k_pad), jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def region_sums_pallas(
    features: jax.Array,
    region_ids: jax.Array,
    num_regions: int,
    interpret: bool = False,
    with_sizes: bool = False,
    config: KernelConfig = DEFAULT_CONFIG,
) -> jax.Array:
    """Per-region feature sums, as `regions.region_sums` computes them.

    Differentiable in `features`: the gradient gives every pixel its region's cotangent.

    Args:
      features: [B, H, W, C] per-pixel features, C <= 16; float32 (summed to float32
        precision) or bfloat16.
      region_ids: [B, H, W] integer ids in [0, num_regions); other ids add nowhere.
      num_regions: static region count K.
      interpret: run the kernel in Pallas' interpreter (any backend; for tests).
      with_sizes: also count each region's pixels, in the same pass.
      config: how the work is divided (`KernelConfig`; `benchmarks/pooling.py` tries some).

    Returns:
      [B, K, C] float32 sums; with `with_sizes`, [B, K, C + 1] whose last channel is
      `regions.region_sizes` (C <= 15 then).
    """
    batch, height, width, channels = features.shape
    if channels + with_sizes > LANES:
        raise ValueError(
            f"region_sums_pallas takes at most {LANES - with_sizes} channels"
            f"{' with sizes' if with_sizes else ''}, got {channels}."
        )
    if region_ids.shape != (batch, height, width):
        raise ValueError(
            f"region_ids shape {region_ids.shape} does not match features {features.shape}."
        )
    k_pad = max(LANES, pl.next_power_of_2(num_regions))
    pixels = height * width
    chunk = config.chunk
    splits = max(1, config.programs_per_batch // batch)
    chunks = -(-pixels // (chunk * splits))  # per program
    padded = chunks * chunk * splits
    ids = region_ids.reshape(batch, pixels).astype(jnp.int32)
    values = features.reshape(batch, pixels, channels)
    if padded != pixels:  # padding pixels get id -1: they add to no region
        ids = jnp.pad(ids, ((0, 0), (0, padded - pixels)), constant_values=-1)
        values = jnp.pad(values, ((0, 0), (0, padded - pixels), (0, 0)))
    parts = 1 if features.dtype == jnp.bfloat16 else 3
    partial = pl.pallas_call(
        functools.partial(
            _kernel,
            chunk=chunk,
            chunks=chunks,
            channels=channels,
            parts=parts,
            k_pad=k_pad,
            count=with_sizes,
        ),
        out_shape=jax.ShapeDtypeStruct((batch, splits, LANES, k_pad), jnp.float32),
        grid=(batch, splits),
        # Triton, named: without compiler parameters recent JAX lowers GPU kernels with
        # Mosaic GPU, whose whole-array blocks would not fit in shared memory.
        compiler_params=pltriton.CompilerParams(
            num_warps=config.num_warps, num_stages=config.num_stages
        ),
        interpret=interpret,
    )(ids, values)
    return jnp.swapaxes(partial.sum(axis=1)[:, : channels + with_sizes, :num_regions], 1, 2)


def _forward(features, region_ids, num_regions, interpret, with_sizes, config):
    sums = region_sums_pallas(features, region_ids, num_regions, interpret, with_sizes, config)
    return sums, (region_ids, jnp.zeros((0,), features.dtype))  # the dtype, as an array


def _backward(num_regions, interpret, with_sizes, config, residuals, cotangent):
    """d features [B, H, W, C] = the cotangent [B, K, C] of each pixel's region (the sizes
    do not depend on the features)."""
    del config
    region_ids, like = residuals
    if with_sizes:
        cotangent = cotangent[..., :-1]
    batch_index = jnp.arange(region_ids.shape[0])[:, None, None]
    d_features = cotangent.at[batch_index, region_ids].get(mode="fill", fill_value=0)
    return d_features.astype(like.dtype), None


region_sums_pallas.defvjp(_forward, _backward)
