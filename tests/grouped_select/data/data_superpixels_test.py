"""Tests for grouped_select.data.superpixels: SLIC ids, the region bound, parallel_map."""

import numpy as np
import pytest

from grouped_select.data import superpixels


def _blocks(rows: int, cols: int, size: int) -> np.ndarray:
    """[rows*size, cols*size] ids: block (i, j) has id i * cols + j."""
    ids = np.arange(rows * cols).reshape(rows, cols)
    return np.kron(ids, np.ones((size, size), dtype=np.int64))


def test_relabel_consecutive_keeps_order_and_fills_gaps():
    ids = np.array([[7, 7, 130], [2, 130, 7]])
    out, n = superpixels.relabel_consecutive(ids)
    assert n == 3
    np.testing.assert_array_equal(out, [[1, 1, 2], [0, 2, 1]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_relabel_consecutive_matches_the_sorted_unique_ids(dtype):
    rng = np.random.default_rng(0)
    ids = rng.choice(np.array([0, 3, 4, 9, 17, 120], dtype), size=(13, 11))
    out, n = superpixels.relabel_consecutive(ids)
    values, inverse = np.unique(ids, return_inverse=True)
    assert out.dtype == np.int32 and n == len(values) == 6
    np.testing.assert_array_equal(out, inverse.reshape(ids.shape))


def test_relabel_consecutive_rejects_negative_ids():
    with pytest.raises(ValueError, match="non-negative"):
        superpixels.relabel_consecutive(np.array([[0, -1]]))


def test_limit_regions_merges_smallest_into_longest_border():
    ids = _blocks(2, 3, 4)  # 6 regions of 16 pixels.
    ids[0, 0] = 99  # Region 99: 1 pixel inside region 0 -> must merge into 0.
    ids[7, 11] = 98  # Region 98: 1 pixel inside region 5 -> must merge into 5.
    out = superpixels.limit_regions(ids, 6)
    np.testing.assert_array_equal(out, _blocks(2, 3, 4))


def test_limit_regions_bound_and_all_ids_present():
    ids = _blocks(4, 4, 3)  # 16 equal regions.
    for k in (16, 10, 3, 1):
        out = superpixels.limit_regions(ids, k)
        present = np.unique(out)
        np.testing.assert_array_equal(present, np.arange(min(16, k)))
        # Merging only unions whole regions: every original region maps to one new id.
        for r in range(16):
            assert len(np.unique(out[ids == r])) == 1


def test_limit_regions_rejects_zero():
    with pytest.raises(ValueError, match="num_regions"):
        superpixels.limit_regions(np.zeros((2, 2), int), 0)


def test_slic_regions_dtype_bound_and_consecutive():
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(56, 3))
    image = palette[_blocks(7, 8, 6)][:40, :48].astype(np.uint8)  # 6x6 blocks of colour.
    ids = superpixels.slic_regions(image, n_segments=100, compactness=20.0, num_regions=128)
    assert ids.dtype == np.uint8 and ids.shape == (40, 48)
    n = int(ids.max()) + 1
    assert 20 < n <= 128
    np.testing.assert_array_equal(np.unique(ids), np.arange(n))
    forced = superpixels.slic_regions(image, n_segments=100, compactness=20.0, num_regions=12)
    np.testing.assert_array_equal(np.unique(forced), np.arange(12))
    assert superpixels.region_dtype(1000) == np.int16


def test_fingerprint_changes_with_settings():
    a = superpixels.slic_fingerprint(n_segments=100, compactness=20.0, num_regions=128)
    assert a == superpixels.slic_fingerprint(n_segments=100, compactness=20, num_regions=128)
    assert a != superpixels.slic_fingerprint(n_segments=100, compactness=10.0, num_regions=128)
    assert a != superpixels.slic_fingerprint(n_segments=50, compactness=20.0, num_regions=128)
    assert a != superpixels.slic_fingerprint(n_segments=100, compactness=20.0, num_regions=256)


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("num_workers", [0, 2])
def test_parallel_map_keeps_order(num_workers):
    out = list(superpixels.parallel_map(_square, range(20), num_workers=num_workers, chunksize=3))
    assert out == [x * x for x in range(20)]
