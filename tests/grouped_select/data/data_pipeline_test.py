"""Tests for grouped_select.data.pipeline: batches, sharding, checkpointable position."""

import grain
import jax
import numpy as np
import pytest

from grouped_select import data
from grouped_select.data import augment


def _sources(builder):
    return builder.as_data_source()


def test_train_batches_shapes_dtypes_and_values(tiny_shapes):
    it = data.train_iterator(
        _sources(tiny_shapes)["train"],
        global_batch_size=8,
        image_size=24,
        num_regions=128,
        seed=0,
    )
    batch = next(it)
    # Only what the training step reads: no masks, no padding flags.
    assert set(batch) == set(data.TRAIN_BATCH_KEYS) | set(data.JITTER_KEYS)
    assert batch["image"].shape == (8, 24, 24, 3) and batch["image"].dtype == np.uint8
    assert batch["region_ids"].shape == (8, 24, 24) and batch["region_ids"].dtype == np.int32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert batch["image"].std() > 10
    assert batch["jitter_factors"].shape == (8, 4) and batch["jitter_order"].shape == (8, 4)
    for order in batch["jitter_order"]:  # the default jitter enables all four adjustments
        assert sorted(order) == [0, 1, 2, 3]
    for ids in batch["region_ids"]:
        np.testing.assert_array_equal(np.unique(ids), np.arange(ids.max() + 1))
        assert ids.max() < 128
    assert ((batch["label"] >= 0) & (batch["label"] < 8)).all()


@pytest.mark.parametrize("fixture", ["tiny_shapes", "tiny_shapes_jpeg"])
def test_training_source_leaves_image_and_mask_encoded_and_gives_the_same_batches(fixture, request):
    builder = request.getfixturevalue(fixture)
    full = _sources(builder)["train"]
    lean = data.training_source(builder)
    assert len(lean) == len(full)
    stored, decoded = lean[3], full[3]
    assert isinstance(stored["mask"], bytes) and decoded["mask"].shape == (32, 32)
    assert isinstance(stored["image"], bytes) and decoded["image"].shape == (32, 32, 3)
    # PIL decodes the stored bytes to exactly what tfds gives.
    np.testing.assert_array_equal(np.asarray(augment.open_image(stored["image"])), decoded["image"])
    for key in ("region_ids", "label"):
        np.testing.assert_array_equal(stored[key], decoded[key])
    kwargs = dict(global_batch_size=8, image_size=16, num_regions=128, seed=5)
    want_batches = _take(data.train_iterator(full, **kwargs), 3)
    for cache in (False, True):  # the cache decodes the images once, into memory
        got_batches = _take(data.train_iterator(lean, cache=cache, **kwargs), 3)
        for want, got in zip(want_batches, got_batches, strict=True):
            assert set(got) == set(want)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_iterator_state_restores_position(tiny_shapes):
    kwargs = dict(global_batch_size=8, image_size=16, num_regions=128, seed=3)
    src = _sources(tiny_shapes)["train"]
    it = data.train_iterator(src, **kwargs)
    for _ in range(7):  # Past one epoch (6 batches), into the reshuffled second.
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = data.train_iterator(src, **kwargs)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_cache_in_memory_gives_the_same_batches_and_positions(tiny_shapes):
    kwargs = dict(global_batch_size=8, image_size=16, num_regions=128, seed=2)
    src = _sources(tiny_shapes)["train"]
    plain = data.train_iterator(src, **kwargs)
    cached = data.train_iterator(src, cache=True, **kwargs)
    for _ in range(7):  # Past one epoch (6 batches): the second epoch comes from memory.
        want, got = next(plain), next(cached)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    state, want = cached.get_state(), next(plain)
    resumed = data.train_iterator(src, cache=True, **kwargs)
    resumed.set_state(state)
    got = next(resumed)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_cache_in_memory_holds_only_this_process_shard(tiny_shapes):
    src = _sources(tiny_shapes)["train"]
    shard = data.train_dataset(
        src,
        global_batch_size=8,
        image_size=16,
        num_regions=128,
        num_epochs=1,
        jitter=None,
        shard_index=1,
        shard_count=2,
        cache=True,
    )
    labels = np.concatenate([b["label"] for b in shard])
    want = [src[i]["label"] for i in range(1, len(src), 2)]
    assert len(want) % 4 == 0  # Whole local batches of 4: every example of the shard once.
    np.testing.assert_array_equal(np.bincount(labels, minlength=8), np.bincount(want, minlength=8))


def test_cache_in_memory_refuses_what_does_not_fit(tiny_shapes):
    ds = grain.MapDataset.source(_sources(tiny_shapes)["train"])
    with pytest.raises(ValueError, match="cache_in_memory=False"):
        data.decode_into_memory(ds, max_memory_fraction=1e-12)


def test_train_epoch_covers_every_example_once(tiny_shapes):
    src = _sources(tiny_shapes)["train"]
    it = data.train_iterator(
        src, global_batch_size=8, image_size=16, num_regions=128, num_epochs=1, jitter=None
    )
    labels = np.concatenate([b["label"] for b in it])
    want = np.bincount([src[i]["label"] for i in range(len(src))], minlength=8)
    np.testing.assert_array_equal(np.bincount(labels, minlength=8), want)


def test_eval_shards_cover_each_example_once_with_equal_batches(tiny_shapes):
    src = _sources(tiny_shapes)["test"]  # 20 examples.
    kwargs = dict(global_batch_size=6, image_size=32, num_regions=128, crop_fraction=1.0)
    single = list(data.eval_iterator(src, shard_index=0, shard_count=1, **kwargs))
    assert [int(b["valid"].sum()) for b in single] == [6, 6, 6, 2]
    # crop_fraction=1 at the stored size is the identity: images are the stored ones.
    stored = np.stack([src[i]["image"] for i in range(len(src))])
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in single])[:20], stored)

    shards = [
        list(data.eval_iterator(src, shard_index=i, shard_count=2, **kwargs)) for i in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 4  # 10 per shard, batches of 3.
    seen = [
        img.tobytes()
        for shard in shards
        for b in shard
        for img, ok in zip(b["image"], b["valid"], strict=True)
        if ok
    ]
    assert sorted(seen) == sorted(x.tobytes() for x in stored)


def test_batch_size_must_divide(tiny_shapes):
    with pytest.raises(ValueError, match="divisible"):
        data.eval_iterator(
            _sources(tiny_shapes)["test"],
            global_batch_size=5,
            image_size=16,
            num_regions=128,
            shard_count=2,
            shard_index=0,
        )


def test_make_global_batch_on_fake_devices(tiny_shapes):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    batch = next(
        data.train_iterator(
            _sources(tiny_shapes)["train"], global_batch_size=16, image_size=16, num_regions=128
        )
    )
    arrays = data.make_global_batch(batch, mesh)
    assert set(arrays) == set(batch)
    for k, v in arrays.items():
        assert isinstance(v, jax.Array) and v.shape == batch[k].shape
        assert v.sharding.spec == jax.sharding.PartitionSpec("data")
        assert len(v.addressable_shards) == 8
        assert v.addressable_shards[1].data.shape[0] == 2
        np.testing.assert_array_equal(np.asarray(v), batch[k])


def test_worker_processes_give_the_same_batches(tiny_shapes):
    # The workers read what train/main.py reads (image and mask encoded): that source must
    # reach the worker processes too.
    kwargs = dict(global_batch_size=8, image_size=16, num_regions=128, seed=1)
    plain = data.train_iterator(_sources(tiny_shapes)["train"], **kwargs)
    workers = data.train_iterator(data.training_source(tiny_shapes), worker_count=1, **kwargs)
    try:
        for _ in range(2):
            want, got = next(plain), next(workers)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k])
    finally:
        workers.close()
