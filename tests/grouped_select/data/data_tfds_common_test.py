"""Tests for the stored example format (grouped_select.data.tfds_common): PNG and JPEG images."""

import numpy as np
import pytest

from grouped_select import data
from grouped_select.data import synthetic, tfds_common
from grouped_select.data.superpixels import slic_regions

SLIC = dict(n_segments=30, compactness=20.0, num_regions=128)


def _image(size=48, seed=0):
    rng = synthetic.example_rng(seed, 0, 0)
    return synthetic.render_example(rng, label=1, background=2, image_size=size)["image"]


def test_png_is_lossless_and_jpeg_close():
    image = _image()
    png = tfds_common.encode_image(image, "png")
    jpeg = tfds_common.encode_image(image, "jpeg")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and jpeg[:2] == b"\xff\xd8"
    np.testing.assert_array_equal(tfds_common.decode_image(png), image)
    error = np.abs(tfds_common.decode_image(jpeg).astype(int) - image)
    # Quality 95 without chroma subsampling: ~1 level on average, no smeared colours.
    assert 0 < error.mean() < 2.5 and np.percentile(error, 99) <= 12


def test_jpeg_example_stores_the_slic_of_its_decoded_pixels():
    image, mask = _image(seed=3), np.zeros((48, 48), np.uint8)
    example = tfds_common.stored_example(image, mask, 4, SLIC, "jpeg")
    pixels = tfds_common.decode_image(example["image"])
    assert not np.array_equal(pixels, image)  # Lossy: the ids below must follow the pixels.
    np.testing.assert_array_equal(example["region_ids"], slic_regions(pixels, **SLIC))
    png = tfds_common.stored_example(image, mask, 4, SLIC, "png")
    np.testing.assert_array_equal(png["region_ids"], slic_regions(image, **SLIC))


@pytest.mark.parametrize(
    "make",
    [
        lambda: tfds_common.encode_image(_image(), "webp"),
        lambda: data.shapes_config(image_format="JPEG"),
        lambda: data.folder_config("/tmp", layout="folders", image_format="tiff"),
        lambda: data.tfds_source_config("cifar10", image_format=""),
    ],
)
def test_unknown_image_format_is_named(make):
    with pytest.raises(ValueError, match=r"image_format must be one of \('png', 'jpeg'\)"):
        make()


def test_png_keeps_the_names_of_datasets_prepared_before_jpeg():
    settings = dict(image_size=64, seed=0)
    assert tfds_common.named_settings({**settings, "image_format": "png"}) == settings
    jpeg = {**settings, "image_format": "jpeg"}
    assert tfds_common.named_settings(jpeg) == jpeg
    assert data.shapes_config().name == data.shapes_config(image_format="png").name
    for make in (
        data.shapes_config,
        lambda **kw: data.folder_config("/tmp", layout="folders", **kw),
        lambda **kw: data.tfds_source_config("cifar10", **kw),
    ):
        assert make(image_format="jpeg").name != make().name


def test_builtin_benchmark_in_jpeg_reads_back_close_to_png(tmp_path, tiny_shapes):
    jpeg = data.prepare_shapes(
        tmp_path,
        image_size=32,
        num_train=48,
        num_validation=0,
        num_test=20,
        num_workers=0,
        image_format="jpeg",
    )
    assert jpeg.info.features["image"].encoding_format == "jpeg"
    assert tiny_shapes.info.features["image"].encoding_format == "png"
    png_test, jpeg_test = (b.as_data_source()["test"] for b in (tiny_shapes, jpeg))
    for i in range(len(png_test)):
        a, b = png_test[i], jpeg_test[i]
        assert b["image"].dtype == np.uint8 and b["image"].shape == (32, 32, 3)
        assert 0 < np.abs(a["image"].astype(int) - b["image"]).mean() < 3
        np.testing.assert_array_equal(a["mask"], b["mask"])
        assert a["label"] == b["label"]
        # tfds decodes with PIL here, as preparation did (OpenCV, if installed, may differ).
        np.testing.assert_array_equal(
            b["region_ids"],
            slic_regions(b["image"], n_segments=100, compactness=20.0, num_regions=128),
        )
