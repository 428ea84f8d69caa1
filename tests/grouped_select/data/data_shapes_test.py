"""Tests for the built-in benchmark: determinism, exact masks, class balance, backgrounds."""

import collections
import pathlib

import numpy as np
import pytest

from grouped_select import data
from grouped_select.data import synthetic


def _tiny(data_dir, **kwargs):
    args = dict(image_size=32, num_train=24, num_validation=0, num_test=16, num_workers=0)
    args.update(kwargs)
    return data.prepare_shapes(data_dir, **args)


def _records(builder, split):
    src = builder.as_data_source()[split]
    return [src[i] for i in range(len(src))]


def test_same_seed_gives_byte_identical_examples(tmp_path, tiny_shapes):
    again = data.prepare_shapes(
        tmp_path,
        image_size=32,
        num_train=48,
        num_validation=0,
        num_test=20,
        num_workers=0,
    )
    assert again.builder_config.name == tiny_shapes.builder_config.name
    for split in ("train", "test"):
        a, b = _records(tiny_shapes, split), _records(again, split)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
                assert np.asarray(x[k]).tobytes() == np.asarray(y[k]).tobytes()
    files_a = sorted(pathlib.Path(tiny_shapes.data_dir).glob("*.array_record*"))
    files_b = sorted(pathlib.Path(again.data_dir).glob("*.array_record*"))
    assert [f.name for f in files_a] == [f.name for f in files_b] and files_a
    for fa, fb in zip(files_a, files_b, strict=True):
        assert fa.read_bytes() == fb.read_bytes()


def test_other_seed_gives_other_images(tmp_path, tiny_shapes):
    other = _tiny(tmp_path, num_train=48, num_test=20, seed=1)
    assert other.builder_config.name != tiny_shapes.builder_config.name
    a = {_records(tiny_shapes, "test")[i]["image"].tobytes() for i in range(20)}
    b = {_records(other, "test")[i]["image"].tobytes() for i in range(20)}
    assert not a & b


@pytest.mark.parametrize("label", range(len(synthetic.SHAPE_NAMES)))
def test_mask_covers_exactly_the_pasted_object(label):
    rng = synthetic.example_rng(3, 0, label)
    drawn = synthetic.render_example(rng, label=label, background=label, image_size=64)
    image, mask = drawn["image"], drawn["mask"]
    assert mask.dtype == bool and 0.05 < mask.mean() < 0.5
    np.testing.assert_array_equal(image[~mask], drawn["background"][~mask])
    np.testing.assert_array_equal(image[mask], drawn["object"][mask])


def test_disk_mask_area_matches_geometry():
    y, x = np.mgrid[0:200, 0:200] + 0.5
    u, v = (x - 100) / 50, (y - 100) / 50
    area = synthetic.shape_mask(0, u, v).sum()
    assert abs(area - np.pi * (0.9 * 50) ** 2) / area < 0.01


def test_stored_masks_match_rendering(tiny_shapes):
    # Regenerate the test split and match stored examples to it by image bytes.
    labels, backgrounds = synthetic.split_plan(20, seed=0, split_index=2)
    rendered = {}
    for i in range(20):
        drawn = synthetic.render_example(
            synthetic.example_rng(0, 2, i),
            label=int(labels[i]),
            background=int(backgrounds[i]),
            image_size=32,
        )
        rendered[drawn["image"].tobytes()] = (drawn["mask"], int(labels[i]), int(backgrounds[i]))
    for ex in _records(tiny_shapes, "test"):
        mask, label, background = rendered[ex["image"].tobytes()]
        np.testing.assert_array_equal(ex["mask"], mask.astype(np.uint8))
        assert ex["label"] == label and ex["background"] == background and ex["has_mask"]
        assert ex["region_ids"].max() < 128


def test_class_balance_as_configured(tiny_shapes, tmp_path):
    counts = collections.Counter(int(e["label"]) for e in _records(tiny_shapes, "train"))
    assert [counts[c] for c in range(8)] == [6] * 8  # 48 balanced over 8 classes.
    weights = (4, 2, 1, 1, 0, 0, 0, 0)
    np.testing.assert_array_equal(synthetic.class_counts(16, weights), [8, 4, 2, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(synthetic.class_counts(10, None), [2, 2, 1, 1, 1, 1, 1, 1])
    skewed = _tiny(tmp_path, num_train=16, num_test=0, class_proportions=weights)
    counts = collections.Counter(int(e["label"]) for e in _records(skewed, "train"))
    assert dict(counts) == {0: 8, 1: 4, 2: 2, 3: 2}
    with pytest.raises(ValueError, match="class_proportions"):
        synthetic.class_counts(10, (1, 2))


def test_background_correlation_only_in_training_splits(tmp_path):
    builder = _tiny(tmp_path, num_train=24, num_test=24, background_correlation=1.0)
    train = _records(builder, "train")
    assert all(e["background"] == e["label"] for e in train)
    test = _records(builder, "test")
    assert sum(e["background"] == e["label"] for e in test) < len(test) // 2
    labels, backgrounds = synthetic.split_plan(4000, seed=0, split_index=0)
    # Uncorrelated: the home family appears ~1/8 of the time.
    assert abs(np.mean(labels == backgrounds) - 1 / 8) < 0.03


def test_predefined_configs():
    names = list(data.P2pShapes.builder_configs)
    assert names[0] == data.shapes_config(image_size=64).name
    assert names[0].startswith("64px-") and any(n.startswith("224px-") for n in names)
