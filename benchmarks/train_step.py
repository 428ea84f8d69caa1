"""The P2P training step with the paper's backbones: images/s, FLOPs and MFU.

    python benchmarks/train_step.py [--batch 64 --size 224 --dtypes float32,bfloat16]

LR-ASPP MobileNetV3-Large selector + ViT-Ti/16 classifier (the paper's configuration,
`train/configs/imagenet9.py`), random weights and data, dynamic budget, one Monte-Carlo
sample; the same jitted, donated step `train/main.py` runs, colour jitter and normalisation
of the uint8 batch included. MFU is against the dense bfloat16 peak given by --peak-tflops,
from the model's FLOPs per step (`model_flops`): XLA's cost analysis of the same step with
the ViT's blocks unrolled, not rematerialised and with XLA's own attention, pooling and
block kernels, lowered but not compiled. The compiled step's own count is kept beside it
(`compiled_flops_per_step`); it counts a scanned body once (the 12 blocks as 1: about a third
of the paper's FLOPs) and custom kernels (cuDNN, Pallas) not at all.
"""

import argparse
import functools
import importlib
import pathlib
import sys
import typing
from collections.abc import Callable

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import analysed_flops, time_fn, write_json  # noqa: E402
from benchmarks.pooling import slic_like_ids  # noqa: E402
from grouped_select import color, regions  # noqa: E402
from train import models, steps  # noqa: E402
from train.steps import create_optimizer, initial_state, step_settings  # noqa: E402


def make_batch(
    batch: int, size: int, num_regions: int, num_classes: int, jitter: tuple | None = None
) -> dict:
    """A random batch as the input pipeline yields it: uint8 images and, with `jitter`
    (brightness, contrast, saturation, hue), each image's colour-jitter parameters."""
    rng = np.random.default_rng(0)
    out = {
        "image": rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8),
        "region_ids": slic_like_ids(batch, size, min(num_regions, 100)),
        "label": rng.integers(0, num_classes, size=(batch,)).astype(np.int32),
    }
    if jitter:
        b, c, s, h = jitter
        out.update(
            color.sample_color_jitter(
                rng, brightness=b, contrast=c, saturation=s, hue=h, batch=batch
            )
        )
    return out


def paper_config(name: str, size: int, dtype: str, **model_overrides):
    """A train/configs module's config at `size`² in `dtype`, with `config.model` overrides
    (e.g. attention="cudnn"; `model_options(args)` gives the command line's)."""
    config = importlib.import_module(f"train.configs.{name}").get_config()
    config.data.image_size = size
    config.compute_dtype = dtype
    for key, value in model_overrides.items():
        if key not in config.model:
            raise KeyError(f"config.model has no {key!r}")
        config.model[key] = value
    return config


# The config.model keys that the benchmarks' command lines set (add_*_arguments below).
MODEL_OPTIONS = (
    "scan_layers", "remat_layers", "depthwise_method", "attention", "block_kernels",
    "pool_method", "matmul_precision",
)  # fmt: skip


def model_options(args: argparse.Namespace) -> dict:
    """The `config.model` values chosen on the command line (those the parser has)."""
    return {key: getattr(args, key) for key in MODEL_OPTIONS if hasattr(args, key)}


def compiled_step(args, dtype: str):
    """The paper's jitted, donated training step compiled for `args`' shapes, in `dtype`.

    Returns:
      (compiled step, its initial state and a batch, both on the device).
    """
    step, state, batch = _jitted_step(args, dtype, model_options(args))
    return step.lower(state, batch).compile(), state, batch


# What `model_flops` counts: the same network computed by XLA's own ops, every block once.
_MODEL_FLOPS_OPTIONS = {
    "scan_layers": False,
    "remat_layers": False,
    "attention": "xla",
    "block_kernels": "xla",
    "pool_method": "segment_sum",
}


def model_flops(args, dtype: str) -> float | None:
    """The model's FLOPs in one training step (module docstring), for the MFU.

    XLA's cost analysis of the step lowered (not compiled: seconds) with `_MODEL_FLOPS_OPTIONS`.
    On the 2-core CPU at batch 4 this count (41.0 GFLOP, float32, before the ViT's last block
    computed the class token alone; 38.8 since) was within 1 % of the compiled unrolled
    step's (41.4); the default scanned step's compiled count was 13.5.
    """
    options = {**model_options(args), **_MODEL_FLOPS_OPTIONS}
    step, state, batch = _jitted_step(args, dtype, options)
    return analysed_flops(step.lower(state, batch))


def _jitted_step(args, dtype: str, options: dict):
    """(the jitted, donated step, its initial state, a batch) for config.model `options`."""
    config = paper_config(args.config, args.size, dtype, **options)
    num_classes = 9
    model = models.create_model(config, num_classes, seed=0)
    optimizer = create_optimizer(config)
    graphdef, state = initial_state(model, optimizer, config.seed)
    settings = step_settings(config, steps_per_epoch=1000)
    step = jax.jit(
        functools.partial(
            steps.train_step, graphdef=graphdef, optimizer=optimizer, settings=settings
        ),
        donate_argnums=0,
    )
    jitter = tuple(config.data.color_jitter) or None  # applied in the step, as in training
    batch = make_batch(args.batch, args.size, config.data.num_regions, num_classes, jitter)
    return step, *jax.device_put((state, batch))


def bench_dtype(args, dtype: str, after: Callable | None = None) -> dict:
    """Times the paper's training step computing in `dtype`.

    `after(run_step, compiled)`, if given, runs once the timing is done (e.g. a profile of
    `run_step()`); the dict it returns joins the result.
    """
    compiled, state, batch = compiled_step(args, dtype)  # compiled once: timed and analysed
    flops = model_flops(args, dtype)
    holder = {"state": state}

    def run(batch):
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    timing = time_fn(run, batch, warmup=3, repeats=args.repeats, inner=5)
    seconds = timing["median_s"]
    extra = after(functools.partial(run, batch), compiled) if after else {}
    return {
        **timing,
        "color_jitter_in_step": bool(batch.get("jitter_factors") is not None),
        "median_ms": 1e3 * seconds,
        "images_per_s": args.batch / seconds,
        "model_flops_per_step": flops,
        "compiled_flops_per_step": analysed_flops(compiled),
        "achieved_tflops": flops / seconds / 1e12 if flops else None,
        "mfu_vs_bf16_peak": flops / seconds / (args.peak_tflops * 1e12) if flops else None,
        "final_loss_finite": bool(np.isfinite(float(run(batch)))),
        **extra,
    }


def _true_or_false(text: str) -> bool:
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text == "true"


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """--attention, --block-kernels, --pool-method: config.model's kernel choices (shared
    with eval_search.py)."""
    parser.add_argument(
        "--attention",
        choices=("xla", "cudnn"),
        default="xla",
        help="config.model.attention: the ViT's attention (cudnn: GPU, bfloat16 only)",
    )
    parser.add_argument(
        "--block-kernels",
        choices=("xla", "pallas"),
        default="xla",
        help="config.model.block_kernels: the ViT blocks' LayerNorms fused with their matmuls "
        "(pallas: GPU kernels)",
    )
    parser.add_argument(
        "--pool-method",
        choices=typing.get_args(regions.PoolMethod),
        default="auto",
        help="config.model.pool_method: region pooling (pallas*: GPU kernels)",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=("default", "bfloat16"),
        default="default",
        help="config.model.matmul_precision: the ViT's and MobileNet's matrix products "
        "(bfloat16: rounded operands, float32 sums)",
    )


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the step: config, shapes and how its layers run."""
    parser.add_argument("--config", default="imagenet9", help="a train/configs module")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--depthwise-method",
        choices=("auto", "conv", "shifted_sum"),
        default="auto",
        help="config.model.depthwise_method: the MobileNet's depthwise convolutions",
    )
    add_kernel_arguments(parser)
    for name, default, help_text in (
        ("scan-layers", True, "the ViT's blocks as one lax.scan (false: a Python loop)"),
        ("remat-layers", False, "recompute the ViT blocks in the backward pass"),
    ):
        parser.add_argument(
            f"--{name}",
            type=_true_or_false,
            default=default,
            metavar="{true,false}",
            help=f"config.model.{name.replace('-', '_')}: {help_text}",
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_step_arguments(parser)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="dense bf16 peak of the device (H100/H200 SXM: 989)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    results = {dtype: bench_dtype(args, dtype) for dtype in args.dtypes.split(",")}
    write_json(
        {
            "benchmark": "train_step",
            "config": args.config,
            "batch": args.batch,
            "image_size": args.size,
            **model_options(args),
            "flops": "model_flops_per_step: the step unrolled, XLA kernels (train_step.py)",
            "peak_tflops": args.peak_tflops,
            "reference_h200_images_per_s": [900, 1030],
            "results": results,
        },
        args.out,
        "train_step.json",
    )


if __name__ == "__main__":
    # Timed as `train/main.py` runs: with transparent huge pages (train/huge_pages.py).
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
