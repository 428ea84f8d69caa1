"""Datasets for the training program: prepare (once) what the config names, then iterate.

The preparation (SLIC superpixels included) is cached in `config.data.data_dir` under a name
that hashes every setting, so later runs reuse it; see `grouped_select.data.builders`.
"""

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from grouped_select.data import builders, pipeline

DATASETS = ("builtin", "folders", "tfds")


def default_data_dir() -> str:
    """Where prepared datasets go: $P2P_DATA_DIR, else ~/.cache/grouped_select/datasets."""
    return os.environ.get(
        "P2P_DATA_DIR",
        os.path.join(os.path.expanduser("~"), ".cache", "grouped_select", "datasets"),
    )


@dataclasses.dataclass
class Data:
    """A prepared dataset's splits and class names."""

    sources: Mapping[str, Sequence]
    class_names: list[str]
    train_split: str
    eval_split: str
    # The training split with image and mask left encoded (`builders.training_source`).
    train_source: Sequence

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        return len(self.sources[self.train_split])

    def train_iterator(self, config: ml_collections.ConfigDict, seed: int):
        """Endless shuffled, augmented training batches for this process (checkpointable)."""
        d = config.data
        return pipeline.train_iterator(
            self.train_source,
            global_batch_size=config.optim.batch_size,
            image_size=d.image_size,
            num_regions=d.num_regions,
            seed=seed,
            crop_scale=tuple(d.crop_scale),
            hflip=d.hflip,
            jitter=tuple(d.color_jitter) or None,
            worker_count=d.worker_count,
            read_threads=d.read_threads,
            cache=d.cache_in_memory,
        )

    def eval_batches(self, config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
        """One ordered pass over the evaluation split (padding marked valid=False)."""
        d = config.data
        return pipeline.eval_iterator(
            self.sources[self.eval_split],
            global_batch_size=config.eval_batch_size,
            image_size=d.image_size,
            num_regions=d.num_regions,
            crop_fraction=d.eval_crop_fraction,
            worker_count=d.worker_count,
            read_threads=d.read_threads,
        )


def _stored(d: ml_collections.ConfigDict) -> dict:
    """The settings of the stored examples shared by every builder: SLIC's and the format."""
    return dict(
        n_segments=d.slic_segments,
        compactness=d.slic_compactness,
        num_regions=d.num_regions,
        image_format=d.image_format,
    )


def create(config: ml_collections.ConfigDict) -> Data:
    """Prepares (or reuses) the dataset `config.data` names.

    Raises:
      ValueError: unknown `config.data.name`, a missing root, or a split the dataset lacks.
    """
    d = config.data
    data_dir = os.path.expanduser(d.data_dir or default_data_dir())
    if d.name == "builtin":
        builder = builders.prepare_shapes(
            data_dir,
            image_size=d.builtin.source_size,
            num_train=d.builtin.num_train,
            num_validation=d.builtin.num_validation,
            num_test=d.builtin.num_test,
            seed=d.builtin.seed,
            background_correlation=d.builtin.background_correlation,
            **_stored(d),
        )
    elif d.name == "folders":
        if not d.root:
            raise ValueError(
                "config.data.name='folders' needs config.data.root, the dataset's folder "
                f"(and config.data.layout, one of {sorted(builders.folders.LAYOUTS)})."
            )
        builder = builders.prepare_folders(
            d.root,
            data_dir,
            layout=d.layout,
            mask_pairing=d.mask_pairing,
            crop_to_mask=d.crop_to_mask,
            **_stored(d),
        )
    elif d.name == "tfds":
        if not d.tfds_name:
            raise ValueError("config.data.name='tfds' needs config.data.tfds_name, e.g. 'cifar10'.")
        builder = builders.prepare_from_tfds(
            d.tfds_name, data_dir, source_data_dir=d.root or None, **_stored(d)
        )
    else:
        raise ValueError(f"config.data.name={d.name!r} is not one of {DATASETS}.")
    sources = builder.as_data_source()
    for key, split in (("train_split", d.train_split), ("eval_split", d.eval_split)):
        if split not in sources:
            raise ValueError(
                f"config.data.{key}={split!r} is not a split of this dataset; it has "
                f"{sorted(sources)}."
            )
    names = list(builder.info.features["label"].names)
    train_source = builders.training_source(builder, d.train_split)
    return Data(sources, names, d.train_split, d.eval_split, train_source)


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's batch -> global arrays sharded over the mesh's "data" axis."""
    return pipeline.make_global_batch(batch, mesh, "data")
