"""Starting a run from converted published weights (`config.model_init`)."""

import chex
import numpy as np
import pytest
from flax import nnx

from grouped_select import convert
from grouped_select.backbones import matmul
from train import models

P2P_FILE = "p2p_vit_tiny_lraspp.safetensors"


@pytest.fixture(scope="module")
def converted(golden, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    convert.main(["--p2p-weights", str(golden.root / P2P_FILE), "--out", str(out)])
    return out


def _pure(module):
    return nnx.to_pure_dict(nnx.state(module))


def _paper_model(tiny_config, num_classes):
    tiny_config.model.selector = "lraspp_mobilenet_v3_large"
    tiny_config.model.classifier = "vit_ti"
    tiny_config.model.patch_size = 16
    tiny_config.data.image_size = 224
    return models.create_model(tiny_config, num_classes, seed=3)


@pytest.mark.golden
def test_model_init_loads_weights_and_replaces_the_head(converted, tiny_config, golden):
    model = _paper_model(tiny_config, num_classes=5)
    fresh_head = np.asarray(model.classifier.head.kernel[...]).copy()
    models.load_pretrained(model, str(converted), replace_classifier_head=True)
    reference, _ = convert.convert_p2p(p2p_weights=str(golden.root / P2P_FILE))
    chex.assert_trees_all_equal(_pure(model.selector), _pure(reference.selector))
    np.testing.assert_array_equal(
        model.classifier.layers[5].mlp.fc1.kernel[...],
        reference.classifier.layers[5].mlp.fc1.kernel[...],
    )
    np.testing.assert_array_equal(model.classifier.head.kernel[...], fresh_head)  # 5 classes


@pytest.mark.golden
def test_model_init_mismatch_lists_the_parameters(converted, tiny_config):
    model = _paper_model(tiny_config, num_classes=5)
    with pytest.raises(ValueError, match="classifier/head/kernel: saved"):
        models.load_pretrained(model, str(converted), replace_classifier_head=False)
    tiny_config.model.selector = "small"
    tiny_config.model.classifier = "small_vit"
    tiny_config.data.image_size = 32
    tiny_config.model.patch_size = 8
    small = models.create_model(tiny_config, 9, seed=0)
    with pytest.raises(ValueError, match="missing: selector/backbone/convs"):
        models.load_pretrained(small, str(converted), replace_classifier_head=True)
    with pytest.raises(FileNotFoundError, match="grouped_select.convert"):
        models.load_pretrained(small, str(converted / "nowhere"), replace_classifier_head=True)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_scan_layers_reaches_the_vit_and_keeps_its_parameters(tiny_config, scan_layers):
    tiny_config.model.classifier = "small_vit"
    tiny_config.model.scan_layers = scan_layers
    model = models.create_model(tiny_config, 3, seed=0)
    assert model.classifier.scan_layers is scan_layers
    # The parameters do not depend on how the blocks run.
    tiny_config.model.scan_layers = not scan_layers
    other = models.create_model(tiny_config, 3, seed=0)
    chex.assert_trees_all_equal(_pure(model), _pure(other))


def test_vit_kernels_remat_and_depthwise_method_reach_the_networks(tiny_config):
    tiny_config.model.selector = "lraspp_mobilenet_v3_large"
    tiny_config.model.classifier = "vit_ti"
    tiny_config.model.patch_size = 16
    tiny_config.model.attention = "cudnn"
    tiny_config.model.depthwise_method = "conv"
    tiny_config.model.remat_layers = True
    tiny_config.model.block_kernels = "pallas"
    model = nnx.eval_shape(lambda: models.create_model(tiny_config, 3, seed=0))
    assert {block.attn.implementation for block in model.classifier.layers} == {"cudnn"}
    assert {block.block_kernels for block in model.classifier.layers} == {"pallas"}
    assert model.classifier.remat_layers is True
    methods = {
        layer.depthwise_method
        for _, layer in nnx.iter_graph(model.selector)
        if getattr(layer, "depthwise", False)
    }
    assert methods == {"conv"}


def test_matmul_precision_reaches_both_networks_or_is_refused(tiny_config):
    tiny_config.model.selector = "lraspp_mobilenet_v3_large"
    tiny_config.model.classifier = "vit_ti"
    tiny_config.model.patch_size = 16
    tiny_config.model.matmul_precision = "bfloat16"
    model = nnx.eval_shape(lambda: models.create_model(tiny_config, 3, seed=0))
    assert model.classifier.matmul_precision == "bfloat16"
    assert {block.mlp.fc1.dot_general for block in model.classifier.layers} == {
        matmul.dot_general("bfloat16")
    }
    pointwise = {
        layer.matmul_precision
        for _, layer in nnx.iter_graph(model.selector)
        if getattr(layer, "pointwise", False)
    }
    assert pointwise == {"bfloat16"}
    tiny_config.model.selector = "small"  # a CNN: the ViT alone rounds its products
    model = nnx.eval_shape(lambda: models.create_model(tiny_config, 3, seed=0))
    assert model.classifier.matmul_precision == "bfloat16"
    tiny_config.model.classifier = "small_cnn"
    with pytest.raises(ValueError, match="'small_cnn' and 'small' would ignore it"):
        models.create_model(tiny_config, 3, seed=0)
    tiny_config.model.matmul_precision = "tf32"
    with pytest.raises(ValueError, match="is not one of"):
        models.create_model(tiny_config, 3, seed=0)
