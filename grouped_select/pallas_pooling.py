"""Region sums as Pallas (Triton) GPU kernels: no atomics, two algorithms.

`regions.region_sums` scatters every pixel into its region with `segment_sum`, whose GPU
lowering adds with atomics; neighbouring pixels share a region, so the atomics collide (on an
H200 at B = 64, 224², C = 4, K = 100: 365 µs, where reading the 64 MB once takes ~15 µs).

**Every pixel** (`KernelConfig.by_runs=False`): each program sums a contiguous range of one
image's pixels into a private [lanes, K_pad] block on the matrix units: featuresᵀ times
one_hot(ids), `chunk` pixels at a time. The one-hot is exact in bfloat16; float32 features are
split into three bfloat16 parts (hi + mid + lo carry all 24 bits of the significand), packed
side by side in the lanes of one bfloat16 product with float32 accumulation (C = 4 with sizes:
13 of 16 lanes), and XLA adds the parts and each image's few partial blocks. On an H200
(2026-11-28, means with sizes, before the parts were packed: one product per part) 237 µs in
float32 and 179 µs with bfloat16 features; building the [chunk, K_pad] one-hot costs ~3
instructions per pixel and region (compare, select, a 2-byte shared-memory store), 128
regions per pixel. Packed, the H200 compile's loop has 32 matrix instructions per 128 pixels
instead of 96 (`benchmarks/kernel_sass.py`).

**By runs** (`by_runs=True`): superpixels are compact, so a row of pixels crosses a region
boundary every ~20 pixels. A first kernel scans `scan_chunk` pixels at a time: running sums
of each channel, and at the last pixel of each run of equal ids (and of each scan chunk) it
appends an entry (the run's id, the running sums there) to its program's list. A second
kernel takes each entry's run sum as the difference from the entry before it (0 after a scan
chunk's start) and adds the entries with the one-hot product above: 12-22x fewer rows than
pixels at 224² (50,176 pixels: 2,240 runs in `benchmarks/pooling.py`'s ids, 3,200-4,200 in
scikit-image's SLIC of its sample images). Compiled for an H200 (`benchmarks/kernel_sass.py`),
the scan's loop issues ~6 warp instructions per pixel (40 registers per thread), the
every-pixel kernel's ~19 (164 registers), the second pass ~23 per entry: ~2.2x fewer in all at
224², not yet timed on a GPU. Correct for any ids; ids without
runs (noise) make up to one entry per pixel, then the two passes cost more than one. Float32
sums are differences of running sums over at most `scan_chunk` pixels (rounded relative to
those, not to the run).

GPU only (`interpret=True` runs the same kernels anywhere, slowly: how the tests check them).
`benchmarks/pooling.py` times both beside the other implementations.
Sharded over devices along the batch (the training step's data axis), each device runs the
kernels on its own images (`partitioning.batch_partitioned`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from grouped_select.partitioning import batch_partitioned

LANES = 16  # the fewest lanes (packed channel parts) a matrix product takes


class KernelConfig(NamedTuple):
    """How the kernels divide the work (the sums do not depend on it, up to rounding).

    Attributes:
      chunk: rows per matrix product (pixels, or run entries with `by_runs`): a [chunk, K_pad]
        one-hot in registers; power of 2.
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages of the pixel loop (None: Triton's).
      programs_per_batch: about this many programs in all (B x splits per image).
      by_runs: sum runs of equal ids first (see the module docstring), in two kernels.
      scan_chunk: with `by_runs`, pixels per step of the running sums; power of 2.
    """

    chunk: int = 128
    num_warps: int = 4
    num_stages: int | None = None
    programs_per_batch: int = 512  # enough to fill an H100 / H200 (132 SMs)
    by_runs: bool = False
    scan_chunk: int = 256


DEFAULT_CONFIG = KernelConfig()


def _packed_parts(columns, *, parts, ones, lanes):
    """[chunk, lanes] bfloat16 matrix-unit operand: lane p * len(columns) + c holds part p of
    column c (hi, mid, lo: each the rest's bfloat16 rounding, so 3 parts carry a float32's 24
    significand bits), lane parts * len(columns) holds 1 if `ones`; other lanes 0. One product
    then sums every part (three products, one per part, cost three times the matrix work)."""
    lane = jnp.arange(lanes, dtype=jnp.int32)[None, :]
    packed = jnp.zeros((columns[0].shape[0], lanes), jnp.bfloat16)
    for c, column in enumerate(columns):
        rest = column.astype(jnp.float32)
        for p in range(parts):
            part = rest.astype(jnp.bfloat16)
            packed = jnp.where(lane == p * len(columns) + c, part[:, None], packed)
            rest = rest - part.astype(jnp.float32)
    if ones:
        packed = jnp.where(lane == parts * len(columns), jnp.bfloat16(1), packed)
    return packed


def _add_one_hot_product(acc, ids, packed, *, k_pad):
    """acc [lanes, k_pad] + packedᵀ one_hot(ids): ids [chunk] (outside [0, k_pad): nowhere),
    packed [chunk, lanes] bfloat16; float32 accumulation on the matrix units."""
    one_hot = (ids[:, None] == jnp.arange(k_pad, dtype=jnp.int32)[None, :]).astype(jnp.bfloat16)
    return acc + lax.dot_general(
        packed, one_hot, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )


def _pixels_kernel(ids_ref, features_ref, out_ref, *, chunk, chunks, channels, parts, k_pad,
                   count, lanes):  # fmt: skip
    """Program (b, s): pixels [s * chunks * chunk, (s + 1) * chunks * chunk) of image b.

    Lanes as `_packed_parts` packs the channels; with `count`, lane parts * channels holds 1
    for every pixel: its sums are the region sizes.
    """
    b, s = pl.program_id(0), pl.program_id(1)
    base = s * chunks * chunk

    def body(i, acc):
        pixels = pl.ds(base + i * chunk, chunk)
        columns = [features_ref[b, pixels, c] for c in range(channels)]
        packed = _packed_parts(columns, parts=parts, ones=count, lanes=lanes)
        return _add_one_hot_product(acc, ids_ref[b, pixels], packed, k_pad=k_pad)

    out_ref[b, s] = lax.fori_loop(0, chunks, body, jnp.zeros((lanes, k_pad), jnp.float32))


def _runs_kernel(ids_ref, features_ref, tags_ref, prefixes_ref, counts_ref, *, chunk, chunks,
                 channels, count, num_regions):  # fmt: skip
    """Program (b, s): the run entries of pixels [s * chunks * chunk, (s + 1) * chunks * chunk).

    Entry j of the program's list: tags[b, s, j] = 2 * id + (1 if the entry is the first of
    its scan chunk) with ids outside [0, num_regions) as -1 (then -2 or -1: `>> 1` gives -1);
    prefixes[b, s, c, j] = the sum of channel c from the scan chunk's start to the run's end
    (c = channels: the pixel count, with `count`). counts[b, s] = the list's length.
    """
    b, s = pl.program_id(0), pl.program_id(1)
    base = s * chunks * chunk
    position = jnp.arange(chunk, dtype=jnp.int32)
    past_the_list = tags_ref.shape[-1]
    pixels = ids_ref.shape[-1]

    def load(ref, pixel, other, *channel):  # ref[b, pixel, *channel] inside the image
        index = (b, jnp.minimum(pixel, pixels - 1), *channel)
        return pltriton.load(ref.at[index], mask=pixel < pixels, other=other)

    def body(i, written):
        pixel = base + i * chunk + position  # the last chunk may run past the image
        ids = load(ids_ref, pixel, -1)
        ends = (ids != load(ids_ref, pixel + 1, -1)) | (position == chunk - 1)
        slot = written + jnp.cumsum(ends.astype(jnp.int32)) - 1
        # Pixels inside a run write nowhere: the mask keeps the GPU off their slot, and
        # pointing it past the list keeps Pallas' interpreter (which writes back what a
        # masked lane read) off the entries.
        slot = jnp.where(ends, slot, past_the_list)
        known = (ids >= 0) & (ids < num_regions)
        tag = jnp.where(known, ids, -1) * 2 + (slot == written).astype(jnp.int32)
        pltriton.store(tags_ref.at[b, s, slot], tag, mask=ends)
        for c in range(channels):
            column = load(features_ref, pixel, 0, c).astype(jnp.float32)
            pltriton.store(prefixes_ref.at[b, s, c, slot], jnp.cumsum(column), mask=ends)
        if count:
            sizes = (position + 1).astype(jnp.float32)
            pltriton.store(prefixes_ref.at[b, s, channels, slot], sizes, mask=ends)
        return written + jnp.sum(ends.astype(jnp.int32))

    counts_ref[b, s] = lax.fori_loop(0, chunks, body, jnp.int32(0))


def _run_sums_kernel(counts_ref, tags_ref, prefixes_ref, out_ref, *, chunk, channels, k_pad,
                     lanes):  # fmt: skip
    """Program (b, s): adds the runs of `_runs_kernel`'s list (b, s) into [lanes, k_pad], the
    `channels` prefix channels packed in three parts each (`_packed_parts`)."""
    b, s = pl.program_id(0), pl.program_id(1)
    length = counts_ref[b, s]
    last = tags_ref.shape[-1] - 1

    def body(i, acc):
        entry = i * chunk + jnp.arange(chunk, dtype=jnp.int32)
        live = entry < length
        entry = jnp.minimum(entry, last)
        tag = pltriton.load(tags_ref.at[b, s, entry], mask=live, other=-2)
        after_another = live & ((tag & 1) == 0)  # not the first entry of its scan chunk
        before = jnp.maximum(entry - 1, 0)
        runs = []
        for c in range(channels):
            end = pltriton.load(prefixes_ref.at[b, s, c, entry], mask=live, other=0.0)
            start = pltriton.load(prefixes_ref.at[b, s, c, before], mask=after_another, other=0.0)
            runs.append(end - start)
        packed = _packed_parts(runs, parts=3, ones=False, lanes=lanes)
        return _add_one_hot_product(acc, tag >> 1, packed, k_pad=k_pad)

    tiles = (length + chunk - 1) // chunk
    out_ref[b, s] = lax.fori_loop(0, tiles, body, jnp.zeros((lanes, k_pad), jnp.float32))


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
      interpret: run the kernels in Pallas' interpreter (any backend; for tests).
      with_sizes: also count each region's pixels, in the same pass.
      config: which algorithm and how the work is divided (`KernelConfig`;
        `benchmarks/pooling.py` tries some).

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
    return _batch_partitioned_sums(features, region_ids, num_regions, interpret, with_sizes, config)


def _sums(features, region_ids, num_regions, interpret, with_sizes, config):
    """`region_sums_pallas` without its checks and gradient: the kernels on this device's
    images."""
    batch, height, width, channels = features.shape
    k_pad = max(LANES, pl.next_power_of_2(num_regions))
    pixels = height * width
    step = config.scan_chunk if config.by_runs else config.chunk
    splits = max(1, config.programs_per_batch // batch)
    chunks = -(-pixels // (step * splits))  # per program
    padded = chunks * step * splits
    ids = region_ids.reshape(batch, pixels).astype(jnp.int32)
    values = features.reshape(batch, pixels, channels)
    if padded != pixels and not config.by_runs:  # padding pixels' id -1 adds them nowhere
        ids = jnp.pad(ids, ((0, 0), (0, padded - pixels)), constant_values=-1)
        values = jnp.pad(values, ((0, 0), (0, padded - pixels), (0, 0)))
    # bfloat16 features are exact in one bfloat16 part; float32 ones and run sums need three.
    # Lanes: the parts of every column packed side by side (`_packed_parts`), the sizes'
    # column of ones after them in the every-pixel kernel (run sums of it need parts too).
    out_channels = channels + with_sizes
    if config.by_runs:
        parts, parted, ones = 3, out_channels, False
    else:
        parts, parted, ones = (1 if features.dtype == jnp.bfloat16 else 3), channels, with_sizes
    lanes = max(LANES, pl.next_power_of_2(parts * parted + ones))
    # Triton, named: without compiler parameters recent JAX lowers GPU kernels with Mosaic
    # GPU, whose whole-array blocks would not fit in shared memory.
    params = pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
    call = functools.partial(
        pl.pallas_call, grid=(batch, splits), compiler_params=params, interpret=interpret
    )
    partial_shape = jax.ShapeDtypeStruct((batch, splits, lanes, k_pad), jnp.float32)
    if config.by_runs:
        per_program = chunks * step
        list_length = -(-per_program // config.chunk) * config.chunk
        runs = functools.partial(
            _runs_kernel, chunk=step, chunks=chunks, channels=channels, count=with_sizes,
            num_regions=num_regions,
        )  # fmt: skip
        lists = (
            jax.ShapeDtypeStruct((batch, splits, list_length), jnp.int32),
            jax.ShapeDtypeStruct((batch, splits, out_channels, list_length), jnp.float32),
            jax.ShapeDtypeStruct((batch, splits), jnp.int32),
        )
        tags, prefixes, counts = call(runs, out_shape=lists)(ids, values)
        run_sums = functools.partial(
            _run_sums_kernel, chunk=config.chunk, channels=out_channels, k_pad=k_pad, lanes=lanes
        )
        partial = call(run_sums, out_shape=partial_shape)(counts, tags, prefixes)
    else:
        pixel_sums = functools.partial(
            _pixels_kernel, chunk=step, chunks=chunks, channels=channels, parts=parts,
            k_pad=k_pad, count=with_sizes, lanes=lanes,
        )  # fmt: skip
        partial = call(pixel_sums, out_shape=partial_shape)(ids, values)
    total = partial.sum(axis=1)  # [B, lanes, k_pad]
    sums = sum(total[:, p * parted : (p + 1) * parted] for p in range(parts))
    if ones:
        sums = jnp.concatenate([sums, total[:, parts * parted][:, None]], axis=1)
    return jnp.swapaxes(sums[:, :, :num_regions], 1, 2)


# Sharded over devices, each image's sums need only its own pixels: every device runs the
# kernels on its share of the batch.
_batch_partitioned_sums = batch_partitioned(
    _sums,
    num_arrays=2,
    num_static=4,
    num_batched=2,
    sharding_rule="b h w c, b h w -> b k l",
    replicated=("h", "w", "c"),  # a region's sum needs all its pixels
)


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
