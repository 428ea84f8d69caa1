"""tensorflow-datasets builders: every dataset becomes array_record files read by tfds.data_source.

Three builders, one stored example format (`tfds_common.example_features`):
* `P2pShapes`   the built-in semi-synthetic benchmark (`synthetic.py`), generated offline and
                deterministically from a seed; extra feature `background` (family label).
* `P2pFolders`  images in one of the published folder layouts (`folders.py`), in
                `user_builders.py`, re-exported here.
* `P2pTfds`     a catalog tfds dataset the user has prepared (cifar10, imagenette,
                oxford_iiit_pet, ...), read with tfds.data_source; also in `user_builders.py`.

SLIC runs once, at preparation, over all CPU cores (`superpixels.parallel_map`). Config
names end in a hash of every setting that changes the stored data, SLIC's included, so a
prepared dataset is reused exactly when nothing changed and a new one is written otherwise.
"""

import dataclasses
import os

import tensorflow_datasets as tfds

from grouped_select.data import folders, synthetic
from grouped_select.data.superpixels import (
    DEFAULT_COMPACTNESS,
    DEFAULT_N_SEGMENTS,
    DEFAULT_NUM_REGIONS,
    parallel_map,
    slic_fingerprint,
)
from grouped_select.data.tfds_common import (
    IMAGE_FORMATS,
    Builder,
    check_image_format,
    example_features,
    named_settings,
    prepare,
    settings_name,
    stored_example,
    training_source,
)
from grouped_select.data.user_builders import (
    TFDS_CATALOG,
    FolderConfig,
    P2pFolders,
    P2pTfds,
    TfdsSourceConfig,
    folder_config,
    prepare_folders,
    prepare_from_tfds,
    tfds_source_config,
)

__all__ = [
    "IMAGE_FORMATS",
    "SHAPES_SPLITS",
    "TFDS_CATALOG",
    "FolderConfig",
    "P2pFolders",
    "P2pShapes",
    "P2pTfds",
    "ShapesConfig",
    "TfdsSourceConfig",
    "example_features",
    "folder_config",
    "folders",
    "prepare_folders",
    "prepare_from_tfds",
    "prepare_shapes",
    "shapes_config",
    "tfds_source_config",
    "training_source",
]

SHAPES_SPLITS = ("train", "validation", "test")

# ---------------------------------------------------------------------------------------------
# Built-in benchmark.


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Settings of the built-in benchmark; build with `shapes_config`."""

    image_size: int = 64
    num_train: int = 5000
    num_validation: int = 500
    num_test: int = 1000
    seed: int = 0
    background_correlation: float = 0.0
    class_proportions: tuple[float, ...] | None = None
    n_segments: int = DEFAULT_N_SEGMENTS
    compactness: float = DEFAULT_COMPACTNESS
    num_regions: int = DEFAULT_NUM_REGIONS
    image_format: str = "png"


def shapes_config(
    *,
    image_size: int = 64,
    num_train: int = 5000,
    num_validation: int = 500,
    num_test: int = 1000,
    seed: int = 0,
    background_correlation: float = 0.0,
    class_proportions: tuple[float, ...] | None = None,
    n_segments: int = DEFAULT_N_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    num_regions: int = DEFAULT_NUM_REGIONS,
    image_format: str = "png",
) -> ShapesConfig:
    """A `ShapesConfig` named "<size>px[_bg<pct>]-<hash of all settings>".

    Args:
      image_size: side S of the square images.
      num_train, num_validation, num_test: split sizes (0 leaves a split out).
      seed: everything is drawn from it.
      background_correlation: probability that a train/validation image gets its class's home
        background family; the test split always uses 0.
      class_proportions: 8 weights, one per class (None: balanced).
      n_segments, compactness: SLIC settings.
      num_regions: K, the bound on stored region ids.
      image_format: "png" (lossless) or "jpeg" (faster to read; `tfds_common`).
    """
    check_image_format(image_format)
    settings = dict(
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
        background_correlation=float(background_correlation),
        class_proportions=None if class_proportions is None else tuple(class_proportions),
        n_segments=n_segments,
        compactness=float(compactness),
        num_regions=num_regions,
        image_format=image_format,
    )
    prefix = f"{image_size}px"
    if background_correlation:
        prefix += f"_bg{round(100 * background_correlation)}"
    slic_id = slic_fingerprint(
        n_segments=n_segments, compactness=compactness, num_regions=num_regions
    )
    name = settings_name(prefix, {**named_settings(settings), "slic": slic_id})
    description = (
        f"{len(synthetic.SHAPE_NAMES)} shape classes on natural/procedural backgrounds, "
        f"{image_size}x{image_size}; " + ", ".join(f"{k}={v}" for k, v in settings.items())
    )
    return ShapesConfig(name=name, description=description, **settings)


def _shapes_example(task: tuple) -> tuple[int, dict]:
    index, label, background, seed, split_index, image_size, slic_kwargs, image_format = task
    rng = synthetic.example_rng(seed, split_index, index)
    drawn = synthetic.render_example(rng, label=label, background=background, image_size=image_size)
    example = stored_example(drawn["image"], drawn["mask"], label, slic_kwargs, image_format)
    example["background"] = int(background)
    return index, example


class P2pShapes(Builder):
    """Built-in semi-synthetic benchmark: textured shapes on natural backgrounds, with masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        shapes_config(image_size=64),
        shapes_config(image_size=64, background_correlation=0.9),
        shapes_config(image_size=224, num_train=10000, num_validation=1000, num_test=2000),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        size = cfg.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=cfg.description,
            features=example_features(
                synthetic.SHAPE_NAMES,
                num_regions=cfg.num_regions,
                image_shape=(size, size, 3),
                image_format=cfg.image_format,
                extra={"background": tfds.features.ClassLabel(names=synthetic.BACKGROUND_NAMES)},
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        sizes = (cfg.num_train, cfg.num_validation, cfg.num_test)
        return {
            name: self._generate_examples(split_index, n)
            for split_index, (name, n) in enumerate(zip(SHAPES_SPLITS, sizes, strict=True))
            if n > 0
        }

    def _generate_examples(self, split_index: int, num_examples: int):
        cfg = self.builder_config
        correlation = cfg.background_correlation if SHAPES_SPLITS[split_index] != "test" else 0.0
        labels, backgrounds = synthetic.split_plan(
            num_examples,
            seed=cfg.seed,
            split_index=split_index,
            class_proportions=cfg.class_proportions,
            background_correlation=correlation,
        )
        slic_kwargs = dict(
            n_segments=cfg.n_segments, compactness=cfg.compactness, num_regions=cfg.num_regions
        )
        common = (cfg.seed, split_index, cfg.image_size, slic_kwargs, cfg.image_format)
        tasks = ((i, int(labels[i]), int(backgrounds[i]), *common) for i in range(num_examples))
        yield from parallel_map(
            _shapes_example,
            tasks,
            num_workers=self._num_workers,
            total=num_examples,
            desc=f"{SHAPES_SPLITS[split_index]}: render + SLIC",
        )


def prepare_shapes(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 64,
    num_train: int = 5000,
    num_validation: int = 500,
    num_test: int = 1000,
    seed: int = 0,
    background_correlation: float = 0.0,
    class_proportions: tuple[float, ...] | None = None,
    n_segments: int = DEFAULT_N_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    num_regions: int = DEFAULT_NUM_REGIONS,
    image_format: str = "png",
    num_workers: int | None = None,
) -> P2pShapes:
    """Prepares the built-in benchmark in data_dir (reused if already there) and returns it.

    Arguments as in `shapes_config`; num_workers: preparation processes (None: all cores).

    Returns:
      The prepared builder: `.as_data_source()` gives {"train", "validation", "test"} sources,
      `.info.features["label"].names` the class names.
    """
    config = shapes_config(
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
        background_correlation=background_correlation,
        class_proportions=class_proportions,
        n_segments=n_segments,
        compactness=compactness,
        num_regions=num_regions,
        image_format=image_format,
    )
    # tfds refuses a config object named like a predefined one: pass the name then.
    predefined = config.name in P2pShapes.builder_configs
    return prepare(P2pShapes, config.name if predefined else config, data_dir, num_workers)
