"""Superpixels: SLIC once per image, relabelled to consecutive ids below a static bound.

P2P pools pixels into regions with `segment_sum(..., num_segments=num_regions)`, so every id
must lie in [0, num_regions) with num_regions a static Python int. SLIC does not promise a
segment count (scikit-image returns roughly `n_segments`, sometimes a few more), so
`limit_regions` enforces the bound: ids are relabelled to 0..n-1 and, while n > num_regions,
the smallest region is merged into the neighbour it shares the longest border with. The
result always satisfies `ids.max() < num_regions`, and every id below `ids.max()` is present.

`parallel_map` runs per-example preparation (rendering, decoding, SLIC) over CPU cores with a
tqdm progress bar; it is what the tfds builders in `builders.py` use.
"""

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import skimage
from skimage.segmentation import slic
from tqdm.auto import tqdm

DEFAULT_N_SEGMENTS = 100
DEFAULT_COMPACTNESS = 20.0
# K in the spec: >= 100 and padded. scikit-image SLIC with n_segments=100 returns ~60-105.
DEFAULT_NUM_REGIONS = 128


def region_dtype(num_regions: int) -> np.dtype:
    """Smallest stored dtype for ids in [0, num_regions): uint8 up to 256, else int16.

    Raises:
      ValueError: if num_regions is not in [1, 32768].
    """
    if not 1 <= num_regions <= 32768:
        raise ValueError(f"num_regions must be in [1, 32768], got {num_regions}.")
    return np.dtype(np.uint8) if num_regions <= 256 else np.dtype(np.int16)


def slic_fingerprint(*, n_segments: int, compactness: float, num_regions: int) -> str:
    """Short hash of everything that determines the stored region ids.

    Used in builder config names, so a prepared dataset is reused only when SLIC settings
    (and scikit-image's major.minor version, whose SLIC may change) are the same.

    Returns:
      8 hex characters.
    """
    settings = {
        "n_segments": int(n_segments),
        "compactness": float(compactness),
        "num_regions": int(num_regions),
        "skimage": ".".join(skimage.__version__.split(".")[:2]),
    }
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def relabel_consecutive(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumbers the ids present in `ids` to 0..n-1, keeping their order.

    Args:
      ids: [H, W] non-negative int.

    Returns:
      ([H, W] int32 ids in [0, n), n) where n is the number of distinct ids.
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return ids.astype(np.int32), 0
    if ids.min() < 0:
        raise ValueError("region ids must be non-negative.")
    # A count and a take: ~2x faster than marking `present[ids] = True` and indexing lut[ids].
    present = np.bincount(ids.ravel()) > 0
    lut = np.cumsum(present, dtype=np.int32) - 1
    return lut.take(ids), int(present.sum())


def _merge_smallest(ids: np.ndarray, n: int) -> np.ndarray:
    """Merges the smallest region of consecutive ids `ids` (n regions) into its neighbour."""
    sizes = np.bincount(ids.ravel(), minlength=n)
    small = int(np.argmin(sizes))
    # Border pixel pairs in both directions; count how often each other id touches `small`.
    pairs = [
        (ids[:, :-1].ravel(), ids[:, 1:].ravel()),
        (ids[:-1, :].ravel(), ids[1:, :].ravel()),
    ]
    touch = np.zeros(n, dtype=np.int64)
    for a, b in pairs:
        touch += np.bincount(b[(a == small) & (b != small)], minlength=n)
        touch += np.bincount(a[(b == small) & (a != small)], minlength=n)
    if touch.max() == 0:  # Cannot happen on a connected pixel grid with n >= 2; be safe.
        touch[(small + 1) % n] = 1
    ids = np.where(ids == small, int(np.argmax(touch)), ids)
    return relabel_consecutive(ids)[0]


def limit_regions(ids: np.ndarray, num_regions: int) -> np.ndarray:
    """Relabels `ids` to consecutive ids and merges regions until fewer than num_regions remain.

    Args:
      ids: [H, W] non-negative int region ids (any numbering).
      num_regions: static bound K; on return every id is < K.

    Returns:
      [H, W] int32 ids in [0, n) with n <= num_regions, every id in [0, n) present.

    Raises:
      ValueError: if num_regions < 1.
    """
    if num_regions < 1:
        raise ValueError(f"num_regions must be >= 1, got {num_regions}.")
    ids, n = relabel_consecutive(ids)
    while n > num_regions:
        ids = _merge_smallest(ids, n)
        n -= 1
    return ids


def slic_regions(
    image: np.ndarray,
    *,
    n_segments: int = DEFAULT_N_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    num_regions: int = DEFAULT_NUM_REGIONS,
) -> np.ndarray:
    """SLIC superpixels of one RGB image, with ids guaranteed < num_regions.

    Args:
      image: [H, W, 3] uint8 RGB.
      n_segments: SLIC's approximate segment count.
      compactness: SLIC compactness (colour vs. space trade-off).
      num_regions: static bound K on the ids (see module docstring for how it is kept).

    Returns:
      [H, W] ids in [0, n), n <= num_regions, dtype `region_dtype(num_regions)`.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"slic_regions expects an [H, W, 3] image, got shape {image.shape}.")
    ids = slic(
        image,
        n_segments=n_segments,
        compactness=compactness,
        start_label=0,
        channel_axis=-1,
    )
    return limit_regions(ids, num_regions).astype(region_dtype(num_regions))


def default_num_workers() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1


def parallel_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    num_workers: int | None = None,
    total: int | None = None,
    desc: str = "",
    chunksize: int = 16,
) -> Iterator[Any]:
    """Yields `fn(item)` for each item, in order, computed over CPU cores with a progress bar.

    Workers are started with the "spawn" method: forking a process that already runs JAX's
    threads can deadlock. `fn` must therefore be a module-level function, and scripts calling
    this must guard their entry point with `if __name__ == "__main__":`.

    Args:
      fn: picklable module-level function.
      items: inputs, each picklable.
      num_workers: processes; None means all cores, 0 or 1 runs in this process.
      total: number of items, for the progress bar.
      desc: progress bar label.
      chunksize: items sent to a worker at a time.

    Yields:
      fn(item), in the order of `items`.
    """
    if num_workers is None:
        num_workers = default_num_workers()
    bar = tqdm(total=total, desc=desc, unit="img", leave=False)
    try:
        if num_workers <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(num_workers) as pool:
            for out in pool.imap(fn, items, chunksize=chunksize):
                yield out
                bar.update()
    finally:
        bar.close()
