"""Data: the built-in benchmark, the paper's datasets, SLIC superpixels, augmentation, grain.

Typical use (built-in benchmark at 64x64)::

    from grouped_select import data

    builder = data.prepare_shapes("~/tensorflow_datasets", image_size=64)
    sources = builder.as_data_source()  # {"train", "validation", "test"}
    train = data.train_iterator(  # the train split, image and mask left encoded until used
        data.training_source(builder), global_batch_size=64, image_size=64, num_regions=128, seed=0
    )
    test = data.eval_iterator(
        sources["test"], global_batch_size=64, image_size=64, num_regions=128
    )
    batch = next(train)  # dict of numpy arrays, see pipeline.py

See docs/data.md for preparing ImageNet, ImageNet-9, BAM, COCO-10 and tfds catalog datasets.
"""

from grouped_select.color import JITTER_KEYS, sample_color_jitter
from grouped_select.data.augment import (
    crop_and_resize,
    eval_transform,
    train_augment,
)
from grouped_select.data.builders import (
    IMAGE_FORMATS,
    TFDS_CATALOG,
    P2pFolders,
    P2pShapes,
    P2pTfds,
    example_features,
    folder_config,
    prepare_folders,
    prepare_from_tfds,
    prepare_shapes,
    shapes_config,
    tfds_source_config,
    training_source,
)
from grouped_select.data.folders import LAYOUTS, CorruptFileError
from grouped_select.data.pipeline import (
    BATCH_KEYS,
    TRAIN_BATCH_KEYS,
    decode_into_memory,
    eval_dataset,
    eval_iterator,
    make_global_batch,
    train_dataset,
    train_iterator,
)
from grouped_select.data.superpixels import (
    DEFAULT_COMPACTNESS,
    DEFAULT_N_SEGMENTS,
    DEFAULT_NUM_REGIONS,
    limit_regions,
    relabel_consecutive,
    slic_regions,
)
from grouped_select.data.synthetic import BACKGROUND_NAMES, SHAPE_NAMES

__all__ = [
    "BACKGROUND_NAMES",
    "BATCH_KEYS",
    "TRAIN_BATCH_KEYS",
    "DEFAULT_COMPACTNESS",
    "DEFAULT_NUM_REGIONS",
    "DEFAULT_N_SEGMENTS",
    "IMAGE_FORMATS",
    "JITTER_KEYS",
    "LAYOUTS",
    "SHAPE_NAMES",
    "TFDS_CATALOG",
    "CorruptFileError",
    "P2pFolders",
    "P2pShapes",
    "P2pTfds",
    "crop_and_resize",
    "decode_into_memory",
    "eval_dataset",
    "eval_iterator",
    "eval_transform",
    "example_features",
    "folder_config",
    "limit_regions",
    "make_global_batch",
    "prepare_folders",
    "prepare_from_tfds",
    "prepare_shapes",
    "relabel_consecutive",
    "sample_color_jitter",
    "shapes_config",
    "slic_regions",
    "tfds_source_config",
    "train_augment",
    "train_dataset",
    "train_iterator",
    "training_source",
]
