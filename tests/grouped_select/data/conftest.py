"""Fixtures for the data tests: one tiny prepared built-in benchmark, shared by the session."""

import pytest

from grouped_select import data


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A prepared 32x32 built-in benchmark: 48 train, 20 test examples (in-process, ~1 s)."""
    return data.prepare_shapes(
        tmp_path_factory.mktemp("tfds"),
        image_size=32,
        num_train=48,
        num_validation=0,
        num_test=20,
        num_workers=0,
    )
