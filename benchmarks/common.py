"""Shared timing and reporting for the benchmark scripts (JSON out, median and spread)."""

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax


def device_info() -> dict:
    """What ran the benchmark: backend, device kind, counts, versions."""
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "host_cpus": os.cpu_count(),
        "platform": platform.platform(),
        # Whether glibc asked for transparent huge pages (train/huge_pages.py).
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }


def time_fn(fn: Callable, *args, warmup: int = 3, repeats: int = 10, inner: int = 5) -> dict:
    """Times `fn(*args)` (outputs blocked on): `repeats` samples of `inner` calls each.

    Returns:
      dict with median / min / max / p10 / p90 seconds per call and the sample count.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - start) / inner)
    samples.sort()
    return {
        "median_s": statistics.median(samples),
        "min_s": samples[0],
        "max_s": samples[-1],
        "p10_s": samples[max(0, len(samples) // 10)],
        "p90_s": samples[min(len(samples) - 1, (9 * len(samples)) // 10)],
        "samples": len(samples),
        "calls_per_sample": inner,
    }


def analysed_flops(program) -> float | None:
    """FLOPs of one call from XLA's cost analysis of a lowered or compiled program (None if
    absent)."""
    try:
        analysis = program.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def write_json(result: dict, out: str | None, default_name: str) -> pathlib.Path:
    """Prints `result` and writes it to `out` (default benchmarks/out/<default_name>)."""
    path = pathlib.Path(out or pathlib.Path(__file__).parent / "out" / default_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": device_info(), **result}
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
