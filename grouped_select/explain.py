"""Explaining one image: what a trained P2P model kept, what it predicted, at which budget.

`prepare_image` turns any RGB / grayscale / RGBA image into the model's input and superpixels,
`explain` runs the dynamic budget search (or a fixed budget) on it, and `render` draws the
result: the image with its superpixel boundaries, the kept regions, and the prediction with
its confidence and the chosen budget.
"""

import os
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from grouped_select import budget as budget_lib
from grouped_select import color
from grouped_select.data.augment import eval_transform
from grouped_select.data.folders import read_image
from grouped_select.data.superpixels import slic_regions
from grouped_select.model import P2P


class PreparedImage(NamedTuple):
    """An image ready for the model.

    Attributes:
      pixels: [S, S, 3] uint8 RGB after resize and centre crop (for display).
      x: [1, S, S, 3] float32 ImageNet-normalised model input.
      region_ids: [1, S, S] int32 superpixel ids in [0, num_regions).
    """

    pixels: np.ndarray
    x: np.ndarray
    region_ids: np.ndarray


class Explanation(NamedTuple):
    """What the model did with one image.

    Attributes:
      label: predicted class index.
      confidence: its probability.
      budget: the budget τ used (chosen by the search, or given).
      selected: [K] 0/1 kept regions.
      kept_fraction: fraction of pixels kept.
      masked: [S, S, 3] normalised image the classifier saw.
    """

    label: int
    confidence: float
    budget: float
    selected: np.ndarray
    kept_fraction: float
    masked: np.ndarray


def prepare_image(
    image: np.ndarray | str | os.PathLike,
    *,
    image_size: int,
    num_regions: int,
    n_segments: int = 100,
    compactness: float = 20.0,
    crop_fraction: float = 1.0,
) -> PreparedImage:
    """Resizes an image (file or array, any size) and computes its superpixels.

    SLIC runs on the image as the model sees it (after resize and crop), as at training.

    Args:
      image: a file path, or [H, W, 3] / [H, W] / [H, W, 4] uint8 array.
      image_size: the model's input side S.
      num_regions: the model's region bound K.
      n_segments, compactness: SLIC settings (those the model was trained with).
      crop_fraction: resize the shorter side to S / crop_fraction, then centre crop.

    Returns:
      `PreparedImage`.

    Raises:
      FileNotFoundError: the path does not exist.
      grouped_select.data.folders.CorruptFileError: the file is not a readable image.
      ValueError: an array of an unsupported shape.
    """
    if isinstance(image, str | os.PathLike):
        if not os.path.exists(image):
            raise FileNotFoundError(f"no image at {os.fspath(image)!r}.")
        image = read_image(image)  # grayscale / RGBA / palette become RGB
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 4:
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = (image[..., :3] * alpha).round().astype(np.uint8)  # composite on black
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an [H, W], [H, W, 3] or [H, W, 4] image, got {image.shape}.")
    image = image.astype(np.uint8)
    placeholder = np.zeros(image.shape[:2], np.int32)
    view = eval_transform(
        image,
        placeholder,
        placeholder.astype(np.uint8),
        image_size=image_size,
        num_regions=num_regions,
        crop_fraction=crop_fraction,
    )
    pixels = np.asarray(view["image"], np.uint8)
    ids = slic_regions(
        pixels, n_segments=n_segments, compactness=compactness, num_regions=num_regions
    )
    x = np.asarray(color.normalize(pixels))[None]
    return PreparedImage(pixels, x, ids[None].astype(np.int32))


def explain(
    model: P2P,
    prepared: PreparedImage,
    *,
    num_regions: int,
    certainty: float | None = 0.9,
    budget: float | None = None,
) -> Explanation:
    """Runs the model on one prepared image.

    Args:
      model: a trained `P2P` model (put in evaluation mode here).
      prepared: from `prepare_image`.
      num_regions: the model's region bound K.
      certainty: δ for the dynamic budget search (dynamic-budget models).
      budget: a fixed τ instead of the search; None with certainty=None runs the model without
        budget injection (fixed-budget models).

    Returns:
      `Explanation`.
    """
    model.eval()

    @nnx.jit
    def run(model, x, ids):
        if budget is None and certainty is not None:
            search = budget_lib.dynamic_budget_search(
                model, x, ids, certainty, num_regions=num_regions
            )
            return search.outputs, search.budget
        out = model.eval_forward(x, ids, num_regions=num_regions, budget=budget)
        return out, jax.numpy.full((x.shape[0],), -1.0 if budget is None else budget)

    outputs, chosen = jax.device_get(run(model, prepared.x, prepared.region_ids))
    probs = np.exp(np.asarray(outputs.log_probs[0], np.float64))
    label = int(np.argmax(probs))
    return Explanation(
        label=label,
        confidence=float(probs[label] / probs.sum()),
        budget=float(chosen[0]),
        selected=np.asarray(outputs.selected[0]),
        kept_fraction=float(outputs.kept_pixels[0]),
        masked=np.asarray(outputs.masked_image[0]),
    )


def render(
    prepared: PreparedImage,
    explanation: Explanation,
    path: str | os.PathLike,
    class_names: list[str] | None = None,
) -> None:
    """Writes a PNG: the image with superpixel boundaries, and what the model kept.

    Args:
      prepared: the image (`prepare_image`).
      explanation: the model's result on it (`explain`).
      path: output .png path.
      class_names: names for the class indices (default: the indices).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import mark_boundaries

    ids = prepared.region_ids[0]
    kept_pixels = explanation.selected[ids] > 0
    image = prepared.pixels.astype(np.float32) / 255.0
    shown = image * kept_pixels[..., None]
    name = class_names[explanation.label] if class_names else str(explanation.label)
    budget = "fixed" if explanation.budget < 0 else f"{explanation.budget:.2f}"
    fig, axes = plt.subplots(1, 2, figsize=(8, 5))
    axes[0].imshow(mark_boundaries(image, ids, color=(1, 1, 0)))
    axes[0].set_title("input and superpixels")
    axes[1].imshow(mark_boundaries(shown, ids * kept_pixels, color=(1, 0.3, 0.3)))
    axes[1].set_title(
        f"kept {explanation.kept_fraction:.0%} (τ = {budget})\n"
        f"predicted {name}: {explanation.confidence:.0%}"
    )
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
