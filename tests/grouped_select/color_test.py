"""grouped_select.color against Pillow (torchvision's ColorJitter on PIL images), jitted."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image, ImageEnhance
from skimage import data as sample_images

from grouped_select import color, selection


def _pillow(image: np.ndarray, op: int, factor: float) -> np.ndarray:
    """One adjustment as torchvision's PIL path does it (the oracle)."""
    pil = Image.fromarray(image)
    if op == color.BRIGHTNESS:
        pil = ImageEnhance.Brightness(pil).enhance(factor)
    elif op == color.CONTRAST:
        pil = ImageEnhance.Contrast(pil).enhance(factor)
    elif op == color.SATURATION:
        pil = ImageEnhance.Color(pil).enhance(factor)
    elif op == color.HUE:
        h, s, v = pil.convert("HSV").split()
        shifted = (np.asarray(h).astype(np.int16) + int(factor)) % 256
        h = Image.fromarray(shifted.astype(np.uint8), "L")
        pil = Image.merge("HSV", (h, s, v)).convert("RGB")
    return np.asarray(pil)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Four photographs and two noise images, 96², uint8 [6, 96, 96, 3]."""
    photos = [sample_images.astronaut(), sample_images.chelsea(), sample_images.coffee()]
    photos.append(sample_images.rocket())
    out = [np.asarray(Image.fromarray(p).resize((96, 96))) for p in photos]
    rng = np.random.default_rng(0)
    out += [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2)]
    return np.stack(out)


ADJUST = {
    color.BRIGHTNESS: color.adjust_brightness,
    color.CONTRAST: color.adjust_contrast,
    color.SATURATION: color.adjust_saturation,
    color.HUE: color.adjust_hue,
}


@pytest.mark.parametrize("op", [color.BRIGHTNESS, color.CONTRAST, color.SATURATION])
def test_enhancers_equal_pillow_exactly(images, op):
    # Factors below and above 1 (clipping), 0 and exactly 1.
    factors = np.array([0.0, 0.6, 1.0, 1.4, 2.5, 0.93], np.float32)
    got = np.asarray(jax.jit(ADJUST[op])(images, factors))
    want = np.stack([_pillow(x, op, float(f)) for x, f in zip(images, factors, strict=True)])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_hsv_matches_pillow_on_every_colour():
    """RGB -> HSV: saturation and value exact, the hue one step (of 256) below Pillow's for
    0.28 % of the colours. HSV -> RGB: exact for all 2^24 triples."""
    levels = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(1, -1, 3)
    want = np.asarray(Image.fromarray(rgb).convert("HSV")).astype(int)
    hsv = jax.jit(lambda x: color._rgb_to_hsv(color._planes(x)))(rgb)
    got = np.stack([np.asarray(c) for c in hsv], -1)
    np.testing.assert_array_equal(got[..., 1:], want[..., 1:])
    hue_error = (got[..., 0] - want[..., 0] + 128) % 256 - 128
    assert set(np.unique(hue_error)) == {0, 1} and (hue_error != 0).mean() < 0.003

    every_hsv = rgb  # all 2^24 triples, read as (h, s, v)
    back = np.asarray(Image.fromarray(every_hsv, "HSV").convert("RGB"))
    planes = tuple(every_hsv[..., k].astype(np.int32) for k in range(3))
    rgb_back = np.stack([np.asarray(c) for c in jax.jit(color._hsv_to_rgb)(planes)], -1)
    np.testing.assert_array_equal(rgb_back, back)


def test_hue_shift_close_to_pillow(images):
    steps = np.array([0, 51, -51, 128, -3, 17], np.float32)
    got = np.asarray(jax.jit(color.adjust_hue)(images, steps)).astype(int)
    want = np.stack([_pillow(x, color.HUE, float(s)) for x, s in zip(images, steps, strict=True)])
    differ = np.abs(got - want)
    assert (differ > 0).mean() < 0.01 and differ.max() <= 8
    assert np.abs(got - images).mean() > 5  # the shifts do change the images


METHODS = ("select", "per_image")


def _jitter(method: str):
    return jax.jit(functools.partial(color.color_jitter, method=method))


@pytest.mark.parametrize("method", METHODS)
def test_color_jitter_applies_each_images_order(images, method):
    """Parameters drawn as in training, applied in each image's own order, equal Pillow's
    sequence of adjustments (exact but for the hue's rare float32 differences)."""
    rng = np.random.default_rng(3)
    params = color.sample_color_jitter(rng, batch=len(images))
    factors, order = params["jitter_factors"], params["jitter_order"]
    order[1, 2] = color.SKIP  # one image skips an adjustment
    got = np.asarray(_jitter(method)(images, factors, order)).astype(int)
    for x, f, o, g in zip(images, factors, order, got, strict=True):
        want = x
        for op in o[o != color.SKIP]:
            want = _pillow(want, int(op), float(f[op]))
        assert (g != want).mean() < 0.01 and np.abs(g - want).max() <= 8
    assert len({tuple(o) for o in order}) > 1  # the images really had different orders


def test_color_jitter_methods_give_the_same_pixels(images):
    """One image at a time with a switch (CPU) and all four adjustments selected per image
    (accelerators) are the same computation; every order and skip pattern drawn."""
    rng = np.random.default_rng(5)
    images = np.concatenate([images] * 4)
    params = color.sample_color_jitter(rng, batch=len(images))
    factors, order = params["jitter_factors"], params["jitter_order"]
    order[rng.random(order.shape) < 0.2] = color.SKIP
    select, per_image = (np.asarray(_jitter(m)(images, factors, order)) for m in METHODS)
    np.testing.assert_array_equal(per_image, select)
    assert (select != images).mean() > 0.5  # the adjustments changed the images


def test_color_jitter_rejects_an_unknown_method(images):
    with pytest.raises(ValueError, match="per_image"):
        color.color_jitter(
            images, np.ones((6, 4), np.float32), np.zeros((6, 4), np.int32), method="loop"
        )


@pytest.mark.parametrize("method", METHODS)
def test_color_jitter_sharded_over_the_batch_equals_one_device(images, method):
    """As the training step runs it: the batch split over a mesh's data axis."""
    rng = np.random.default_rng(4)
    images = np.concatenate([images, images[:2]])  # 8 images, one per device
    params = color.sample_color_jitter(rng, batch=len(images))
    args = [images, params["jitter_factors"], params["jitter_order"]]
    one = np.asarray(_jitter(method)(*args))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(args, NamedSharding(mesh, PartitionSpec("data")))
    np.testing.assert_array_equal(_jitter(method)(*sharded), one)


@pytest.mark.parametrize("method", METHODS)
def test_color_jitter_skipping_everything_is_identity(images, method):
    factors = np.tile(np.array([1.7, 0.2, 0.0, 40.0], np.float32), (len(images), 1))
    order = np.full((len(images), 4), color.SKIP, np.int32)
    np.testing.assert_array_equal(_jitter(method)(images, factors, order), images)


def test_normalize_equals_torchvision_float32_bit_for_bit():
    levels = np.arange(256, dtype=np.uint8)
    x = np.stack([levels, levels[::-1], np.roll(levels, 77)], -1)[None]  # [1, 256, 3]
    y = np.asarray(jax.jit(color.normalize)(x))
    assert y.dtype == np.float32 and y.shape == (1, 256, 3)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_array_equal(y, (x.astype(np.float32) / np.float32(255) - mean) / std)
    np.testing.assert_allclose(y[0, 0, 0], selection.black_value()[0], rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        color.normalize(x.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):  # never a silent cast of normalised floats
        color.color_jitter(y, np.ones((1, 4), np.float32), np.zeros((1, 4), np.int32))
