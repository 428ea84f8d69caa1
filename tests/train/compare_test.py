"""The comparison command: P2P and every baseline trained and evaluated by the same program."""

import json
import os

import numpy as np
import pytest
from conftest import make_tiny_config

from train import comparison as compare
from train import run_evaluation


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("compare")
    config = make_tiny_config(data_dir)
    reports = compare.run_comparison(
        config, str(workdir), compare.VARIANTS, certainty=0.9, split=None
    )
    return workdir, reports


def test_every_variant_is_trained_and_evaluated(comparison):
    workdir, reports = comparison
    assert list(reports) == list(compare.VARIANTS)
    configs = {v: json.load(open(workdir / v / "config.json")) for v in compare.TRAINED}
    assert configs["p2p"]["p2p"]["dynamic_budget"] is True
    assert configs["p2p_fixed"]["p2p"]["dynamic_budget"] is False
    assert configs["p2p_pixels"]["p2p"]["regions"] == "pixels"
    assert configs["black_box"]["model"]["kind"] == "black_box"
    assert reports["p2p"]["mode"] == "dynamic" and reports["p2p_fixed"]["mode"] == "fixed"
    assert reports["p2p_pixels"]["model"]["num_regions"] == 32 * 32
    for report in reports.values():
        assert report["count"] == 16  # the tiny test split
        assert 0.0 <= report["accuracy"] <= 1.0


def test_black_box_keeps_everything_and_post_hoc_keeps_what_p2p_kept(comparison):
    _, reports = comparison
    black_box = reports["black_box"]
    assert black_box["kept_pixels"] == 1.0
    # Keeping every pixel, precision is the object's share of the image (< 1 here).
    assert 0.0 < black_box["mask_precision"] < 1.0
    p2p_kept = np.load(os.path.join(reports["p2p"]["out"], "examples.npz"))["kept_pixels"]
    for method in compare.POST_HOC:
        report = reports[method]
        assert report["model"]["saliency"] == method
        kept = np.load(os.path.join(report["out"], "examples.npz"))["kept_pixels"]
        # Per image, the same fraction up to rounding to whole pixels.
        np.testing.assert_allclose(kept, p2p_kept, atol=0.5 / (32 * 32) + 1e-6)
    assert reports["gradient_x_input"]["pxap"] != reports["integrated_gradients"]["pxap"]


def test_table_has_a_row_per_variant_and_rerun_reuses_the_runs(comparison, data_dir):
    workdir, reports = comparison
    titles = {v: v for v in reports}
    table = compare.markdown_table(reports, titles).splitlines()
    assert len(table) == 2 + len(compare.VARIANTS)
    row = {line.split("|")[1].strip(): line for line in table[2:]}
    assert f"{reports['p2p']['mask_precision']:.3f}" in row["p2p"]
    assert row["black_box"].count("—") == 3  # no PxAP or fidelity for the unexplained model
    checkpoints = sorted(os.listdir(workdir / "p2p" / "checkpoints"))
    again = compare.run_comparison(
        make_tiny_config(data_dir), str(workdir), ["p2p"], certainty=0.9, split=None
    )
    assert sorted(os.listdir(workdir / "p2p" / "checkpoints")) == checkpoints
    assert again["p2p"]["accuracy"] == reports["p2p"]["accuracy"]


def test_clear_errors(comparison, data_dir, tmp_path):
    workdir, _ = comparison
    config = make_tiny_config(data_dir)
    with pytest.raises(ValueError, match="unknown \\['lime'\\]"):
        compare.run_comparison(config, str(tmp_path), ["lime"], certainty=0.9, split=None)
    with pytest.raises(ValueError, match="post-hoc baselines need"):
        compare.run_comparison(
            config, str(tmp_path), ["gradient_x_input"], certainty=0.9, split=None
        )
    with pytest.raises(run_evaluation.RunError, match="examples.npz does not exist"):
        run_evaluation.evaluate_run(
            str(workdir / "black_box"), match_kept=str(tmp_path), progress=False
        )


def test_command_writes_the_table(comparison, data_dir):
    from conftest import overrides_as_flags, run_script

    workdir, reports = comparison
    done = run_script(
        "compare",
        f"--workdir={workdir}",
        "--variants=p2p,black_box",
        *overrides_as_flags(data_dir),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (workdir / "comparison.md").read_text()
    assert "P2P (dynamic budget, δ = 0.9)" in table and "black box (full image)" in table
    assert f"{reports['p2p']['accuracy']:.3f}" in table
    saved = json.loads((workdir / "comparison.json").read_text())
    assert set(saved) == {"p2p", "black_box"}
    bad = run_script("compare", "--variants=lime")
    assert bad.returncode != 0 and "unknown ['lime']" in bad.stderr


def test_explain_refuses_a_black_box_run(comparison, tmp_path):
    from conftest import run_script
    from PIL import Image

    workdir, _ = comparison
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    done = run_script(
        "explain",
        f"--workdir={workdir / 'black_box'}",
        f"--image={image}",
        f"--out={tmp_path / 'out.png'}",
    )
    assert done.returncode != 0
    assert "black_box run" in done.stderr and "--saliency" in done.stderr
