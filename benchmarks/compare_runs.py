"""Compares finished training runs: their loss curves and final evaluations.

    python benchmarks/compare_runs.py runs/float32 runs/bfloat16 \
        [--out benchmarks/out/compare_runs.json --plot benchmarks/out/loss_curves.png]

The first run is the reference. For each run: the training loss logged in `metrics.jsonl`,
smoothed over `--window` log steps, its largest and mean absolute gap to the reference's over
the steps both logged, the mean loss over the last tenth of training, and the final
evaluation (`eval_results.json`) at every certainty. Used for the issue-7 check that
bfloat16 compute follows float32's loss curve on the built-in benchmark.
"""

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json  # noqa: E402


def _read_run(workdir: pathlib.Path) -> dict:
    """Steps and training losses [N] from metrics.jsonl, and eval_results.json."""
    metrics, results = workdir / "metrics.jsonl", workdir / "eval_results.json"
    for path in (metrics, results):
        if not path.is_file():
            raise SystemExit(f"{path} not found: pass the --workdir of a finished run.")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "train/loss" in r]
    config = json.loads((workdir / "config.json").read_text())
    return {
        "steps": np.array([r["step"] for r in rows]),
        "loss": np.array([r["train/loss"] for r in rows], np.float64),
        "eval": json.loads(results.read_text()),
        "compute_dtype": config.get("compute_dtype"),
    }


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _final_metrics(results: dict) -> dict:
    keep = ("accuracy", "kept_pixels", "mask_precision", "budget")
    return {k: v for k, v in results.items() if k.rsplit("/", 1)[-1] in keep}


def compare(workdirs: list[pathlib.Path], window: int) -> dict:
    runs = [_read_run(w) for w in workdirs]
    reference = runs[0]
    out = {}
    for workdir, run in zip(workdirs, runs, strict=True):
        steps = np.intersect1d(reference["steps"], run["steps"])
        ref_loss = reference["loss"][np.isin(reference["steps"], steps)]
        loss = run["loss"][np.isin(run["steps"], steps)]
        gap = np.abs(_smooth(loss, window) - _smooth(ref_loss, window))
        tail = max(1, len(run["loss"]) // 10)
        out[str(workdir)] = {
            "workdir": str(workdir),
            "compute_dtype": run["compute_dtype"],
            "logged_steps": len(run["loss"]),
            "smoothed_loss_gap_to_reference": {"max": float(gap.max()), "mean": float(gap.mean())},
            "mean_loss_last_tenth": float(run["loss"][-tail:].mean()),
            "final_eval": _final_metrics(run["eval"]),
        }
    return out


def plot(workdirs: list[pathlib.Path], labels: list[str], window: int, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for workdir, label in zip(workdirs, labels, strict=True):
        run = _read_run(workdir)
        ax.plot(run["steps"][window - 1 :], _smooth(run["loss"], window), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (mean of {window} log steps)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", type=pathlib.Path, help="finished runs")
    parser.add_argument("--window", type=int, default=10, help="log steps per smoothing window")
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="PNG of the curves")
    parser.add_argument("--labels", default=None, help="comma-separated, one per run")
    args = parser.parse_args(argv)
    if len(args.workdirs) < 2:
        parser.error("give at least two runs: the reference first")
    labels = args.labels.split(",") if args.labels else [str(w) for w in args.workdirs]
    if len(labels) != len(args.workdirs):
        parser.error(f"--labels has {len(labels)} names for {len(args.workdirs)} runs")
    runs = compare(args.workdirs, args.window)
    result = {"window": args.window, "runs": dict(zip(labels, runs.values(), strict=True))}
    write_json({"benchmark": "compare_runs", **result}, args.out, "compare_runs.json")
    if args.plot:
        plot(args.workdirs, labels, args.window, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
