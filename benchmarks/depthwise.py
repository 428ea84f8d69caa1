"""Depthwise convolution at MobileNetV3-Large's shapes: XLA's grouped conv vs the shifted sum.

    python benchmarks/depthwise.py [--batch 4 --size 224]

Forward and forward + backward (random cotangent) of each of
`grouped_select.backbones.depthwise.depthwise_conv`'s methods, and of the shifted sum under
autodiff instead of its hand-written backward, on the depthwise layers of the dilated
MobileNetV3-Large at `--size` input.
"""

import argparse
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import time_fn, write_json  # noqa: E402
from grouped_select.backbones.depthwise import _shifted_sum, depthwise_conv  # noqa: E402
from grouped_select.backbones.mobilenet_v3 import large_block_configs  # noqa: E402


def layer_shapes(size: int) -> list[tuple[int, int, int, int, int]]:
    """(input side, channels, kernel, stride, dilation) of every depthwise layer."""
    side, shapes = size // 2, []  # after the stride-2 stem
    for cfg in large_block_configs(dilated=True):
        stride = 1 if cfg.dilation > 1 else cfg.stride
        shapes.append((side, cfg.expanded, cfg.kernel, stride, cfg.dilation))
        side = -(-side // stride)
    return shapes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows, totals = [], {}
    for side, channels, k, stride, dilation in layer_shapes(args.size):
        x = jax.random.normal(jax.random.key(0), (args.batch, side, side, channels))
        kernel = jax.random.normal(jax.random.key(1), (k, k, channels))
        row = {"side": side, "channels": channels, "kernel": k, "stride": stride}
        row["dilation"] = dilation
        pad = (k - 1) // 2 * dilation
        methods = {
            method: functools.partial(
                depthwise_conv, stride=stride, dilation=dilation, padding=pad, method=method
            )
            for method in ("conv", "shifted_sum")
        }
        # The same shifted sum differentiated by autodiff instead of its hand-written backward
        # (`.fun` is the function under the `jax.custom_vjp`).
        methods["shifted_sum_autodiff"] = functools.partial(
            _shifted_sum.fun, stride=stride, dilation=dilation, padding=pad
        )
        # A random cotangent: with jnp.sum(y) the cotangent is constant and XLA simplifies the
        # backward pass into something cheaper than in a network.
        cotangent = jax.random.normal(jax.random.key(2), methods["conv"](x, kernel).shape)
        for method, f in methods.items():
            forward = jax.jit(f)
            both = jax.jit(
                jax.grad(lambda x, kernel, f=f, c=cotangent: jnp.sum(f(x, kernel) * c), (0, 1))
            )
            for name, fn in (("forward", forward), ("forward_backward", both)):
                ms = 1e3 * time_fn(fn, x, kernel, repeats=args.repeats, inner=3)["median_s"]
                row[f"{method}/{name}_ms"] = ms
                totals[f"{method}/{name}_ms"] = totals.get(f"{method}/{name}_ms", 0.0) + ms
        rows.append(row)
    write_json(
        {
            "benchmark": "depthwise",
            "batch": args.batch,
            "size": args.size,
            "layers": rows,
            "totals": totals,
        },
        args.out,
        "depthwise.json",
    )


if __name__ == "__main__":
    # Timed as `train/main.py` runs: with transparent huge pages (train/huge_pages.py).
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
