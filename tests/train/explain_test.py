"""Explaining images with a trained run: any image kind, and clear errors."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from grouped_select import explain
from grouped_select.data.folders import CorruptFileError
from train import checkpointing


def _image(tmp_path, name, array):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("mode", ["rgb", "gray", "rgba"])
def test_explain_any_image_kind(run_dir, tmp_path, mode):
    rng = np.random.default_rng(0)
    shape = {"rgb": (50, 70, 3), "gray": (40, 30), "rgba": (45, 45, 4)}[mode]
    path = _image(tmp_path, f"{mode}.png", rng.integers(0, 255, size=shape, dtype=np.uint8))
    model, config, names = checkpointing.load_run(run_dir)
    prepared = explain.prepare_image(
        path,
        image_size=config.data.image_size,
        num_regions=config.data.num_regions,
        n_segments=config.data.slic_segments,
    )
    size = config.data.image_size
    assert prepared.x.shape == (1, size, size, 3) and prepared.region_ids.shape == (1, size, size)
    assert prepared.region_ids.max() < config.data.num_regions
    result = explain.explain(model, prepared, num_regions=config.data.num_regions, certainty=0.9)
    assert 0 <= result.label < len(names) and 0 < result.confidence <= 1
    assert 0.05 <= result.budget <= 1.0 and 0 <= result.kept_fraction <= 1
    kept = result.selected[prepared.region_ids[0]] > 0
    np.testing.assert_allclose(kept.mean(), result.kept_fraction, atol=1e-6)
    out = tmp_path / "explained.png"
    explain.render(prepared, result, out, names)
    assert Image.open(out).size[0] > 200


def test_explain_command(run_dir, tmp_path):
    from conftest import run_script

    path = _image(tmp_path, "a.png", np.full((30, 30, 3), 128, np.uint8))
    out = tmp_path / "a_explained.png"
    result = run_script("explain", f"--workdir={run_dir}", f"--image={path}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["out"] == str(out) and out.exists()


def test_clear_errors(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no image at"):
        explain.prepare_image(tmp_path / "missing.png", image_size=32, num_regions=64)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(CorruptFileError, match="broken.png"):
        explain.prepare_image(broken, image_size=32, num_regions=64)
    with pytest.raises(FileNotFoundError, match="written by train/main.py"):
        checkpointing.load_run(tmp_path)
    other = tmp_path / "other_run"
    shutil.copytree(run_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["classifier"] = "resnet18"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit the model"):
        checkpointing.load_run(other)
