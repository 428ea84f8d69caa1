"""benchmarks/compare_runs.py on two made-up runs with known loss curves."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import compare_runs  # noqa: E402


def _fake_run(folder: pathlib.Path, losses, dtype: str, accuracy: float) -> pathlib.Path:
    folder.mkdir()
    rows = [{"step": 10 * (i + 1), "train/loss": float(v)} for i, v in enumerate(losses)]
    lines = [json.dumps(row) for row in rows]
    lines.insert(3, json.dumps({"step": 35, "eval/certainty_0.9/accuracy": 0.5}))  # eval row
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "config.json").write_text(json.dumps({"compute_dtype": dtype}))
    results = {"certainty_0.9/accuracy": accuracy, "certainty_0.9/count": 1000.0}
    (folder / "eval_results.json").write_text(json.dumps(results))
    return folder


def test_gap_tail_mean_and_final_eval(tmp_path):
    base = np.linspace(2.0, 0.5, 40)
    ref = _fake_run(tmp_path / "f32", base, "float32", 0.90)
    shifted = base + np.where(np.arange(40) < 20, 0.1, 0.0)  # 0.1 higher for the first half
    other = _fake_run(tmp_path / "bf16", shifted, "bfloat16", 0.89)
    out = compare_runs.compare([ref, other], window=4)
    got = out[str(other)]
    assert got["compute_dtype"] == "bfloat16" and got["logged_steps"] == 40
    assert got["smoothed_loss_gap_to_reference"]["max"] == pytest.approx(0.1)
    # 37 smoothed points; 17 fully inside the first half (0.1), 3 straddling (0.075, 0.05, 0.025)
    want_mean = (17 * 0.1 + 0.075 + 0.05 + 0.025) / 37
    assert got["smoothed_loss_gap_to_reference"]["mean"] == pytest.approx(want_mean)
    assert got["mean_loss_last_tenth"] == pytest.approx(base[-4:].mean())
    assert got["final_eval"] == {"certainty_0.9/accuracy": 0.89}  # counts left out
    assert out[str(ref)]["smoothed_loss_gap_to_reference"]["max"] == 0.0


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="metrics.jsonl not found"):
        compare_runs.compare([tmp_path, tmp_path], window=4)
