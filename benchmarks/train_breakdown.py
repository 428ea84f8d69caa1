"""Where the paper's training step spends its time: each part's forward + backward alone.

    python benchmarks/train_breakdown.py [--batch 64 --size 224]

Parts: the LR-ASPP selector backbone, the selector up to region scores (heads, upsampling,
pooling), the ViT-Ti classifier, and the whole step; float32 and bfloat16.
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import time_fn, write_json  # noqa: E402
from benchmarks.train_step import make_batch, paper_config  # noqa: E402
from grouped_select import color  # noqa: E402
from grouped_select.precision import cast_floating  # noqa: E402
from train import models  # noqa: E402


def part_timings(args, dtype: str) -> dict:
    config = paper_config(args.config, args.size, dtype)
    model = models.create_model(config, 9, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = jax.device_put(make_batch(args.batch, args.size, config.data.num_regions, 9))
    x, ids = color.normalize(batch["image"]).astype(dtype), batch["region_ids"]
    k = config.data.num_regions

    def parts(m):
        return {
            "selector_backbone": lambda: sum(
                jnp.sum(f.astype(jnp.float32)) for f in m.selector.features(x)
            ),
            "selector_to_regions": lambda: jnp.sum(m.selector(x, ids, k, 0.5).logits),
            "classifier": lambda: jnp.sum(m.classifier(x).astype(jnp.float32)),
            "whole_forward": lambda: jnp.sum(
                m.train_forward(x, ids, jax.random.key(0), num_regions=k, budget=0.5).log_probs
            ),
        }

    results = {}
    for name in parts(model):

        @jax.jit
        def grad_of_part(params, name=name):
            def loss(params):
                m = nnx.merge(graphdef, cast_floating(params, dtype), rest, copy=True)
                return parts(m)[name]()

            return jax.grad(loss)(params)

        timing = time_fn(grad_of_part, params, warmup=2, repeats=args.repeats, inner=5)
        results[f"{dtype}/{name}"] = {**timing, "median_ms": 1e3 * timing["median_s"]}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="imagenet9")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results = {}
    for dtype in args.dtypes.split(","):
        results.update(part_timings(args, dtype))
    write_json(
        {
            "benchmark": "train_breakdown",
            "batch": args.batch,
            "image_size": args.size,
            "results": results,
        },
        args.out,
        "train_breakdown.json",
    )


if __name__ == "__main__":
    # Timed as `train/main.py` runs: with transparent huge pages (train/huge_pages.py).
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
