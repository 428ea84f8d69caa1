"""Semi-synthetic images in the spirit of BAM: textured shapes pasted on natural backgrounds.

Every example is a pure function of (seed, split, index): `split_plan` fixes the labels and
background families of a split, `render_example` draws one image from a numpy Generator seeded
with `example_rng(seed, split_index, index)`. Nothing is downloaded: backgrounds are crops of
photographs bundled with scikit-image (`skimage.data`) and procedural textures.

The class is the shape of the object (disk, square, ...); colour, texture, size, rotation and
position are random and independent of the class, so only the shape is predictive. The
background family can be made spuriously predictive (`background_correlation`, used for
training splits) while the test split draws it independently of the class, like the
ImageNet-9 backgrounds challenge.
"""

import functools

import numpy as np
import skimage.data
from PIL import Image

SHAPE_NAMES = ("disk", "square", "triangle", "star", "cross", "ring", "crescent", "arrow")
BACKGROUND_NAMES = ("astronaut", "coffee", "cat", "rocket", "space", "tissue", "stone", "pattern")

# Background family -> bundled scikit-image photographs (no download). "pattern" is procedural.
_PHOTOS = {
    "astronaut": ("astronaut",),
    "coffee": ("coffee",),
    "cat": ("chelsea",),
    "rocket": ("rocket",),
    "space": ("hubble_deep_field",),
    "tissue": ("immunohistochemistry",),
    "stone": ("brick", "gravel", "grass"),  # Grayscale: tinted with a random colour.
}

# Object radius as a fraction of the image side.
_RADIUS_RANGE = (0.22, 0.34)


def example_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
    """The Generator that draws example `index` of split `split_index`."""
    return np.random.default_rng([seed, split_index, index])


def class_counts(num_examples: int, proportions: tuple[float, ...] | None) -> np.ndarray:
    """Exact per-class counts (largest remainder) for `num_examples` examples.

    Args:
      num_examples: split size.
      proportions: one non-negative weight per class (normalised here); None means balanced.

    Returns:
      [C] int64 counts summing to num_examples.
    """
    if proportions is None:
        proportions = (1.0,) * len(SHAPE_NAMES)
    p = np.asarray(proportions, dtype=np.float64)
    if p.shape != (len(SHAPE_NAMES),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(
            f"class_proportions must be {len(SHAPE_NAMES)} non-negative weights "
            f"(one per class in {SHAPE_NAMES}), got {proportions}."
        )
    quota = p / p.sum() * num_examples
    counts = np.floor(quota).astype(np.int64)
    rest = num_examples - counts.sum()
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def split_plan(
    num_examples: int,
    *,
    seed: int,
    split_index: int,
    class_proportions: tuple[float, ...] | None = None,
    background_correlation: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and background families of a split.

    Each class c has a "home" background family c. With probability `background_correlation`
    an example gets its class's home family, otherwise a family drawn uniformly from all of
    them (so the home family co-occurs with probability corr + (1 - corr) / 8).

    Args:
      num_examples: split size.
      seed: dataset seed.
      split_index: distinguishes splits drawn from the same seed.
      class_proportions: see `class_counts`.
      background_correlation: in [0, 1]; 0 makes the background independent of the class.

    Returns:
      (labels [N] int64, backgrounds [N] int64), in example order.
    """
    if not 0.0 <= background_correlation <= 1.0:
        raise ValueError(f"background_correlation must be in [0, 1], got {background_correlation}.")
    rng = np.random.default_rng([seed, split_index, 0x5EED])
    counts = class_counts(num_examples, class_proportions)
    labels = rng.permutation(np.repeat(np.arange(len(SHAPE_NAMES)), counts))
    home = labels % len(BACKGROUND_NAMES)
    random_bg = rng.integers(0, len(BACKGROUND_NAMES), size=num_examples)
    use_home = rng.random(num_examples) < background_correlation
    return labels.astype(np.int64), np.where(use_home, home, random_bg).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Shapes. Coordinates (u, v) are in units of the object radius, in the object's rotated frame.


def _in_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    inside = np.zeros(u.shape, dtype=bool)
    xj, yj = vertices[-1]
    for xi, yi in vertices:
        crosses = (yi > v) != (yj > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (xj - xi) * (v - yi) / (yj - yi) + xi
        inside ^= crosses & (u < x_at)
        xj, yj = xi, yi
    return inside


def _regular(n: int, radius: np.ndarray | float, phase: float = np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=-1)


_TRIANGLE = _regular(3, 0.95)
_STAR = _regular(10, np.tile([0.95, 0.42], 5))
_ARROW = np.array(
    [[-0.9, -0.24], [0.1, -0.24], [0.1, -0.62], [0.92, 0.0], [0.1, 0.62], [0.1, 0.24], [-0.9, 0.24]]
)


def shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of shape `label` at object-frame points (u, v); returns a bool array."""
    name = SHAPE_NAMES[label]
    r2 = u * u + v * v
    if name == "disk":
        return r2 <= 0.9**2
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.68
    if name == "triangle":
        return _in_polygon(u, v, _TRIANGLE)
    if name == "star":
        return _in_polygon(u, v, _STAR)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.9)) | ((av <= 0.3) & (au <= 0.9))
    if name == "ring":
        return (r2 >= 0.5**2) & (r2 <= 0.92**2)
    if name == "crescent":
        return (r2 <= 0.9**2) & ((u - 0.4) ** 2 + v * v > 0.75**2)
    if name == "arrow":
        return _in_polygon(u, v, _ARROW)
    raise ValueError(f"unknown shape {label}")


# ---------------------------------------------------------------------------------------------
# Appearance.


def _hsv_colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size] float32 in [0, 1]: a random cells x cells grid, bicubically upsampled."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def _texture(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[H, W] float32 in [0, 1]: mixing weight between the object's two colours."""
    kind = rng.integers(0, 4)
    if kind == 0:  # Solid.
        return np.zeros(u.shape, np.float32)
    if kind == 1:  # Stripes at a random angle and frequency (in object units).
        a = rng.uniform(0, np.pi)
        freq = rng.uniform(1.5, 4.0)
        w = u * np.cos(a) + v * np.sin(a)
        return (0.5 + 0.5 * np.sin(2 * np.pi * freq * w)).astype(np.float32)
    if kind == 2:  # Checkerboard.
        cells = rng.uniform(2.0, 4.5)
        return ((np.floor(u * cells) + np.floor(v * cells)) % 2).astype(np.float32)
    return _smooth_noise(rng, u.shape[0], int(rng.integers(4, 9)))  # Blotches.


@functools.cache
def _photo(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) / image.max() * 255).astype(np.uint8)
    return image


def _photo_background(rng: np.random.Generator, family: str, size: int) -> np.ndarray:
    names = _PHOTOS[family]
    photo = _photo(names[int(rng.integers(0, len(names)))])
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 0.8) * min(h, w))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo).resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
    )
    out = np.asarray(crop, dtype=np.float32) / 255.0
    if out.ndim == 2:
        tint = 0.35 + 0.65 * _hsv_colour(rng)
        out = out[..., None] * tint
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def _pattern_background(rng: np.random.Generator, size: int) -> np.ndarray:
    c1, c2 = _hsv_colour(rng), _hsv_colour(rng)
    if rng.random() < 0.5:
        w = _smooth_noise(rng, size, int(rng.integers(3, 7)))
    else:
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        a = rng.uniform(0, np.pi)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * (x * np.cos(a) + y * np.sin(a)))
    grain = rng.normal(0.0, 0.03, (size, size, 1)).astype(np.float32)
    return c1 * (1 - w[..., None]) + c2 * w[..., None] + grain


def render_background(rng: np.random.Generator, background: int, size: int) -> np.ndarray:
    """[size, size, 3] uint8 background of family `background` (index into BACKGROUND_NAMES)."""
    family = BACKGROUND_NAMES[background]
    if family == "pattern":
        out = _pattern_background(rng, size)
    else:
        out = _photo_background(rng, family, size)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def render_example(
    rng: np.random.Generator, *, label: int, background: int, image_size: int
) -> dict[str, np.ndarray]:
    """Draws one image: a textured shape of class `label` pasted on a background.

    Args:
      rng: the example's Generator (see `example_rng`).
      label: class, index into SHAPE_NAMES.
      background: background family, index into BACKGROUND_NAMES.
      image_size: S, the side of the square image.

    Returns:
      dict with "image" [S, S, 3] uint8, "mask" [S, S] bool (exactly the pixels taken from the
      object), "background" [S, S, 3] uint8 (the image before pasting) and "object"
      [S, S, 3] uint8 (the object layer, valid where mask is True).
    """
    bg = render_background(rng, background, image_size)
    radius = rng.uniform(*_RADIUS_RANGE) * image_size
    cx, cy = rng.uniform(radius, image_size - radius, size=2)
    theta = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    dx, dy = x + 0.5 - cx, y + 0.5 - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / radius
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / radius
    mask = shape_mask(label, u, v)
    c1, c2 = _hsv_colour(rng), _hsv_colour(rng)
    w = _texture(rng, u, v)[..., None]
    obj = np.clip(np.round((c1 * (1 - w) + c2 * w) * 255.0), 0, 255).astype(np.uint8)
    image = np.where(mask[..., None], obj, bg)
    return {"image": image, "mask": mask, "background": bg, "object": obj}
