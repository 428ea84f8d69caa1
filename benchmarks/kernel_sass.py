"""The Pallas (Triton) kernels compiled for an H200 without one: registers and main loops.

    # needs jax's CUDA plugin, in a venv of its own (see compile_census.py); its wheels ship
    # ptxas. With NVIDIA's cuobjdump (`pip download nvidia-cuda-cuobjdump`, unzip) on PATH or
    # in $CUOBJDUMP, each kernel's main loop is disassembled and counted too.
    python benchmarks/kernel_sass.py [--out kernel_sass.json]

For every work division of `benchmarks/pooling.py` (`PALLAS_CONFIGS`, float32 features with
sizes, the paper's B = 64, 224², C = 4, K = 100), XLA compiles the program for a described
H200 (`compile_census.py`'s compile-only client) and dumps the PTX of its Triton kernels;
ptxas (sm_90a) gives each kernel's registers per thread and spills, which bound how many
programs share an SM, and cuobjdump's SASS gives the instructions of the kernel's largest
loop body per warp, with the matrix-unit instructions (HMMA / HGMMA) and barriers among them.
Instruction counts are not times: they rank kernels whose loops are issue-bound, as the
every-pixel pooling kernel's is (237 µs measured on an H200 for ~1,100 k warp instructions
per image). Sessions without a GPU use them to choose what `run_gpu.sh` should time.
"""

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json  # noqa: E402

_ENTRY = re.compile(r"^\.visible \.entry (\w+)\(", re.MULTILINE)
_SASS = re.compile(r"^\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;", re.MULTILINE)
_REGISTERS = re.compile(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", re.DOTALL)
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _tool(name: str) -> str | None:
    """ptxas from jax's CUDA wheels; cuobjdump from $CUOBJDUMP or PATH."""
    if name == "cuobjdump" and os.environ.get("CUOBJDUMP"):
        return os.environ["CUOBJDUMP"]
    found = shutil.which(name)
    if found or name != "ptxas":
        return found
    import nvidia  # the namespace package of NVIDIA's CUDA wheels

    for root in nvidia.__path__:
        for path in pathlib.Path(root).rglob("bin/ptxas"):
            return str(path)
    return None


def largest_loop(sass: str) -> dict:
    """The largest loop body (a backward branch's span) of one kernel's SASS listing."""
    instructions = [(int(a, 16), text) for a, text in _SASS.findall(sass)]
    best = (0, 0)
    for address, text in instructions:
        targets = re.findall(r"0x([0-9a-f]+)", text) if "BRA" in text else []
        if targets and int(targets[-1], 16) < address:
            best = max(best, (int(targets[-1], 16), address), key=lambda s: s[1] - s[0])
    body = [text for address, text in instructions if best[0] <= address <= best[1]]
    opcodes = [re.sub(r"^@!?U?P\w+\s+", "", text).split()[0] for text in body if text.split()]
    return {
        "loop_instructions": len(body),
        "matrix_instructions": sum(op.startswith(("HMMA", "HGMMA")) for op in opcodes),
        "shared_stores": sum(op.startswith("STS") for op in opcodes),
        "barriers": sum(op.startswith("BAR") for op in opcodes),
    }


def kernel_report(ptx_path: pathlib.Path, ptxas: str, cuobjdump: str | None) -> dict:
    """Per entry of one PTX file: registers, spills, and its largest loop (with cuobjdump)."""
    cubin = ptx_path.with_suffix(".cubin")
    log = subprocess.run(
        [ptxas, "-arch=sm_90a", "-v", str(ptx_path), "-o", str(cubin)],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    spills = [int(stores) + int(loads) for stores, loads in _SPILLS.findall(log)]
    out = {
        name: {"registers": int(count), "spill_bytes": spill}
        for (name, count), spill in zip(_REGISTERS.findall(log), spills, strict=False)
    }
    if cuobjdump:
        for name in out:
            sass = subprocess.run(
                [cuobjdump, "-sass", "-fun", name, str(cubin)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            out[name].update(largest_loop(sass))
    return out


def pooling_kernels(dump: pathlib.Path, ptxas: str, cuobjdump: str | None) -> dict:
    """Every `PALLAS_CONFIGS` work division of the pooling kernels, float32 with sizes."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import compile_census
    from benchmarks.pooling import PALLAS_CONFIGS, config_name
    from grouped_select import pallas_pooling

    results = {}
    for config in PALLAS_CONFIGS:
        before = set(dump.glob("*.ptx"))

        def build(config=config):
            def pool(features, ids):
                return pallas_pooling.region_sums_pallas(features, ids, 100, False, True, config)

            example = (np.zeros((64, 224, 224, 4), jnp.float32), np.zeros((64, 224, 224), np.int32))
            return jax.jit(pool), example

        compile_census._compile_for_h200(build)
        report = {}
        for ptx in sorted(set(dump.glob("*.ptx")) - before):
            if any(name.startswith("_") for name in _ENTRY.findall(ptx.read_text())):
                report.update(kernel_report(ptx, ptxas, cuobjdump))  # Pallas kernels: "_name"
        results[config_name(config)] = report
        print(config_name(config), report)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    ptxas, cuobjdump = _tool("ptxas"), _tool("cuobjdump")
    if ptxas is None:
        sys.exit("kernel_sass.py: no ptxas; install jax's CUDA plugin (see compile_census.py).")
    dump = pathlib.Path(tempfile.mkdtemp(prefix="kernel_sass_"))
    # XLA reads its flags once, when the first backend starts: nothing has started one yet.
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump}"
        " --xla_gpu_enable_triton_gemm=false"  # as compile_census.py (see its docstring)
    ).strip()
    try:
        results = pooling_kernels(dump, ptxas, cuobjdump)
    finally:
        shutil.rmtree(dump, ignore_errors=True)
    write_json(
        {
            "benchmark": "kernel_sass",
            "target": "H200 (sm_90a), compiled without a device",
            "ptxas": ptxas,
            "cuobjdump": cuobjdump,
            "pooling_f32_with_sizes_b64_224_c4_k100": results,
        },
        args.out,
        "kernel_sass.json",
    )


if __name__ == "__main__":
    main()
