"""Tests for grouped_select.data.augment: image, region ids and mask stay aligned."""

import numpy as np
import pytest
from scipy import ndimage

from grouped_select.data import augment


def _scene(rows=6, cols=8, size=8, seed=0):
    """Known regions: block (i, j) is region i*cols+j, with its own colour; some are object."""
    rng = np.random.default_rng(seed)
    ids = np.kron(np.arange(rows * cols).reshape(rows, cols), np.ones((size, size), np.int64))
    # Well separated colours: each channel a multiple of 48.
    k = np.arange(rows * cols)
    palette = np.stack([k % 6, (k // 6) % 6, (k // 36) % 6], axis=-1)
    palette = (palette * 48 + 8).astype(np.uint8)
    assert len({tuple(p) for p in palette}) == rows * cols
    object_regions = rng.choice(rows * cols, size=rows * cols // 3, replace=False)
    mask = np.isin(ids, object_regions).astype(np.uint8)
    return palette[ids], ids, mask, palette, set(object_regions.tolist())


def _check_aligned(out, palette, object_regions, num_regions):
    image, ids, mask = out["image"], out["region_ids"], out["mask"]
    assert image.dtype == np.uint8 and ids.dtype == np.int32 and mask.dtype == np.uint8
    n = int(ids.max()) + 1
    assert n <= num_regions
    np.testing.assert_array_equal(np.unique(ids), np.arange(n))  # Every id is present.
    seen = {}
    for r in range(n):
        pixels = ids == r
        # A region is one source block: its mask value is constant ...
        assert len(np.unique(mask[pixels])) == 1
        if pixels.sum() < 36:
            continue
        # ... and its median colour is that block's palette colour (bilinear blends borders).
        median = np.median(image[pixels].astype(float), axis=0)
        dist = np.abs(palette.astype(float) - median).max(-1)
        block = np.flatnonzero(dist < 20)
        assert len(block) == 1, f"region {r}: median colour {median} is not a palette colour"
        block = int(block[0])
        # Pixels 2 or more pixels inside the region see only that block's colour.
        inner = ndimage.binary_erosion(pixels, iterations=2)
        assert (np.abs(image[inner].astype(int) - palette[block]).max(initial=0)) <= 2
        assert block not in seen, "two output regions map to one source block"
        seen[block] = r
        assert bool(mask[pixels][0]) == (block in object_regions)
    assert len(seen) >= 2


def test_crop_and_resize_is_exact_nearest_for_ids_and_mask():
    image, ids, mask, _, _ = _scene()
    box = (8, 16, 16, 16)  # top, left, h, w: upscaled x2 to 32.
    out_image, out_ids, out_mask = augment.crop_and_resize(image, ids, mask, box, 32)
    expected = np.repeat(np.repeat(ids[8:24, 16:32], 2, 0), 2, 1)
    np.testing.assert_array_equal(out_ids, expected)
    np.testing.assert_array_equal(out_mask, np.repeat(np.repeat(mask[8:24, 16:32], 2, 0), 2, 1))
    # Away from block borders bilinear upsampling of flat colour is exact.
    np.testing.assert_array_equal(out_image[4, 4], image[10, 18])
    same, _, _ = augment.crop_and_resize(image, ids, mask, (0, 0, 48, 64), 48)
    assert same.shape == (48, 48, 3)


@pytest.mark.parametrize("seed", range(6))
def test_train_augment_keeps_alignment_and_present_ids(seed):
    image, ids, mask, palette, object_regions = _scene(seed=seed)
    rng = np.random.default_rng(seed)
    out = augment.train_augment(
        image, ids, mask, rng, image_size=64, num_regions=48, crop_scale=(0.2, 1.0), jitter=None
    )
    assert out["image"].shape == (64, 64, 3) and out["region_ids"].shape == (64, 64)
    _check_aligned(out, palette, object_regions, 48)


def test_flip_happens_jointly():
    image, ids, mask, palette, object_regions = _scene()
    flips = 0
    for seed in range(8):
        out = augment.train_augment(
            image, ids, mask, np.random.default_rng(seed), image_size=64, num_regions=48,
            crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3), jitter=None,
        )  # fmt: skip
        _check_aligned(out, palette, object_regions, 48)
        # Full-image crop: column 0 shows block column 0 (no flip) or 7 (flip).
        first = out["region_ids"][0, 0], out["region_ids"][0, -1]
        flips += int(first[0] > first[1])
    assert 0 < flips < 8


def test_region_bound_enforced_after_crop():
    image, ids, mask, palette, object_regions = _scene()
    out = augment.eval_transform(image, ids, mask, image_size=48, num_regions=10, crop_fraction=1)
    np.testing.assert_array_equal(np.unique(out["region_ids"]), np.arange(10))
    # Merging unions whole regions: every source block maps to a single output id.
    crop = ids[:, 8:56]  # Centre 48 x 48 of the 48 x 64 scene, no resampling.
    for block in np.unique(crop):
        assert len(np.unique(out["region_ids"][crop == block])) == 1


def test_eval_transform_centre_crop():
    image, ids, mask, palette, object_regions = _scene()
    out = augment.eval_transform(image, ids, mask, image_size=42, num_regions=48)
    # Box: side 48 * 0.875 = 42 around the centre of the 48 x 64 image -> no resampling.
    np.testing.assert_array_equal(
        out["region_ids"], np.unique(ids[3:45, 11:53], return_inverse=True)[1].reshape(42, 42)
    )
    np.testing.assert_array_equal(out["image"], image[3:45, 11:53])
    np.testing.assert_array_equal(out["mask"], mask[3:45, 11:53])


def test_color_jitter_changes_image_only_and_identity_at_zero():
    image, ids, mask, _, _ = _scene()
    rng = np.random.default_rng(0)
    same = augment.color_jitter(image, rng, brightness=0, contrast=0, saturation=0, hue=0)
    np.testing.assert_array_equal(same, image)
    changed = augment.color_jitter(image, rng)
    assert changed.shape == image.shape and changed.dtype == np.uint8
    assert np.abs(changed.astype(int) - image).mean() > 1
    out = augment.train_augment(
        image, ids, mask, np.random.default_rng(1), image_size=48, num_regions=48,
        crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3), hflip=False,
    )  # fmt: skip
    plain = augment.train_augment(
        image, ids, mask, np.random.default_rng(1), image_size=48, num_regions=48,
        crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3), hflip=False, jitter=None,
    )  # fmt: skip
    np.testing.assert_array_equal(out["region_ids"], plain["region_ids"])
    np.testing.assert_array_equal(out["mask"], plain["mask"])
    assert not np.array_equal(out["image"], plain["image"])


def test_normalize_values():
    x = np.array([[[0, 255, 124]]], np.uint8)
    y = augment.normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(
        y[0, 0], [-0.485 / 0.229, (1 - 0.456) / 0.224, (124 / 255 - 0.406) / 0.225], rtol=1e-6
    )
