"""Every program in train/ and benchmarks/ starts from a clean environment, huge-page
restart included (`train/huge_pages.py`), and prints its usage for `--help`."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = ("main", "evaluate", "compare", "explain", "budget_head")
SCRIPTS = sorted(
    [REPO / "train" / f"{name}.py" for name in PROGRAMS]
    + [p for p in (REPO / "benchmarks").glob("*.py") if p.name not in ("__init__.py", "common.py")]
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_starts(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GLIBC_TUNABLES")}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path,  # not the repository: scripts must find their imports themselves
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if script.parent.name == "train":
        # absl prints the short help and exits 1 by design.
        assert result.returncode == 1 and "Try --helpfull" in result.stdout, result.stdout
    else:
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]


# What the GPU machines' image lacks (`/work/.library/device/KINDS.md`, 2026-11-17): the
# benchmarks that `benchmarks/run_gpu.sh` times on the GPU must start without them.
GPU_IMAGE_LACKS = ("tensorflow_datasets", "grain", "array_record")
GPU_BENCHMARKS = (
    "pooling", "train_step", "profile_step", "eval_search", "depthwise", "color_jitter",
    "vit_kernels",
)  # fmt: skip


@pytest.mark.parametrize("name", GPU_BENCHMARKS)
def test_gpu_benchmarks_start_without_the_data_stack(name, tmp_path):
    script = REPO / "benchmarks" / f"{name}.py"
    assert f"benchmarks/{name}.py" in (REPO / "benchmarks" / "run_gpu.sh").read_text()
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in GPU_IMAGE_LACKS)
    code = (
        f"import runpy, sys; {blocked}; sys.argv = [{str(script)!r}, '--help']; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GLIBC_TUNABLES")}
    env.update(JAX_PLATFORMS="cpu", P2P_HUGE_PAGES="0")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]
