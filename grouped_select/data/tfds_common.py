"""Shared pieces of the tfds builders: the stored example format and a TF-free base class.

Stored example (every builder):
  image       Image [H, W, 3] uint8 (PNG)
  label       ClassLabel
  mask        Tensor [H, W] uint8, 1 on the ground-truth object (zeros if has_mask is False)
  has_mask    bool
  region_ids  Tensor [H, W] uint8 (int16 if num_regions > 256): SLIC ids in [0, num_regions)

Writing needs no TensorFlow: images are PNG-encoded with PIL (in the preparation workers) and
passed to tfds as bytes; the array_record writer and reader are TensorFlow-free.
"""

import hashlib
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from grouped_select.data.superpixels import region_dtype, slic_regions


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of our builders: a `num_workers` argument, and no checksum-file lookup.

    Our builders download nothing, so they have no checksums file. Without `code_path = None`
    tfds 4.9.x looks for one next to the module and, for a module inside a package on
    Python >= 3.9, imports the `importlib_resources` backport that it does not install
    (tensorflow/datasets#11212).
    """

    code_path = None

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """Args: num_workers: preparation processes (None: all cores); kwargs: tfds's."""
        self._num_workers = num_workers
        super().__init__(**kwargs)


def example_features(
    class_names: list[str] | tuple[str, ...],
    *,
    num_regions: int,
    image_shape: tuple[int | None, int | None, int] = (None, None, 3),
    extra: dict[str, tfds.features.FeatureConnector] | None = None,
) -> tfds.features.FeaturesDict:
    """The stored example format shared by all builders (module docstring)."""
    hw = image_shape[:2]
    zlib = tfds.features.Encoding.ZLIB
    features = {
        "image": tfds.features.Image(shape=image_shape, encoding_format="png"),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "mask": tfds.features.Tensor(shape=hw, dtype=np.uint8, encoding=zlib),
        "has_mask": tfds.features.Scalar(dtype=np.bool_),
        "region_ids": tfds.features.Tensor(
            shape=hw, dtype=region_dtype(num_regions), encoding=zlib
        ),
    }
    features.update(extra or {})
    return tfds.features.FeaturesDict(features)


def png(image: np.ndarray) -> bytes:
    """PNG bytes of a [H, W, 3] or [H, W] uint8 image (what tfds' Image feature stores)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="png")
    return buf.getvalue()


def stored_example(
    image: np.ndarray, mask: np.ndarray | None, label: int, slic_kwargs: dict
) -> dict:
    """One example in the stored format: SLIC of `image` (slic_regions kwargs), PNG-encoded.

    Args:
      image: [H, W, 3] uint8.
      mask: [H, W] bool / uint8, or None (stored as zeros with has_mask=False).
      label: class index.
      slic_kwargs: n_segments, compactness, num_regions.
    """
    ids = slic_regions(image, **slic_kwargs)
    has_mask = mask is not None
    if mask is None:
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
    return {
        "image": png(image),
        "label": int(label),
        "mask": np.asarray(mask, dtype=np.uint8),
        "has_mask": has_mask,
        "region_ids": ids,
    }


def settings_name(prefix: str, settings: dict) -> str:
    """Config name "<prefix>-<8 hex digits of a hash of settings>"."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:8]}"


def prepare(builder_class, config, data_dir, num_workers: int | None):
    """Builds `builder_class` with `config` in data_dir as array_record and prepares it.

    Reuses a prepared copy when one is there (the config name hashes every setting).

    Args:
      builder_class: one of our `Builder` subclasses.
      config: its builder config (or the name of a predefined one).
      data_dir: where prepared datasets live (`~` expanded).
      num_workers: preparation processes (None: all cores).

    Returns:
      The prepared builder.
    """
    builder = builder_class(
        config=config,
        data_dir=os.path.expanduser(os.fspath(data_dir)),
        file_format="array_record",
        num_workers=num_workers,
    )
    builder.download_and_prepare()
    return builder
