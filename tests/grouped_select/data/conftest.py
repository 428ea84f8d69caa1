"""Fixtures for the data tests: tiny prepared built-in benchmarks, shared by the session."""

import pytest

from grouped_select import data


def _tiny_shapes(tmp_path_factory, **kwargs):
    """A prepared 32x32 built-in benchmark without a validation split (in-process, ~1 s)."""
    return data.prepare_shapes(
        tmp_path_factory.mktemp("tfds"), image_size=32, num_validation=0, num_workers=0, **kwargs
    )


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """48 train, 20 test examples, stored as PNG."""
    return _tiny_shapes(tmp_path_factory, num_train=48, num_test=20)


@pytest.fixture(scope="session")
def tiny_shapes_jpeg(tmp_path_factory):
    """The same kind of benchmark stored as JPEG: 16 train, 8 test examples."""
    return _tiny_shapes(tmp_path_factory, num_train=16, num_test=8, image_format="jpeg")
