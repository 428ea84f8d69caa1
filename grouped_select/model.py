"""The P2P model: a selector keeps regions, a classifier sees only the kept regions.

Training (`P2P.train_forward`) samples M relaxed masks per image from the selector's
low-rank logit-normal distribution; evaluation (`P2P.eval_forward`) keeps a region iff its
keep-probability exceeds 0.5. Both return everything the objective and the metrics need.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from grouped_select import objective, regions, selection
from grouped_select.selector import RegionScores, Selector


class TrainOutputs(NamedTuple):
    """Outputs of the sampled (training) forward pass.

    Attributes:
      log_probs: [B, C] log of the Monte-Carlo-averaged class probabilities (+1e-6).
      scores: the selector's `RegionScores` at the budget.
      region_masks: [M, B, K] relaxed (or straight-through) keep values.
    """

    log_probs: jax.Array
    scores: RegionScores
    region_masks: jax.Array


class EvalOutputs(NamedTuple):
    """Outputs of the deterministic (evaluation) forward pass.

    Attributes:
      log_probs: [B, C] log(softmax + 1e-6) of the classifier on the masked image.
      scores: the selector's `RegionScores` at the budget.
      selected: [B, K] 0/1 kept regions, 1[sigmoid(μ) > 0.5].
      masked_image: [B, H, W, 3] what the classifier saw.
      kept_pixels: [B] fraction of pixels kept by the hard mask.
    """

    log_probs: jax.Array
    scores: RegionScores
    selected: jax.Array
    masked_image: jax.Array
    kept_pixels: jax.Array


def _classify(classifier: nnx.Module, images: jax.Array) -> jax.Array:
    """[..., B, H, W, 3] -> [..., B, C] float32 logits, leading axes folded into one batch."""
    lead = images.shape[:-3]
    logits = classifier(images.reshape(-1, *images.shape[-3:]))
    return logits.reshape(*lead, logits.shape[-1]).astype(jnp.float32)


class P2P(nnx.Module):
    """Selector + masking + classifier.

    Attributes:
      selector: `Selector` producing region keep-logits and embeddings.
      classifier: module mapping [N, H, W, 3] images to [N, num_classes] logits.
      fill_value: per-channel value of a removed pixel (normalised black).
    """

    def __init__(
        self,
        selector: Selector,
        classifier: nnx.Module,
        *,
        fill_value: tuple[float, ...] = tuple(selection.black_value().tolist()),
    ):
        """Composes a selector and a classifier.

        Args:
          selector: the `Selector`.
          classifier: any module `classifier(x [N, H, W, 3]) -> [N, C]` logits.
          fill_value: per-channel value written where regions are removed.
        """
        self.selector = selector
        self.classifier = classifier
        self.fill_value = tuple(float(v) for v in fill_value)

    def classify(self, images: jax.Array) -> jax.Array:
        """Classifies masked images with any number of leading axes.

        Args:
          images: [..., B, H, W, 3].

        Returns:
          [..., B, C] float32 logits (the leading axes are folded into one classifier batch).
        """
        return _classify(self.classifier, images)

    def train_forward(
        self,
        x: jax.Array,
        region_ids: jax.Array,
        key: jax.Array,
        *,
        num_regions: int,
        budget: ArrayLike | None = None,
        temperature: ArrayLike = 1.0,
        num_samples: int = 1,
        straight_through: bool = False,
        jitter: float = selection.DEFAULT_JITTER,
    ) -> TrainOutputs:
        """Sampled forward pass used for training.

        Args:
          x: [B, H, W, 3] normalised images.
          region_ids: [B, H, W] superpixel ids in [0, num_regions).
          key: PRNG key for the logit-normal and binary-concrete noise.
          num_regions: static region count K.
          budget: None (fixed-budget model) or [B] / scalar budgets τ fed to the selector.
          temperature: binary-concrete temperature T.
          num_samples: static number M of Monte-Carlo masks.
          straight_through: hard masks forward, relaxed gradients backward.
          jitter: diagonal variance added to Σ (reference parity).

        Returns:
          `TrainOutputs`.
        """
        scores = self.selector(x, region_ids, num_regions, budget)
        key_logits, key_concrete = jax.random.split(key)
        logits = selection.sample_region_logits(
            key_logits, scores.logits, scores.embeddings, num_samples, jitter
        )
        region_masks = selection.relaxed_bernoulli(
            key_concrete, logits, temperature, straight_through
        )
        masked = selection.mask_regions(x, region_ids, region_masks, self.fill_value)
        log_probs = objective.mc_log_probs(self.classify(masked))
        return TrainOutputs(log_probs, scores, region_masks)

    def classify_selection(
        self,
        x: jax.Array,
        region_ids: jax.Array,
        scores: RegionScores,
        log_probs: jax.Array | None = None,
    ) -> EvalOutputs:
        """Classifies the image keeping the regions with sigmoid(μ) > 0.5.

        Args:
          x: [B, H, W, 3] normalised images.
          region_ids: [B, H, W] ids.
          scores: the selector's `RegionScores` for these images.
          log_probs: [B, C] the classifier's output on this selection if already known
            (skips the classifier pass).

        Returns:
          `EvalOutputs`.
        """
        selected = selection.hard_selection(scores.logits)
        # 0/1 selections: one lookup per pixel for all leading entries (e.g. the budgets).
        pixel_mask = regions.broadcast_selections(selected, region_ids)
        masked = selection.mask_image(x, pixel_mask, self.fill_value)
        if log_probs is None:
            log_probs = objective.mc_log_probs(self.classify(masked)[None])
        kept_pixels = regions.kept_fraction(selected, scores.sizes)
        return EvalOutputs(log_probs, scores, selected, masked, kept_pixels)

    def eval_forward(
        self,
        x: jax.Array,
        region_ids: jax.Array,
        *,
        num_regions: int,
        budget: ArrayLike | None = None,
    ) -> EvalOutputs:
        """Deterministic forward pass with the hard mask at a given budget.

        Args:
          x: [B, H, W, 3] normalised images.
          region_ids: [B, H, W] ids in [0, num_regions).
          num_regions: static K.
          budget: None (fixed-budget model) or [B] / scalar τ.

        Returns:
          `EvalOutputs`.
        """
        scores = self.selector(x, region_ids, num_regions, budget)
        return self.classify_selection(x, region_ids, scores)


class BlackBox(nnx.Module):
    """The classifier alone, on full images: the baseline P2P's accuracy is compared with,
    and the model that post-hoc saliency (`grouped_select.saliency`) explains.

    Attributes:
      classifier: module mapping [N, H, W, 3] images to [N, num_classes] logits.
      fill_value: per-channel value of a removed pixel (saliency baselines and masking).
    """

    def __init__(
        self,
        classifier: nnx.Module,
        *,
        fill_value: tuple[float, ...] = tuple(selection.black_value().tolist()),
    ):
        """Wraps `classifier`; `fill_value` as in `P2P`."""
        self.classifier = classifier
        self.fill_value = tuple(float(v) for v in fill_value)

    def classify(self, images: jax.Array) -> jax.Array:
        """[..., B, H, W, 3] images -> [..., B, C] float32 logits."""
        return _classify(self.classifier, images)

    def __call__(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] normalised images -> [B, C] float32 logits."""
        return self.classify(images)
