"""Pixel colour on the accelerator: ImageNet normalisation and colour jitter, batched.

The input pipeline ships uint8 images (a quarter of float32's bytes through grain's shared
memory and onto the device) and, for training, each image's colour-jitter parameters drawn on
the host (`sample_color_jitter`, numpy); the jitted step applies them here. Colour
jitter was ~40 % of a training example's host CPU time at 224² (most of it PIL's hue round
trip through HSV); on the device it is a few elementwise passes over the batch.

`color_jitter` reproduces torchvision's ColorJitter on PIL images, i.e. Pillow's
`ImageEnhance.Brightness / Contrast / Color` and the HSV round trip of `adjust_hue`, with
Pillow's integer rounding after every adjustment. Brightness, contrast and saturation give
Pillow's pixels exactly; the hue differs where Pillow's float hue of a colour rounds one step
below the exact one (0.28 % of colours; `_rgb_to_hsv`), which moves ~0.3 % of a photograph's
pixels by up to 6 levels. The arithmetic is arranged so that XLA's fused multiply-adds cannot
change a pixel: every compilation (one device or a mesh, CPU or GPU) gives the same images.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from grouped_select.selection import IMAGENET_MEAN, IMAGENET_STD

# Operation ids in `color_jitter`'s `order` (torchvision's ColorJitter numbering).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
SKIP = -1
# The batch keys of the parameters (`sample_color_jitter`, the input pipeline's batches).
JITTER_KEYS = ("jitter_factors", "jitter_order")


def sample_color_jitter(
    rng: np.random.Generator,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.2,
    batch: int | None = None,
) -> dict[str, np.ndarray]:
    """One image's torchvision ColorJitter parameters, on the host; `color_jitter` applies them.

    Draws as torchvision does: a random order of the four adjustments, then each enabled
    one's factor in that order.

    Args:
      rng: Generator.
      brightness, contrast, saturation: factors drawn from [max(0, 1 - x), 1 + x]; 0 skips.
      hue: shift drawn from [-hue, hue] (fraction of the hue circle); 0 skips.
      batch: None for one image; B for B images drawn one after another, stacked.

    Returns:
      "jitter_factors" [4] float32 (brightness, contrast, saturation factors; hue shift in
      steps of 1/256 of the circle, int(shift * 255) as torchvision's PIL path) and
      "jitter_order" [4] int32 (operation ids in the order applied, -1 for skipped ones);
      [B, 4] each with `batch`.
    """
    strengths = dict(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
    if batch is not None:
        drawn = [sample_color_jitter(rng, **strengths) for _ in range(batch)]
        return {k: np.stack([d[k] for d in drawn]) for k in JITTER_KEYS}
    factors = np.ones(4, np.float32)
    factors[HUE] = 0.0  # a shift of 0 steps
    order = np.full(4, SKIP, np.int32)
    for position, op in enumerate(rng.permutation(4)):
        if op == HUE and hue > 0:
            factors[op] = int(rng.uniform(-hue, hue) * 255)
        elif op != HUE and (strength := (brightness, contrast, saturation)[op]) > 0:
            factors[op] = rng.uniform(max(0.0, 1 - strength), 1 + strength)
        else:
            continue
        order[position] = op
    return {"jitter_factors": factors, "jitter_order": order}


def _rgb_uint8(images: ArrayLike) -> jax.Array:
    images = jnp.asarray(images)
    if images.dtype != jnp.uint8 or images.shape[-1:] != (3,):
        raise ValueError(
            f"expected uint8 RGB images [..., 3] (as the input pipeline yields them), got "
            f"{images.dtype} {images.shape}."
        )
    return images


def _normalization_table() -> np.ndarray:
    """(level / 255 - mean) / std for every uint8 level and channel, [256, 3] float32,
    computed in float32 with true divisions, as torchvision's ToTensor + Normalize do."""
    levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return (levels - mean) / std


def normalize(images: ArrayLike) -> jax.Array:
    """ImageNet normalisation: uint8 [..., 3] -> float32 (x / 255 - mean) / std.

    Bit for bit torchvision's (and numpy's) float32 values, by a lookup in a 256 x 3 table:
    written as arithmetic, XLA turns the divisions by constants into multiplications by
    reciprocals, one ulp off for some levels, and a float32 training run amplifies one ulp
    into a different run.
    """
    index = _rgb_uint8(images).astype(jnp.int32) * 3 + jnp.arange(3, dtype=jnp.int32)
    return jnp.asarray(_normalization_table().ravel())[index]


# Inside `color_jitter` an image travels as three int32 planes (r, g, b), each [B, H, W]:
# XLA fuses the whole chain of adjustments, and with the channels in separate arrays every
# value is computed once per pixel. With [B, H, W, 3] arrays, an adjustment that reads all
# three channels of a pixel recomputes everything before it once per channel (3^n times after
# n adjustments; 30x slower on CPU for the four).
Planes = tuple[jax.Array, jax.Array, jax.Array]


def _planes(images: ArrayLike) -> Planes:
    rgb = _rgb_uint8(images).astype(jnp.int32)
    return rgb[..., 0], rgb[..., 1], rgb[..., 2]


def _image(planes: Planes) -> jax.Array:
    return jnp.stack(planes, -1).astype(jnp.uint8)


def _per_image(values: jax.Array, plane: jax.Array) -> jax.Array:
    """[B] -> [B, 1, 1] for broadcasting against a [B, H, W] plane."""
    return jnp.reshape(values, values.shape + (1,) * (plane.ndim - 1))


def _blend(degenerate: jax.Array, channel: jax.Array, factor: jax.Array) -> jax.Array:
    """Pillow's `Image.blend(degenerate, image, factor)` on one int32 channel: d + f (x - d)
    in float32, clipped to [0, 255] and truncated (Pillow's `(UINT8)` cast).

    Pillow rounds f (x - d) to float32 before adding d. XLA fuses a multiply and an add
    into one multiply-add, which rounds once (~3 % of pixels one level off for f = 0.6), so
    f is split into a part with 16 significant bits and one with 8: each times x - d (at most
    8 bits and a sign) is exact, and their sum rounds once, to Pillow's product, fused or
    not.
    """
    bits = lax.bitcast_convert_type(factor, jnp.int32)
    high = lax.bitcast_convert_type(bits & -256, jnp.float32)  # low 8 mantissa bits cleared
    low = factor - high
    difference = (channel - degenerate).astype(jnp.float32)
    product = high * difference + low * difference
    out = degenerate.astype(jnp.float32) + product
    return jnp.clip(out, 0.0, 255.0).astype(jnp.int32)


def _luma(planes: Planes) -> jax.Array:
    """Pillow's RGB -> "L": (19595 r + 38470 g + 7471 b + 2^15) >> 16, int32."""
    r, g, b = planes
    return (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16


def _brightness(planes: Planes, factor: jax.Array) -> Planes:
    f = _per_image(factor, planes[0])
    return tuple(_blend(jnp.zeros_like(c), c, f) for c in planes)


def _contrast(planes: Planes, factor: jax.Array) -> Planes:
    luma = _luma(planes)
    count = luma.shape[-1] * luma.shape[-2]
    total = jnp.sum(luma, axis=(-2, -1), keepdims=True)
    mean = (2 * total + count) // (2 * count)  # Pillow's int(mean + 0.5), exactly
    f = _per_image(factor, planes[0])
    return tuple(_blend(mean, c, f) for c in planes)


def _saturation(planes: Planes, factor: jax.Array) -> Planes:
    grey = _luma(planes)
    f = _per_image(factor, planes[0])
    return tuple(_blend(grey, c, f) for c in planes)


def _floor_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """floor(n / d) for int32 0 <= n < 2^24 and d > 0, exactly.

    A float32 quotient (vectorised; XLA's CPU integer division by a variable is not) is at
    most one off, and integer comparisons correct it.
    """
    q = jnp.floor(numerator.astype(jnp.float32) / denominator.astype(jnp.float32))
    q = q.astype(jnp.int32)
    q = jnp.where(q * denominator > numerator, q - 1, q)
    return jnp.where((q + 1) * denominator <= numerator, q + 1, q)


def _rgb_to_hsv(planes: Planes) -> Planes:
    """Pillow's RGB -> HSV, int32 planes in [0, 255], in integer arithmetic.

    Saturation and value equal Pillow's for every colour. The hue is floor(255 h) of the exact
    hue h; Pillow computes h in float32 and double and lands one step (of 256) lower for
    0.28 % of the 2^24 colours, those where 255 h is an exact integer. Integers make the result
    the same under every compilation (a float32 version of this module gave different pixels
    in the one-device and the eight-device training step).
    """
    r, g, b = planes
    maxc = jnp.maximum(r, jnp.maximum(g, b))
    chroma = maxc - jnp.minimum(r, jnp.minimum(g, b))
    grey = chroma == 0
    chroma_or_1 = jnp.where(grey, 1, chroma)
    # 6 h · chroma, from the largest channel (Pillow's precedence r, g, b): in [-chroma,
    # 6 chroma), wrapped into [0, 6 chroma).
    sixths = jnp.where(
        r == maxc, g - b, jnp.where(g == maxc, 2 * chroma + b - r, 4 * chroma + r - g)
    )
    sixths = jnp.where(sixths < 0, sixths + 6 * chroma, sixths)
    hue = jnp.where(grey, 0, _floor_divide(255 * sixths, 6 * chroma_or_1))
    sat = jnp.where(grey, 0, _floor_divide(255 * chroma, jnp.maximum(maxc, 1)))
    return hue, sat, maxc


def _hsv_to_rgb(hsv: Planes) -> Planes:
    """Pillow's HSV -> RGB, int32 planes in [0, 255].

    Pillow rounds v (1 - s/255), v (1 - (s/255) f) and v (1 - (s/255)(1 - f)), with f = j/255
    the hue's position j in its sixth of the circle, in double precision. Here they are the
    same roundings of exact fractions, in integers: no float rounding that a compiler's fused
    multiply-adds could move, so every compilation (one device or a mesh, CPU or GPU) gives
    the same pixels, equal to Pillow's for all 2^24 (h, s, v) triples.
    """
    hue, sat, value = hsv
    sector, j = jnp.divmod(6 * hue, 255)

    def round_fraction(numerator, denominator):  # round-half-up(numerator / denominator) >= 0
        return (2 * numerator + denominator) // (2 * denominator)

    p = round_fraction(value * (255 - sat), 255)
    q = round_fraction(value * (65025 - sat * j), 65025)
    t = round_fraction(value * (65025 - sat * (255 - j)), 65025)
    sector = sector % 6  # hue 255 is sector 6, i.e. 0
    # (r, g, b) for sectors 0..5, Pillow's switch on i % 6.
    table = ((value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value))
    out = []
    for channel in range(3):
        x = (value, p, q)[channel]  # sector 5
        for k in range(4, -1, -1):
            x = jnp.where(sector == k, table[k][channel], x)
        out.append(jnp.where(sat == 0, value, x))
    return tuple(out)


def _hue(planes: Planes, steps: jax.Array) -> Planes:
    hue, sat, value = _rgb_to_hsv(planes)
    shift = _per_image(steps, hue).astype(jnp.int32)
    return _hsv_to_rgb((jnp.mod(hue + shift, 256), sat, value))


_ADJUSTMENTS = (_brightness, _contrast, _saturation, _hue)  # indexed by operation id


def adjust_brightness(images: ArrayLike, factor: ArrayLike) -> jax.Array:
    """`ImageEnhance.Brightness(image).enhance(factor)`: blend with black.

    Args:
      images: [B, H, W, 3] uint8.
      factor: [B] float32.

    Returns:
      [B, H, W, 3] uint8.
    """
    return _image(_brightness(_planes(images), jnp.asarray(factor, jnp.float32)))


def adjust_contrast(images: ArrayLike, factor: ArrayLike) -> jax.Array:
    """`ImageEnhance.Contrast(image).enhance(factor)`: blend with each image's grey level
    int(mean(L) + 0.5).

    Args:
      images: [B, H, W, 3] uint8.
      factor: [B] float32.

    Returns:
      [B, H, W, 3] uint8.
    """
    return _image(_contrast(_planes(images), jnp.asarray(factor, jnp.float32)))


def adjust_saturation(images: ArrayLike, factor: ArrayLike) -> jax.Array:
    """`ImageEnhance.Color(image).enhance(factor)`: blend with the image's own greyscale.

    Args:
      images: [B, H, W, 3] uint8.
      factor: [B] float32.

    Returns:
      [B, H, W, 3] uint8.
    """
    return _image(_saturation(_planes(images), jnp.asarray(factor, jnp.float32)))


def adjust_hue(images: ArrayLike, steps: ArrayLike) -> jax.Array:
    """torchvision's `adjust_hue` on a PIL image: Pillow's 8-bit HSV round trip, hue shifted.

    Args:
      images: [B, H, W, 3] uint8.
      steps: [B] hue shift in steps of 1/256 of the circle (torchvision: int(shift * 255)).
        A shift of 0 still rounds through the 8-bit HSV.

    Returns:
      [B, H, W, 3] uint8.
    """
    return _image(_hue(_planes(images), jnp.asarray(steps, jnp.float32)))


JitterMethod = Literal["auto", "select", "per_image"]


def color_jitter(
    images: ArrayLike, factors: ArrayLike, order: ArrayLike, *, method: JitterMethod = "auto"
) -> jax.Array:
    """torchvision's ColorJitter with given parameters, one set per image.

    Args:
      images: [B, H, W, 3] uint8.
      factors: [B, 4] float32: brightness, contrast and saturation factors, and the hue shift
        in steps of 1/256 of the circle (as drawn by `sample_color_jitter`).
      order: [B, 4] int32: the operations in the order applied (BRIGHTNESS, CONTRAST,
        SATURATION, HUE), SKIP for a disabled one.
      method: how each image gets its own operations; both give the same pixels.
        "select": all four adjustments computed at each of the four positions for the whole
        batch, one selected per image (no per-image control flow; GPU, TPU).
        "per_image": one image at a time (`lax.map`), each position a `lax.switch` that runs
        only that image's adjustment: a quarter of the arithmetic, but images in sequence
        (CPU: 23.5 -> 4.3 ms with the normalisation, batch 4 at 224², 2 cores).
        "auto": "per_image" on CPU, else "select".

    Returns:
      [B, H, W, 3] uint8.
    """
    factors = jnp.asarray(factors, jnp.float32)
    order = jnp.asarray(order, jnp.int32)
    if method == "auto":
        method = "per_image" if jax.default_backend() == "cpu" else "select"
    if method == "select":
        return _image(_jitter_selected(_planes(images), factors, order))
    if method == "per_image":
        return lax.map(_jitter_one_image, (_rgb_uint8(images), factors, order))
    raise ValueError(f"method must be 'auto', 'select' or 'per_image', got {method!r}.")


def _jitter_selected(planes: Planes, factors: jax.Array, order: jax.Array) -> Planes:
    """[B, H, W] planes; factors and order [B, 4]."""
    for position in range(order.shape[1]):
        op = _per_image(order[:, position], planes[0])
        out = planes
        for op_id, adjust in enumerate(_ADJUSTMENTS):
            adjusted = adjust(planes, factors[:, op_id])
            out = tuple(jnp.where(op == op_id, a, o) for a, o in zip(adjusted, out, strict=True))
        planes = out
    return planes


def _jitter_one_image(image_factors_order: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
    """One image: [H, W, 3] uint8, factors and order [4] -> [H, W, 3] uint8."""
    image, factors, order = image_factors_order
    return _image(_jitter_switched(_planes(image[None]), factors, order))[0]


def _jitter_switched(planes: Planes, factors: jax.Array, order: jax.Array) -> Planes:
    """One image: [1, H, W] planes; factors and order [4]."""

    def branch(op_id: int):
        return lambda planes: _ADJUSTMENTS[op_id](planes, factors[op_id][None])

    branches = [lambda planes: planes] + [branch(op_id) for op_id in range(len(_ADJUSTMENTS))]
    for position in range(order.shape[0]):
        planes = lax.switch(order[position] - SKIP, branches, planes)  # SKIP -> identity
    return planes
