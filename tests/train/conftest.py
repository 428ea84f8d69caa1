"""Fixtures for the training program's tests: a tiny built-in dataset and tiny configs."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the `train` package lives at the repository root

# Small enough that SLIC preparation takes a few seconds; the same settings in every test so
# the prepared dataset is reused (the builder's name hashes them).
TINY_OVERRIDES = {
    "data.builtin.num_train": 64,
    "data.builtin.num_validation": 0,
    "data.builtin.num_test": 16,
    "data.image_size": 32,
    "data.builtin.source_size": 32,
    "data.num_regions": 64,
    "data.slic_segments": 30,
    "optim.batch_size": 8,
    "optim.num_epochs": 2,
    "eval_batch_size": 8,
    "log_every_steps": 2,
    "checkpoint_every_steps": 4,
    "eval_every_epochs": 1,
    "p2p.certainties": (0.5, 0.9),
    "progress_bar": False,
}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """One prepared-datasets folder for the whole test session."""
    return tmp_path_factory.mktemp("datasets")


def make_tiny_config(data_dir):
    """The default config with `TINY_OVERRIDES` applied and `data_dir` set."""
    from train.configs import default

    config = default.get_config()
    for dotted, value in TINY_OVERRIDES.items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    config.data.data_dir = str(data_dir)
    return config


@pytest.fixture
def tiny_config(data_dir):
    """A fresh tiny config per test (tests may change it)."""
    return make_tiny_config(data_dir)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, data_dir) -> pathlib.Path:
    """One tiny finished training run (1 epoch) shared by the tests that read a run."""
    from train import train

    config = make_tiny_config(data_dir)
    config.optim.num_epochs = 1
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(config, str(workdir))
    return workdir


def overrides_as_flags(data_dir) -> list[str]:
    """`TINY_OVERRIDES` as `--config.key=value` flags for `train/main.py`."""
    flags = [f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items()]
    return [*flags, f"--config.data.data_dir={data_dir}"]


def run_script(name: str, *flags: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python train/<name>.py <flags>` as a user runs it; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, str(REPO / "train" / f"{name}.py"), *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
