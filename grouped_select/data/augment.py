"""Joint augmentation of image, superpixel ids and object mask (numpy, runs in grain workers).

Geometry (random resized crop, horizontal flip, evaluation resize + centre crop) is applied to
all three arrays with the same crop box: the image is resampled bilinearly by PIL (which
antialiases when shrinking, like torchvision), ids and mask by nearest neighbour at the same
pixel centres, so they stay aligned. After the crop, ids are relabelled to consecutive ids of
the regions still present and kept below `num_regions` (`superpixels.limit_regions`). Colour
jitter touches the image only and follows torchvision's PIL implementation; its parameters are
drawn here, per example, and applied on the accelerator by `grouped_select.color` (so the
pipeline ships uint8 images and normalisation happens there too).

Ids come from SLIC on the stored (un-augmented) image; the reference recomputes SLIC after
augmentation instead, which costs ~38 ms per 224^2 image per epoch.

Images may be given decoded ([H, W, 3] uint8) or as the stored PNG / JPEG bytes
(`ImageInput`): the training pipeline passes the bytes, so PIL decodes straight into the image
it resamples instead of into a numpy array that is then copied back into PIL.
"""

import io

import numpy as np
from PIL import Image

from grouped_select.color import sample_color_jitter
from grouped_select.data.superpixels import limit_regions

Box = tuple[float, float, float, float]  # (top, left, height, width) in source pixels.
# An image: [H, W, 3] uint8 array-like, its encoded PNG / JPEG bytes, or a PIL image.
ImageInput = np.ndarray | bytes | Image.Image


def open_image(image: ImageInput) -> Image.Image:
    """An RGB PIL image of `image` (encoded bytes are decoded by PIL, as tfds decodes them).

    Args:
      image: [H, W, 3] uint8 array-like, encoded PNG / JPEG bytes, or a PIL image.

    Returns:
      A PIL image in mode "RGB".
    """
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, bytes | bytearray | memoryview):
        pil = Image.open(io.BytesIO(image))
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 image, got {array.dtype} {array.shape}.")
        pil = Image.fromarray(array)
    return pil if pil.mode == "RGB" else pil.convert("RGB")


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """torchvision's RandomResizedCrop.get_params: 10 tries, then a centre crop.

    Returns:
      (top, left, height, width) of the crop in source pixels.
    """
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, *, image_size: int, crop_fraction: float) -> Box:
    """Box of "resize shorter side to image_size / crop_fraction, centre crop image_size".

    crop_fraction=0.875 is the ImageNet convention (resize 256, crop 224); 1.0 keeps the whole
    shorter side (for test sets already cropped to size, e.g. ImageNet-9, COCO-10).

    Returns:
      (top, left, height, width) in source pixels (floats).
    """
    side = min(height, width) * crop_fraction
    return (height - side) / 2.0, (width - side) / 2.0, side, side


def _nearest_index(start: float, length: float, out: int, limit: int) -> np.ndarray:
    # Source pixel whose extent contains the centre of each output pixel (PIL's convention).
    idx = np.floor(start + (np.arange(out) + 0.5) * (length / out)).astype(np.int64)
    return np.clip(idx, 0, limit - 1)


def _take_nearest(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    # values[np.ix_(rows, cols)], as two 1-D takes: whole rows first, then columns (~5x faster
    # at 224^2, where one ix_ gather costs ~0.3 ms per array).
    return values.take(rows, axis=0).take(cols, axis=1)


def crop_and_resize(
    image: ImageInput,
    region_ids: np.ndarray,
    mask: np.ndarray | None,
    box: Box,
    out_size: int,
    *,
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Crops `box` from all three arrays and resizes it to out_size x out_size.

    Args:
      image: [H, W, 3] uint8, or its encoded bytes (`ImageInput`).
      region_ids: [H, W] int.
      mask: [H, W] uint8 / bool, or None (no mask: training does not read it).
      box: (top, left, height, width) in source pixels.
      out_size: S.
      flip: also flip the result horizontally (the same as reversing the outputs' columns,
        without a strided copy of each array).

    Returns:
      image [S, S, 3] uint8 (bilinear, antialiased), region_ids [S, S] and mask [S, S]
      (nearest neighbour, same dtypes as given; None if mask is None), all C-contiguous.

    Raises:
      ValueError: the image's size is not the ids' [H, W].
    """
    top, left, h, w = box
    height, width = region_ids.shape
    source = open_image(image)
    if source.size != (width, height):
        raise ValueError(
            f"the image is {source.size[1]}x{source.size[0]} (HxW) but its region ids are "
            f"{height}x{width}: they must come from the same stored example."
        )
    pil_box = (left, top, left + w, top + h)
    out = source.resize((out_size, out_size), Image.Resampling.BILINEAR, pil_box)
    rows = _nearest_index(top, h, out_size, height)
    cols = _nearest_index(left, w, out_size, width)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        cols = cols[::-1]
    return (
        np.asarray(out),
        _take_nearest(region_ids, rows, cols),
        None if mask is None else _take_nearest(mask, rows, cols),
    )


def _finish(
    image: np.ndarray, region_ids: np.ndarray, mask: np.ndarray | None, num_regions: int
) -> dict[str, np.ndarray]:
    out = {
        "image": np.ascontiguousarray(image, dtype=np.uint8),
        "region_ids": limit_regions(region_ids, num_regions),
    }
    if mask is not None:
        out["mask"] = np.ascontiguousarray(mask, dtype=np.uint8)
    return out


def train_augment(
    image: ImageInput,
    region_ids: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    *,
    image_size: int,
    num_regions: int,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.2),
) -> dict[str, np.ndarray]:
    """Random resized crop + horizontal flip (joint), and colour-jitter parameters.

    Args:
      image: [H, W, 3] uint8, or its encoded bytes (`ImageInput`).
      region_ids: [H, W] int ids.
      mask: [H, W] uint8 / bool, or None to skip it (the training pipeline does: the step
        never reads the ground-truth mask).
      rng: Generator (grain's per-element rng).
      image_size: S, output side.
      num_regions: K; output ids are relabelled into [0, n), n <= K.
      crop_scale: area fraction range of the crop.
      crop_ratio: aspect ratio range of the crop.
      hflip: flip horizontally with probability 0.5.
      jitter: (brightness, contrast, saturation, hue), or None for no colour jitter. The
        jitter itself runs on the accelerator (`color.color_jitter`), from the parameters
        drawn here.

    Returns:
      dict image [S, S, 3] uint8, region_ids [S, S] int32, mask [S, S] uint8 (unless mask
      is None), and with jitter "jitter_factors" [4] float32 and "jitter_order" [4] int32
      (`sample_color_jitter`).
    """
    height, width = region_ids.shape
    box = random_resized_crop_box(rng, height, width, scale=crop_scale, ratio=crop_ratio)
    flip = hflip and rng.random() < 0.5
    view = crop_and_resize(image, region_ids, mask, box, image_size, flip=flip)
    out = _finish(*view, num_regions)
    if jitter is not None:
        b, c, s, h = jitter
        out.update(sample_color_jitter(rng, brightness=b, contrast=c, saturation=s, hue=h))
    return out


def eval_transform(
    image: np.ndarray,
    region_ids: np.ndarray,
    mask: np.ndarray,
    *,
    image_size: int,
    num_regions: int,
    crop_fraction: float = 0.875,
) -> dict[str, np.ndarray]:
    """Deterministic resize + centre crop (see `center_crop_box`).

    Returns:
      dict image [S, S, 3] uint8, region_ids [S, S] int32, mask [S, S] uint8.
    """
    height, width = region_ids.shape
    box = center_crop_box(height, width, image_size=image_size, crop_fraction=crop_fraction)
    return _finish(*crop_and_resize(image, region_ids, mask, box, image_size), num_regions)
