"""Evaluation with the dynamic budget search: batches/s and images/s, every method.

    python benchmarks/eval_search.py [--batch 64 --size 224 --dtypes float32,bfloat16]

The paper's backbones with random weights (so no image ever becomes confident and the search
runs all 20 classifier passes, like the reference's measured "untrained" case). Methods:
"grid" (all 20 budgets in one classifier batch), "grid_chunkN" (N budgets per classifier
batch; grid_chunk1 is one budget at a time, as the published loop) and the early-exit
`lax.while_loop`. All give the same budgets (checked here). `--profile-dir` also profiles
the first method per dtype (`profile_step.profile_calls`: device time per op and model part).
"""

import argparse
import functools
import pathlib
import sys

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import time_fn, write_json  # noqa: E402
from benchmarks.profile_step import (  # noqa: E402
    disable_command_buffers,
    print_summary,
    profile_calls,
)
from benchmarks.train_step import (  # noqa: E402
    add_kernel_arguments,
    make_batch,
    model_options,
    paper_config,
)
from grouped_select import budget, color  # noqa: E402
from grouped_select.precision import cast_floating  # noqa: E402
from train import models  # noqa: E402


def search_setup(args, dtype: str):
    """The paper's model in eval mode, computing in `dtype`, and a random batch.

    Returns:
      (search, params, x, ids): `search(kind, chunk)` gives the jitted budget search
      `(params, x, ids) -> (budgets, log_probs)` by method "grid" (`chunk` budgets per
      classifier batch, None: all) or "while_loop".
    """
    config = paper_config(args.config, args.size, dtype, **model_options(args))
    num_regions = config.data.num_regions
    model = models.create_model(config, 9, seed=0)
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = cast_floating(params, dtype)
    batch = jax.device_put(make_batch(args.batch, args.size, num_regions, 9))
    x, ids = color.normalize(batch["image"]).astype(dtype), batch["region_ids"]

    def searcher(kind: str, chunk: int | None):
        @jax.jit
        def search(params, x, ids):
            m = nnx.merge(graphdef, params, rest)
            kwargs = {"grid_chunk": chunk} if kind == "grid" else {}
            out = budget.dynamic_budget_search(
                m, x, ids, args.certainty, num_regions=num_regions, method=kind, **kwargs
            )
            return out.budget, out.outputs.log_probs

        return search

    return searcher, params, x, ids


def bench_dtype(args, dtype: str) -> dict:
    """Times every search method with the model computing in `dtype`."""
    searcher, params, x, ids = search_setup(args, dtype)
    results, budgets = {}, {}
    for method in args.methods.split(","):
        kind, chunk = method, None
        if method.startswith("grid_chunk"):
            kind, chunk = "grid", int(method.removeprefix("grid_chunk"))
        search = searcher(kind, chunk)
        timing = time_fn(search, params, x, ids, warmup=2, repeats=args.repeats, inner=3)
        budgets[method] = np.asarray(search(params, x, ids)[0])
        if args.profile_dir and len(budgets) == 1:
            out_dir = pathlib.Path(args.profile_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            hlo_text = search.lower(params, x, ids).compile().as_text()
            summary = profile_calls(
                functools.partial(search, params, x, ids), hlo_text, 3, out_dir, f"eval_{dtype}", 60
            )
            print(f"{dtype}/{method} profile:")
            print_summary(summary)
            write_json(summary, str(out_dir / f"eval_{dtype}_profile.json"), "eval_profile.json")
        results[f"{dtype}/{method}"] = {
            **timing,
            "median_ms_per_batch": 1e3 * timing["median_s"],
            "images_per_s": args.batch / timing["median_s"],
            "mean_budget": float(budgets[method].mean()),
            "same_budgets_as_first_method": bool(
                np.array_equal(budgets[method], next(iter(budgets.values())))
            ),
        }
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="imagenet9")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--certainty", type=float, default=0.9)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--methods", default="grid,grid_chunk5,while_loop")
    parser.add_argument("--repeats", type=int, default=10)
    add_kernel_arguments(parser)
    parser.add_argument("--profile-dir", default=None, help="profile the first method here")
    parser.add_argument(
        "--no-command-buffers",
        action="store_true",
        help="GPU: no CUDA graphs (slower), so the profile attributes every kernel",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.no_command_buffers:
        disable_command_buffers()

    results = {}
    for dtype in args.dtypes.split(","):
        results.update(bench_dtype(args, dtype))
    write_json(
        {
            "benchmark": "eval_dynamic_budget",
            "config": args.config,
            "batch": args.batch,
            "image_size": args.size,
            "certainty": args.certainty,
            **model_options(args),
            "reference_h200_ms_per_batch": 195,
            "results": results,
        },
        args.out,
        "eval_search.json",
    )


if __name__ == "__main__":
    # Timed as `train/main.py` runs: with transparent huge pages (train/huge_pages.py).
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
