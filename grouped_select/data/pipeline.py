"""grain input pipeline: per-process shards, shuffling, augmentation, batching, prefetching.

Sources are random-access sequences of examples as stored by the builders in `builders.py`
(what `tfds.data_source` / `builder.as_data_source()` return): dicts with "image" [H, W, 3]
uint8, "region_ids" [H, W], "mask" [H, W], "label" and "has_mask".

Every batch is a dict of per-process numpy arrays (B = global_batch_size / process_count):
  image       uint8   [B, S, S, 3]  RGB; the jitted step normalises it (`color.normalize`)
  region_ids  int32   [B, S, S]     in [0, num_regions), consecutive per image
  label       int32   [B]
and in evaluation batches (`BATCH_KEYS`) also
  mask        uint8   [B, S, S]     ground-truth object mask (zeros where has_mask is False)
  has_mask    bool    [B]           whether the example has a ground-truth mask
  valid       bool    [B]           False for padding in the last batches
Training batches (`TRAIN_BATCH_KEYS`) carry only what the training step reads: their masks
are never cropped, flipped or shipped. `builders.training_source` does not even decompress
the masks, and leaves each image encoded: the augmentation decodes it with PIL straight into
the image it resamples (the in-memory cache decodes it once). With colour jitter they also
carry the per-image parameters that the jitted step applies on the accelerator
(`color.color_jitter`; on the host it was ~40 % of an example's CPU time at 224², and uint8
images are a quarter of float32's bytes to move):
  jitter_factors  float32 [B, 4]
  jitter_order    int32   [B, 4]

`make_global_batch` turns it into jax.Arrays sharded over a mesh's "data" axis. Iterators are
grain `DatasetIterator`s: `it.get_state()` / `it.set_state(state)` save and restore the
position (orbax: `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)`).
"""

import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grouped_select.color import JITTER_KEYS
from grouped_select.data.augment import eval_transform, open_image, train_augment

BATCH_KEYS = ("image", "region_ids", "mask", "label", "has_mask", "valid")
# Also the stored fields a training example needs (the cache keeps only these).
TRAIN_BATCH_KEYS = ("image", "region_ids", "label")


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if shard_index is None else shard_index
    count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= index < count:
        raise ValueError(f"shard_index {index} must be in [0, shard_count={count}).")
    return index, count


def _local_batch_size(global_batch_size: int, shard_count: int) -> int:
    if global_batch_size % shard_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be divisible by the number of "
            f"processes {shard_count}."
        )
    return global_batch_size // shard_count


def _eval_output(
    example: Mapping[str, Any], view: Mapping[str, np.ndarray], valid: bool
) -> dict[str, np.ndarray]:
    has_mask = bool(example.get("has_mask", True))
    mask = view["mask"] if has_mask else np.zeros_like(view["mask"])
    return {
        "image": view["image"],
        "region_ids": np.asarray(view["region_ids"], np.int32),
        "mask": np.asarray(mask, np.uint8),
        "label": np.int32(example["label"]),
        "has_mask": np.bool_(has_mask),
        "valid": np.bool_(valid),
    }


def _train_fields(example: Mapping[str, Any]) -> dict[str, Any]:
    return {k: example[k] for k in TRAIN_BATCH_KEYS}


def _decoded_train_fields(example: Mapping[str, Any]) -> dict[str, Any]:
    # What the in-memory cache keeps: a stored image (`builders.training_source` leaves it
    # encoded) is decoded once here rather than in every epoch.
    image = example["image"]
    if isinstance(image, bytes):
        image = np.asarray(open_image(image))
    return {**_train_fields(example), "image": image}


def _train_map(
    example: Mapping[str, Any], rng: np.random.Generator, **augment_kwargs: Any
) -> dict[str, np.ndarray]:
    view = train_augment(
        example["image"],  # encoded bytes from `training_source`: PIL decodes them
        np.asarray(example["region_ids"]),
        None,
        rng,
        **augment_kwargs,
    )
    out = {
        "image": view["image"],
        "region_ids": np.asarray(view["region_ids"], np.int32),
        "label": np.int32(example["label"]),
    }
    out.update({k: view[k] for k in JITTER_KEYS if k in view})
    return out


def _eval_map(item: tuple[Mapping[str, Any], bool], **transform_kwargs: Any) -> dict:
    example, valid = item
    view = eval_transform(
        np.asarray(example["image"]),
        np.asarray(example["region_ids"]),
        np.asarray(example["mask"]),
        **transform_kwargs,
    )
    return _eval_output(example, view, valid)


class _PaddedShard(Sequence):
    """Random-access view of one process's shard, padded to `length` with invalid copies.

    Every process sees the same number of evaluation batches (multi-host collectives need it);
    padding repeats the shard's first example with valid=False.
    """

    def __init__(self, source: Sequence, shard_index: int, shard_count: int, length: int):
        self._source = source
        self._indices = range(shard_index, len(source), shard_count)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> tuple[Mapping[str, Any], bool]:
        if i < len(self._indices):
            return self._source[self._indices[i]], True
        return self._source[self._indices[0] if len(self._indices) else 0], False


def _memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decode_into_memory(
    ds: grain.MapDataset, *, max_memory_fraction: float = 0.5
) -> grain.MapDataset:
    """Reads and decodes every element of `ds` once and serves them from a Python list.

    For datasets that fit in RAM (the built-in benchmark, CIFAR-10): reading and decoding an
    array_record example costs ~0.27 ms of CPU, more than the augmentation after it, and on a
    small machine it competes with the train step for the same cores. grain 0.2's `cache()`
    exists only for IterDatasets (sequential), so this materialises the random-access dataset.
    With grain worker processes (`worker_count > 0`) each worker gets its own copy.

    Args:
      ds: a random-access dataset of examples (one process's shard, before shuffling).
      max_memory_fraction: refuse above this share of the machine's physical memory.

    Returns:
      A `grain.MapDataset` over the decoded examples, element i equal to `ds[i]`.

    Raises:
      ValueError: the decoded elements would take more than `max_memory_fraction` of this
        machine's memory (estimated from the first element).
    """
    if len(ds) == 0:
        return ds
    first = ds[0]
    per_element = sum(np.asarray(v).nbytes for v in jax.tree.leaves(first))
    needed, memory = per_element * len(ds), _memory_bytes()
    if needed > max_memory_fraction * memory:
        raise ValueError(
            f"decoding this split into memory needs ~{needed / 2**30:.1f} GiB, more than "
            f"{max_memory_fraction:.0%} of this machine's {memory / 2**30:.1f} GiB; "
            "set config.data.cache_in_memory=False (train_iterator(cache=False))."
        )
    return grain.MapDataset.source([first] + [ds[i] for i in range(1, len(ds))])


def _to_iterator(
    ds: grain.MapDataset, *, read_threads: int, prefetch: int, worker_count: int
) -> grain.DatasetIterator:
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
    )
    if worker_count > 0:
        # grain 0.2.18 reads an absl flag when starting workers and fails if flags were never
        # parsed (plain scripts, notebooks, pytest; google/grain#1355). Programs that parse
        # flags (absl.app.run) are unaffected.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)


def train_dataset(
    source: Sequence,
    *,
    global_batch_size: int,
    image_size: int,
    num_regions: int,
    seed: int = 0,
    num_epochs: int | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.2),
    shard_index: int | None = None,
    shard_count: int | None = None,
    cache: bool = False,
) -> grain.MapDataset:
    """The training `grain.MapDataset` of batches (see `train_iterator` for the arguments)."""
    index, count = _shard(shard_index, shard_count)
    batch = _local_batch_size(global_batch_size, count)
    ds = grain.MapDataset.source(source).slice(slice(index, None, count))
    if len(ds) < batch:
        raise ValueError(
            f"this process's shard has {len(ds)} examples, fewer than one batch of {batch}."
        )
    if cache:
        ds = decode_into_memory(ds.map(_decoded_train_fields))
    else:
        ds = ds.map(_train_fields)
    # Shuffle before repeat: each epoch gets its own order (grain mixes the epoch into the seed).
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    augment = functools.partial(
        _train_map,
        image_size=image_size,
        num_regions=num_regions,
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
        hflip=hflip,
        jitter=jitter,
    )
    ds = ds.random_map(augment, seed=seed + 1)
    return ds.batch(batch, drop_remainder=True)


def train_iterator(
    source: Sequence,
    *,
    global_batch_size: int,
    image_size: int,
    num_regions: int,
    seed: int = 0,
    num_epochs: int | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.2),
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int = 0,
    read_threads: int = 2,
    prefetch: int = 256,
    cache: bool = False,
) -> grain.DatasetIterator:
    """Shuffled, augmented, batched training batches for this process.

    Args:
      source: random-access examples (e.g. `builder.as_data_source()["train"]`).
      global_batch_size: batch over all processes; each process yields
        global_batch_size / process_count examples per batch.
      image_size: S, output side.
      num_regions: K, static bound on region ids.
      seed: shuffling and augmentation seed (same on every process).
      num_epochs: None repeats forever; an int stops after that many passes (the last
        incomplete batch of the stream is dropped).
      crop_scale, crop_ratio: random resized crop ranges (torchvision defaults).
      hflip: random horizontal flips.
      jitter: colour jitter (brightness, contrast, saturation, hue) or None.
      shard_index, shard_count: this process's shard; default jax.process_index() / count().
      worker_count: grain worker processes (0: threads in this process).
      read_threads: threads per process reading and transforming elements.
      prefetch: elements buffered per process.
      cache: decode this process's shard into memory once, before the first batch
        (`decode_into_memory`; small datasets). Batches are identical either way.

    Returns:
      A grain `DatasetIterator` of batch dicts (module docstring), with get_state/set_state.
    """
    ds = train_dataset(
        source,
        global_batch_size=global_batch_size,
        image_size=image_size,
        num_regions=num_regions,
        seed=seed,
        num_epochs=num_epochs,
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
        hflip=hflip,
        jitter=jitter,
        shard_index=shard_index,
        shard_count=shard_count,
        cache=cache,
    )
    return _to_iterator(ds, read_threads=read_threads, prefetch=prefetch, worker_count=worker_count)


def eval_dataset(
    source: Sequence,
    *,
    global_batch_size: int,
    image_size: int,
    num_regions: int,
    crop_fraction: float = 0.875,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.MapDataset:
    """The evaluation `grain.MapDataset` of batches (see `eval_iterator` for the arguments)."""
    index, count = _shard(shard_index, shard_count)
    batch = _local_batch_size(global_batch_size, count)
    per_shard = math.ceil(len(source) / count)
    length = math.ceil(per_shard / batch) * batch
    ds = grain.MapDataset.source(_PaddedShard(source, index, count, length))
    transform = functools.partial(
        _eval_map, image_size=image_size, num_regions=num_regions, crop_fraction=crop_fraction
    )
    return ds.map(transform).batch(batch, drop_remainder=True)


def eval_iterator(
    source: Sequence,
    *,
    global_batch_size: int,
    image_size: int,
    num_regions: int,
    crop_fraction: float = 0.875,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int = 0,
    read_threads: int = 2,
    prefetch: int = 256,
) -> grain.DatasetIterator:
    """One pass over `source` in order, every example exactly once over all processes.

    Every process yields the same number of full batches; examples that pad the last
    batches have valid=False and must be excluded from metrics.

    Args:
      source: random-access examples (e.g. `builder.as_data_source()["test"]`).
      global_batch_size: batch over all processes.
      image_size: S.
      num_regions: K.
      crop_fraction: resize shorter side to S / crop_fraction, then centre crop S (0.875:
        ImageNet's 256 -> 224; 1.0 for test sets already cut to size).
      shard_index, shard_count: default jax.process_index() / process_count().
      worker_count, read_threads, prefetch: see `train_iterator`.

    Returns:
      A grain `DatasetIterator` of batch dicts (module docstring).
    """
    ds = eval_dataset(
        source,
        global_batch_size=global_batch_size,
        image_size=image_size,
        num_regions=num_regions,
        crop_fraction=crop_fraction,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    return _to_iterator(ds, read_threads=read_threads, prefetch=prefetch, worker_count=worker_count)


def make_global_batch(
    batch: Mapping[str, np.ndarray], mesh: Mesh, axis: str = "data"
) -> dict[str, jax.Array]:
    """Per-process numpy batch -> global jax.Arrays sharded along their first axis.

    Args:
      batch: dict of [B_local, ...] arrays, as yielded by the iterators here.
      mesh: device mesh with an axis named `axis`.
      axis: mesh axis the batch dimension is split over.

    Returns:
      dict of jax.Arrays of shape [B_local * process_count, ...], sharded P(axis).
    """
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }
