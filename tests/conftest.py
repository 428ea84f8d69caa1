"""Shared test setup: 8 fake CPU devices (set before JAX initialises) and golden data access."""

import os

# Must run before jax is imported anywhere, so sharding code is exercised on CPU.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_DEFAULT_GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden"


def golden_dir() -> pathlib.Path | None:
    """The golden folder: $P2P_GOLDEN_DIR if set (must exist), else ../shared/golden if present."""
    env = os.environ.get("P2P_GOLDEN_DIR")
    if env:
        path = pathlib.Path(env).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"P2P_GOLDEN_DIR={env!r} is set but is not a folder; point it at the golden data "
                "folder (shared/golden) or unset it."
            )
        return path
    return _DEFAULT_GOLDEN if _DEFAULT_GOLDEN.is_dir() else None


@pytest.fixture(scope="session")
def golden():
    """Returns a loader `golden(name) -> dict of numpy arrays` or skips when no golden folder."""
    root = golden_dir()
    if root is None:
        pytest.skip("no golden folder (set P2P_GOLDEN_DIR to shared/golden to run golden tests)")

    cache = {}

    def load(name: str):
        if name not in cache:
            with np.load(root / name) as data:
                cache[name] = {k: data[k] for k in data.files}
        return cache[name]

    load.root = root
    return load
