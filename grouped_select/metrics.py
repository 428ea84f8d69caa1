"""Per-image evaluation metrics, batched and jittable; sum them over a split to aggregate.

Every function returns per-image values ([B]) so that a caller can mask padding examples and
accumulate sums across batches and hosts without holding the split in memory.
"""

import jax
import jax.numpy as jnp
import numpy as np
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


class PixelAveragePrecision:
    """PxAP: area under the pixel-level precision-recall curve, accumulated over a split.

    Follows wsolevaluation's `MaskEvaluator` as the reference uses it: per-pixel scores in
    [0, 1] are counted into two histograms (object / background pixels) with bins
    [0, w), [w, 2w), ..., [1 - w, 1), [1, 2), [2, 3); precision and recall at every bin edge
    from the reversed cumulative counts; PxAP = Σ precision_i · Δrecall_i. The reference sets
    the bin width w = 1e-5 (wsolevaluation's own default is 1e-3, with scores scaled by 100);
    the histograms are float64 numpy arrays, so memory stays O(1 / w), not O(pixels).
    """

    def __init__(self, bin_width: float = 1e-5):
        """Starts empty histograms with bins of `bin_width`."""
        self.edges = np.append(np.arange(0.0, 1.0, bin_width), [1.0, 2.0, 3.0])
        self.object_hist = np.zeros(len(self.edges) - 1, np.float64)
        self.background_hist = np.zeros(len(self.edges) - 1, np.float64)

    def update(self, scores: ArrayLike, object_mask: ArrayLike, weight: ArrayLike | None = None):
        """Adds a batch.

        Args:
          scores: [B, H, W] per-pixel scores in [0, 1] (e.g. sigmoid(μ) of each pixel's region).
          object_mask: [B, H, W] ground truth (nonzero = object).
          weight: optional [B] 0/1: images to include (e.g. valid and has_mask).
        """
        scores = np.asarray(scores, np.float64)
        gt = np.asarray(object_mask) != 0
        if weight is not None:
            keep = np.asarray(weight).astype(bool)
            scores, gt = scores[keep], gt[keep]
        self.object_hist += np.histogram(scores[gt], bins=self.edges)[0]
        self.background_hist += np.histogram(scores[~gt], bins=self.edges)[0]

    def update_counts(
        self, scores: ArrayLike, object_counts: ArrayLike, background_counts: ArrayLike
    ) -> None:
        """Adds scores that many pixels share (e.g. one score per region).

        Equivalent to `update` with every pixel listed, at O(regions) cost.

        Args:
          scores: [N] scores in [0, 1].
          object_counts: [N] object pixels having each score.
          background_counts: [N] background pixels having each score.
        """
        scores = np.asarray(scores, np.float64).ravel()
        self.object_hist += np.histogram(scores, self.edges, weights=np.ravel(object_counts))[0]
        self.background_hist += np.histogram(
            scores, self.edges, weights=np.ravel(background_counts)
        )[0]

    def compute(self) -> float:
        """PxAP of everything added so far.

        Raises:
          ValueError: no object pixel, or no pixel at all, was added.
        """
        tp = self.object_hist[::-1].cumsum()
        fp = self.background_hist[::-1].cumsum()
        positives = self.object_hist.sum()
        if positives <= 0:
            raise ValueError("PxAP needs object pixels: no ground-truth object pixel was added.")
        if (tp + fp).max() <= 0:
            raise ValueError("PxAP needs scored pixels: nothing was added.")
        precision = tp / (tp + fp + 1e-12)
        recall = tp / (positives + 1e-12)
        nonzero = (tp + fp) != 0
        return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum())


def class_scores_auc(labels: ArrayLike, probs: ArrayLike) -> dict[str, float]:
    """AUROC and AUPR of class probabilities, one-vs-rest, weighted by class frequency.

    As the reference: classes absent from `labels` are left out of both averages.

    Args:
      labels: [N] integer labels (or the model's own predictions, for fidelity).
      probs: [N, C] class probabilities.

    Returns:
      {"auroc", "aupr"} floats (NaN when fewer than two classes are present).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels)
    probs = np.asarray(probs, np.float64)
    present = [c for c in range(probs.shape[1]) if np.any(labels == c)]
    if len(present) < 2:
        return {"auroc": float("nan"), "aupr": float("nan")}
    weights = np.array([np.sum(labels == c) for c in present], np.float64)
    aurocs = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    auprs = [average_precision_score(labels == c, probs[:, c]) for c in present]
    return {
        "auroc": float(np.sum(weights * aurocs) / weights.sum()),
        "aupr": float(np.sum(weights * auprs) / weights.sum()),
    }


DELETION_FRACTIONS = (0.05, 0.1, 0.2)
INSERTION_MASKED_FRACTIONS = (0.8, 0.9, 0.95)


def fidelity_keep(
    region_probs: ArrayLike, sizes: ArrayLike, fraction: ArrayLike, mode: str
) -> jax.Array:
    """Which regions stay in a deletion or insertion fidelity test.

    Regions are ranked by keep-probability (descending); `area` is their cumulative share of
    the image in that order.
    - "deletion" at fraction t: remove the top regions whose cumulative area is below t and
      also the first region that crosses t (the reference's rule); keep the rest.
    - "insertion" with t = the fraction masked: keep only the top regions whose cumulative
      area stays below 1 - t.

    Args:
      region_probs: [B, K] keep-probabilities sigmoid(μ).
      sizes: [B, K] region pixel counts.
      fraction: scalar t in [0, 1] (may be traced).
      mode: "deletion" or "insertion".

    Returns:
      [B, K] float32 0/1 keep values (to multiply the already-masked image's regions).
    """
    probs = jnp.asarray(region_probs, jnp.float32)
    sizes = jnp.asarray(sizes, jnp.float32)
    order = jnp.argsort(-probs, axis=-1, stable=True)
    area = jnp.take_along_axis(sizes, order, -1) / sizes.sum(-1, keepdims=True)
    cumulative = jnp.cumsum(area, axis=-1)
    if mode == "deletion":
        beyond = cumulative >= fraction
        first_beyond = jnp.argmax(beyond, axis=-1)
        keep_sorted = beyond & (jnp.arange(probs.shape[-1]) != first_beyond[:, None])
    elif mode == "insertion":
        keep_sorted = cumulative < 1.0 - fraction
    else:
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}.")
    # Back to the regions' own order.
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(keep_sorted, inverse, -1).astype(jnp.float32)


def normalized_curve_area(fractions: ArrayLike, scores: ArrayLike) -> float:
    """Area under a fidelity curve over [0, 1] by the trapezoid rule (RISE convention).

    Args:
      fractions: [T] increasing fractions of the image removed (deletion) or shown
        (insertion), spanning [0, 1].
      scores: [T] agreement with the original prediction at each fraction.

    Returns:
      the area divided by the fraction range (1 for a constant score of 1).
    """
    x = np.asarray(fractions, np.float64)
    y = np.asarray(scores, np.float64)
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))
