"""One line per measured variant of a folder of benchmark JSONs, against the issue's targets.

    python benchmarks/summarize.py benchmarks/out/gpu     # after `bash benchmarks/run_gpu.sh`
    python benchmarks/summarize.py benchmarks/results/h200_*.json

Every benchmark writes a JSON whose `results` (or whose top level, for `profile_step.py`)
holds timings with a median; this walks them and prints each variant's median, images/s and
its ratio to the published code on an H200 (P2P_SPEC.md: a training step 900-1030 images/s,
the dynamic-budget evaluation 195 ms per batch of 64, region pooling 765 µs), with the
targets of issue 7 (>= 4x, >= 10x, <= 50 µs). Variants that failed show their error.
"""

import argparse
import json
import pathlib
import sys

# benchmark name -> (what the reference does per unit, how to compare, target)
REFERENCE_TRAIN_IMAGES_PER_S = (900.0, 1030.0)
REFERENCE_EVAL_MS_PER_BATCH = 195.0
POOLING_TARGET_US = 50.0
_TIMING_KEYS = (
    "median_s", "median_ms", "median_us", "median_ms_per_batch", "images_per_s", "error",
)  # fmt: skip


def _timed(node, path=()):
    """(path, dict) for every dict under `node` that holds a timing or an error."""
    if isinstance(node, dict):
        if any(key in node for key in _TIMING_KEYS):
            yield path, node
            return
        for key, value in node.items():
            yield from _timed(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _timed(value, (*path, str(index)))


def summary_lines(name: str, data: dict) -> list[str]:
    """The lines for one benchmark JSON (`name`: its file name)."""
    kind = data.get("benchmark", "")
    device = (data.get("device") or {}).get("device_kind", "?")
    root = data.get("results", data if kind == "profile_step" else data.get("pipeline", {}))
    lines = []
    for path, entry in _timed(root):
        where = "/".join(path) or kind
        if "pipeline" in entry:  # data_pipeline.py's rows
            where = f"{entry['pipeline']} pipeline, {entry.get('worker_count')} workers"
            where += f", {entry.get('image_size')}²"
            where += f" {entry['image_format']}" if "image_format" in entry else ""
            where += " (host CPU)"
        label = f"{name}: {where}"
        if "error" in entry:
            lines.append(f"{label}: FAILED {str(entry['error'])[:120]}")
            continue
        parts = []
        if "median_us" in entry:
            parts.append(f"{entry['median_us']:.1f} µs")
            if kind == "region_pooling":
                parts.append(f"target <= {POOLING_TARGET_US:.0f} µs")
        for key in ("median_ms", "median_ms_per_batch"):
            if key in entry:
                parts.append(f"{entry[key]:.2f} ms")
        if not parts and "median_s" in entry:
            parts.append(f"{1e3 * entry['median_s']:.3f} ms")
        if "images_per_s" in entry:
            rate = entry["images_per_s"]
            parts.append(f"{rate:,.0f} images/s")
            if kind in ("train_step", "profile_step"):
                low, high = (rate / r for r in reversed(REFERENCE_TRAIN_IMAGES_PER_S))
                parts.append(f"{low:.1f}-{high:.1f}x the reference (target 4x)")
                if entry.get("model_flops_per_step") and entry.get("mfu_vs_bf16_peak"):
                    parts.append(
                        f"{entry['achieved_tflops']:.1f} TFLOP/s, "
                        f"MFU {100 * entry['mfu_vs_bf16_peak']:.2f} %"
                    )
            if kind == "eval_dynamic_budget" and "median_ms_per_batch" in entry:
                ratio = REFERENCE_EVAL_MS_PER_BATCH / entry["median_ms_per_batch"]
                parts.append(f"{ratio:.1f}x the reference (target 10x)")
        lines.append(f"{label} [{device}]: " + ", ".join(parts))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="JSON files or folders of them")
    args = parser.parse_args(argv)
    files = []
    for path in map(pathlib.Path, args.paths):
        files.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    if not files:
        sys.exit(f"summarize.py: no JSON files in {args.paths}")
    for file in files:
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"{file}: unreadable ({error})")
            continue
        for line in summary_lines(file.name, data):
            print(line)


if __name__ == "__main__":
    main()
