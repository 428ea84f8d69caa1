"""The classifier's matrix products alone, each way we can compute them, beside PyTorch's.

    python benchmarks/matmul.py [--batch 4 --rounds 5]
    # With PyTorch's products timed in the same process (torch is not a dependency):
    /tmp/torchvenv/bin/python benchmarks/matmul.py \
        --jax-site-packages .venv/lib/python3.11/site-packages

On CPU the float32 training step and search are no faster than the PyTorch re-creation of the
reference (`torch_reference_step.py`), while with bfloat16 product operands they are
1.6-2x faster (`RESULTS.md`). This script times what that comes down to: the products of
ViT-Ti's linear layers (tokens = batch x 197; qkv 192 -> 576, the attention's output 192 ->
192, the MLP 192 -> 768 -> 192), each with its three products of a training step: the output
[T, K] x [K, N], the input gradient [T, N] x [N, K] and the weight gradient [K, T] x [T, N].
Ways, all with float32 results:

- `float32`: `jnp.matmul` on float32 operands (what the model does by default);
- `bfloat16_products`: the operands rounded to bfloat16, float32 sums
  (`matmul_precision="bfloat16"`, `grouped_select.backbones.matmul`);
- `bfloat16_3x_concatenated` and `bfloat16_3x_summed`: float32 from three bfloat16
  products, x = x_hi + x_lo and x w ≈ x_hi w_hi + x_hi w_lo + x_lo w_hi (~16 of float32's 24
  mantissa bits: what a TPU does at `Precision.HIGH`), as one product over the three pairs
  concatenated along K and as three products summed; a candidate for float32-like products
  on CPUs whose bfloat16 units are faster than their float32 ones (AMX), not used by the
  library;
- `torch_float32` and `torch_bfloat16` (when torch imports): `torch.matmul` (oneDNN / MKL);
  the bfloat16 one's result is rounded to bfloat16, then converted to float32.

Each row reports milliseconds (best of `--rounds` medians: the shared host's speed drifts),
GFLOP/s and the largest error against float64 relative to the largest product entry.
"""

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# ViT-Ti/16 at 224²: width 192, MLP 768, 197 tokens per image.
LAYERS = {"qkv": (192, 576), "attention_out": (192, 192), "fc1": (192, 768), "fc2": (768, 192)}
TOKENS_PER_IMAGE = 197


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="images (x 197 tokens)")
    parser.add_argument("--rounds", type=int, default=5, help="medians taken; the best is kept")
    parser.add_argument(
        "--jax-site-packages",
        default=None,
        help="site-packages with jax, appended to sys.path (to run under a venv with torch)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if present")
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def product_shapes(batch: int) -> list[tuple[str, int, int, int]]:
    """(name, M, K, N) of every product of a training step through ViT-Ti's linear layers."""
    tokens = batch * TOKENS_PER_IMAGE
    shapes = []
    for layer, (k, n) in LAYERS.items():
        shapes += [
            (f"{layer}/output", tokens, k, n),
            (f"{layer}/input_gradient", tokens, n, k),
            (f"{layer}/weight_gradient", k, tokens, n),
        ]
    return shapes


def jax_ways() -> dict:
    """name -> jitted f(a [M, K] float32, b [K, N] float32) -> [M, N] float32."""
    import jax
    import jax.numpy as jnp

    from grouped_select.backbones.matmul import bfloat16_matmul

    def halves(a):
        high = a.astype(jnp.bfloat16)
        return high, (a - high.astype(jnp.float32)).astype(jnp.bfloat16)

    def three_concatenated(a, b):
        (a_hi, a_lo), (b_hi, b_lo) = halves(a), halves(b)
        lhs = jnp.concatenate([a_hi, a_hi, a_lo], axis=1)
        rhs = jnp.concatenate([b_hi, b_lo, b_hi], axis=0)
        return jnp.matmul(lhs, rhs, preferred_element_type=jnp.float32)

    def three_summed(a, b):
        (a_hi, a_lo), (b_hi, b_lo) = halves(a), halves(b)

        def product(x, y):
            return jnp.matmul(x, y, preferred_element_type=jnp.float32)

        # Smallest terms first, so the float32 sum rounds them before the large one.
        return product(a_lo, b_hi) + product(a_hi, b_lo) + product(a_hi, b_hi)

    ways = {
        "float32": jnp.matmul,
        "bfloat16_products": bfloat16_matmul,
        "bfloat16_3x_concatenated": three_concatenated,
        "bfloat16_3x_summed": three_summed,
    }
    return {name: jax.jit(fn) for name, fn in ways.items()}


def torch_ways(torch) -> dict:
    """name -> f(a, b) on torch tensors (float32 in, float32 out)."""
    return {
        "torch_float32": torch.matmul,
        "torch_bfloat16": lambda a, b: torch.matmul(a.bfloat16(), b.bfloat16()).float(),
    }


def main() -> None:
    args = _parse()
    sys.path.insert(0, str(ROOT))
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    if args.jax_site_packages:
        sys.path.append(args.jax_site_packages)
    # libgomp's threads spin after each of torch's parallel regions and take cores from XLA's
    # thread pool in between (torch_reference_step.py); read when torch loads libgomp.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(os.cpu_count())
        except ImportError:
            torch = None
    import jax
    import numpy as np

    from benchmarks.common import time_fn, write_json

    ways = jax_ways()
    rows, totals = [], {}
    rng = np.random.default_rng(0)
    for name, m, k, n in product_shapes(args.batch):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        exact = a.astype(np.float64) @ b.astype(np.float64)
        scale = float(np.abs(exact).max())
        a_dev, b_dev = jax.device_put(a), jax.device_put(b)
        candidates = {way: lambda fn=fn, x=a_dev, y=b_dev: fn(x, y) for way, fn in ways.items()}
        if torch is not None:
            a_t, b_t = torch.from_numpy(a), torch.from_numpy(b)
            for way, fn in torch_ways(torch).items():
                candidates[way] = lambda fn=fn, x=a_t, y=b_t: fn(x, y)
        row = {"product": name, "m": m, "k": k, "n": n}
        # Rounds alternate over the ways so that the host's drift reaches them all alike.
        best = {way: float("inf") for way in candidates}
        for _ in range(args.rounds):
            for way, fn in candidates.items():
                median = time_fn(fn, warmup=1, repeats=7, inner=1)["median_s"]
                best[way] = min(best[way], median)
        for way, fn in candidates.items():
            result = np.asarray(fn(), dtype=np.float64)
            row[way] = {
                "ms": 1e3 * best[way],
                "gflops": 2 * m * k * n / best[way] / 1e9,
                "relative_error": float(np.abs(result - exact).max()) / scale,
            }
            totals[way] = totals.get(way, 0.0) + 1e3 * best[way]
        rows.append(row)
        print(name, {w: round(v["ms"], 3) for w, v in row.items() if isinstance(v, dict)})
    write_json(
        {
            "benchmark": "matmul",
            "batch": args.batch,
            "tokens": args.batch * TOKENS_PER_IMAGE,
            "rounds": args.rounds,
            "torch": None if torch is None else torch.__version__,
            "products": rows,
            "total_ms_per_layer_set": totals,
        },
        args.out,
        f"matmul_b{args.batch}.json",
    )


if __name__ == "__main__":
    main()
