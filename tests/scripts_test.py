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
