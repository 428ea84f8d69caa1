"""Where the training step's device time goes: a profile of a few steps, summed per XLA op.

    python benchmarks/profile_step.py [--dtype bfloat16 --batch 64 --steps 5 --out DIR]

Traces `--steps` calls of the compiled paper step (`train_step.py`'s, after warm-up) with
`jax.profiler`, then reads the trace back (`jax.profiler.ProfileData`) and sums the kernels'
time per HLO instruction. Each instruction is tied to the Python call stack that emitted it
through the compiled module's metadata, so the time is also summed per model part (selector
backbone, classifier, jitter, pooling, optimizer, ...) and pass (forward, backward). Writes
`profile_step.json` (the step's untraced timing as `train_step.py` gives it, and the summary;
its top rows are printed) and, for a closer look later,
the compiled module's text and the raw trace, gzipped, into `--out`.

On a GPU the kernels sit on the device plane's stream lines; on the CPU (useful only to try
the script) the ops run on the host plane's XLA threads. XLA's GPU backend replays most
kernels as CUDA graphs ("command buffers"), whose kernels the trace shows as
`command_buffer_*` without their HLO ops: `--no-command-buffers` turns them off so that every
kernel is attributed (the step then runs slower, since launches are no longer batched; its
kernel time stays about the same: 29.3 ms both ways on an H200, 2026-11-28).
"""

import argparse
import collections
import gzip
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json  # noqa: E402
from benchmarks.train_step import add_step_arguments, bench_dtype, model_options  # noqa: E402

# Source files -> the part of the step they compute. An op's call stack is searched from the
# innermost frame out, so a flax `Linear` inside `vit.py` counts as the classifier.
PARTS = (
    ("mobilenet_v3.py", "selector backbone"),
    ("backbones/depthwise.py", "selector backbone"),
    ("grouped_select/selector.py", "selector heads + pooling"),
    ("grouped_select/regions.py", "selector heads + pooling"),
    ("grouped_select/selection.py", "mask sampling"),
    ("backbones/vit.py", "classifier"),
    ("grouped_select/color.py", "colour jitter + normalise"),
    ("grouped_select/objective.py", "losses"),
    ("grouped_select/budget.py", "budget search"),
    ("optax/", "optimizer"),
)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SOURCE = re.compile(r'source_file="([^"]*)"\s+source_line=(\d+)')
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")
_CONTAINERS = ("while", "conditional", "call")
_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def _stack_tables(hlo_text: str) -> dict[str, dict[int, str]]:
    """The module text's FileNames / FunctionNames / FileLocations / StackFrames tables."""
    tables, current = {}, None
    for line in hlo_text.splitlines():
        if line in _TABLES:
            current = tables.setdefault(line, {})
        elif current is not None and line[:1].isdigit():
            key, value = line.split(" ", 1)
            current[int(key)] = value.strip().strip('"')
        elif line.strip():
            current = None
    return tables


def _call_stack(frame_id: int, tables: dict) -> list[str]:
    """ "file:line function" from the innermost frame outwards (at most 16 frames).

    A frame's parent_frame_id counts from 1 with 0 for none, one above the printed ids (seen
    with jax 0.10: the chains then run from a layer up to `train_step`).
    """
    frames, locations = tables.get("StackFrames", {}), tables.get("FileLocations", {})
    files, functions = tables.get("FileNames", {}), tables.get("FunctionNames", {})
    stack, seen = [], set()
    while frame_id in frames and frame_id not in seen and len(stack) < 16:
        seen.add(frame_id)
        frame = dict(re.findall(r"(\w+)=(\d+)", frames[frame_id]))
        location = dict(
            re.findall(r"(\w+)=(\d+)", locations.get(int(frame["file_location_id"]), ""))
        )
        file = files.get(int(location.get("file_name_id", -1)), "?")
        function = functions.get(int(location.get("function_name_id", -1)), "?")
        stack.append(f"{file}:{location.get('line', '?')} {function}")
        frame_id = int(frame.get("parent_frame_id", 0)) - 1
    return stack


def instruction_sources(hlo_text: str) -> dict[str, dict]:
    """HLO instruction name -> {"op_name", "stack"} from the compiled module's metadata.

    `stack`: the Python call stack that emitted the op, innermost first, from the module's
    stack-frame tables (or its older `source_file` / `source_line` metadata).
    """
    tables = _stack_tables(hlo_text)
    out = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match or "metadata=" not in line:
            continue
        op_name = _OP_NAME.search(line)
        source = _SOURCE.search(line)
        frame = _FRAME_ID.search(line)
        if source:
            stack = [f"{source.group(1)}:{source.group(2)}"]
        elif frame:
            stack = _call_stack(int(frame.group(1)), tables)
        else:
            stack = []
        out[match.group(1)] = {"op_name": op_name.group(1) if op_name else "", "stack": stack}
    return out


def part_of(stack: list[str]) -> str:
    """The model part (`PARTS`) of the innermost frame that belongs to one, else "other"."""
    for frame in stack:
        for needle, part in PARTS:
            if needle in frame:
                return part
    return "other"


def pass_of(op_name: str) -> str:
    """ "backward" for ops autodiff's transpose emitted, else "forward / other"."""
    return "backward" if "transpose(" in op_name else "forward / other"


def kernel_events(xplane_path: str) -> tuple[list[tuple[str, str, float]], dict]:
    """(line name, HLO op, microseconds) of every timed op event, and per-line totals.

    Device planes when the trace has any ops there (GPU/TPU), else the host's XLA threads.
    """
    from jax.profiler import ProfileData

    profile = ProfileData.from_file(xplane_path)
    by_plane: dict[str, list] = collections.defaultdict(list)
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                op = stats.get("hlo_op")
                if op is None and not plane.name.startswith("/device:"):
                    continue
                if str(op).startswith(_CONTAINERS) and not plane.name.startswith("/device:"):
                    continue  # a host thunk that runs other ops: counted through them
                by_plane[plane.name].append(
                    (line.name, str(op or event.name), event.duration_ns / 1e3)
                )
    device = [name for name in by_plane if name.startswith("/device:")]
    chosen = device or list(by_plane)
    events = [event for name in chosen for event in by_plane[name]]
    lines = collections.Counter()
    for line, _, us in events:
        lines[line] += us
    return events, {"planes": chosen, "microseconds_per_line": dict(lines.most_common())}


def summarize(events, sources: dict, steps: int, top: int) -> dict:
    """Per-op, per-part and per-pass device time per step (microseconds)."""
    per_op: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for _, op, us in events:
        per_op[op][0] += us
        per_op[op][1] += 1
    rows = []
    per_part, per_pass = collections.Counter(), collections.Counter()
    for op, (us, count) in per_op.items():
        meta = sources.get(op, {"op_name": "", "stack": []})
        us_per_step = us / steps
        part = part_of(meta["stack"])
        per_part[part] += us_per_step
        per_pass[f"{part} / {pass_of(meta['op_name'])}"] += us_per_step
        rows.append(
            {
                "op": op,
                "us_per_step": us_per_step,
                "launches_per_step": count / steps,
                "part": part,
                "op_name": meta["op_name"][-160:],
                "stack": [pathlib.Path(frame).name for frame in meta["stack"][:6]],
            }
        )
    rows.sort(key=lambda row: -row["us_per_step"])
    return {
        "op_time_us_per_step": sum(row["us_per_step"] for row in rows),
        "launches_per_step": sum(row["launches_per_step"] for row in rows),
        "per_part_us": dict(per_part.most_common()),
        "per_part_and_pass_us": dict(per_pass.most_common()),
        "top_ops": rows[:top],
    }


def disable_command_buffers() -> None:
    """GPU: no CUDA graphs, so every kernel is attributed (call before the backend starts)."""
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="
    os.environ["XLA_FLAGS"] = flags.strip()


def profile_calls(
    call: Callable[[], Any], hlo_text: str, calls: int, out_dir: pathlib.Path, name: str, top: int
) -> dict:
    """Traces `calls` calls of `call` (warmed up already) and sums their device time per op.

    Writes `<name>.xplane.pb.gz` (the raw trace) and `<name>.hlo.txt.gz` (the compiled
    module) into `out_dir`.

    Returns:
      the `summarize` dict per call, the trace's lines, and the traced wall time per call.
    """
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            for _ in range(calls):
                out = call()
            jax.block_until_ready(out)
            wall_ms = 1e3 * (time.perf_counter() - start) / calls
        xplane = next(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
        events, lines = kernel_events(str(xplane))
        with open(xplane, "rb") as src, gzip.open(out_dir / f"{name}.xplane.pb.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    (out_dir / f"{name}.hlo.txt.gz").write_bytes(gzip.compress(hlo_text.encode()))
    summary = summarize(events, instruction_sources(hlo_text), calls, top)
    # Wall time per call while tracing (the profiler adds some); op time below it means the
    # device waited (launch gaps, host work).
    return {"calls_traced": calls, "traced_wall_ms_per_call": wall_ms, **lines, **summary}


def print_summary(summary: dict, rows: int = 25) -> None:
    """The per-part table and the most expensive ops."""
    for part, us in summary["per_part_and_pass_us"].items():
        print(f"  {part:48s} {us / 1e3:8.2f} ms")
    for row in summary["top_ops"][:rows]:
        where = row["stack"][0] if row["stack"] else ""
        print(
            f"  {row['us_per_step']:9.1f} us x{row['launches_per_step']:<4.0f} "
            f"{row['op'][:36]:36s} {row['part'][:18]:18s} {where[:50]}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_step_arguments(parser)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=5, help="steps traced")
    parser.add_argument("--repeats", type=int, default=5, help="timed samples of 5 steps")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="for the MFU")
    parser.add_argument(
        "--no-command-buffers",
        action="store_true",
        help="GPU: no CUDA graphs, so that every kernel is attributed to its op and part",
    )
    parser.add_argument("--top", type=int, default=60, help="ops listed in the summary")
    parser.add_argument("--out", default=None, help="folder for the JSON and the raw files")
    args = parser.parse_args(argv)
    if args.no_command_buffers:
        disable_command_buffers()
    out_dir = pathlib.Path(args.out or pathlib.Path(__file__).parent / "out")
    out_dir.mkdir(parents=True, exist_ok=True)

    def profile(run_step, compiled):
        return profile_calls(
            run_step, compiled.as_text(), args.steps, out_dir, "profile_step", args.top
        )

    result = bench_dtype(args, args.dtype, after=profile)
    write_json(
        {
            "benchmark": "profile_step",
            "config": args.config,
            "batch": args.batch,
            "image_size": args.size,
            "dtype": args.dtype,
            **model_options(args),
            "command_buffers": not args.no_command_buffers,
            **result,
        },
        str(out_dir / "profile_step.json"),
        "profile_step.json",
    )
    print(
        f"{args.dtype} depthwise={args.depthwise_method} attention={args.attention} "
        f"mlp={args.block_kernels}: "
        f"{result['median_ms']:.2f} ms / step "
        f"({result['images_per_s']:.0f} images/s); traced: op time "
        f"{result['op_time_us_per_step'] / 1e3:.2f} ms / step, "
        f"wall {result['traced_wall_ms_per_call']:.2f} ms"
    )
    print_summary(result)


if __name__ == "__main__":
    # Timed as `train/main.py` runs: with transparent huge pages (train/huge_pages.py).
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
