"""Builds the P2P model a config names (the only place where config keys meet modules)."""

import os

import ml_collections
from flax import nnx

from grouped_select.backbones.matmul import MATMUL_PRECISIONS
from grouped_select.backbones.small import (
    SmallCNNClassifier,
    SmallSelectorBackbone,
    small_vit_classifier,
)
from grouped_select.model import P2P, BlackBox
from grouped_select.selector import Selector

SELECTORS = ("small", "lraspp_mobilenet_v3_large")
CLASSIFIERS = ("small_cnn", "small_vit", "vit_ti", "vit_s", "vit_b", "resnet18", "resnet34")


# The networks whose matrix products `config.model.matmul_precision` sets.
MATMUL_PRECISION_NETWORKS = ("lraspp_mobilenet_v3_large", "small_vit", "vit_ti", "vit_s", "vit_b")


def _check_matmul_precision(precision: str, *names: str) -> None:
    """Refuses an unknown precision, or a rounding precision that none of `names` uses."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(
            f"config.model.matmul_precision={precision!r} is not one of {MATMUL_PRECISIONS}."
        )
    if names and precision != "default" and not set(names) & set(MATMUL_PRECISION_NETWORKS):
        raise ValueError(
            f"config.model.matmul_precision={precision!r} applies to "
            f"{', '.join(MATMUL_PRECISION_NETWORKS)}; {' and '.join(map(repr, names))} would "
            "ignore it: set it to 'default'."
        )


def create_selector_backbone(
    name: str,
    *,
    low_stride: int = 8,
    depthwise_method: str = "auto",
    matmul_precision: str = "default",
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The selector backbone called `name` (one of `SELECTORS`); `low_stride`: "small" only;
    `depthwise_method`: the MobileNet's depthwise convs ("auto", "conv" or "shifted_sum");
    `matmul_precision`: the MobileNet's 1x1 convs ("default" or "bfloat16")."""
    _check_matmul_precision(matmul_precision)
    if name == "small":
        return SmallSelectorBackbone(low_stride=low_stride, rngs=rngs)
    if name == "lraspp_mobilenet_v3_large":
        from grouped_select.backbones.mobilenet_v3 import LRASPPMobileNetV3

        return LRASPPMobileNetV3(
            depthwise_method=depthwise_method, matmul_precision=matmul_precision, rngs=rngs
        )
    raise ValueError(f"config.model.selector={name!r} is not one of {SELECTORS}.")


def create_classifier(
    name: str,
    num_classes: int,
    *,
    image_size: int,
    patch_size: int,
    widths: tuple[int, ...] = (32, 64, 128),
    strides: tuple[int, ...] | None = None,
    scan_layers: bool = True,
    attention: str = "xla",
    remat_layers: bool = False,
    block_kernels: str = "xla",
    matmul_precision: str = "default",
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The classifier called `name` (one of `CLASSIFIERS`); `widths`, `strides`: "small_cnn"
    only (None: stride 2 in every stage); `scan_layers`: ViTs only (`ViT.encode`);
    `attention`, `remat_layers`, `block_kernels`: ViT-Ti/S/B only (`vit.Attention`, `ViT`);
    `matmul_precision`: ViTs only."""
    _check_matmul_precision(matmul_precision)
    if name == "small_cnn":
        return SmallCNNClassifier(
            num_classes, widths=tuple(widths), strides=strides and tuple(strides), rngs=rngs
        )
    if name == "small_vit":
        return small_vit_classifier(
            num_classes,
            image_size=image_size,
            patch_size=patch_size,
            scan_layers=scan_layers,
            matmul_precision=matmul_precision,
            rngs=rngs,
        )
    if name.startswith("vit_"):
        from grouped_select.backbones.vit import ViT

        return ViT(
            num_classes,
            variant=name.removeprefix("vit_"),
            image_size=image_size,
            patch_size=patch_size,
            scan_layers=scan_layers,
            attention=attention,
            remat_layers=remat_layers,
            block_kernels=block_kernels,
            matmul_precision=matmul_precision,
            rngs=rngs,
        )
    if name in ("resnet18", "resnet34"):
        from grouped_select.backbones.resnet import ResNet

        return ResNet(num_classes, depth=int(name.removeprefix("resnet")), rngs=rngs)
    raise ValueError(f"config.model.classifier={name!r} is not one of {CLASSIFIERS}.")


def create_model(config: ml_collections.ConfigDict, num_classes: int, seed: int) -> P2P | BlackBox:
    """The model described by `config.model`, with random weights.

    Args:
      config: the full training config.
      num_classes: classifier outputs.
      seed: initialisation seed.

    Returns:
      A `P2P` module in training mode, or the `BlackBox` classifier alone when
      `config.model.kind` is "black_box".
    """
    rngs = nnx.Rngs(seed)
    networks = [config.model.classifier]
    if config.model.kind != "black_box":
        networks.append(config.model.selector)
    _check_matmul_precision(config.model.matmul_precision, *networks)

    def classifier():
        return create_classifier(
            config.model.classifier,
            num_classes,
            image_size=config.data.image_size,
            patch_size=config.model.patch_size,
            widths=config.model.classifier_widths,
            strides=config.model.classifier_strides or None,
            scan_layers=config.model.scan_layers,
            attention=config.model.attention,
            remat_layers=config.model.remat_layers,
            block_kernels=config.model.block_kernels,
            matmul_precision=config.model.matmul_precision,
            rngs=rngs,
        )

    if config.model.kind == "black_box":
        return BlackBox(classifier())
    # The selector draws its initial weights first (runs stay reproducible across versions).
    backbone = create_selector_backbone(
        config.model.selector,
        low_stride=config.model.selector_stride,
        depthwise_method=config.model.depthwise_method,
        matmul_precision=config.model.matmul_precision,
        rngs=rngs,
    )
    selector = Selector(
        backbone,
        num_outputs=config.model.num_outputs,
        pool_method=config.model.pool_method,
        rngs=rngs,
    )
    return P2P(selector, classifier())


def load_pretrained(model: P2P, directory: str, replace_classifier_head: bool) -> None:
    """Loads weights converted by `python -m grouped_select.convert` into `model`, in place.

    Args:
      model: a freshly built `P2P` whose architecture matches the converted one.
      directory: the converter's `--out` folder (holding `state/`).
      replace_classifier_head: keep `model`'s own (random) classifier head when the converted
        head has another class count, as when fine-tuning on a new dataset.

    Raises:
      FileNotFoundError: no converted state in `directory`.
      ValueError: parameters missing or of other shapes (listed), beyond the allowed head.
    """
    from grouped_select import convert

    path = os.path.join(os.path.expanduser(directory), "state")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"config.model_init={directory!r} has no 'state' folder; create it with "
            "`python -m grouped_select.convert ... --out DIR`."
        )
    saved = _flatten(convert.restore_state(path))
    state = nnx.state(model)
    target = _flatten(nnx.to_pure_dict(state))
    head = ("classifier/head/", "classifier/fc/")
    missing, reshaped, merged = [], [], {}
    for key, value in target.items():
        if key not in saved:
            missing.append(f"{key} {tuple(value.shape)}")
        elif tuple(saved[key].shape) == tuple(value.shape):
            merged[key] = saved[key]
        elif replace_classifier_head and key.startswith(head):
            merged[key] = value  # a new head for another class count
        else:
            reshaped.append(f"{key}: saved {saved[key].shape}, model {tuple(value.shape)}")
    unexpected = sorted(saved.keys() - target.keys())
    if missing or reshaped or unexpected:
        lines = [f"the converted weights in {directory} do not fit config.model:"]
        for title, items in (
            ("missing", missing),
            ("other shape", reshaped),
            ("unexpected", unexpected),
        ):
            if items:
                lines.append(
                    f"  {len(items)} {title}: "
                    + "; ".join(items[:8])
                    + (" ..." if len(items) > 8 else "")
                )
        raise ValueError("\n".join(lines))
    nnx.replace_by_pure_dict(state, _unflatten(merged))
    nnx.update(model, state)


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}/"))
        return out
    return {prefix[:-1]: tree}


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for name in parents:
            node = node.setdefault(int(name) if name.isdigit() else name, {})
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return tree
