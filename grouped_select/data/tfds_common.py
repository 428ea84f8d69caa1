"""Shared pieces of the tfds builders: the stored example format and a TF-free base class.

Stored example (every builder):
  image       Image [H, W, 3] uint8, PNG (lossless, the default) or JPEG (`image_format`)
  label       ClassLabel
  mask        Tensor [H, W] uint8, 1 on the ground-truth object (zeros if has_mask is False)
  has_mask    bool
  region_ids  Tensor [H, W] uint8 (int16 if num_regions > 256): SLIC ids in [0, num_regions)

Writing needs no TensorFlow: images are encoded with PIL (in the preparation workers) and
passed to tfds as bytes; the array_record writer and reader are TensorFlow-free.

Why JPEG is offered: reading an example is mostly decoding its image, and at 224^2 a PNG takes
~2.4 ms of a core to decode with PIL against ~1.0 ms for the JPEG below
(`benchmarks/data_pipeline.py` measures both); on a GPU host that difference decides whether
the pipeline keeps up with the training step. The JPEG is quality 95 without chroma subsampling
(mean error ~1.3 levels, 99th percentile ~8, on the benchmark's and scikit-image's images; with
4:2:0 subsampling the 99th percentile is 14-23), and SLIC runs on the decoded JPEG, so the
stored ids describe the pixels the model sees. The pixels can differ by a level between JPEG
decoders: tfds decodes with OpenCV when it is installed, with PIL otherwise.
"""

import hashlib
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from grouped_select.data.superpixels import region_dtype, slic_regions

IMAGE_FORMATS = ("png", "jpeg")
JPEG_QUALITY = 95


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
    image_format: str = "png",
    extra: dict[str, tfds.features.FeatureConnector] | None = None,
) -> tfds.features.FeaturesDict:
    """The stored example format shared by all builders (module docstring)."""
    check_image_format(image_format)
    hw = image_shape[:2]
    zlib = tfds.features.Encoding.ZLIB
    features = {
        "image": tfds.features.Image(shape=image_shape, encoding_format=image_format),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "mask": tfds.features.Tensor(shape=hw, dtype=np.uint8, encoding=zlib),
        "has_mask": tfds.features.Scalar(dtype=np.bool_),
        "region_ids": tfds.features.Tensor(
            shape=hw, dtype=region_dtype(num_regions), encoding=zlib
        ),
    }
    features.update(extra or {})
    return tfds.features.FeaturesDict(features)


def check_image_format(image_format: str) -> None:
    """Raises ValueError unless `image_format` is one of IMAGE_FORMATS."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}.")


def encode_image(image: np.ndarray, image_format: str) -> bytes:
    """PNG, or JPEG of quality JPEG_QUALITY without chroma subsampling, of a uint8 image.

    Args:
      image: [H, W, 3] or [H, W] uint8.
      image_format: "png" or "jpeg".
    """
    check_image_format(image_format)
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="png")
    else:
        Image.fromarray(image).save(buf, format="jpeg", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """[H, W, C] uint8 pixels of encoded image bytes (PIL)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def stored_example(
    image: np.ndarray,
    mask: np.ndarray | None,
    label: int,
    slic_kwargs: dict,
    image_format: str = "png",
) -> dict:
    """One example in the stored format: the encoded image and SLIC of its decoded pixels.

    Args:
      image: [H, W, 3] uint8.
      mask: [H, W] bool / uint8, or None (stored as zeros with has_mask=False).
      label: class index.
      slic_kwargs: n_segments, compactness, num_regions.
      image_format: "png" or "jpeg" (module docstring); SLIC sees the pixels the stored
        image decodes to, which for JPEG are not exactly `image`.
    """
    encoded = encode_image(image, image_format)
    pixels = image if image_format == "png" else decode_image(encoded)
    ids = slic_regions(pixels, **slic_kwargs)
    has_mask = mask is not None
    if mask is None:
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
    return {
        "image": encoded,
        "label": int(label),
        "mask": np.asarray(mask, dtype=np.uint8),
        "has_mask": has_mask,
        "region_ids": ids,
    }


def named_settings(settings: dict) -> dict:
    """`settings` without an image_format of "png", the format of every earlier release.

    Datasets prepared before JPEG was offered keep their names (and so are reused).
    """
    return {k: v for k, v in settings.items() if not (k == "image_format" and v == "png")}


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


def training_source(builder: tfds.core.DatasetBuilder, split: str = "train"):
    """`builder.as_data_source()[split]` as the training pipeline reads it: image and mask
    left as their stored bytes.

    The training pipeline never reads the ground-truth mask (`pipeline.TRAIN_BATCH_KEYS`), so
    its zlib decompression is skipped. The image stays the stored PNG / JPEG bytes, which the
    augmentation decodes with PIL, as tfds would (`augment.open_image`), straight into the
    image it crops and resizes: no [H, W, 3] array is made and copied back into PIL. Together
    0.1-0.3 ms of a 224^2 JPEG example's ~2 ms of host CPU (benchmarks/RESULTS.md). Every other
    field decodes as usual.
    """
    skip = tfds.decode.SkipDecoding()
    return builder.as_data_source(split=split, decoders={"mask": skip, "image": skip})
