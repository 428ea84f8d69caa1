"""Side by side: a benchmark with and without transparent huge pages (train/huge_pages.py).

    python benchmarks/huge_pages.py [--rounds 3] [-- <benchmarks/train_step.py arguments>]

Runs `benchmarks/train_step.py` (paper backbones, batch 4, float32 by default) in fresh
processes, alternating `P2P_HUGE_PAGES=0` (glibc's default 4 KiB pages) and the default
(glibc asks for transparent huge pages), `--rounds` times each, and reports both medians,
their ratio and the page faults each step took.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json  # noqa: E402

_TRAIN_STEP = pathlib.Path(__file__).resolve().parent / "train_step.py"
_DEFAULT_ARGS = ["--batch", "4", "--dtypes", "float32", "--repeats", "3"]


def run_once(huge_pages: bool, args: list[str]) -> dict:
    """One `train_step.py` process: its median step time and its page faults."""
    with tempfile.TemporaryDirectory() as folder:
        out = pathlib.Path(folder) / "train_step.json"
        env = {**os.environ, "P2P_HUGE_PAGES": "1" if huge_pages else "0"}
        if not huge_pages:
            env.pop("GLIBC_TUNABLES", None)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [sys.executable, str(_TRAIN_STEP), *args, "--out", str(out)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = json.loads(out.read_text())
    (timing,) = result["results"].values()
    return {
        "median_ms": timing["median_ms"],
        "glibc_tunables": result["device"].get("glibc_tunables"),
        "process_minor_faults": after.ru_minflt - before.ru_minflt,
        "process_system_s": after.ru_stime - before.ru_stime,
        "process_user_s": after.ru_utime - before.ru_utime,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("train_step_args", nargs="*", help="after --: train_step.py's")
    args = parser.parse_args()
    step_args = args.train_step_args or _DEFAULT_ARGS
    runs = {"default_pages": [], "huge_pages": []}
    for _ in range(args.rounds):
        runs["default_pages"].append(run_once(False, step_args))
        runs["huge_pages"].append(run_once(True, step_args))
    medians = {
        name: statistics.median(run["median_ms"] for run in samples)
        for name, samples in runs.items()
    }
    write_json(
        {
            "benchmark": "huge_pages",
            "train_step_args": step_args,
            "runs": runs,
            "median_ms": medians,
            "speedup": medians["default_pages"] / medians["huge_pages"],
        },
        args.out,
        "huge_pages.json",
    )


if __name__ == "__main__":
    main()
