"""Tests for grouped_select.data.augment: image, region ids and mask stay aligned."""

import numpy as np
import pytest
from scipy import ndimage

from grouped_select import color
from grouped_select.data import augment, tfds_common


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


def test_color_jitter_parameters_change_image_only():
    """With jitter, train_augment returns the same geometry plus the jitter parameters, and
    draws them the way torchvision does (a permutation, then each enabled factor)."""
    image, ids, mask, _, _ = _scene()
    kwargs = dict(
        image_size=48, num_regions=48, crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3),
        hflip=False,
    )  # fmt: skip
    out = augment.train_augment(image, ids, mask, np.random.default_rng(1), **kwargs)
    plain = augment.train_augment(image, ids, mask, np.random.default_rng(1), jitter=None, **kwargs)
    assert set(out) - set(plain) == {"jitter_factors", "jitter_order"}
    for k in plain:
        np.testing.assert_array_equal(out[k], plain[k])

    rng = np.random.default_rng(5)
    p = color.sample_color_jitter(rng, brightness=0.4, contrast=0.0, saturation=0.4, hue=0.2)
    want = np.random.default_rng(5)
    order = want.permutation(4)
    factors = {}
    for op in order:
        if op == 1:
            continue
        factors[op] = int(want.uniform(-0.2, 0.2) * 255) if op == 3 else want.uniform(0.6, 1.4)
    np.testing.assert_array_equal(p["jitter_order"], np.where(order == 1, -1, order))
    assert p["jitter_factors"][1] == 1.0  # contrast disabled: identity factor, skipped
    for op, f in factors.items():
        assert p["jitter_factors"][op] == np.float32(f)
    assert p["jitter_factors"].dtype == np.float32 and p["jitter_order"].dtype == np.int32

    stacked = color.sample_color_jitter(np.random.default_rng(7), batch=3)
    one_by_one = np.random.default_rng(7)
    singles = [color.sample_color_jitter(one_by_one) for _ in range(3)]
    for k in ("jitter_factors", "jitter_order"):
        np.testing.assert_array_equal(stacked[k], np.stack([d[k] for d in singles]))


@pytest.mark.parametrize("box", [(8, 16, 16, 16), (3.5, 1.25, 40.0, 61.5), (0, 0, 48, 64)])
def test_crop_and_resize_flip_reverses_the_columns_of_all_three(box):
    image, ids, mask, _, _ = _scene()
    plain = augment.crop_and_resize(image, ids, mask, box, 40)
    flipped = augment.crop_and_resize(image, ids, mask, box, 40, flip=True)
    for a, b in zip(plain, flipped, strict=True):
        np.testing.assert_array_equal(b, a[:, ::-1])
        assert b.flags.c_contiguous and b.dtype == a.dtype


def test_crop_and_resize_ids_are_the_nearest_source_pixel():
    # Against the formula, pixel by pixel: the source pixel containing each output pixel centre.
    image, ids, mask, _, _ = _scene()
    top, left, h, w = 5.25, 7.5, 30.0, 41.0
    _, out_ids, out_mask = augment.crop_and_resize(image, ids, mask, (top, left, h, w), 23)
    for i in range(23):
        for j in range(23):
            r = min(int(np.floor(top + (i + 0.5) * h / 23)), ids.shape[0] - 1)
            c = min(int(np.floor(left + (j + 0.5) * w / 23)), ids.shape[1] - 1)
            assert out_ids[i, j] == ids[r, c] and out_mask[i, j] == mask[r, c]


def test_without_a_mask_the_image_and_ids_are_unchanged():
    """Training passes mask=None: the same draws give the same image and ids, and no mask."""
    image, ids, mask, _, _ = _scene()
    box = (5, 7, 30, 41)
    with_mask = augment.crop_and_resize(image, ids, mask, box, 24, flip=True)
    without = augment.crop_and_resize(image, ids, None, box, 24, flip=True)
    assert without[2] is None
    for got, want in zip(without[:2], with_mask[:2], strict=True):
        np.testing.assert_array_equal(got, want)
    kwargs = dict(image_size=24, num_regions=16)
    full = augment.train_augment(image, ids, mask, np.random.default_rng(4), **kwargs)
    lean = augment.train_augment(image, ids, None, np.random.default_rng(4), **kwargs)
    assert set(full) - set(lean) == {"mask"}
    for key in lean:
        np.testing.assert_array_equal(lean[key], full[key])


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_encoded_image_gives_what_its_decoded_pixels_give(image_format):
    """The training pipeline passes stored bytes: PIL decodes them as tfds would."""
    image, ids, mask, _, _ = _scene()
    encoded = tfds_common.encode_image(image, image_format)
    pixels = tfds_common.decode_image(encoded)  # JPEG: not exactly `image`
    box = (5.5, 7.0, 30.0, 41.0)
    from_bytes = augment.crop_and_resize(encoded, ids, mask, box, 24, flip=True)
    from_pixels = augment.crop_and_resize(pixels, ids, mask, box, 24, flip=True)
    for got, want in zip(from_bytes, from_pixels, strict=True):
        np.testing.assert_array_equal(got, want)
    assert from_bytes[0].std() > 10  # a real crop of the scene, not a blank image


def test_image_and_ids_of_different_sizes_are_refused():
    image, ids, mask, _, _ = _scene()
    with pytest.raises(ValueError, match=r"image is 48x64 \(HxW\) but its region ids are 48x56"):
        augment.crop_and_resize(image, ids[:, :56], None, (0, 0, 10, 10), 8)
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8 image, got float32"):
        augment.crop_and_resize(image.astype(np.float32), ids, None, (0, 0, 10, 10), 8)
