"""The evaluation command on a tiny trained run: report.json, report.md, figures, errors."""

import json
import shutil
import subprocess

import pytest

from train import evaluate

FIGURES = ("fidelity_curves.png", "gallery.png", "kept_vs_budget.png", "per_class_accuracy.png")


def _command(*args: str) -> subprocess.CompletedProcess:
    from conftest import run_script

    return run_script("evaluate", *args)


def _in_unit(value) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def test_evaluate_command_writes_the_report(run_dir):
    result = _command(f"--workdir={run_dir}", "--certainty=0.9")
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir / "eval_test"
    assert json.loads(result.stdout.strip().splitlines()[-1])["out"] == str(out)
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "test" and report["mode"] == "dynamic"
    assert report["certainty"] == 0.9 and report["count"] == 16  # the tiny test split
    assert report["mask_count"] == 16 and report["step"] == 8
    for key in ("accuracy", "auroc", "aupr", "kept_fraction", "kept_pixels", "pxap"):
        assert _in_unit(report[key]), key
    for key in ("mask_iou", "mask_precision", "confident_fraction"):
        assert _in_unit(report[key]), key
    assert 0.05 <= report["budget"] <= 1.0
    assert set(report["deletion"]) == {"0.05", "0.1", "0.2"}
    assert set(report["insertion"]) == {"0.8", "0.9", "0.95"}
    for name in ("deletion_curve", "insertion_curve"):
        curve = report[name]
        assert curve["fractions"][0] == 0.0 and curve["fractions"][-1] == 1.0
        assert len(curve["fractions"]) == len(curve["agreement"]) == 21
        assert all(_in_unit(v) for v in curve["agreement"]) and _in_unit(curve["area"])
    assert report["pxap_bin_width"] == 1e-5
    # The training program's own evaluation of the same checkpoint at δ = 0.9 agrees.
    trained = json.loads((run_dir / "eval_results.json").read_text())
    for key in ("accuracy", "kept_pixels", "kept_fraction", "budget", "mask_iou"):
        assert report[key] == pytest.approx(trained[f"certainty_0.9/{key}"], abs=1e-6), key
    classes = json.loads((run_dir / "classes.json").read_text())
    assert list(report["per_class"]) == classes
    assert sum(v["count"] for v in report["per_class"].values()) == 16
    markdown = (out / "report.md").read_text()
    assert "| accuracy (masked input) |" in markdown and "| PxAP (bin width 1e-05) |" in markdown
    for file in FIGURES:
        assert (out / file).stat().st_size > 1000, file
        assert f"]({file})" in markdown


def test_fixed_budget_run(run_dir, tmp_path):
    # The architecture does not depend on the budget mode: relabel the run as fixed-budget.
    fixed = tmp_path / "fixed_run"
    shutil.copytree(run_dir, fixed, ignore=shutil.ignore_patterns("eval_*"))
    config = json.loads((fixed / "config.json").read_text())
    config["p2p"]["dynamic_budget"] = False
    (fixed / "config.json").write_text(json.dumps(config))
    out = tmp_path / "fixed_eval"
    report = evaluate.evaluate_run(
        str(fixed), out=str(out), curve_step=0.25, gallery_size=4, progress=False
    )
    assert report["mode"] == "fixed" and report["certainty"] is None
    assert report["budget"] == pytest.approx(config["p2p"]["fixed_budget"])
    assert report["confident_fraction"] is None and report["count"] == 16
    assert len(report["deletion_curve"]["fractions"]) == 8  # 0.25 grid + 0.05, 0.1, 0.2
    assert json.loads((out / "report.json").read_text())["mode"] == "fixed"
    assert all((out / file).exists() for file in FIGURES)


def test_clear_errors(run_dir, tmp_path):
    result = _command(f"--workdir={tmp_path / 'nothing_here'}")
    assert result.returncode != 0
    assert "written by train/main.py" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(evaluate.RunError, match="--split=validation: .*not a split"):
        evaluate.evaluate_run(str(run_dir), split="validation", progress=False)
    with pytest.raises(evaluate.RunError, match="certainty"):
        evaluate.evaluate_run(str(run_dir), certainty=1.5, progress=False)
    with pytest.raises(evaluate.RunError, match="curve_step"):
        evaluate.evaluate_run(str(run_dir), curve_step=0.3, progress=False)


def test_budget_head_is_fitted_measured_and_used_by_evaluate(run_dir, tmp_path):
    from train import one_pass

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with pytest.raises(evaluate.RunError, match="train/budget_head.py"):
        evaluate.evaluate_run(str(run), one_pass=True, progress=False)
    report = one_pass.fit_and_measure(str(run), certainty=0.9, epochs=5)
    assert report["count"] == 16
    assert 0.0 <= report["budget_mean_abs_error"] <= 1.0
    assert json.loads((run / "budget_head.json").read_text()) == report
    evaluated = evaluate.evaluate_run(str(run), one_pass=True, progress=False)
    assert evaluated["out"].endswith("eval_test_one_pass")
    assert evaluated["accuracy"] == pytest.approx(report["one_pass"]["accuracy"])
    assert evaluated["kept_pixels"] == pytest.approx(report["one_pass"]["kept_pixels"], abs=1e-6)
