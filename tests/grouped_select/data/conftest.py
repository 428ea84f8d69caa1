"""Fixtures for the data tests: tiny prepared built-in benchmarks, shared by the session."""

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


@pytest.fixture(scope="session")
def tiny_shapes_jpeg(tmp_path_factory):
    """The same kind of benchmark stored as JPEG: 16 train, 8 test examples."""
    return data.prepare_shapes(
        tmp_path_factory.mktemp("tfds_jpeg"),
        image_size=32,
        num_train=16,
        num_validation=0,
        num_test=8,
        image_format="jpeg",
        num_workers=0,
    )
