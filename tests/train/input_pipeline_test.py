"""Tests for train/input_pipeline.py: the config's data settings reach the prepared dataset."""

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
