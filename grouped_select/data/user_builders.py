"""tfds builders over the user's data: published folder layouts and prepared catalog datasets.

* `P2pFolders`  images in one of the published folder layouts (`folders.py`): ImageNet,
                ImageNet-9 with the backgrounds-challenge test set, BAM, COCO-10, generic.
* `P2pTfds`     a catalog tfds dataset the user has prepared in array_record format
                (cifar10, imagenette, oxford_iiit_pet, ...), read with tfds.data_source.

Both store the example format of `tfds_common.example_features`, with SLIC ids computed once.
A file that cannot be decoded is skipped, logged with its path and counted in
`info.metadata["skipped"][split]`; a mask whose size differs from its image stops preparation.
"""

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from grouped_select.data import folders
from grouped_select.data.superpixels import (
    DEFAULT_COMPACTNESS,
    DEFAULT_N_SEGMENTS,
    DEFAULT_NUM_REGIONS,
    parallel_map,
    slic_fingerprint,
)
from grouped_select.data.tfds_common import (
    Builder,
    check_image_format,
    example_features,
    named_settings,
    prepare,
    settings_name,
    stored_example,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Shared by the builders over user data.


def _resized_example(
    image: np.ndarray,
    mask: np.ndarray | None,
    label: int,
    where: str,
    min_size: int | None,
    max_size: int | None,
    slic_kwargs: dict,
    image_format: str,
    crop_to_mask: bool = False,
) -> dict:
    if mask is not None and mask.shape != image.shape[:2]:
        (mh, mw), (h, w) = mask.shape, image.shape[:2]
        if crop_to_mask and mh <= h and mw <= w:
            # The reference centre-crops BAM test images to their (already cropped) masks.
            top, left = (h - mh) // 2, (w - mw) // 2
            image = image[top : top + mh, left : left + mw]
        else:
            raise ValueError(
                f"{where}: mask is {mh}x{mw} but its image is {h}x{w}; masks must match their "
                "image pixel for pixel. Fix: regenerate the mask at the image's size or fix the "
                "image/mask pairing (mask_pairing=...); for masks that are centre crops of "
                "their images (BAM's val_mask) pass crop_to_mask=True."
            )
    resized, resized_mask = folders.resize_shorter(
        image,
        np.zeros(image.shape[:2], bool) if mask is None else mask,
        min_size=min_size,
        max_size=max_size,
    )
    return stored_example(
        resized, None if mask is None else resized_mask, label, slic_kwargs, image_format
    )


def _record_example(task: tuple) -> tuple[str, dict | None, str | None]:
    record, min_size, max_size, slic_kwargs, image_format, crop_to_mask = task
    try:
        image = folders.read_image(record.image)
        mask = None if record.mask is None else folders.read_mask(record.mask)
    except folders.CorruptFileError as e:
        return record.key, None, str(e)
    where = record.image if record.mask is None else f"{record.image} / {record.mask}"
    example = _resized_example(
        image,
        mask,
        record.label,
        where,
        min_size,
        max_size,
        slic_kwargs,
        image_format,
        crop_to_mask,
    )
    return record.key, example, None


def _write_split(builder, split: str, tasks, total: int, fn):
    """Yields (key, example) from parallel_map(fn, tasks); logs and counts skipped files."""
    skipped = []
    for key, example, problem in parallel_map(
        fn, tasks, num_workers=builder._num_workers, total=total, desc=f"{split}: decode + SLIC"
    ):
        if example is None:
            log.warning("skipping corrupt file: %s", problem)
            skipped.append(problem)
            continue
        yield key, example
    builder.info.metadata.setdefault("skipped", {})[split] = skipped
    if skipped:
        log.warning(
            "split %r: skipped %d corrupt file(s); listed in the dataset's metadata.json "
            "(info.metadata['skipped']).",
            split,
            len(skipped),
        )


# ---------------------------------------------------------------------------------------------
# Published folder layouts.


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """Settings of a folder dataset; build with `folder_config`."""

    layout: str = "folders"
    root: str = ""
    splits: tuple[str, ...] | None = None
    mask_pairing: str = "stem"
    crop_to_mask: bool = False
    min_size: int | None = None
    max_size: int | None = 256
    n_segments: int = DEFAULT_N_SEGMENTS
    compactness: float = DEFAULT_COMPACTNESS
    num_regions: int = DEFAULT_NUM_REGIONS
    image_format: str = "png"


def folder_config(
    root: str | os.PathLike,
    *,
    layout: str,
    name: str | None = None,
    splits: tuple[str, ...] | None = None,
    mask_pairing: str = "stem",
    crop_to_mask: bool = False,
    min_size: int | None = None,
    max_size: int | None = 256,
    n_segments: int = DEFAULT_N_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    num_regions: int = DEFAULT_NUM_REGIONS,
    image_format: str = "png",
) -> FolderConfig:
    """A `FolderConfig` named "<name or layout>-<hash of settings>" (the root is not hashed).

    Args:
      root: dataset root (see `folders.py` for each layout's folders).
      layout: one of `folders.LAYOUTS`.
      name: config name prefix; give distinct names to distinct data in the same layout.
      splits: splits to prepare (None: every split whose folder exists).
      mask_pairing: "stem" or "sorted" (see `folders.scan_split`).
      crop_to_mask: a mask smaller than its image is taken as the centre crop of the image
        (the image is cropped to it), as the reference does for BAM; otherwise an error.
      min_size, max_size: the stored images' shorter side is clamped into this range
        (256 keeps ImageNet-size images ready for 224 crops; None: no limit).
      n_segments, compactness, num_regions: SLIC settings and the region bound K.
      image_format: stored images as "png" (lossless) or "jpeg" (faster to read; see
        `tfds_common`).
    """
    check_image_format(image_format)
    root = os.fspath(root)
    folders.layout_spec(layout, root)  # Fail early on an unknown layout.
    settings = dict(
        layout=layout,
        splits=None if splits is None else tuple(splits),
        mask_pairing=mask_pairing,
        crop_to_mask=crop_to_mask,
        min_size=min_size,
        max_size=max_size,
        n_segments=n_segments,
        compactness=float(compactness),
        num_regions=num_regions,
        image_format=image_format,
    )
    slic_id = slic_fingerprint(
        n_segments=n_segments, compactness=compactness, num_regions=num_regions
    )
    return FolderConfig(
        name=settings_name(name or layout, {**named_settings(settings), "slic": slic_id}),
        description=f"{layout} layout from {root}",
        root=root,
        **settings,
    )


class P2pFolders(Builder):
    """Images in a published folder layout (ImageNet, ImageNet-9, BAM, COCO-10, generic)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _splits(self) -> list[str]:
        cfg = self.builder_config
        splits = list(cfg.splits or folders.available_splits(cfg.root, cfg.layout))
        if not splits:
            spec = folders.layout_spec(cfg.layout, cfg.root)
            expected = ", ".join(os.path.join(cfg.root, s.images[0]) for s in spec.values())
            raise FileNotFoundError(
                f"no split folder of layout {cfg.layout!r} under {cfg.root}: expected some of "
                f"{expected} (see docs/data.md for how to lay the data out)."
            )
        return splits

    def _class_names(self) -> list[str]:
        cfg = self.builder_config
        splits = self._splits()
        first = "train" if "train" in splits else splits[0]
        return folders.class_names(cfg.root, cfg.layout, first)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=cfg.description,
            features=example_features(
                self._class_names(), num_regions=cfg.num_regions, image_format=cfg.image_format
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The user's files are read in place.
        cfg = self.builder_config
        names = self._class_names()
        generators = {}
        for split in self._splits():
            records, unmasked = folders.scan_split(
                cfg.root, cfg.layout, split, names, mask_pairing=cfg.mask_pairing
            )
            if not records:
                raise FileNotFoundError(
                    f"split {split!r}: no image files under "
                    f"{folders.split_folder(cfg.root, cfg.layout, split)}/<class>/."
                )
            if unmasked:
                log.warning(
                    "split %r: %d image(s) have no mask (has_mask=False), e.g. %s",
                    split,
                    len(unmasked),
                    unmasked[:3],
                )
            generators[split] = self._generate_examples(split, records)
        return generators

    def _generate_examples(self, split: str, records: list[folders.Record]):
        cfg = self.builder_config
        slic_kwargs = dict(
            n_segments=cfg.n_segments, compactness=cfg.compactness, num_regions=cfg.num_regions
        )
        common = (cfg.min_size, cfg.max_size, slic_kwargs, cfg.image_format, cfg.crop_to_mask)
        tasks = ((r, *common) for r in records)
        yield from _write_split(self, split, tasks, len(records), _record_example)


def prepare_folders(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    layout: str,
    name: str | None = None,
    splits: tuple[str, ...] | None = None,
    mask_pairing: str = "stem",
    crop_to_mask: bool = False,
    min_size: int | None = None,
    max_size: int | None = 256,
    n_segments: int = DEFAULT_N_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    num_regions: int = DEFAULT_NUM_REGIONS,
    image_format: str = "png",
    num_workers: int | None = None,
) -> P2pFolders:
    """Prepares a folder-layout dataset into data_dir (reused if there); see `folder_config`.

    Returns:
      The prepared builder (`.as_data_source()`, `.info.metadata["skipped"]`).
    """
    config = folder_config(
        root,
        layout=layout,
        name=name,
        splits=splits,
        mask_pairing=mask_pairing,
        crop_to_mask=crop_to_mask,
        min_size=min_size,
        max_size=max_size,
        n_segments=n_segments,
        compactness=compactness,
        num_regions=num_regions,
        image_format=image_format,
    )
    return prepare(P2pFolders, config, data_dir, num_workers)


# ---------------------------------------------------------------------------------------------
# Catalog tfds datasets prepared by the user.

# Split mapping (ours, theirs), mask feature and its background value, per catalog dataset.
TFDS_CATALOG = {
    "cifar10": dict(splits=(("train", "train"), ("test", "test"))),
    "imagenette": dict(splits=(("train", "train"), ("validation", "validation"))),
    # Trimap: 1 pet, 2 background, 3 border; border pixels count as object.
    "oxford_iiit_pet": dict(
        splits=(("train", "train"), ("test", "test")),
        mask_key="segmentation_mask",
        mask_background=2,
    ),
}


@dataclasses.dataclass(eq=False)
class TfdsSourceConfig(tfds.core.BuilderConfig):
    """Settings of a dataset derived from a prepared tfds dataset; see `tfds_source_config`."""

    source: str = ""
    source_data_dir: str | None = None
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))
    image_key: str = "image"
    label_key: str = "label"
    mask_key: str | None = None
    mask_background: int = 0
    min_size: int | None = None
    max_size: int | None = 256
    n_segments: int = DEFAULT_N_SEGMENTS
    compactness: float = DEFAULT_COMPACTNESS
    num_regions: int = DEFAULT_NUM_REGIONS
    image_format: str = "png"


def tfds_source_config(
    source: str,
    *,
    source_data_dir: str | os.PathLike | None = None,
    splits: tuple[tuple[str, str], ...] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str | None = None,
    mask_background: int | None = None,
    min_size: int | None = None,
    max_size: int | None = 256,
    n_segments: int = DEFAULT_N_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    num_regions: int = DEFAULT_NUM_REGIONS,
    image_format: str = "png",
) -> TfdsSourceConfig:
    """Config for a catalog dataset; defaults for names in TFDS_CATALOG fill unset arguments.

    Args:
      source: tfds name, optionally with config/version ("imagenette/320px-v2").
      source_data_dir: where it was prepared (None: tfds's default data_dir).
      splits: (our split, source split) pairs.
      image_key, label_key: feature names in the source.
      mask_key: feature holding a segmentation (None: no masks).
      mask_background: segmentation value meaning "not object" (mask = value != it).
      min_size, max_size: clamp of the stored shorter side (cifar10 at 224: min_size=256,
        like the reference's resize 256).
      n_segments, compactness, num_regions: SLIC settings and the region bound K.
      image_format: stored images as "png" (lossless) or "jpeg" (faster to read; see
        `tfds_common`).
    """
    check_image_format(image_format)
    defaults = TFDS_CATALOG.get(source.split("/")[0], {})
    settings = dict(
        source=source,
        splits=tuple(splits or defaults.get("splits", (("train", "train"), ("test", "test")))),
        image_key=image_key,
        label_key=label_key,
        mask_key=mask_key if mask_key is not None else defaults.get("mask_key"),
        mask_background=(
            mask_background if mask_background is not None else defaults.get("mask_background", 0)
        ),
        min_size=min_size,
        max_size=max_size,
        n_segments=n_segments,
        compactness=float(compactness),
        num_regions=num_regions,
        image_format=image_format,
    )
    slic_id = slic_fingerprint(
        n_segments=n_segments, compactness=compactness, num_regions=num_regions
    )
    prefix = source.replace("/", "_").replace(":", "_").replace(".", "_")
    return TfdsSourceConfig(
        name=settings_name(prefix, {**named_settings(settings), "slic": slic_id}),
        description=f"{source} with SLIC superpixels",
        source_data_dir=None if source_data_dir is None else os.fspath(source_data_dir),
        **settings,
    )


def _source_example(task: tuple) -> tuple[str, dict | None, str | None]:
    key, image, mask, label, min_size, max_size, slic_kwargs, image_format = task
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    example = _resized_example(
        image, mask, label, key, min_size, max_size, slic_kwargs, image_format
    )
    return key, example, None


class P2pTfds(Builder):
    """A prepared tfds dataset (array_record) re-stored with SLIC ids and a mask feature."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _source(self, split: str):
        cfg = self.builder_config
        try:
            return tfds.data_source(cfg.source, split=split, data_dir=cfg.source_data_dir)
        except Exception as e:
            raise FileNotFoundError(
                f"cannot read tfds dataset {cfg.source!r} split {split!r} from "
                f"{cfg.source_data_dir or 'the default tfds data_dir'} ({type(e).__name__}: "
                f"{e}). Fix: prepare it in array_record format first, e.g. `tfds build "
                f"{cfg.source} --file_format=array_record --data_dir=...` (see docs/data.md)."
            ) from e

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        src = self._source(cfg.splits[0][1])
        names = src.dataset_info.features[cfg.label_key].names
        return tfds.core.DatasetInfo(
            builder=self,
            description=cfg.description,
            features=example_features(
                names, num_regions=cfg.num_regions, image_format=cfg.image_format
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            ours: self._generate_examples(ours, theirs)
            for ours, theirs in self.builder_config.splits
        }

    def _generate_examples(self, split: str, source_split: str):
        cfg = self.builder_config
        src = self._source(source_split)
        slic_kwargs = dict(
            n_segments=cfg.n_segments, compactness=cfg.compactness, num_regions=cfg.num_regions
        )

        def tasks():
            for i in range(len(src)):
                ex = src[i]
                mask = None
                if cfg.mask_key is not None:
                    seg = np.asarray(ex[cfg.mask_key])
                    seg = seg[..., 0] if seg.ndim == 3 else seg
                    mask = seg != cfg.mask_background
                key = f"{source_split}/{i}"
                label = int(ex[cfg.label_key])
                size = (cfg.min_size, cfg.max_size)
                yield key, ex[cfg.image_key], mask, label, *size, slic_kwargs, cfg.image_format

        yield from _write_split(self, split, tasks(), len(src), _source_example)


def prepare_from_tfds(
    source: str,
    data_dir: str | os.PathLike,
    *,
    source_data_dir: str | os.PathLike | None = None,
    splits: tuple[tuple[str, str], ...] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str | None = None,
    mask_background: int | None = None,
    min_size: int | None = None,
    max_size: int | None = 256,
    n_segments: int = DEFAULT_N_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    num_regions: int = DEFAULT_NUM_REGIONS,
    image_format: str = "png",
    num_workers: int | None = None,
) -> P2pTfds:
    """Prepares a catalog tfds dataset with superpixels into data_dir; see `tfds_source_config`.

    Returns:
      The prepared builder (`.as_data_source()`).
    """
    config = tfds_source_config(
        source,
        source_data_dir=source_data_dir,
        splits=splits,
        image_key=image_key,
        label_key=label_key,
        mask_key=mask_key,
        mask_background=mask_background,
        min_size=min_size,
        max_size=max_size,
        n_segments=n_segments,
        compactness=compactness,
        num_regions=num_regions,
        image_format=image_format,
    )
    return prepare(P2pTfds, config, data_dir, num_workers)
