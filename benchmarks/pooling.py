"""Region pooling: every implementation, timed at the paper's size, checked for equality.

    python benchmarks/pooling.py [--batch 64 --size 224 --channels 4 --regions 100]

Implementations: `segment_sum` over the flattened batch (float32), the `one_hot` matmul in
float32, the one-hot matmul with bfloat16 features (float32 accumulation), and on GPUs the
`pallas` kernel (`grouped_select/pallas_pooling.py`; sums and sizes in one pass) at the
work divisions of `PALLAS_CONFIGS`, both its algorithms (every pixel; by runs of equal ids).
Each computes region means with the sizes, jitted on its own; the ids mimic SLIC's (about
`regions` compact regions per image; 2,240 runs per 224² image, where scikit-image's SLIC of
its sample images at 224², 100 segments, gives 3,200-4,200: the by-runs kernels' second pass
has that much more to add on real superpixels). A variant that fails (e.g. a kernel that does
not lower on this GPU) is recorded with its error instead of stopping the others.

Restructured: `low_res` pools the stride-`--stride` map before upsampling
(`grouped_select/low_res_pooling.py`, a [B, K, h·w] x [B, h·w, C] matmul with weights the
input pipeline computes), checked against upsampling that map and pooling with segment_sum;
the host cost of the weights per image is reported too.
"""

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from benchmarks.common import time_fn, write_json  # noqa: E402
from grouped_select import low_res_pooling, pallas_pooling, regions  # noqa: E402

# Work divisions of the Pallas kernels tried on GPUs: every pixel, then by runs.
PALLAS_CONFIGS = (
    pallas_pooling.KernelConfig(128, 4, None, 512),
    pallas_pooling.KernelConfig(128, 8, None, 512),
    pallas_pooling.KernelConfig(256, 8, None, 512),
    pallas_pooling.KernelConfig(64, 4, None, 1024),
    pallas_pooling.KernelConfig(128, 4, 3, 512),
    pallas_pooling.KernelConfig(128, 4, None, 2048),
    pallas_pooling.KernelConfig(128, 4, None, 256),
    pallas_pooling.KernelConfig(128, 4, None, 512, by_runs=True, scan_chunk=256),
    pallas_pooling.KernelConfig(128, 4, None, 2048, by_runs=True, scan_chunk=256),
    pallas_pooling.KernelConfig(64, 4, None, 2048, by_runs=True, scan_chunk=256),
    pallas_pooling.KernelConfig(128, 4, None, 1024, by_runs=True, scan_chunk=512),
    pallas_pooling.KernelConfig(128, 2, None, 1024, by_runs=True, scan_chunk=512),
    pallas_pooling.KernelConfig(128, 4, None, 512, by_runs=True, scan_chunk=1024),
)


def config_name(config: pallas_pooling.KernelConfig) -> str:
    """e.g. "runs/scan256_chunk128_warps4_stagesNone_programs512"."""
    name = "chunk{}_warps{}_stages{}_programs{}".format(*config[:4])
    return f"runs/scan{config.scan_chunk}_{name}" if config.by_runs else f"pixels/{name}"


def runs_per_image(ids: np.ndarray) -> float:
    """Mean number of runs of equal ids along each image's row-major pixels (the by-runs
    kernels' entries, before the ends of their scan chunks)."""
    flat = ids.reshape(len(ids), -1)
    return float(np.mean(1 + np.sum(flat[:, 1:] != flat[:, :-1], axis=1)))


def slic_like_ids(batch: int, size: int, num_regions: int, seed: int = 0) -> np.ndarray:
    """[B, S, S] int32 ids: a jittered grid of about `num_regions` compact cells per image."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(num_regions))
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.empty((batch, size, size), np.int32)
    for b in range(batch):
        cy = (np.arange(side) + 0.5 + rng.uniform(-0.3, 0.3, side)) * size / side
        cx = (np.arange(side) + 0.5 + rng.uniform(-0.3, 0.3, side)) * size / side
        row = np.abs(ys[..., None] - cy).argmin(-1)
        col = np.abs(xs[..., None] - cx).argmin(-1)
        out[b] = row * side + col
    return out


def low_res_results(args, ids: np.ndarray) -> dict:
    """Times `pool_low_res` (float32, bfloat16) against upsample + segment_sum."""
    side = args.size // args.stride
    k = args.regions
    rng = np.random.default_rng(1)
    low = jnp.asarray(rng.normal(size=(args.batch, side, side, args.channels)).astype(np.float32))
    low_res_pooling.bilinear_region_weights(ids[0], (side, side), k)  # builds the cached Ry, Rx
    start = time.perf_counter()
    weights = np.stack([low_res_pooling.bilinear_region_weights(i, (side, side), k) for i in ids])
    host_ms = 1e3 * (time.perf_counter() - start) / args.batch

    @jax.jit
    def upsample_then_segment_sum(low, ids):
        up = jax.image.resize(low, (*ids.shape, low.shape[-1]), "bilinear")
        return regions.pool_regions(up, ids, k, "segment_sum")

    reference = np.asarray(upsample_then_segment_sum(low, ids))
    out = {}
    timing = time_fn(upsample_then_segment_sum, low, ids, repeats=args.repeats, inner=20)
    out["low_res_upsample_then_segment_sum_f32"] = {**timing, "median_us": 1e6 * timing["median_s"]}
    for name, dtype in (("low_res_matmul_f32", jnp.float32), ("low_res_matmul_bf16", jnp.bfloat16)):
        w = jnp.asarray(weights, dtype)
        x = low.astype(dtype)
        jitted = jax.jit(low_res_pooling.pool_low_res)
        got = np.asarray(jitted(x, w))
        timing = time_fn(jitted, x, w, repeats=args.repeats, inner=20)
        out[name] = {
            **timing,
            "median_us": 1e6 * timing["median_s"],
            "max_abs_diff_vs_upsample_then_segment_sum": float(np.abs(got - reference).max()),
            "weights_bytes": int(w.size * w.dtype.itemsize),
            "host_weights_ms_per_image": host_ms,
        }
    return out


def pallas_config_results(args, feats, ids, reference_sums) -> dict:
    """Times the Pallas kernel's sums and sizes (float32) for each of `PALLAS_CONFIGS`."""
    out = {}
    for config in PALLAS_CONFIGS:
        name = f"pallas_sums_and_sizes_f32/{config_name(config)}"
        jitted = jax.jit(
            functools.partial(
                pallas_pooling.region_sums_pallas,
                num_regions=args.regions,
                with_sizes=True,
                config=config,
            )
        )
        try:
            got = np.asarray(jitted(feats, ids))[..., :-1]
        except Exception as error:  # noqa: BLE001 - recorded, the other configurations run
            out[name] = {"error": f"{type(error).__name__}: {str(error)[:1000]}"}
            continue
        timing = time_fn(jitted, feats, ids, repeats=args.repeats, inner=20)
        out[name] = {
            **timing,
            "median_us": 1e6 * timing["median_s"],
            "max_abs_diff_vs_segment_sum_f32": float(np.abs(got - reference_sums).max()),
        }
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--regions", type=int, default=100)
    parser.add_argument("--stride", type=int, default=8, help="low-resolution map stride")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    ids = jnp.asarray(slic_like_ids(args.batch, args.size, args.regions))
    feats = jnp.asarray(
        rng.normal(size=(args.batch, args.size, args.size, args.channels)).astype(np.float32)
    )
    k = args.regions
    variants = {
        "segment_sum_f32": (
            functools.partial(regions.pool_regions, num_regions=k, method="segment_sum"),
            feats,
        ),
        "one_hot_f32": (
            functools.partial(regions.pool_regions, num_regions=k, method="one_hot"),
            feats,
        ),
        "one_hot_bf16": (
            functools.partial(regions.pool_regions, num_regions=k, method="one_hot"),
            feats.astype(jnp.bfloat16),
        ),
        "segment_sum_bf16": (
            functools.partial(regions.pool_regions, num_regions=k, method="segment_sum"),
            feats.astype(jnp.bfloat16),
        ),
    }
    if jax.default_backend() == "gpu":
        for method in ("pallas", "pallas_runs"):
            fn = functools.partial(regions.pool_regions, num_regions=k, method=method)
            variants[f"{method}_f32"] = (fn, feats)
            variants[f"{method}_bf16"] = (fn, feats.astype(jnp.bfloat16))
    reference = np.asarray(jax.jit(variants["segment_sum_f32"][0])(feats, ids))
    results = {}
    for name, (fn, x) in variants.items():
        jitted = jax.jit(fn)
        try:
            got = np.asarray(jitted(x, ids))
        except Exception as error:  # noqa: BLE001 - recorded, the other variants still run
            results[name] = {"error": f"{type(error).__name__}: {str(error)[:2000]}"}
            print(f"{name} failed: {results[name]['error'][:500]}")
            continue
        timing = time_fn(jitted, x, ids, repeats=args.repeats, inner=20)
        results[name] = {
            **timing,
            "median_us": 1e6 * timing["median_s"],
            "max_abs_diff_vs_segment_sum_f32": float(np.abs(got - reference).max()),
        }
    if jax.default_backend() == "gpu":
        reference_sums = np.asarray(jax.jit(regions.region_sums, static_argnums=2)(feats, ids, k))
        results.update(pallas_config_results(args, feats, ids, reference_sums))
    results.update(low_res_results(args, np.asarray(ids)))
    bytes_read = feats.size * 4 + ids.size * 4
    write_json(
        {
            "benchmark": "region_pooling",
            "batch": args.batch,
            "image_size": args.size,
            "channels": args.channels,
            "num_regions": k,
            "runs_per_image": runs_per_image(np.asarray(ids)),
            "bytes_read_f32": bytes_read,
            "results": results,
        },
        args.out,
        "pooling.json",
    )


if __name__ == "__main__":
    # Timed as `train/main.py` runs: with transparent huge pages (train/huge_pages.py).
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
