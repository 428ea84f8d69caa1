"""Region pooling of a bilinearly upsampled map, computed from the low-resolution map.

The selector's keep-logit map is computed at stride s (8 for LR-ASPP) and bilinearly
upsampled to the image before it is averaged over each superpixel. Both steps are linear, so
for one image

    sums[k, c] = Σ_{p in region k} up(h)[p, c] = Σ_q W[k, q] h[q, c],
    W[k, q]    = Σ_{p in region k} Ry[p_y, q_y] · Rx[p_x, q_x],

with Ry [H, h], Rx [W, w] the bilinear upsampling matrices and q running over the h·w cells
of the low-resolution map. W ([K, h·w], at most four non-zeros per pixel) depends on the
superpixel ids only, so the input pipeline computes it on the host next to SLIC
(`bilinear_region_weights`), and on the device pooling becomes one small batched matmul
(`pool_low_res`) that reads W (B·K·h·w values; 20 MB in float32 at B = 64, K = 100, 224²)
instead of the full-resolution map and its ids (B·H·W·(C + 1) values; 64 MB). Row sums of W
are the region sizes: each row of Ry and Rx sums to one.

Not yet wired into the selector: `benchmarks/pooling.py` measures it next to the
full-resolution implementations, and the selector would switch to it once a GPU measurement
shows it wins.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


@functools.cache
def upsampling_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out_size, in_size] float32 R with `jax.image.resize(x, ..., "bilinear")` = R @ x.

    Built by resizing the identity, so it matches jax's half-pixel centres and edge handling
    exactly. Upsampling only (out_size >= in_size): each row then has at most two non-zeros.
    """
    if out_size < in_size:
        raise ValueError(f"upsampling only: out_size {out_size} < in_size {in_size}.")
    eye = jnp.eye(in_size, dtype=jnp.float32)
    return np.asarray(jax.image.resize(eye, (out_size, in_size), "bilinear"))


def _two_taps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices [N, 2], weights [N, 2]) of the two largest entries of each row."""
    index = np.argsort(-matrix, axis=1, kind="stable")[:, :2]
    return index, np.take_along_axis(matrix, index, axis=1)


def bilinear_region_weights(
    region_ids: np.ndarray, low_hw: tuple[int, int], num_regions: int
) -> np.ndarray:
    """W for one image: how much each low-resolution cell contributes to each region's sum.

    Args:
      region_ids: [H, W] integer ids in [0, num_regions).
      low_hw: (h, w), the low-resolution map's size (H / stride, W / stride).
      num_regions: static region count K.

    Returns:
      [K, h·w] float32, row k summing to the pixel count of region k.
    """
    ids = np.asarray(region_ids)
    height, width = ids.shape
    h, w = low_hw
    y_index, y_weight = _two_taps(upsampling_matrix(height, h))  # [H, 2]
    x_index, x_weight = _two_taps(upsampling_matrix(width, w))  # [W, 2]
    cell = y_index[:, None, :, None] * w + x_index[None, :, None, :]  # [H, W, 2, 2]
    weight = y_weight[:, None, :, None] * x_weight[None, :, None, :]
    flat = ids.astype(np.int64)[:, :, None, None] * (h * w) + cell
    out = np.bincount(flat.ravel(), weights=weight.ravel(), minlength=num_regions * h * w)
    return out.reshape(num_regions, h * w).astype(np.float32)


def pool_low_res(
    low_map: ArrayLike, weights: ArrayLike, sizes: ArrayLike | None = None
) -> jax.Array:
    """Region means of the bilinearly upsampled `low_map`, without upsampling it.

    Args:
      low_map: [B, h, w, C] features at the low resolution.
      weights: [B, K, h·w] from `bilinear_region_weights` (float32 or bfloat16).
      sizes: optional [B, K] region pixel counts (default: the row sums of `weights`).

    Returns:
      [B, K, C] float32 means, equal to `regions.pool_regions(jax.image.resize(low_map,
      (B, H, W, C), "bilinear"), region_ids, K)` up to rounding; 0 for empty regions.
    """
    low = jnp.asarray(low_map)
    w = jnp.asarray(weights)
    batch, h, width, channels = low.shape
    sums = jnp.einsum(
        "bkq,bqc->bkc",
        w,
        low.reshape(batch, h * width, channels).astype(w.dtype),
        preferred_element_type=jnp.float32,
    )
    if sizes is None:
        sizes = jnp.sum(w, axis=-1, dtype=jnp.float32)
    return sums / jnp.maximum(jnp.asarray(sizes, jnp.float32), 1.0)[..., None]
