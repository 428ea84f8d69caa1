"""Tests for train/input_pipeline.py: the config's data settings reach the prepared dataset."""

import numpy as np
import pytest

from train import input_pipeline


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_image_format_reaches_the_stored_dataset(tiny_config, image_format):
    tiny_config.data.image_format = image_format
    data = input_pipeline.create(tiny_config)
    source = data.sources["train"]
    assert source.dataset_info.features["image"].encoding_format == image_format
    assert len(source) == tiny_config.data.builtin.num_train
    assert source[0]["image"].shape == (32, 32, 3)


def test_unknown_image_format_is_a_clear_error(tiny_config):
    tiny_config.data.image_format = "gif"
    with pytest.raises(ValueError, match="image_format must be one of"):
        input_pipeline.create(tiny_config)


def test_training_reads_the_train_split_with_image_and_mask_encoded(tiny_config):
    data = input_pipeline.create(tiny_config)
    stored, decoded = data.train_source[0], data.sources["train"][0]
    assert isinstance(stored["image"], bytes) and isinstance(stored["mask"], bytes)
    np.testing.assert_array_equal(stored["region_ids"], decoded["region_ids"])
    batch = next(data.train_iterator(tiny_config, seed=0))
    assert set(batch) >= {"image", "region_ids", "label"} and "mask" not in batch
    assert batch["image"].shape[1:] == (tiny_config.data.image_size,) * 2 + (3,)
    assert batch["image"].std() > 10
