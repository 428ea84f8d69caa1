"""Evaluating a trained P2P model over a whole split: per-batch jitted metrics, a host
accumulator, figures and a markdown report.

`evaluate_batch` (jittable; `batch_evaluator` wraps it in `jax.jit`) runs the model on one
batch, with the dynamic budget search at a certainty δ or without budget injection (the
fixed-budget variant), and returns small per-example arrays (`BatchResults`): class
log-probabilities, the chosen τ, kept fractions, the hard mask's precision / IoU against the
object mask, per-region PxAP ingredients, and the deletion / insertion fidelity agreement at
every requested fraction (all fractions in one batched `lax.map`).

`EvalAccumulator` adds batches on the host without holding the split: sums, two PxAP score
histograms, per-class counts and, per example, only a few scalars and the class
probabilities ([N, C], for AUROC / AUPR). `summary()` turns them into the report's numbers.

Fidelity follows the published code: regions are ranked by sigmoid(μ) at the budget used;
deletion at t blacks out the top regions whose cumulative area is below t plus the first one
crossing t (so t = 0 still removes the top region); insertion with t masked keeps only the top
regions whose cumulative area stays below 1 − t. Both act on the already-masked image the
classifier saw, and the score is agreement with the model's own prediction, not the label.
Curve areas use the trapezoid rule over [0, 1] (RISE), against the fraction removed
(deletion) or the fraction shown, 1 − t (insertion).

PxAP uses the reference's bin width, 1e-5. A pixel's score is sigmoid(μ) of its region, so
the per-pixel histograms are built from per-region values weighted by their object and
background pixel counts: the same counts as histogramming every pixel, for O(K) host work per
image instead of O(H·W).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from grouped_select import budget as budget_lib
from grouped_select import budget_head as budget_head_lib
from grouped_select import metrics, regions, selection
from grouped_select.model import P2P

PXAP_BIN_WIDTH = 1e-5
DELETION_POINTS = metrics.DELETION_FRACTIONS
INSERTION_POINTS = metrics.INSERTION_MASKED_FRACTIONS


def fidelity_fractions(step: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The fractions at which fidelity is measured: a regular grid plus the reported points.

    Args:
      step: grid spacing over [0, 1]; 1 / step must be an integer.

    Returns:
      (deletion [Fd] fractions removed, insertion [Fi] fractions masked), both float64,
      increasing, containing 0, 1, every grid point and `DELETION_POINTS` /
      `INSERTION_POINTS` exactly (values rounded to 10 decimals, so 1 − 0.2 is 0.8).

    Raises:
      ValueError: `step` does not divide [0, 1] into equal parts.
    """
    count = round(1.0 / step) if step > 0 else 0
    if not (0 < step <= 1 and math.isclose(count * step, 1.0, abs_tol=1e-9)):
        raise ValueError(f"curve step must divide [0, 1] into equal parts, got {step}.")
    grid = np.linspace(0.0, 1.0, count + 1)
    deletion = np.unique(np.round(np.concatenate([grid, DELETION_POINTS]), 10))
    insertion = np.unique(np.round(np.concatenate([grid, INSERTION_POINTS]), 10))
    return deletion, insertion


def fidelity_agreement(
    classify: Callable[[jax.Array], jax.Array],
    masked_image: ArrayLike,
    region_ids: ArrayLike,
    region_probs: ArrayLike,
    sizes: ArrayLike,
    prediction: ArrayLike,
    fractions: ArrayLike,
    *,
    mode: str,
    fill_value: ArrayLike,
    chunk: int | None = None,
) -> jax.Array:
    """Whether the prediction survives deletion / insertion, at every fraction (jittable).

    Args:
      classify: images [..., B, H, W, 3] -> logits [..., B, C] (e.g. `P2P.classify`; with
        `chunk` it is vmapped over the fractions of a chunk).
      masked_image: [B, H, W, 3] the image the classifier saw (already masked).
      region_ids: [B, H, W] ids in [0, K).
      region_probs: [B, K] keep-probabilities sigmoid(μ) that rank the regions.
      sizes: [B, K] region pixel counts.
      prediction: [B] the model's own predicted class on `masked_image`.
      fractions: [F] fractions t: removed ("deletion") or masked ("insertion").
      mode: "deletion" or "insertion" (see `metrics.fidelity_keep`).
      fill_value: [3] value of a removed pixel.
      chunk: classify this many fractions at once (None: all of them in one batch).

    Returns:
      [F, B] float32, 1 where the arg-max class after removal equals `prediction`.
    """
    masked_image = jnp.asarray(masked_image)
    prediction = jnp.asarray(prediction)

    def at(t):
        keep = metrics.fidelity_keep(region_probs, sizes, t, mode)
        images = selection.mask_regions(masked_image, region_ids, keep, fill_value)
        return (jnp.argmax(classify(images), axis=-1) == prediction).astype(jnp.float32)

    fractions = jnp.asarray(fractions, jnp.float32)
    batch_size = fractions.shape[0] if chunk is None else min(chunk, fractions.shape[0])
    return jax.lax.map(at, fractions, batch_size=batch_size)


class BatchResults(NamedTuple):
    """Per-example evaluation results of one batch (`evaluate_batch`).

    Attributes:
      log_probs: [B, C] log(softmax + 1e-6) on the masked input.
      budget: [B] the budget τ used (searched, or the fixed budget).
      confident: [B] bool, the search reached δ below τ = 1 (False for fixed budgets).
      kept_fraction: [B] soft kept fraction p̄ = Σ sigmoid(μ_j)|R_j| / (H W).
      kept_pixels: [B] fraction of pixels the hard mask keeps.
      selected: [B, K] 0/1 kept regions.
      region_probs: [B, K] sigmoid(μ) at the budget used (the per-pixel PxAP score).
      region_sizes: [B, K] region pixel counts.
      object_pixels: [B, K] object-mask pixels in each region.
      mask_precision: [B] |m ∩ gt| / |m| of the hard mask m.
      mask_iou: [B] |m ∩ gt| / |m ∪ gt|.
      deletion: [Fd, B] 1 where the prediction survives deletion at each fraction.
      insertion: [Fi, B] 1 where the prediction survives insertion at each masked fraction.
    """

    log_probs: jax.Array
    budget: jax.Array
    confident: jax.Array
    kept_fraction: jax.Array
    kept_pixels: jax.Array
    selected: jax.Array
    region_probs: jax.Array
    region_sizes: jax.Array
    object_pixels: jax.Array
    mask_precision: jax.Array
    mask_iou: jax.Array
    deletion: jax.Array
    insertion: jax.Array


def evaluate_batch(
    model: P2P,
    images: jax.Array,
    region_ids: jax.Array,
    object_mask: jax.Array,
    *,
    num_regions: int,
    certainty: float | None,
    deletion_fractions: ArrayLike,
    insertion_fractions: ArrayLike,
    fixed_budget: float = 0.2,
    budget_step: float = 0.05,
    grid_chunk: int | None = None,
    fraction_chunk: int | None = None,
    budget_head: budget_head_lib.BudgetHead | None = None,
) -> BatchResults:
    """Evaluates one batch (jittable; the model in evaluation mode).

    Args:
      model: a trained `P2P` model.
      images: [B, H, W, 3] normalised images.
      region_ids: [B, H, W] superpixel ids in [0, num_regions).
      object_mask: [B, H, W] ground-truth object mask (nonzero = object; zeros if none).
      num_regions: static K.
      certainty: δ of the dynamic budget search (grid method); None evaluates a fixed-budget
        model without budget injection.
      deletion_fractions: [Fd] fractions removed (`fidelity_fractions`).
      insertion_fractions: [Fi] fractions masked.
      fixed_budget: reported as τ when `certainty` is None (the model's training budget).
      budget_step: the search's grid step.
      grid_chunk: the search classifies this many budgets at once (None: all).
      fraction_chunk: fidelity classifies this many fractions at once (None: all).
      budget_head: one-pass inference: τ from this fitted head instead of the search
        (`certainty` is then ignored; `confident` is False).

    Returns:
      `BatchResults`.
    """
    batch = images.shape[0]
    if budget_head is not None:
        outputs, budget = budget_head_lib.one_pass_forward(
            model, budget_head, images, region_ids, num_regions=num_regions
        )
        confident = jnp.zeros((batch,), bool)
    elif certainty is None:
        outputs = model.eval_forward(images, region_ids, num_regions=num_regions)
        budget = jnp.full((batch,), fixed_budget, jnp.float32)
        confident = jnp.zeros((batch,), bool)
    else:
        search = budget_lib.dynamic_budget_search(
            model,
            images,
            region_ids,
            certainty,
            num_regions=num_regions,
            step=budget_step,
            method="grid",
            grid_chunk=grid_chunk,
        )
        outputs, budget, confident = search.outputs, search.budget, search.confident
    scores = outputs.scores
    probs = scores.probs
    prediction = jnp.argmax(outputs.log_probs, axis=-1)
    fidelity = {
        mode: fidelity_agreement(
            model.classify,
            outputs.masked_image,
            region_ids,
            probs,
            scores.sizes,
            prediction,
            fractions,
            mode=mode,
            fill_value=model.fill_value,
            chunk=fraction_chunk,
        )
        for mode, fractions in (
            ("deletion", deletion_fractions),
            ("insertion", insertion_fractions),
        )
    }
    pixel_mask = regions.broadcast_to_pixels(outputs.selected, region_ids)
    overlap = metrics.mask_overlap(pixel_mask, object_mask)
    is_object = (jnp.asarray(object_mask) != 0).astype(jnp.float32)[..., None]
    object_pixels = regions.region_sums(is_object, region_ids, num_regions)[..., 0]
    return BatchResults(
        log_probs=outputs.log_probs,
        budget=budget.astype(jnp.float32),
        confident=confident,
        kept_fraction=scores.kept_fraction,
        kept_pixels=outputs.kept_pixels,
        selected=outputs.selected,
        region_probs=probs,
        region_sizes=scores.sizes,
        object_pixels=object_pixels,
        mask_precision=overlap["precision"],
        mask_iou=overlap["iou"],
        deletion=fidelity["deletion"],
        insertion=fidelity["insertion"],
    )


def batch_evaluator(
    model: P2P, budget_head: budget_head_lib.BudgetHead | None = None, **settings: Any
) -> Callable[..., BatchResults]:
    """`evaluate_batch` under `jax.jit`, with the model's state as an argument (not a constant).

    Args:
      model: the `P2P` model in evaluation mode; place its state (e.g. replicated over a mesh)
        before calling this.
      budget_head: optional fitted `BudgetHead` (one-pass inference; its state is an argument
        too).
      **settings: the other keyword arguments of `evaluate_batch` (static).

    Returns:
      `fn(images [B, H, W, 3], region_ids [B, H, W], object_mask [B, H, W]) -> BatchResults`.
    """
    graphdef, state = nnx.split((model, budget_head))

    @jax.jit
    def run(state, images, region_ids, object_mask):
        model, head = nnx.merge(graphdef, state)
        return evaluate_batch(model, images, region_ids, object_mask, budget_head=head, **settings)

    return lambda images, region_ids, object_mask: run(state, images, region_ids, object_mask)


class GalleryExample(NamedTuple):
    """One example kept for the gallery figure.

    Attributes:
      pixels: [H, W, 3] uint8 RGB input (un-normalised).
      region_ids: [H, W] superpixel ids.
      selected: [K] 0/1 kept regions.
      label: true class.
      prediction: predicted class.
      confidence: its probability.
      budget: τ used.
      kept_pixels: fraction of pixels kept.
    """

    pixels: np.ndarray
    region_ids: np.ndarray
    selected: np.ndarray
    label: int
    prediction: int
    confidence: float
    budget: float
    kept_pixels: float


def _fraction_key(t: float) -> str:
    return f"{float(t):g}"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# What `EvalAccumulator` keeps per example (`EvalAccumulator.column`).
EXAMPLE_COLUMNS = ("label", "probs", "budget", "kept_pixels", "kept_fraction", "confident")


class EvalAccumulator:
    """Adds `BatchResults` over a split on the host and summarises them.

    Memory: O(bins + classes + fractions) sums plus, per example, its class probabilities
    ([N, C] float32) and four scalars (label, τ, kept fractions), and `gallery_size` examples.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        deletion_fractions: ArrayLike,
        insertion_fractions: ArrayLike,
        *,
        certainty: float | None = None,
        bin_width: float = PXAP_BIN_WIDTH,
        gallery_size: int = 8,
    ):
        """Starts empty.

        Args:
          class_names: [C] names of the classes.
          deletion_fractions: [Fd] the fractions removed of `BatchResults.deletion`.
          insertion_fractions: [Fi] the fractions masked of `BatchResults.insertion`.
          certainty: δ of the search (None: a fixed-budget model); reported only.
          bin_width: PxAP histogram bin width.
          gallery_size: how many (valid, first) examples to keep for the gallery.
        """
        self.class_names = [str(c) for c in class_names]
        self.deletion_fractions = np.asarray(deletion_fractions, np.float64)
        self.insertion_fractions = np.asarray(insertion_fractions, np.float64)
        self.certainty = certainty
        self.bin_width = bin_width
        self.gallery_size = gallery_size
        self.pxap = metrics.PixelAveragePrecision(bin_width)
        self.deletion_sum = np.zeros(len(self.deletion_fractions), np.float64)
        self.insertion_sum = np.zeros(len(self.insertion_fractions), np.float64)
        self.mask_precision_sum = 0.0
        self.mask_iou_sum = 0.0
        self.mask_count = 0
        self._columns: dict[str, list[np.ndarray]] = {k: [] for k in EXAMPLE_COLUMNS}
        self.gallery: list[GalleryExample] = []

    def update(
        self,
        results: BatchResults,
        labels: ArrayLike,
        valid: ArrayLike,
        has_mask: ArrayLike,
        pixels: ArrayLike | None = None,
        region_ids: ArrayLike | None = None,
    ) -> None:
        """Adds one batch; padding (valid False) is ignored.

        Args:
          results: `BatchResults` of the batch (device or host arrays).
          labels: [B] true classes.
          valid: [B] False for padding examples.
          has_mask: [B] whether the example has a ground-truth object mask.
          pixels: [B, H, W, 3] uint8 RGB images, as the input pipeline yields them (only
            needed to fill the gallery).
          region_ids: [B, H, W] superpixel ids (only needed to fill the gallery).
        """
        r = BatchResults(*(np.asarray(v) for v in jax.device_get(tuple(results))))
        valid = np.asarray(valid).astype(bool)
        with_mask = valid & np.asarray(has_mask).astype(bool)
        labels = np.asarray(labels)
        probs = np.exp(r.log_probs.astype(np.float64))
        probs /= probs.sum(-1, keepdims=True)
        for name, value in (
            ("label", labels),
            ("probs", probs.astype(np.float32)),
            ("budget", r.budget),
            ("kept_pixels", r.kept_pixels),
            ("kept_fraction", r.kept_fraction),
            ("confident", r.confident),
        ):
            self._columns[name].append(np.asarray(value)[valid])
        self.deletion_sum += r.deletion[:, valid].sum(-1)
        self.insertion_sum += r.insertion[:, valid].sum(-1)
        self.mask_precision_sum += float(r.mask_precision[with_mask].sum())
        self.mask_iou_sum += float(r.mask_iou[with_mask].sum())
        self.mask_count += int(with_mask.sum())
        objects = r.object_pixels[with_mask].astype(np.float64)
        background = r.region_sizes[with_mask].astype(np.float64) - objects
        scores = r.region_probs[with_mask].astype(np.float64).ravel()
        self.pxap.update_counts(scores, objects.ravel(), background.ravel())
        if pixels is not None and region_ids is not None:
            self._add_gallery(r, probs, labels, valid, pixels, region_ids)

    def _add_gallery(self, r, probs, labels, valid, pixels, region_ids) -> None:
        need = self.gallery_size - len(self.gallery)
        if need <= 0:
            return
        picked = np.flatnonzero(valid)[:need]
        pixels = np.asarray(pixels, np.uint8)[picked]
        ids = np.asarray(region_ids)[picked]
        for j, i in enumerate(picked):
            prediction = int(np.argmax(probs[i]))
            self.gallery.append(
                GalleryExample(
                    pixels=pixels[j],
                    region_ids=ids[j],
                    selected=r.selected[i],
                    label=int(labels[i]),
                    prediction=prediction,
                    confidence=float(probs[i, prediction]),
                    budget=float(r.budget[i]),
                    kept_pixels=float(r.kept_pixels[i]),
                )
            )

    def column(self, name: str) -> np.ndarray:
        """Per-example values of the valid examples so far.

        Args:
          name: "label", "probs", "budget", "kept_pixels", "kept_fraction" or "confident".

        Returns:
          [N] (or [N, C] for "probs").
        """
        parts = self._columns[name]
        if not parts:
            shape = (0, len(self.class_names)) if name == "probs" else (0,)
            return np.zeros(shape)
        return np.concatenate(parts)

    @property
    def count(self) -> int:
        """Valid examples added so far."""
        return len(self.column("label"))

    def summary(self) -> dict[str, Any]:
        """The report's numbers (JSON-ready; undefined values are None).

        Returns:
          dict with "mode", "certainty", "count", "mask_count", "accuracy", "auroc", "aupr",
          "kept_fraction" (mean p̄), "kept_pixels" (mean hard fraction), "budget" (mean τ),
          "confident_fraction", "deletion" / "insertion" ({"0.05": agreement, ...}),
          "deletion_curve" / "insertion_curve" ({"fractions", "agreement", "area"}; fractions
          removed / shown), "pxap", "pxap_bin_width", "mask_iou", "mask_precision",
          "per_class" ({name: {"count", "accuracy"}}).

        Raises:
          ValueError: no valid example was added.
        """
        n = self.count
        if n == 0:
            raise ValueError("nothing to summarise: no valid example was added.")
        labels = self.column("label").astype(np.int64)
        probs = self.column("probs")
        correct = np.argmax(probs, -1) == labels
        auc = metrics.class_scores_auc(labels, probs)
        deletion = self.deletion_sum / n
        insertion = self.insertion_sum / n
        shown = np.round(1.0 - self.insertion_fractions[::-1], 10)
        shown_agreement = insertion[::-1]
        try:
            pxap = self.pxap.compute()
        except ValueError:  # no object pixel (no masks in this split)
            pxap = None
        per_class = {}
        for c, name in enumerate(self.class_names):
            members = labels == c
            per_class[name] = {
                "count": int(members.sum()),
                "accuracy": float(correct[members].mean()) if members.any() else None,
            }
        dynamic = self.certainty is not None
        masks = self.mask_count
        return {
            "mode": "dynamic" if dynamic else "fixed",
            "certainty": self.certainty,
            "count": n,
            "mask_count": masks,
            "accuracy": float(correct.mean()),
            "auroc": _finite_or_none(auc["auroc"]),
            "aupr": _finite_or_none(auc["aupr"]),
            "kept_fraction": float(self.column("kept_fraction").mean()),
            "kept_pixels": float(self.column("kept_pixels").mean()),
            "budget": float(self.column("budget").mean()),
            "confident_fraction": float(self.column("confident").mean()) if dynamic else None,
            "deletion": {
                _fraction_key(t): float(deletion[np.isclose(self.deletion_fractions, t)][0])
                for t in DELETION_POINTS
                if np.isclose(self.deletion_fractions, t).any()
            },
            "insertion": {
                _fraction_key(t): float(insertion[np.isclose(self.insertion_fractions, t)][0])
                for t in INSERTION_POINTS
                if np.isclose(self.insertion_fractions, t).any()
            },
            "deletion_curve": {
                "fractions": self.deletion_fractions.tolist(),
                "agreement": deletion.tolist(),
                "area": metrics.normalized_curve_area(self.deletion_fractions, deletion),
            },
            "insertion_curve": {
                "fractions": shown.tolist(),
                "agreement": shown_agreement.tolist(),
                "area": metrics.normalized_curve_area(shown, shown_agreement),
            },
            "pxap": pxap,
            "pxap_bin_width": self.bin_width,
            "mask_iou": self.mask_iou_sum / masks if masks else None,
            "mask_precision": self.mask_precision_sum / masks if masks else None,
            "per_class": per_class,
        }


# --- Figures (matplotlib, Agg) and the markdown report. ---
