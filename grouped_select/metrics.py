"""Per-image evaluation metrics, batched and jittable; sum them over a split to aggregate.

Every function returns per-image values ([B]) so that a caller can mask padding examples and
accumulate sums across batches and hosts without holding the split in memory.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def correct(log_probs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """1.0 where the arg-max class equals the label.

    Args:
      log_probs: [B, C] scores (any monotone transform of probabilities).
      labels: [B] integer labels.

    Returns:
      [B] float32 0/1.
    """
    return (jnp.argmax(log_probs, axis=-1) == jnp.asarray(labels)).astype(jnp.float32)


def mask_overlap(pixel_mask: ArrayLike, object_mask: ArrayLike) -> dict[str, jax.Array]:
    """Precision and IoU of a kept-pixel mask against a ground-truth object mask.

    precision = |m ∩ gt| / |m| (the paper's localisation number; 0 when nothing is kept),
    iou = |m ∩ gt| / |m ∪ gt| (0 when both are empty).

    Args:
      pixel_mask: [B, H, W] kept pixels (0/1 or bool).
      object_mask: [B, H, W] ground-truth object pixels (0/1 or bool).

    Returns:
      dict with "precision" and "iou", each [B] float32.
    """
    kept = jnp.asarray(pixel_mask).astype(bool)
    gt = jnp.asarray(object_mask).astype(bool)
    axes = tuple(range(1, kept.ndim))
    inter = jnp.sum(kept & gt, axis=axes).astype(jnp.float32)
    kept_count = jnp.sum(kept, axis=axes).astype(jnp.float32)
    union = jnp.sum(kept | gt, axis=axes).astype(jnp.float32)
    return {
        "precision": inter / jnp.maximum(kept_count, 1.0),
        "iou": inter / jnp.maximum(union, 1.0),
    }
