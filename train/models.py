"""Builds the P2P model a config names (the only place where config keys meet modules)."""

import ml_collections
from flax import nnx

from grouped_select.backbones.small import SmallSelectorBackbone, small_vit_classifier
from grouped_select.model import P2P
from grouped_select.selector import Selector

SELECTORS = ("small", "lraspp_mobilenet_v3_large")
CLASSIFIERS = ("small_vit", "vit_ti", "vit_s", "vit_b", "resnet18", "resnet34")


def create_selector_backbone(name: str, *, rngs: nnx.Rngs) -> nnx.Module:
    """The selector backbone called `name` (one of `SELECTORS`)."""
    if name == "small":
        return SmallSelectorBackbone(rngs=rngs)
    if name == "lraspp_mobilenet_v3_large":
        from grouped_select.backbones.mobilenet_v3 import LRASPPMobileNetV3

        return LRASPPMobileNetV3(rngs=rngs)
    raise ValueError(f"config.model.selector={name!r} is not one of {SELECTORS}.")


def create_classifier(
    name: str, num_classes: int, *, image_size: int, patch_size: int, rngs: nnx.Rngs
) -> nnx.Module:
    """The classifier called `name` (one of `CLASSIFIERS`)."""
    if name == "small_vit":
        return small_vit_classifier(
            num_classes, image_size=image_size, patch_size=patch_size, rngs=rngs
        )
    if name.startswith("vit_"):
        from grouped_select.backbones.vit import ViT

        return ViT(
            num_classes,
            variant=name.removeprefix("vit_"),
            image_size=image_size,
            patch_size=patch_size,
            rngs=rngs,
        )
    if name in ("resnet18", "resnet34"):
        from grouped_select.backbones.resnet import ResNet

        return ResNet(num_classes, depth=int(name.removeprefix("resnet")), rngs=rngs)
    raise ValueError(f"config.model.classifier={name!r} is not one of {CLASSIFIERS}.")


def create_model(config: ml_collections.ConfigDict, num_classes: int, seed: int) -> P2P:
    """The P2P model described by `config.model`, with random weights.

    Args:
      config: the full training config.
      num_classes: classifier outputs.
      seed: initialisation seed.

    Returns:
      A `P2P` module in training mode.
    """
    rngs = nnx.Rngs(seed)
    backbone = create_selector_backbone(config.model.selector, rngs=rngs)
    selector = Selector(
        backbone,
        num_outputs=config.model.num_outputs,
        pool_method=config.model.pool_method,
        rngs=rngs,
    )
    classifier = create_classifier(
        config.model.classifier,
        num_classes,
        image_size=config.data.image_size,
        patch_size=config.model.patch_size,
        rngs=rngs,
    )
    return P2P(selector, classifier)


def load_pretrained(model: P2P, directory: str, replace_classifier_head: bool) -> None:
    """Loads converted weights (`python -m grouped_select.convert`) into `model` in place."""
    from grouped_select import convert

    convert.restore_into(model, directory, replace_classifier_head=replace_classifier_head)
