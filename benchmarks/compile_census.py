"""The paper's programs compiled for an H200 without one: kernels, bytes, an estimated time.

    # compiling for CUDA here needs jax's CUDA plugin, in a venv of its own, same jax version:
    #   python -m venv /tmp/cuda && /tmp/cuda/bin/pip install "jax[cuda13]==$JAX" flax optax \
    #     chex ml_collections scikit-image
    python benchmarks/compile_census.py train [--attention cudnn --remat-layers true ...]
    python benchmarks/compile_census.py eval [--attention cudnn --block-kernels pallas]
    python benchmarks/compile_census.py hlo FILE.hlo.txt[.gz]   # a module compiled on a GPU
    python benchmarks/compile_census.py calibrate PROFILE_DIR     # fit the model to a profile

Sessions without a GPU can still compare GPU programs: XLA compiles for a described device
(`jax.experimental.topologies`, a "compile only" client) and the optimised module lists every
kernel the GPU would run. The census walks it (loop bodies times their trip counts), counts
kernel launches and the bytes each kernel reads and writes (a parameter read only through
slices counts the slices; a dynamic-update-slice writes its update in place), and estimates
time as `overhead + bytes / bandwidth` per launch, summed per model part and pass
(`profile_step.part_of` / `pass_of`, from the compiled module's stack frames).

The two constants come from `calibrate` on a measured profile (`profile_step.py
--no-command-buffers`, H200, commit 96faf7e, 2026-11-28: 3,712 kernels, 29.3 ms of kernel
time; 1,754 elementwise / reduction kernels fitted): 2.4 µs per launch, 2.6 TB/s. Estimates
are for ranking changes, not results: from the module the GPU compiled, that step's estimate
is 33.7 ms for 29.3 ms of measured kernel time (commit 1e78e2a's: 30.2 for 26.7, before
library calls' scratch buffers stopped counting as bytes written); matrix products are
costed by bytes alone; deviceless compiles run without autotuning and here
without Triton GEMMs (`--xla_gpu_enable_triton_gemm=false`: their tiling failed without a
device), so GEMM kernels differ from a GPU's own compile. Code that picks a kernel by
`jax.default_backend()` sees "gpu" while the program is traced for the CUDA target.
"""

import argparse
import collections
import functools
import gzip
import os
import pathlib
import re
import sys

# Everything here runs on the host: the CUDA target is compiled for, never initialised (a
# machine without a GPU fails to start the CUDA plugin; one with a GPU needs it not).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json  # noqa: E402
from benchmarks.profile_step import instruction_sources, part_of, pass_of  # noqa: E402

# Fitted by `calibrate` on the H200 profile named in the docstring.
OVERHEAD_US = 2.4
BYTES_PER_US = 2.6e6  # 2.6 TB/s

# An H200 as XLA's GPU compiler describes a device (132 SMs, compute capability 9.0).
H200_TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 4800000000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 150000000000
  shared_memory_per_block_optin: 232448 cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
runtime_version { major: 13 minor: 0 }
device_description_str: "NVIDIA H200"
"""

_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
          "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1, "f8e4m3fn": 1, "f8e5m2": 1}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
# Instructions that launch nothing themselves (control flow is walked into).
_NO_KERNEL = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
              "opt-barrier", "partition-id", "replica-id", "while", "conditional", "call",
              "add-dependency", "domain", "fusion-done", "copy-done"}  # fmt: skip


def shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (tuples summed)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * _BYTES.get(dtype, 0)
    return total


# A library call's output tuple ends in its scratch buffer (cuBLAS-lt: s8[4194304]; cuDNN:
# u8[...]): memory it may use, not bytes it writes.
_SCRATCH = re.compile(r",\s*[su]8\[\d+\](\{[\d,]*\})?\)$")


def _without_scratch(opcode: str, shape: str) -> str:
    return _SCRATCH.sub(")", shape) if opcode == "custom-call" else shape


def parse_module(text: str) -> tuple[dict[str, list[dict]], str]:
    """{computation: [instruction dicts]} of an HLO module's text, and the entry's name."""
    computations, current, entry = {}, None, None
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = head.group(2)
            computations[current] = []
            entry = current if head.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None and (match := _INSTRUCTION.match(line)):
            root, name, shape, opcode, rest = match.groups()
            computations[current].append(
                {"name": name, "shape": shape, "op": opcode, "rest": rest, "root": bool(root)}
            )
    return computations, entry


def _operands(rest: str) -> list[str]:
    """Operand names: the %names up to the parenthesis that closes the operand list."""
    depth = 1
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return re.findall(r"%([\w.\-]+)", rest[:index])
    return re.findall(r"%([\w.\-]+)", rest)


def _fusion_bytes(body: list[dict], operand_shapes: list[str], out_shape: str) -> tuple[int, int]:
    """(read, written) bytes of one fusion launch, given its computation's instructions."""
    by_name = {i["name"]: i for i in body}
    users = collections.defaultdict(list)
    for instruction in body:
        for operand in _operands(instruction["rest"]):
            users[operand].append(instruction)
    params = {
        int(re.match(r"(\d+)", i["rest"]).group(1)): i["name"]
        for i in body
        if i["op"] == "parameter"
    }
    root = next((i for i in body if i["root"]), None)
    if root is None:
        return sum(map(shape_bytes, operand_shapes)), shape_bytes(out_shape)
    outputs = [by_name[o] for o in _operands(root["rest"])] if root["op"] == "tuple" else [root]
    in_place, written = set(), 0
    for out in outputs:
        if out["op"] == "dynamic-update-slice":
            buffer, update = _operands(out["rest"])[:2]
            in_place.add(buffer)
            written += shape_bytes(by_name[update]["shape"]) if update in by_name else 0
        else:
            written += shape_bytes(out["shape"])
    read = 0
    for index, shape in enumerate(operand_shapes):
        param = params.get(index)
        if param in in_place:
            continue
        uses = users.get(param, [])
        if uses and all(u["op"] in ("slice", "dynamic-slice") for u in uses):
            read += min(shape_bytes(shape), sum(shape_bytes(u["shape"]) for u in uses))
        else:
            read += shape_bytes(shape)
    return read, written


def kernels(text: str) -> list[dict]:
    """Every kernel-launching instruction: name, opcode, launches per call, bytes in and out."""
    computations, entry = parse_module(text)
    shapes = {i["name"]: i["shape"] for body in computations.values() for i in body}
    found = []

    def walk(name: str, launches: int) -> None:
        for instruction in computations.get(name, []):
            opcode, rest = instruction["op"], instruction["rest"]
            if opcode == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
                trips = int(trips.group(1)) if trips else 1
                walk(re.search(r"body=%([\w.\-]+)", rest).group(1), launches * trips)
                walk(re.search(r"condition=%([\w.\-]+)", rest).group(1), launches * (trips + 1))
                continue
            if opcode in ("conditional", "call"):
                for target in re.findall(r"(?:branch_computations=\{|to_apply=)([^}]*)", rest):
                    for branch in re.findall(r"%([\w.\-]+)", target):
                        walk(branch, launches)
                continue
            if opcode in _NO_KERNEL:
                continue
            operand_shapes = [shapes.get(o, "") for o in _operands(rest)]
            called = re.search(r"calls=%([\w.\-]+)", rest)
            if called and opcode in ("fusion", "fusion-start"):
                read, written = _fusion_bytes(
                    computations.get(called.group(1), []), operand_shapes, instruction["shape"]
                )
            else:
                read, written = (
                    sum(map(shape_bytes, operand_shapes)),
                    shape_bytes(_without_scratch(opcode, instruction["shape"])),
                )
            found.append(
                {
                    "name": instruction["name"],
                    "op": opcode,
                    "launches": launches,
                    "bytes_read": read,
                    "bytes_written": written,
                }
            )

    walk(entry, 1)
    return found


def estimated_us(kernel: dict) -> float:
    """The time model: per launch, a fixed overhead plus its bytes at the fitted bandwidth."""
    moved = kernel["bytes_read"] + kernel["bytes_written"]
    return kernel["launches"] * (OVERHEAD_US + moved / BYTES_PER_US)


def census(text: str, top: int = 25) -> dict:
    """Launches, bytes and estimated time of a compiled module, per part / pass and source."""
    found = kernels(text)
    sources = instruction_sources(text)
    per_part, per_line, line_launches = (collections.Counter() for _ in range(3))
    for kernel in found:
        meta = sources.get(kernel["name"], {"op_name": "", "stack": []})
        part = f"{part_of(meta['stack'])} / {pass_of(meta['op_name'])}"
        ours = [f for f in meta["stack"] if "grouped_select/" in f or "train/" in f]
        where = pathlib.Path((ours or meta["stack"] or ["?"])[0]).name
        per_part[part] += estimated_us(kernel)
        per_line[f"{part} | {where}"] += estimated_us(kernel)
        line_launches[f"{part} | {where}"] += kernel["launches"]
    return {
        "launches": sum(k["launches"] for k in found),
        "gigabytes_moved": sum(
            k["launches"] * (k["bytes_read"] + k["bytes_written"]) for k in found
        )
        / 1e9,
        "estimated_ms": sum(per_part.values()) / 1e3,
        "model": {"overhead_us": OVERHEAD_US, "bytes_per_us": BYTES_PER_US},
        "per_part_ms": {k: v / 1e3 for k, v in per_part.most_common()},
        "top_sources": [
            {"where": k, "ms": v / 1e3, "launches": line_launches[k]}
            for k, v in per_line.most_common(top)
        ],
    }


def calibrate(profile_dir: pathlib.Path, steps: int) -> dict:
    """Least-squares `overhead + bytes / bandwidth` over the measured elementwise and reduction
    kernels of a `profile_step.py --no-command-buffers` run (its .hlo.txt.gz and
    .xplane.pb.gz); matrix products and in-place updates are left out of the fit."""
    import shutil
    import tempfile

    import numpy as np

    from benchmarks.profile_step import kernel_events

    text = gzip.open(next(profile_dir.glob("*.hlo.txt.gz")), "rt").read()
    with tempfile.TemporaryDirectory() as tmp:
        xplane = pathlib.Path(tmp) / "trace.xplane.pb"
        with gzip.open(next(profile_dir.glob("*.xplane.pb.gz"))) as src, open(xplane, "wb") as dst:
            shutil.copyfileobj(src, dst)
        events, _ = kernel_events(str(xplane))
    time_us, launches = collections.Counter(), collections.Counter()
    for _, op, us in events:
        time_us[op] += us / steps
        launches[op] += 1 / steps
    by_name = {k["name"]: k for k in kernels(text)}
    sizes, times = [], []
    for op, us in time_us.items():
        kernel = by_name.get(op)
        if kernel and kernel["op"] == "fusion" and "gemm" not in op and "dynamic" not in op:
            sizes.append(kernel["bytes_read"] + kernel["bytes_written"])
            times.append(us / launches[op])
    design = np.stack([np.ones(len(sizes)), np.asarray(sizes, float)], 1)
    (overhead, us_per_byte), *_ = np.linalg.lstsq(design, np.asarray(times), rcond=None)
    return {
        "kernels_fitted": len(sizes),
        "overhead_us": float(overhead),
        "bytes_per_us": float(1 / us_per_byte),
        "measured_kernel_ms": sum(time_us.values()) / 1e3,
        "measured_launches": sum(launches.values()),
    }


def _compile_for_h200(build) -> str:
    """Traces `build()` -> (jitted function, example args) for an H200 and compiles it here."""
    import jax
    import numpy as np
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="cuda", target_config=H200_TARGET, topology="1x1x1"
    )
    mesh = topologies.make_mesh(topology, (1,), ("x",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    on_cpu = jax.default_backend
    jax.default_backend = lambda: "gpu"  # kernel choices as on the target (see docstring)
    try:
        function, args = build()

        def describe(x):
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=replicated)

        return function.lower(*jax.tree.map(describe, args)).compile().as_text()
    finally:
        jax.default_backend = on_cpu


def _train_program(args):
    from benchmarks import train_step

    def build():
        import jax

        from train import models, steps

        config = train_step.paper_config(
            args.config, args.size, args.dtype, **train_step.model_options(args)
        )
        model = models.create_model(config, 9, seed=0)
        optimizer = steps.create_optimizer(config)
        graphdef, state = steps.initial_state(model, optimizer, config.seed)
        settings = steps.step_settings(config, steps_per_epoch=1000)
        step = functools.partial(
            steps.train_step, graphdef=graphdef, optimizer=optimizer, settings=settings
        )
        jitter = tuple(config.data.color_jitter) or None
        batch = train_step.make_batch(args.batch, args.size, config.data.num_regions, 9, jitter)
        return jax.jit(step, donate_argnums=0), (state, batch)

    return _compile_for_h200(build)


def _eval_program(args):
    from benchmarks import train_step

    def build():
        import jax
        import numpy as np
        from flax import nnx

        from grouped_select import budget, color
        from grouped_select.precision import cast_floating
        from train import models

        config = train_step.paper_config(
            args.config, args.size, args.dtype, **train_step.model_options(args)
        )
        regions = config.data.num_regions
        model = models.create_model(config, 9, seed=0)
        model.eval()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params = cast_floating(params, args.dtype)
        batch = train_step.make_batch(args.batch, args.size, regions, 9)
        x = np.asarray(color.normalize(batch["image"]).astype(args.dtype))

        @jax.jit
        def search(params, x, ids):
            out = budget.dynamic_budget_search(
                nnx.merge(graphdef, params, rest), x, ids, 0.9, num_regions=regions,
                grid_chunk=args.grid_chunk,
            )  # fmt: skip
            return out.budget, out.outputs.log_probs

        return search, (params, x, batch["region_ids"])

    return _compile_for_h200(build)


def main(argv=None):
    from benchmarks.train_step import add_step_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "eval"):
        command = commands.add_parser(name, help=f"compile the {name} program for an H200")
        add_step_arguments(command)
        command.add_argument("--dtype", default="bfloat16")
        command.add_argument("--grid-chunk", type=int, default=5, help="eval: budgets at once")
        command.add_argument("--hlo-out", default=None, help="also save the module (.gz)")
        command.add_argument("--out", default=None)
    hlo = commands.add_parser("hlo", help="census of a compiled module's text")
    hlo.add_argument("path")
    hlo.add_argument("--out", default=None)
    fit = commands.add_parser("calibrate", help="fit the time model to a measured profile")
    fit.add_argument("profile_dir")
    fit.add_argument("--steps", type=int, default=5, help="steps the profile traced")
    fit.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    if args.command == "calibrate":
        write_json(
            calibrate(pathlib.Path(args.profile_dir), args.steps), args.out, "calibrate.json"
        )
        return
    if args.command == "hlo":
        opener = gzip.open if args.path.endswith(".gz") else open
        with opener(args.path, "rt") as f:
            text = f.read()
        result = {"module": args.path}
    else:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false"
        ).strip()
        text = (_train_program if args.command == "train" else _eval_program)(args)
        if args.hlo_out:
            with gzip.open(args.hlo_out, "wt") as f:
                f.write(text)
        result = {key: value for key, value in vars(args).items() if key not in ("out", "hlo_out")}
    result.update(census(text))
    print(f"{result['launches']} launches, {result['gigabytes_moved']:.1f} GB, "
          f"estimated {result['estimated_ms']:.1f} ms")  # fmt: skip
    write_json(result, args.out, f"census_{args.command}.json")


if __name__ == "__main__":
    main()
