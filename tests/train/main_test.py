"""`train/main.py` end to end: outputs, SIGKILL + resume, SIGTERM, and bad flags."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, overrides_as_flags

MAIN = REPO / "train" / "main.py"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("XLA_FLAGS", None)  # one CPU device, like a user's laptop
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _command(workdir, data_dir, *extra):
    return [
        sys.executable,
        str(MAIN),
        f"--workdir={workdir}",
        *overrides_as_flags(data_dir),
        *extra,
    ]


def _run(workdir, data_dir, *extra, timeout=600):
    return subprocess.run(
        _command(workdir, data_dir, *extra),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _final_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    ckpt_dir = workdir / "checkpoints"
    step = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    restored = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "state")
    flat = {}

    def collect(prefix, tree):
        if isinstance(tree, dict):
            for k, v in tree.items():
                collect(f"{prefix}/{k}", v)
        else:
            flat[prefix] = np.asarray(tree)

    collect("", restored["params"])
    flat["step"] = np.asarray(restored["step"])
    return flat


@pytest.mark.slow
def test_short_run_writes_checkpoints_metrics_and_config(tmp_path, data_dir):
    result = _run(tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["optim"]["batch_size"] == 8 and config["data"]["image_size"] == 32
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "train/loss" in r]
    eval_records = [r for r in records if "eval/certainty_0.9/accuracy" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert all(np.isfinite(r["train/loss"]) for r in train_records)
    assert [r["step"] for r in eval_records] == [8, 16]  # every epoch (8 steps) and the end
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["step"] == 16 and 0 <= results["certainty_0.9/accuracy"] <= 1
    assert results["certainty_0.9/count"] == 16
    assert sorted(
        int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()
    ) == [8, 12, 16]  # every 4 steps, keep 3
    assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.slow
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, data_dir):
    straight = tmp_path / "straight"
    assert _run(straight, data_dir).returncode == 0

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        _command(interrupted, data_dir),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first_checkpoint = interrupted / "checkpoints" / "4" / "state"
    deadline = time.time() + 300
    while not first_checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first_checkpoint.exists(), "the run never saved its first checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    resumed = _run(interrupted, data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Training from workdir" in resumed.stderr + resumed.stdout
    a, b = _final_params(straight), _final_params(interrupted)
    assert int(a["step"]) == int(b["step"]) == 16
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, data_dir):
    process = subprocess.Popen(
        _command(tmp_path, data_dir, "--config.optim.num_epochs=50"),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    metrics = tmp_path / "metrics.jsonl"
    while (not metrics.exists() or not metrics.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "Stopped at step" in output
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) < 50 * 8
    assert not (tmp_path / "eval_results.json").exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--config.optim.no_such_key=1", "no_such_key"),
        ("--config.optim.batch_size=lots", "batch_size"),
        ("--config.data.name=imagenet_from_nowhere", "config.data.name='imagenet_from_nowhere'"),
        ("--config.data.name=folders", "needs config.data.root"),
    ],
)
def test_bad_flags_give_clear_errors(tmp_path, data_dir, flag, message):
    result = _run(tmp_path, data_dir, flag, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


def test_missing_dataset_folder_is_named(tmp_path, data_dir):
    missing = tmp_path / "not_there"
    result = _run(
        tmp_path,
        data_dir,
        "--config.data.name=folders",
        "--config.data.layout=imagenet",
        f"--config.data.root={missing}",
        timeout=300,
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr, result.stderr[-2000:]
