"""Weight conversion: key tables, error listings, head replacement, CLI + orbax round trip."""

import json
import logging

import chex
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from grouped_select import convert
from grouped_select.backbones.mobilenet_v3 import LRASPPMobileNetV3
from grouped_select.backbones.resnet import ResNet
from grouped_select.backbones.vit import ViT
from grouped_select.model import P2P
from grouped_select.selector import Selector

pytestmark = pytest.mark.golden

P2P_FILE = "p2p_vit_tiny_lraspp.safetensors"

# The newer HF ViT names of the golden file -> the classic ones (transformers 4).
_CLASSIC_NAMES = {
    "vit.layers.": "vit.encoder.layer.",
    ".attention.q_proj.": ".attention.attention.query.",
    ".attention.k_proj.": ".attention.attention.key.",
    ".attention.v_proj.": ".attention.attention.value.",
    ".attention.o_proj.": ".attention.output.dense.",
    ".mlp.fc1.": ".intermediate.dense.",
    ".mlp.fc2.": ".output.dense.",
}


@pytest.fixture(scope="module")
def p2p_tensors(golden):
    return convert.load_tensors(golden.root / P2P_FILE)


@pytest.fixture(scope="module")
def converted(p2p_tensors):
    """The whole golden P2P model converted once: (`P2P`, `ConvertConfig`)."""
    return convert.convert_p2p(p2p_weights=p2p_tensors)


@pytest.fixture(scope="module")
def resnet_tensors(golden):
    return convert.load_tensors(golden.root / "resnet18.safetensors")


@pytest.fixture(scope="module")
def vit_tensors(p2p_tensors):
    return convert.load_tensors(p2p_tensors, convert.P2P_CLASSIFIER_PREFIX)


def _pure(module):
    return nnx.to_pure_dict(nnx.state(module))


def _int_keys(tree):
    """Orbax restores list indices as "0", "1", ...: back to the ints of `nnx.to_pure_dict`."""
    if not isinstance(tree, dict):
        return tree
    return {int(k) if k.isdigit() else k: _int_keys(v) for k, v in tree.items()}


def _abstract_selector(num_outputs=4):
    """A selector layout whose backbone is shapes only (the load fills it, skipping init)."""
    backbone = nnx.eval_shape(lambda: LRASPPMobileNetV3(rngs=nnx.Rngs(0)))
    return Selector(backbone, num_outputs=num_outputs, rngs=nnx.Rngs(1))


def test_layouts_are_converted(resnet_tensors, vit_tensors):
    model = convert.load_resnet(resnet_tensors)
    np.testing.assert_array_equal(
        model.conv1.kernel[...], resnet_tensors["conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(model.fc.kernel[...], resnet_tensors["fc.weight"].T)
    np.testing.assert_array_equal(model.bn1.var[...], resnet_tensors["bn1.running_var"])
    vit = convert.load_vit(vit_tensors)
    np.testing.assert_array_equal(
        vit.layers[3].attn.key.kernel[...], vit_tensors["vit.layers.3.attention.k_proj.weight"].T
    )


def test_classic_and_newer_vit_names_load_the_same(vit_tensors):
    classic = {}
    for key, value in vit_tensors.items():
        for new, old in _CLASSIC_NAMES.items():
            key = key.replace(new, old)
        classic[key] = value
    assert "vit.encoder.layer.11.attention.output.dense.weight" in classic
    chex.assert_trees_all_equal(
        _pure(convert.load_vit(classic)), _pure(convert.load_vit(vit_tensors))
    )


def test_mismatch_error_lists_every_problem(resnet_tensors):
    tensors = dict(resnet_tensors)
    del tensors["layer2.0.downsample.1.running_var"]
    tensors["layer5.0.conv1.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    tensors["fc.weight"] = np.zeros((7, 512), np.float32)
    model = nnx.eval_shape(lambda: ResNet(10, depth=18, rngs=nnx.Rngs(0)))
    with pytest.raises(convert.WeightMismatchError) as info:
        convert.load_resnet_weights(model, tensors)
    message = str(info.value)
    assert "missing from the weights" in message
    assert "layer2.0.downsample.bn.var: (128,)" in message
    assert "unexpected weights" in message
    assert "layer5.0.conv1.weight: (3, 3, 1, 1)" in message
    assert "shape mismatches" in message
    assert "fc.weight -> fc.kernel: (512, 7) vs (512, 10)" in message


def test_wrong_architecture_is_rejected(vit_tensors):
    model = nnx.eval_shape(lambda: ViT(9, variant="s", rngs=nnx.Rngs(0)))
    with pytest.raises(convert.WeightMismatchError, match=r"norm.scale: \(192,\) vs \(384,\)"):
        convert.load_vit_weights(model, vit_tensors)
    with pytest.raises(convert.WeightMismatchError, match="unexpected"):
        convert.load_resnet_weights(
            nnx.eval_shape(lambda: ResNet(9, rngs=nnx.Rngs(0))), vit_tensors
        )


def test_head_replacement(vit_tensors, caplog):
    loaded = convert.load_vit(vit_tensors)
    with caplog.at_level(logging.WARNING, logger="grouped_select.convert"):
        replaced = convert.load_vit(vit_tensors, num_classes=5)
    assert "classifier head re-initialised for 5 classes (the weights' head has 9)" in caplog.text
    chex.assert_shape(replaced.head.kernel[...], (192, 5))
    body = lambda m: {k: v for k, v in _pure(m).items() if k != "head"}  # noqa: E731
    chex.assert_trees_all_equal(body(replaced), body(loaded))

    # A head-less file needs num_classes.
    headless = {k: v for k, v in vit_tensors.items() if not k.startswith("classifier.")}
    with pytest.raises(ValueError, match="num_classes"):
        convert.load_vit(headless)
    chex.assert_shape(convert.load_vit(headless, num_classes=4).head.kernel[...], (192, 4))


def test_lraspp_selector_and_bare_backbone_agree(p2p_tensors):
    selector = _abstract_selector()
    convert.load_lraspp_selector_weights(selector, p2p_tensors, prefix=convert.P2P_SELECTOR_PREFIX)
    backbone = convert.load_lraspp_backbone(p2p_tensors, prefix=convert.P2P_SELECTOR_PREFIX)
    chex.assert_trees_all_equal(_pure(backbone), _pure(selector.backbone))
    head = p2p_tensors[convert.P2P_SELECTOR_PREFIX + "classifier.low_classifier.weight"]
    np.testing.assert_array_equal(selector.low_head.kernel[...], head.transpose(2, 3, 1, 0))
    # Heads of another width (torchvision's 21-class COCO model) can be re-initialised.
    wide = _abstract_selector(num_outputs=21)
    with pytest.raises(convert.WeightMismatchError, match="low_head.kernel"):
        convert.load_lraspp_selector_weights(wide, p2p_tensors, prefix=convert.P2P_SELECTOR_PREFIX)
    convert.load_lraspp_selector_weights(
        wide, p2p_tensors, prefix=convert.P2P_SELECTOR_PREFIX, reinit_heads=True
    )
    chex.assert_trees_all_equal(_pure(wide.backbone), _pure(backbone))


def test_imagenet_mobilenet_names_fill_the_backbone(p2p_tensors):
    # torchvision's ImageNet MobileNetV3 uses "features." and has its own classifier.
    backbone_keys = convert.load_tensors(p2p_tensors, convert.P2P_SELECTOR_PREFIX + "backbone.")
    imagenet = {f"features.{k}": v for k, v in backbone_keys.items()}
    imagenet["classifier.0.weight"] = np.zeros((1280, 960), np.float32)
    backbone = nnx.eval_shape(lambda: LRASPPMobileNetV3(rngs=nnx.Rngs(0)))
    convert.load_weights(
        backbone,
        imagenet,
        convert.LRASPP_RULES,
        root="backbone.",
        reinit=("cbr.", "scale."),
        ignore=(r"classifier\.\d",),
    )
    reference = convert.load_lraspp_backbone(p2p_tensors, prefix=convert.P2P_SELECTOR_PREFIX)
    chex.assert_trees_all_equal(_pure(backbone.features), _pure(reference.features))


def test_loading_into_a_fresh_selector_matches_conversion(p2p_tensors, converted, tmp_path):
    backbone = nnx.eval_shape(lambda: LRASPPMobileNetV3(rngs=nnx.Rngs(0)))
    selector = Selector(backbone, rngs=nnx.Rngs(0))
    convert.load_lraspp_selector_weights(selector, p2p_tensors, prefix=convert.P2P_SELECTOR_PREFIX)
    params, _ = converted
    chex.assert_trees_all_equal(_pure(selector), _pure(params.selector))

    # A checkpoint of the conversion restores into an abstract P2P model.
    convert.save_state(params, tmp_path / "state")

    def make_p2p():
        selector = Selector(LRASPPMobileNetV3(rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
        return P2P(selector, ViT(9, rngs=nnx.Rngs(0)))

    p2p = nnx.eval_shape(make_p2p)
    convert.restore_state(tmp_path / "state", p2p)
    chex.assert_trees_all_equal(_pure(p2p), _pure(params))


def test_cli_round_trip(golden, converted, tmp_path):
    out = tmp_path / "whole"
    convert.main(["--p2p-weights", str(golden.root / P2P_FILE), "--out", str(out)])
    config = json.loads((out / "convert_config.json").read_text())
    assert config["classifier"] == "vit_ti" and config["num_classes"] == 9
    restored = convert.restore_state(out / "state")
    expected, _ = converted
    chex.assert_trees_all_equal(_int_keys(restored), _pure(expected), strict=False)
    target = P2P(_abstract_selector(), nnx.eval_shape(lambda: ViT(9, rngs=nnx.Rngs(5))))
    convert.restore_state(out / "state", target)
    chex.assert_trees_all_equal(_pure(target), _pure(expected))


def test_cli_separate_files_with_new_head(p2p_tensors, converted, tmp_path, caplog):
    selector_file, classifier_file = tmp_path / "lraspp.safetensors", tmp_path / "vit.safetensors"
    save_file(convert.load_tensors(p2p_tensors, convert.P2P_SELECTOR_PREFIX), selector_file)
    save_file(convert.load_tensors(p2p_tensors, convert.P2P_CLASSIFIER_PREFIX), classifier_file)
    out = tmp_path / "separate"
    with caplog.at_level(logging.WARNING, logger="grouped_select.convert"):
        convert.main(
            [
                "--selector-weights", str(selector_file),
                "--classifier-weights", str(classifier_file),
                "--num-classes", "5",
                "--out", str(out),
            ]
        )  # fmt: skip
    assert "re-initialised" in caplog.text
    restored = convert.restore_state(out / "state")
    chex.assert_shape(restored["classifier"]["head"]["kernel"], (192, 5))
    whole, _ = converted
    np.testing.assert_array_equal(
        restored["selector"]["high_head"]["kernel"], whole.selector.high_head.kernel[...]
    )
    np.testing.assert_array_equal(
        restored["classifier"]["layers"]["11"]["mlp"]["fc2"]["kernel"],
        whole.classifier.layers[11].mlp.fc2.kernel[...],
    )
