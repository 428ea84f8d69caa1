"""Published folder layouts of the paper's datasets: scanning, image and mask reading.

A layout maps split names to folders of class sub-folders (torchvision ImageFolder style:
the label is the index of the class folder in sorted order) and, optionally, to a parallel
folder of per-image ground-truth masks, paired by class and file stem
(`<mask_dir>/<class>/<stem>.npy|.png`), or by sorted order within a class
(`mask_pairing="sorted"`, what the reference's `SegmentationDataset` does).

Layouts (paths relative to the root the user passes):
  imagenet     train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (val sorted into class folders)
  imagenet9    train/<class>/, val/<class>/ (IN-9 made from ImageNet with the reference's
               pickles), test = bg_challenge/original/val/<class>/ with masks in
               bg_challenge/fg_mask/val/<class>/*.npy (backgrounds-challenge release; the
               bg_challenge folder may also sit under backgrounds_challenge_data/)
  bam_object   obj/train/<class>/, test = obj/val/<class>/ with masks obj/val_mask/<class>/
  bam_scene    scene/train/<class>/, test = scene/val/<class>/ with scene/val_mask/<class>/
  coco10       train/<class>/ (masks mask/train/<class>/ if present), test = val/<class>/ with
               masks mask/val/<class>/*.npy (the reference's construct_coco10_dataset.py)
  folders      generic: train/, val/ (-> "validation"), test/ class folders, masks optional
               in masks/<split folder>/<class>/<stem>.npy|.png

Reading never passes silently over a bad file: an image or mask that cannot be decoded
raises `CorruptFileError` (the builder skips the example, logs its path and counts it in the
dataset's metadata); a mask whose size differs from its image raises `ValueError` naming
both paths.
"""

import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
MASK_EXTENSIONS = (".npy", ".png")


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Where one split lives: candidate image folders, candidate mask folders."""

    images: tuple[str, ...]
    masks: tuple[str, ...] = ()
    masks_required: bool = False
    fix: str = ""


_BG = ("bg_challenge", "backgrounds_challenge_data/bg_challenge")
_IN9_FIX = (
    "ImageNet-9 test data: unpack backgrounds_challenge_data.tar.gz (release of "
    "github.com/MadryLab/backgrounds_challenge) into the root so that "
    "bg_challenge/original/val/<class>/ and bg_challenge/fg_mask/val/<class>/ exist"
)
_IN9_TRAIN_FIX = (
    "ImageNet-9 train/val: build them from ImageNet with the reference's "
    "imagenet9_{train,val}_orig_path.pkl (see docs/data.md) into <root>/train and <root>/val"
)

LAYOUTS: dict[str, dict[str, SplitSpec]] = {
    "imagenet": {
        "train": SplitSpec(("train",), fix="ImageNet: extract ILSVRC2012_img_train into train/"),
        "validation": SplitSpec(
            ("val",), fix="ImageNet: extract ILSVRC2012_img_val and sort it into val/<wnid>/"
        ),
    },
    "imagenet9": {
        "train": SplitSpec(("train",), fix=_IN9_TRAIN_FIX),
        "validation": SplitSpec(("val",), fix=_IN9_TRAIN_FIX),
        "test": SplitSpec(
            tuple(f"{b}/original/val" for b in _BG),
            tuple(f"{b}/fg_mask/val" for b in _BG),
            masks_required=True,
            fix=_IN9_FIX,
        ),
    },
    "bam_object": {
        "train": SplitSpec(("obj/train",), fix="BAM: run the reference's BAM construction"),
        "test": SplitSpec(
            ("obj/val",), ("obj/val_mask",), True, "BAM: val/<class>/ and val_mask/<class>/"
        ),
    },
    "bam_scene": {
        "train": SplitSpec(("scene/train",), fix="BAM: run the reference's BAM construction"),
        "test": SplitSpec(
            ("scene/val",), ("scene/val_mask",), True, "BAM: val/<class>/ and val_mask/<class>/"
        ),
    },
    "coco10": {
        "train": SplitSpec(
            ("train",), ("mask/train",), fix="COCO-10: run the reference's construct script"
        ),
        "test": SplitSpec(
            ("val",), ("mask/val",), True, "COCO-10: run the reference's construct script"
        ),
    },
    "folders": {
        "train": SplitSpec(("train",), ("masks/train",), fix="put class folders in train/"),
        "validation": SplitSpec(("val",), ("masks/val",), fix="put class folders in val/"),
        "test": SplitSpec(("test",), ("masks/test",), fix="put class folders in test/"),
    },
}


class CorruptFileError(Exception):
    """An image or mask file that cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One example on disk."""

    key: str  # Path relative to the root: unique, stable across runs.
    image: str
    label: int
    mask: str | None


def layout_spec(layout: str, root: str | os.PathLike) -> dict[str, SplitSpec]:
    """The split specs of `layout`; ValueError naming the root if the layout is unknown."""
    if layout not in LAYOUTS:
        raise ValueError(
            f"unknown layout {layout!r} for {root}: use one of {sorted(LAYOUTS)} (see "
            "docs/data.md), or copy the data into the generic 'folders' layout "
            "(train/<class>/*, val/<class>/*, test/<class>/*, optional masks/<split>/<class>/*)."
        )
    return LAYOUTS[layout]


def _first_dir(root: pathlib.Path, candidates: tuple[str, ...]) -> pathlib.Path | None:
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return None


def available_splits(root: str | os.PathLike, layout: str) -> list[str]:
    """Splits of `layout` whose image folder exists under root."""
    root = pathlib.Path(root)
    spec = layout_spec(layout, root)
    return [s for s, sp in spec.items() if _first_dir(root, sp.images) is not None]


def _files(folder: pathlib.Path, extensions: tuple[str, ...]) -> list[pathlib.Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


def class_names(root: str | os.PathLike, layout: str, split: str) -> list[str]:
    """Sorted class folder names of one split (the label order)."""
    folder = split_folder(root, layout, split)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise FileNotFoundError(
            f"{folder} has no class sub-folders; expected {folder}/<class>/<image files>."
        )
    return names


def split_folder(root: str | os.PathLike, layout: str, split: str) -> pathlib.Path:
    """The image folder of `split`; FileNotFoundError naming the expected path and the fix."""
    root = pathlib.Path(root)
    spec = layout_spec(layout, root)
    if split not in spec:
        raise ValueError(f"layout {layout!r} has no split {split!r}; it has {sorted(spec)}.")
    folder = _first_dir(root, spec[split].images)
    if folder is None:
        tried = " or ".join(str(root / c) for c in spec[split].images)
        raise FileNotFoundError(
            f"split {split!r} of layout {layout!r}: missing folder {tried}. Fix: {spec[split].fix}"
            ", or prepare only the splits you have (splits=...)."
        )
    return folder


def scan_split(
    root: str | os.PathLike,
    layout: str,
    split: str,
    names: list[str],
    *,
    mask_pairing: str = "stem",
) -> tuple[list[Record], list[str]]:
    """Lists the examples of one split.

    Args:
      root: dataset root.
      layout: key of LAYOUTS.
      split: split name in the layout.
      names: class names (label order), usually `class_names(root, layout, "train")`.
      mask_pairing: "stem" (mask file named like the image) or "sorted" (i-th mask of a class
        folder belongs to its i-th image, as in the reference code).

    Returns:
      (records, images without a mask in a split that has a mask folder).

    Raises:
      FileNotFoundError: missing split or required mask folder (message names path and fix).
      ValueError: a class folder not in `names`, or mask/image counts that cannot pair.
    """
    root = pathlib.Path(root)
    spec = layout_spec(layout, root)[split]
    folder = split_folder(root, layout, split)
    mask_folder = _first_dir(root, spec.masks) if spec.masks else None
    if mask_folder is None and spec.masks_required:
        tried = " or ".join(str(root / c) for c in spec.masks)
        raise FileNotFoundError(
            f"split {split!r} of layout {layout!r}: missing mask folder {tried}. Fix: {spec.fix}."
        )
    if mask_pairing not in ("stem", "sorted"):
        raise ValueError(f"mask_pairing must be 'stem' or 'sorted', got {mask_pairing!r}.")
    label_of = {n: i for i, n in enumerate(names)}
    records, unmasked = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if class_dir.name.startswith("."):
            continue
        if class_dir.name not in label_of:
            raise ValueError(
                f"{class_dir}: class {class_dir.name!r} is not among the classes {names} of the "
                "train split; every split must use the same class folder names."
            )
        images = _files(class_dir, IMAGE_EXTENSIONS)
        masks: list[pathlib.Path | None] = [None] * len(images)
        if mask_folder is not None and (mask_folder / class_dir.name).is_dir():
            mask_files = _files(mask_folder / class_dir.name, MASK_EXTENSIONS)
            if mask_pairing == "sorted":
                if len(mask_files) != len(images):
                    raise ValueError(
                        f"{mask_folder / class_dir.name} has {len(mask_files)} masks for "
                        f"{len(images)} images in {class_dir}; sorted pairing needs equal counts."
                    )
                masks = list(mask_files)
            else:
                by_stem = {m.stem: m for m in mask_files}
                masks = [by_stem.get(p.stem) for p in images]
        for path, mask in zip(images, masks, strict=True):
            if mask is None and mask_folder is not None:
                unmasked.append(str(path))
            records.append(
                Record(
                    key=str(path.relative_to(root)),
                    image=str(path),
                    label=label_of[class_dir.name],
                    mask=None if mask is None else str(mask),
                )
            )
    return records, unmasked


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to [H, W, 3] uint8 RGB (grayscale, palette, RGBA, CMYK converted).

    Raises:
      CorruptFileError: the file cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                # Composite transparent pixels on black, the colour P2P uses for removed pixels.
                rgba = im.convert("RGBA")
                black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                im = Image.alpha_composite(black, rgba)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CorruptFileError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Reads a mask (.npy or .png) as [H, W] bool: True on the object.

    .npy: [H, W], [H, W, C] or [1, H, W]; nonzero (any channel) is object. .png: nonzero.

    Raises:
      CorruptFileError: the file cannot be decoded.
      ValueError: an array that is not a 2-D mask.
    """
    path = str(path)
    try:
        if path.lower().endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"))
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise CorruptFileError(f"{path}: cannot decode mask ({type(e).__name__}: {e})") from e
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 3:
        arr = (arr != 0).any(axis=-1)
    if arr.ndim != 2:
        raise ValueError(f"{path}: a mask must be [H, W] (or [H, W, C]), got shape {arr.shape}.")
    return arr != 0


def resize_shorter(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    min_size: int | None,
    max_size: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scales so the shorter side lies in [min_size, max_size] (aspect ratio kept).

    Args:
      image: [H, W, 3] uint8 (bilinear, antialiased).
      mask: [H, W] bool (nearest).
      min_size: upscale images whose shorter side is smaller (None: never upscale).
      max_size: downscale images whose shorter side is larger (None: never downscale).

    Returns:
      (image [H', W', 3] uint8, mask [H', W'] bool).
    """
    h, w = image.shape[:2]
    short = min(h, w)
    target = short
    if max_size is not None and short > max_size:
        target = max_size
    if min_size is not None and short < min_size:
        target = min_size
    if target == short:
        return image, mask
    new_h, new_w = max(1, round(h * target / short)), max(1, round(w * target / short))
    image = np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), np.uint8
    )
    mask = np.asarray(Image.fromarray(mask).resize((new_w, new_h), Image.Resampling.NEAREST))
    return image, mask.astype(bool)
