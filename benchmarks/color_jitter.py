"""Colour jitter + normalisation as the training step runs them, on the default JAX device.

    python benchmarks/color_jitter.py [--batch 64 --size 224] [--methods auto,select,per_image]

The input pipeline ships uint8 images and each image's jitter parameters; the jitted step
applies `grouped_select.color.color_jitter` and `normalize` (train/steps.input_images). This
times that part alone on random images with parameters drawn as in training (the paper's
0.4 / 0.4 / 0.4 / 0.2), median over repeated runs after warm-up. With several `--methods`
(`color_jitter`'s), each is timed in turn in one process and "by_method" holds them all;
"results" is the first.
"""

import argparse
import pathlib
import sys
import typing

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import time_fn, write_json  # noqa: E402
from grouped_select import color  # noqa: E402


def time_jitter(
    images: np.ndarray,
    factors: np.ndarray,
    order: np.ndarray,
    repeats: int,
    method: color.JitterMethod = "auto",
) -> dict:
    """Times jit(normalize(color_jitter(..., method=method))) on the default device.

    Args:
      images: [B, S, S, 3] uint8.
      factors, order: [B, 4] jitter parameters (`color.sample_color_jitter`).
      repeats: timed samples (of one call each) after two warm-up calls.
      method: `color.color_jitter`'s.

    Returns:
      `time_fn`'s timing plus "ms_per_image" and the "device" kind.
    """
    fn = jax.jit(lambda x, f, o: color.normalize(color.color_jitter(x, f, o, method=method)))
    args = jax.device_put((images, factors, order))
    timing = time_fn(lambda a: fn(*a), args, warmup=2, repeats=repeats, inner=1)
    return {
        **timing,
        "ms_per_image": 1e3 * timing["median_s"] / len(images),
        "device": str(jax.devices()[0].device_kind),
    }


def random_batch(batch: int, size: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random uint8 images and training-like jitter parameters."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    params = color.sample_color_jitter(rng, batch=batch)
    return (images, *(params[k] for k in color.JITTER_KEYS))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--methods", default="auto", help="comma-separated color_jitter methods, timed in turn"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    for method in methods:
        if method not in typing.get_args(color.JitterMethod):
            parser.error(f"--methods: unknown method {method!r}")
    batch = random_batch(args.batch, args.size)
    by_method = {m: time_jitter(*batch, repeats=args.repeats, method=m) for m in methods}
    write_json(
        {
            "benchmark": "color_jitter",
            "batch": args.batch,
            "image_size": args.size,
            "results": by_method[methods[0]],
            "by_method": by_method,
        },
        args.out,
        "color_jitter.json",
    )


if __name__ == "__main__":
    # Timed as `train/main.py` runs: with transparent huge pages (train/huge_pages.py).
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
