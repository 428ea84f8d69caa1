"""Tests for the builders over user data: published folder layouts and tfds catalog sources."""

import io
import logging
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from grouped_select import data


def _write_image(path: pathlib.Path, shape=(20, 24), mode="RGB", seed=0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(*shape, channels), dtype=np.uint8)
    if mode == "RGBA":
        arr[:, : shape[1] // 2, 3] = 0  # Left half fully transparent.
        arr[:, shape[1] // 2 :, 3] = 255
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path)
    return arr


def _write_mask(path: pathlib.Path, shape=(20, 24), seed=0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(shape, bool)
    r = np.random.default_rng(seed).integers(2, 8)
    mask[r : r + 8, r : r + 10] = True
    if path.suffix == ".npy":
        np.save(path, mask)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return mask


def _prepare(root, tmp_path, layout, **kwargs):
    kwargs.setdefault("num_workers", 0)
    return data.prepare_folders(root, tmp_path / "tfds", layout=layout, max_size=None, **kwargs)


def _all(builder, split):
    src = builder.as_data_source()[split]
    return [src[i] for i in range(len(src))]


def test_imagenet_layout_with_corrupt_grayscale_and_rgba_files(tmp_path, caplog):
    root = tmp_path / "imagenet"
    _write_image(root / "train/n01/a.JPEG", seed=1)
    _write_image(root / "train/n01/gray.JPEG", mode="L", seed=2)
    _write_image(root / "train/n02/alpha.png", mode="RGBA", seed=3)
    _write_image(root / "train/n02/c.JPEG", seed=4)
    (root / "train/n02/broken.JPEG").write_bytes(b"\xff\xd8 this is not a jpeg")
    _write_image(root / "val/n01/v1.JPEG", seed=5)
    _write_image(root / "val/n02/v2.JPEG", seed=6)
    with caplog.at_level(logging.WARNING):
        builder = _prepare(root, tmp_path, "imagenet")
    assert builder.info.features["label"].names == ["n01", "n02"]
    assert "broken.JPEG" in caplog.text
    skipped = builder.info.metadata["skipped"]
    assert len(skipped["train"]) == 1 and "broken.JPEG" in skipped["train"][0]
    assert skipped["validation"] == []
    train = _all(builder, "train")
    assert len(train) == 4 and len(_all(builder, "validation")) == 2
    assert sorted(int(e["label"]) for e in train) == [0, 0, 1, 1]
    images = [e["image"] for e in train]
    assert all(im.shape == (20, 24, 3) for im in images)
    # Grayscale became RGB with equal channels; RGBA's transparent half became black.
    assert (
        sum((im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all() for im in images)
        == 1
    )
    assert sum((im[:, :12] == 0).all() and im[:, 12:].any() for im in images) == 1
    for e in train:
        assert not e["has_mask"] and not e["mask"].any()
        assert e["region_ids"].max() < 128
        np.testing.assert_array_equal(
            np.unique(e["region_ids"]), np.arange(e["region_ids"].max() + 1)
        )


def test_imagenet9_test_split_has_fg_masks(tmp_path):
    root = tmp_path / "in9"
    classes = ["00_dog", "01_bird"]
    want = {}
    for i, c in enumerate(classes):
        _write_image(root / f"train/{c}/t{i}.JPEG", seed=i)
        img = _write_image(
            root / f"backgrounds_challenge_data/bg_challenge/original/val/{c}/x{i}.png", seed=10 + i
        )
        mask = _write_mask(
            root / f"backgrounds_challenge_data/bg_challenge/fg_mask/val/{c}/x{i}.npy", seed=i
        )
        want[img.tobytes()] = (mask, i)
    builder = _prepare(root, tmp_path, "imagenet9", splits=("train", "test"))
    assert builder.info.features["label"].names == classes
    test = _all(builder, "test")
    assert len(test) == 2
    for e in test:
        mask, label = want[e["image"].tobytes()]
        assert e["has_mask"] and e["label"] == label
        np.testing.assert_array_equal(e["mask"], mask.astype(np.uint8))


def test_bam_layout_sorted_mask_pairing_and_crop_to_mask(tmp_path):
    root = tmp_path / "bam/data"
    want = {}
    for i, c in enumerate(["backpack", "bird"]):
        _write_image(root / f"obj/train/{c}/{c}-bedroom-0001.jpg", seed=i)
        for j in range(2):
            img = _write_image(
                root / f"obj/val/{c}/{c}-scene-09{j}0.png", shape=(24, 28), seed=20 + 2 * i + j
            )
            mask = _write_mask(root / f"obj/val_mask/{c}/{j}.npy", seed=30 + 2 * i + j)
            # Masks are 20 x 24 centre crops of the 24 x 28 images, as in BAM.
            want[np.ascontiguousarray(img[2:22, 2:26]).tobytes()] = mask
    with pytest.raises(ValueError, match="crop_to_mask=True"):
        _prepare(root, tmp_path / "a", "bam_object", mask_pairing="sorted")
    builder = _prepare(root, tmp_path / "b", "bam_object", mask_pairing="sorted", crop_to_mask=True)
    test = _all(builder, "test")
    assert len(test) == 4 and all(e["has_mask"] for e in test)
    for e in test:
        np.testing.assert_array_equal(e["mask"], want[e["image"].tobytes()].astype(np.uint8))
    assert not any(e["has_mask"] for e in _all(builder, "train"))


def test_coco10_and_generic_folders_with_png_masks(tmp_path, caplog):
    coco = tmp_path / "coco"
    for i, c in enumerate(["bed", "car"]):
        _write_image(coco / f"train/{c}/{i}.png", seed=i)
        _write_image(coco / f"val/{c}/v{i}.png", seed=5 + i)
        _write_mask(coco / f"mask/val/{c}/v{i}.npy", seed=i)
    builder = _prepare(coco, tmp_path / "a", "coco10")
    assert all(e["has_mask"] and e["mask"].sum() == 80 for e in _all(builder, "test"))
    assert not any(e["has_mask"] for e in _all(builder, "train"))

    root = tmp_path / "generic"
    for i, c in enumerate(["a", "b"]):
        _write_image(root / f"train/{c}/{i}.png", seed=i)
        _write_mask(root / f"masks/train/{c}/{i}.png", seed=i)
    _write_image(root / "train/b/unmasked.png", seed=9)
    with caplog.at_level(logging.WARNING):
        builder = _prepare(root, tmp_path / "b", "folders")
    assert "1 image(s) have no mask" in caplog.text
    train = _all(builder, "train")
    assert sorted(bool(e["has_mask"]) for e in train) == [False, True, True]
    assert all(e["mask"].sum() == 80 for e in train if e["has_mask"])


def test_mask_size_mismatch_names_paths_and_fix(tmp_path):
    root = tmp_path / "generic"
    _write_image(root / "train/a/0.png")
    _write_mask(root / "masks/train/a/0.npy", shape=(10, 10))
    with pytest.raises(ValueError, match=r"masks/train/a/0\.npy.*mask is 10x10.*20x24.*Fix"):
        _prepare(root, tmp_path, "folders")


def test_missing_split_and_unknown_layout_errors(tmp_path):
    root = tmp_path / "in9"
    _write_image(root / "train/00_dog/a.JPEG")
    with pytest.raises(FileNotFoundError, match=r"bg_challenge/original/val.*Fix: ImageNet-9 test"):
        _prepare(root, tmp_path, "imagenet9", splits=("train", "test"))
    with pytest.raises(ValueError, match=r"unknown layout 'imagenet-9' for .*in9.*imagenet9"):
        _prepare(root, tmp_path, "imagenet-9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no split folder of layout 'folders' under"):
        _prepare(tmp_path / "empty", tmp_path, "folders")


def test_folder_layout_stored_as_jpeg(tmp_path):
    root = tmp_path / "generic"
    sources = [
        _write_image(root / f"train/{c}/{i}.png", (30, 36), seed=i) for c in "ab" for i in (0, 1)
    ]
    png = _prepare(root, tmp_path / "png", "folders")
    jpeg = _prepare(root, tmp_path / "jpeg", "folders", image_format="jpeg")
    assert jpeg.info.features["image"].encoding_format == "jpeg"
    assert jpeg.builder_config.name != png.builder_config.name
    lossless = {e["image"].tobytes() for e in _all(png, "train")}
    assert lossless == {a.tobytes() for a in sources}
    for e in _all(jpeg, "train"):
        assert e["image"].tobytes() not in lossless  # Noise images: JPEG changes them.
        np.testing.assert_array_equal(
            e["region_ids"], data.slic_regions(e["image"], n_segments=100, compactness=20.0)
        )


class FakePets(tfds.core.GeneratorBasedBuilder):
    """Stand-in for a prepared catalog dataset with a trimap (oxford_iiit_pet's features)."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["cat", "dog"]),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(3):
            rng = np.random.default_rng(i)
            image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
            trimap = rng.integers(1, 4, (16, 20), dtype=np.uint8)
            yield i, {"image": _png(image), "label": i % 2, "segmentation_mask": _png(trimap)}


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="png")
    return buf.getvalue()


def test_tfds_catalog_source_with_segmentation_mask(tmp_path):
    FakePets(data_dir=str(tmp_path / "src"), file_format="array_record").download_and_prepare()
    builder = data.prepare_from_tfds(
        "fake_pets",
        tmp_path / "out",
        source_data_dir=tmp_path / "src",
        splits=(("train", "train"),),
        mask_key="segmentation_mask",
        mask_background=2,
        num_workers=0,
    )
    assert builder.info.features["label"].names == ["cat", "dog"]
    source = tfds.data_source("fake_pets", split="train", data_dir=str(tmp_path / "src"))
    want = {source[i]["image"].tobytes(): source[i]["segmentation_mask"][..., 0] for i in range(3)}
    out = _all(builder, "train")
    assert len(out) == 3
    for e in out:
        trimap = want[e["image"].tobytes()]
        np.testing.assert_array_equal(e["mask"], (trimap != 2).astype(np.uint8))
        assert e["has_mask"]
    with pytest.raises(FileNotFoundError, match="tfds build"):
        data.prepare_from_tfds("fake_pets", tmp_path / "out2", source_data_dir=tmp_path / "none")
