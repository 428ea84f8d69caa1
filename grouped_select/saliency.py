"""Post-hoc saliency on a black-box classifier, evaluated in the same harness as P2P.

The comparison the paper makes: instead of a model that selects its own input, explain a
classifier trained on full images after the fact, keep its most salient pixels (as many as P2P
keeps) and measure the same numbers (accuracy on the kept pixels, mask precision, PxAP,
deletion / insertion fidelity).

Both attributions are measured from the image in which every pixel is removed (`baseline`,
the fill value P2P writes, normalised black), so a pixel's attribution is about the operation
P2P performs: removing it.
- gradient × input: (x − x₀) ⊙ ∂f_c/∂x.
- integrated gradients (Sundararajan et al., 2017): (x − x₀) ⊙ the mean of ∂f_c/∂x along the
  straight path x₀ → x, midpoint Riemann sum with `num_steps` points.
A pixel's saliency is |Σ_channels attribution|; c is the class the model predicts on the full
image (what a user explains).

`evaluate_saliency_batch` treats every pixel as a region (`regions.pixel_region_ids`), so the
fidelity tests, PxAP and mask metrics are literally the ones `evaluation.evaluate_batch`
computes for P2P, and `evaluation.EvalAccumulator` adds the results.
"""

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from grouped_select import metrics, objective, regions, selection
from grouped_select.evaluation import BatchResults, fidelity_agreement

Method = Literal["gradient_x_input", "integrated_gradients"]
METHODS = ("gradient_x_input", "integrated_gradients")

Classify = Callable[[jax.Array], jax.Array]


def _target_logit_grad(classify: Classify, images: jax.Array, targets: jax.Array) -> jax.Array:
    """∂ logit_target / ∂ image for every image of the batch (images are independent)."""

    def total(x):
        logits = classify(x)
        return jnp.take_along_axis(logits, targets[:, None], axis=-1).sum()

    return jax.grad(total)(images)


def _pixel_attribution(images: jax.Array, baseline: ArrayLike, grads: jax.Array) -> jax.Array:
    """|Σ_channels (x − x₀) ⊙ grads|: [B, H, W, 3] -> [B, H, W]."""
    return jnp.abs(((images - jnp.asarray(baseline, jnp.float32)) * grads).sum(-1))


def gradient_x_input(
    classify: Classify, images: ArrayLike, targets: ArrayLike, baseline: ArrayLike
) -> jax.Array:
    """Pixel saliency |Σ_c (x − x₀) ∂f_target/∂x| (jittable).

    Args:
      classify: images [B, H, W, 3] -> logits [B, C].
      images: [B, H, W, 3] normalised images.
      targets: [B] classes to explain.
      baseline: [3] (or broadcastable) value of a removed pixel.

    Returns:
      [B, H, W] float32 non-negative saliency.
    """
    images = jnp.asarray(images, jnp.float32)
    grads = _target_logit_grad(classify, images, jnp.asarray(targets))
    return _pixel_attribution(images, baseline, grads)


def integrated_gradients(
    classify: Classify,
    images: ArrayLike,
    targets: ArrayLike,
    baseline: ArrayLike,
    *,
    num_steps: int = 32,
    chunk: int | None = None,
) -> jax.Array:
    """Pixel saliency |Σ_c (x − x₀) mean_α ∂f_target/∂x(x₀ + α(x − x₀))| (jittable).

    Args:
      classify: images [B, H, W, 3] -> logits [B, C].
      images: [B, H, W, 3] normalised images.
      targets: [B] classes to explain.
      baseline: [3] (or broadcastable) value of a removed pixel.
      num_steps: path points α = (i + 0.5) / num_steps (static).
      chunk: differentiate this many path points at once (None: all; lower it to save memory).

    Returns:
      [B, H, W] float32 non-negative saliency.
    """
    images = jnp.asarray(images, jnp.float32)
    targets = jnp.asarray(targets)
    baseline = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), images.shape)
    alphas = (jnp.arange(num_steps, dtype=jnp.float32) + 0.5) / num_steps

    def grad_at(alpha):
        return _target_logit_grad(classify, baseline + alpha * (images - baseline), targets)

    grads = jax.lax.map(grad_at, alphas, batch_size=chunk or num_steps).mean(0)
    return _pixel_attribution(images, baseline, grads)


def saliency(
    method: Method,
    classify: Classify,
    images: ArrayLike,
    targets: ArrayLike,
    baseline: ArrayLike,
    **kwargs,
) -> jax.Array:
    """`gradient_x_input` or `integrated_gradients` by name (`METHODS`); kwargs go to IG."""
    if method == "gradient_x_input":
        return gradient_x_input(classify, images, targets, baseline)
    if method == "integrated_gradients":
        return integrated_gradients(classify, images, targets, baseline, **kwargs)
    raise ValueError(f"saliency method must be one of {METHODS}, got {method!r}.")


def top_fraction(scores: ArrayLike, fraction: ArrayLike) -> jax.Array:
    """Keeps each image's highest-scoring pixels, round(fraction · N) of them.

    Ties are broken by position (stable sort), so exactly that many pixels are kept.

    Args:
      scores: [B, N] per-pixel scores.
      fraction: scalar or [B] fraction of the N pixels to keep, in [0, 1].

    Returns:
      [B, N] float32 0/1 keep values.
    """
    scores = jnp.asarray(scores, jnp.float32)
    count = scores.shape[-1]
    keep_count = jnp.round(jnp.asarray(fraction, jnp.float32) * count)
    keep_count = jnp.broadcast_to(keep_count, scores.shape[:1])[:, None]
    order = jnp.argsort(-scores, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)  # rank[b, i]: position of pixel i in the order
    return (rank < keep_count).astype(jnp.float32)


def evaluate_saliency_batch(
    classify: Classify,
    images: jax.Array,
    object_mask: jax.Array,
    pixel_saliency: jax.Array,
    kept_fraction: ArrayLike,
    *,
    fill_value: ArrayLike,
    deletion_fractions: ArrayLike,
    insertion_fractions: ArrayLike,
    fraction_chunk: int | None = None,
) -> BatchResults:
    """Evaluates a saliency map as an explanation, like `evaluation.evaluate_batch` (jittable).

    The classifier sees the image with only its top `kept_fraction` salient pixels (the rest
    removed), as P2P's classifier sees its selection. Every pixel is a region: the PxAP score
    of a pixel is its saliency divided by the image's maximum, and fidelity ranks pixels by
    saliency on that masked image, as P2P's fidelity ranks regions on its masked image.

    Args:
      classify: images [..., B, H, W, 3] -> logits [..., B, C] (e.g. `BlackBox.classify`).
      images: [B, H, W, 3] normalised images.
      object_mask: [B, H, W] ground-truth object mask (nonzero = object).
      pixel_saliency: [B, H, W] non-negative saliency.
      kept_fraction: scalar or [B] fraction of pixels kept (e.g. P2P's per image).
      fill_value: [3] value of a removed pixel.
      deletion_fractions: [Fd] fractions removed.
      insertion_fractions: [Fi] fractions masked.
      fraction_chunk: fidelity classifies this many fractions at once (None: all).

    Returns:
      `BatchResults` with K = H · W pixel regions; `budget` holds the kept fraction asked for.
    """
    batch, height, width = pixel_saliency.shape
    ids = regions.pixel_region_ids(batch, height, width)
    scores = jnp.asarray(pixel_saliency, jnp.float32).reshape(batch, -1)
    probs = scores / jnp.maximum(scores.max(-1, keepdims=True), 1e-30)
    sizes = jnp.ones_like(probs)
    selected = top_fraction(scores, kept_fraction)
    masked = selection.mask_regions(images, ids, selected, fill_value)
    log_probs = objective.mc_log_probs(classify(masked)[None])
    prediction = jnp.argmax(log_probs, axis=-1)
    fidelity = {
        mode: fidelity_agreement(
            classify,
            masked,
            ids,
            probs,
            sizes,
            prediction,
            fractions,
            mode=mode,
            fill_value=fill_value,
            chunk=fraction_chunk,
        )
        for mode, fractions in (
            ("deletion", deletion_fractions),
            ("insertion", insertion_fractions),
        )
    }
    is_object = jnp.asarray(object_mask) != 0
    overlap = metrics.mask_overlap(selected.reshape(ids.shape), is_object)
    is_object = is_object.reshape(batch, -1)
    kept = selected.mean(-1)
    return BatchResults(
        log_probs=log_probs,
        budget=jnp.broadcast_to(jnp.asarray(kept_fraction, jnp.float32), (batch,)),
        confident=jnp.zeros((batch,), bool),
        kept_fraction=kept,
        kept_pixels=kept,
        selected=selected,
        region_probs=probs,
        region_sizes=sizes,
        object_pixels=is_object.astype(jnp.float32),
        mask_precision=overlap["precision"],
        mask_iou=overlap["iou"],
        deletion=fidelity["deletion"],
        insertion=fidelity["insertion"],
    )


def saliency_evaluator(
    model,
    method: Method,
    *,
    deletion_fractions: ArrayLike,
    insertion_fractions: ArrayLike,
    fraction_chunk: int | None = None,
    num_steps: int = 32,
    chunk: int | None = None,
) -> Callable[..., BatchResults]:
    """Saliency + `evaluate_saliency_batch` under `jax.jit`, the model's state an argument.

    Args:
      model: a `BlackBox` (anything with `classify` and `fill_value`), evaluation mode.
      method: one of `METHODS`; the explained class is the prediction on the full image.
      deletion_fractions, insertion_fractions, fraction_chunk: as `evaluate_saliency_batch`.
      num_steps, chunk: integrated gradients' path points and chunking.

    Returns:
      `fn(images [B, H, W, 3], object_mask [B, H, W], kept_fraction [B]) -> BatchResults`.
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    ig = {"num_steps": num_steps, "chunk": chunk} if method == "integrated_gradients" else {}

    @jax.jit
    def run(state, images, object_mask, kept_fraction):
        m = nnx.merge(graphdef, state)
        targets = jnp.argmax(m.classify(images), axis=-1)
        pixel_saliency = saliency(method, m.classify, images, targets, m.fill_value, **ig)
        return evaluate_saliency_batch(
            m.classify,
            images,
            object_mask,
            pixel_saliency,
            kept_fraction,
            fill_value=m.fill_value,
            deletion_fractions=deletion_fractions,
            insertion_fractions=insertion_fractions,
            fraction_chunk=fraction_chunk,
        )

    return lambda images, object_mask, kept_fraction: run(state, images, object_mask, kept_fraction)
