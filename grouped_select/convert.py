"""PyTorch safetensors weights -> Flax NNX state, and a CLI that saves an orbax checkpoint.

Reads the published key names (torchvision ResNet and LR-ASPP MobileNetV3, Hugging Face
`ViTForImageClassification` in both its classic and its newer naming) with numpy only, no
torch. Each architecture has one table of renames (`RESNET_RULES`, `VIT_RULES`,
`LRASPP_RULES`): a regular expression over the torch *module* path (the key without its last
component) and the NNX module path it becomes. The last component maps the same way for every
architecture: `weight` -> `kernel` (conv OIHW -> HWIO, linear (out, in) -> (in, out)) or, for
1-D weights (BatchNorm / LayerNorm), `scale`; `bias`; `running_mean` -> `mean`;
`running_var` -> `var`; `num_batches_tracked` is dropped.

Every load checks the whole model: weights the model lacks, model variables the weights lack
and shape mismatches are all listed (names and shapes) in one `WeightMismatchError`.

CLI (a whole P2P file, or a selector file and a classifier file)::

  python -m grouped_select.convert --p2p-weights p2p.safetensors --classifier vit_ti --out DIR
  python -m grouped_select.convert --selector-weights lraspp.safetensors \\
      --classifier-weights vit_tiny.safetensors --classifier vit_ti --num-classes 10 --out DIR

It writes `DIR/state`, an orbax `StandardCheckpointer` checkpoint of
`nnx.to_pure_dict(nnx.state(p2p))`: a nested dict `{"selector": {"backbone": ...,
"low_head": {"kernel", "bias"}, "high_head": ...}, "classifier": ...}` whose leaves are the
model's `nnx.Param` and `nnx.BatchStat` values (list indices appear as "0", "1", ... keys),
and `DIR/convert_config.json` with the architecture arguments. See `restore_state`.
"""

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from safetensors.numpy import load_file

from grouped_select.backbones.mobilenet_v3 import LRASPPMobileNetV3
from grouped_select.backbones.resnet import ResNet
from grouped_select.backbones.vit import ViT, resize_position_embeddings
from grouped_select.model import P2P
from grouped_select.selector import Selector

# Named explicitly: under `python -m` this module is "__main__".
logger = logging.getLogger("grouped_select.convert")

Rules = tuple[tuple[str, str], ...]
Weights = str | os.PathLike | Mapping[str, np.ndarray]

# Prefixes of the whole-model file written by the reference code (see golden/).
P2P_SELECTOR_PREFIX = "selector.importance_predictor.model."
P2P_CLASSIFIER_PREFIX = "classifier.model."

# torchvision ResNet (resnet18 / resnet34 state_dict keys).
RESNET_RULES: Rules = (
    (r"(conv1|bn1|fc)", r"\1"),
    (r"(layer[1-4]\.\d+\.(?:conv|bn)[12])", r"\1"),
    (r"(layer[1-4]\.\d+)\.downsample\.0", r"\1.downsample.conv"),
    (r"(layer[1-4]\.\d+)\.downsample\.1", r"\1.downsample.bn"),
)

_VIT = r"(?:vit\.)?"  # ViTModel checkpoints lack the "vit." of ViTForImageClassification.
_CLASSIC = _VIT + r"encoder\.layer\.(\d+)\."
_NEWER = _VIT + r"layers\.(\d+)\."
# Hugging Face ViTForImageClassification, classic and newer (transformers 5) names.
VIT_RULES: Rules = (
    (_VIT + r"embeddings", ""),  # cls_token, position_embeddings
    (_VIT + r"embeddings\.patch_embeddings\.projection", "patch_embed"),
    (_CLASSIC + r"layernorm_before", r"layers.\1.norm1"),
    (_CLASSIC + r"attention\.attention\.query", r"layers.\1.attn.query"),
    (_CLASSIC + r"attention\.attention\.key", r"layers.\1.attn.key"),
    (_CLASSIC + r"attention\.attention\.value", r"layers.\1.attn.value"),
    (_CLASSIC + r"attention\.output\.dense", r"layers.\1.attn.out"),
    (_CLASSIC + r"layernorm_after", r"layers.\1.norm2"),
    (_CLASSIC + r"intermediate\.dense", r"layers.\1.mlp.fc1"),
    (_CLASSIC + r"output\.dense", r"layers.\1.mlp.fc2"),
    (_NEWER + r"layernorm_before", r"layers.\1.norm1"),
    (_NEWER + r"attention\.q_proj", r"layers.\1.attn.query"),
    (_NEWER + r"attention\.k_proj", r"layers.\1.attn.key"),
    (_NEWER + r"attention\.v_proj", r"layers.\1.attn.value"),
    (_NEWER + r"attention\.o_proj", r"layers.\1.attn.out"),
    (_NEWER + r"layernorm_after", r"layers.\1.norm2"),
    (_NEWER + r"mlp\.fc1", r"layers.\1.mlp.fc1"),
    (_NEWER + r"mlp\.fc2", r"layers.\1.mlp.fc2"),
    (_VIT + r"layernorm", "norm"),
    (r"classifier", "head"),
)

# torchvision LR-ASPP MobileNetV3-Large -> a P2P selector (`backbone`, `low_head`,
# `high_head`). "features." also accepts torchvision's ImageNet MobileNetV3 checkpoints.
_BLOCK = r"(?:backbone|features)\.(\d+)\.block\.(\d+)"
LRASPP_RULES: Rules = (
    (_BLOCK + r"\.(fc[12])", r"backbone.features.\1.block.\2.\3"),
    (_BLOCK + r"\.0", r"backbone.features.\1.block.\2.conv"),
    (_BLOCK + r"\.1", r"backbone.features.\1.block.\2.bn"),
    (r"(?:backbone|features)\.(\d+)\.0", r"backbone.features.\1.conv"),
    (r"(?:backbone|features)\.(\d+)\.1", r"backbone.features.\1.bn"),
    (r"classifier\.cbr\.0", "backbone.cbr.conv"),
    (r"classifier\.cbr\.1", "backbone.cbr.bn"),
    (r"classifier\.scale\.1", "backbone.scale"),
    (r"classifier\.low_classifier", "low_head"),
    (r"classifier\.high_classifier", "high_head"),
)

_LEAF_NAMES = {
    "bias": "bias",
    "running_mean": "mean",
    "running_var": "var",
    "cls_token": "cls_token",
    "position_embeddings": "pos_embed",
}
_DROPPED_LEAVES = ("num_batches_tracked",)
# The variables a load fills: a tuple filter selects either kind.
_LOADED = (nnx.Param, nnx.BatchStat)


class WeightMismatchError(ValueError):
    """Weights and model disagree; the message lists every key concerned with its shape."""


@dataclasses.dataclass(frozen=True)
class MappedWeights:
    """Weights renamed to NNX paths and converted to the NNX layout.

    Attributes:
      arrays: NNX path ("layers.0.attn.query.kernel") -> (torch key, array).
      unexpected: (torch key, shape) of the keys no rule maps.
    """

    arrays: dict[str, tuple[str, np.ndarray]]
    unexpected: list[tuple[str, tuple[int, ...]]]


def load_tensors(weights: Weights, prefix: str = "") -> dict[str, np.ndarray]:
    """Reads a safetensors file (or takes a dict) and keeps the keys under `prefix`.

    Args:
      weights: a .safetensors path or a dict of numpy arrays.
      prefix: keep only keys starting with it, with it removed ("" keeps everything).

    Returns:
      dict torch key -> numpy array.

    Raises:
      ValueError: no key starts with a non-empty `prefix`.
    """
    tensors = load_file(os.fspath(weights)) if isinstance(weights, str | os.PathLike) else weights
    kept = {k[len(prefix) :]: np.asarray(v) for k, v in tensors.items() if k.startswith(prefix)}
    if prefix and not kept:
        examples = ", ".join(sorted(tensors)[:3])
        raise ValueError(f"no weight key starts with {prefix!r} (keys look like: {examples}).")
    return kept


def _to_nnx_leaf(leaf: str, array: np.ndarray) -> tuple[str, np.ndarray] | None:
    """Torch parameter name and array -> NNX variable name and array, or None if unknown."""
    if leaf == "weight":
        if array.ndim == 4:  # conv OIHW -> HWIO
            return "kernel", np.transpose(array, (2, 3, 1, 0))
        if array.ndim == 2:  # linear (out, in) -> (in, out)
            return "kernel", array.T
        return "scale", array
    if leaf in _LEAF_NAMES:
        return _LEAF_NAMES[leaf], array
    return None


def map_torch_keys(
    tensors: Mapping[str, np.ndarray], rules: Rules, *, ignore: Sequence[str] = ()
) -> MappedWeights:
    """Renames torch keys to NNX paths with `rules` and converts the array layouts.

    Args:
      tensors: torch key -> array (prefix already removed).
      rules: (module path regex, NNX module path template) pairs; the first full match wins.
      ignore: regexes; keys matching one at their start are dropped silently.

    Returns:
      `MappedWeights`; keys no rule maps (or with an unknown last component) are listed in
      `unexpected`.
    """
    arrays, unexpected = {}, []
    for key, array in sorted(tensors.items()):
        module, _, leaf = key.rpartition(".")
        if leaf in _DROPPED_LEAVES or any(re.match(p, key) for p in ignore):
            continue
        mapped = _to_nnx_leaf(leaf, array)
        target = None
        for pattern, template in rules:
            match = re.fullmatch(pattern, module)
            if match and mapped is not None:
                target = match.expand(template)
                break
        if target is None:
            unexpected.append((key, array.shape))
            continue
        name, array = mapped
        path = f"{target}.{name}" if target else name
        if path in arrays:
            raise WeightMismatchError(f"{key} and {arrays[path][0]} both map to {path}.")
        arrays[path] = (key, array)
    return MappedWeights(arrays, unexpected)


def _model_variables(module: nnx.Module) -> dict[str, nnx.Variable]:
    state = nnx.state(module, _LOADED)
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(state)}


def _format_problems(
    module: nnx.Module,
    missing: list[tuple[str, tuple[int, ...]]],
    unexpected: list[tuple[str, tuple[int, ...]]],
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    lines = [f"weights do not fit {type(module).__name__}:"]
    if missing:
        lines.append(f"  {len(missing)} model variables missing from the weights (path: shape):")
        lines += [f"    {path}: {shape}" for path, shape in missing]
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected weights (key: shape):")
        lines += [f"    {key}: {shape}" for key, shape in unexpected]
    if mismatched:
        lines.append(
            f"  {len(mismatched)} shape mismatches "
            "(key -> model path: weights shape in NNX layout vs model shape):"
        )
        lines += [f"    {k} -> {p}: {got} vs {want}" for k, p, got, want in mismatched]
    return "\n".join(lines)


def assign_weights(
    module: nnx.Module,
    mapped: MappedWeights,
    *,
    root: str = "",
    reinit: Sequence[str] = (),
    adapt: Callable[[str, np.ndarray, tuple[int, ...]], np.ndarray] | None = None,
) -> None:
    """Writes mapped weights into `module` in place after checking that they fit exactly.

    Args:
      module: the NNX module to update (its `nnx.Param` and `nnx.BatchStat` variables).
      mapped: output of `map_torch_keys`.
      root: NNX path prefix of `module` inside the tree the rules describe (e.g.
        "backbone." when loading selector rules into the backbone alone); weights outside
        it belong to sibling modules and are skipped (logged).
      reinit: NNX path prefixes (relative to `module`) kept at their current values: weights
        for them are skipped and they are not required (logged).
      adapt: optional `adapt(path, array, model_shape) -> array` applied before the shape
        check (e.g. resizing position embeddings).

    Raises:
      WeightMismatchError: listing missing, unexpected and mismatched entries.
    """
    variables = _model_variables(module)
    unexpected = list(mapped.unexpected)
    mismatched, updates, outside, skipped = [], {}, [], []
    for full_path, (key, array) in mapped.arrays.items():
        if not full_path.startswith(root):
            outside.append(key)
            continue
        path = full_path[len(root) :]
        if any(path.startswith(r) for r in reinit):
            skipped.append(key)
            continue
        if path not in variables:
            unexpected.append((key, array.shape))
            continue
        want = tuple(variables[path].shape)
        if adapt is not None:
            array = adapt(path, array, want)
        if array.shape != want:
            mismatched.append((key, path, array.shape, want))
            continue
        updates[path] = array
    mismatched_paths = {path for _, path, _, _ in mismatched}
    missing = [
        (path, tuple(var.shape))
        for path, var in variables.items()
        if path not in updates
        and path not in mismatched_paths
        and not any(path.startswith(r) for r in reinit)
    ]
    if missing or unexpected or mismatched:
        raise WeightMismatchError(_format_problems(module, missing, unexpected, mismatched))
    if outside:
        logger.info("skipped %d weights of modules outside %r", len(outside), root)
    if skipped:
        logger.info(
            "kept %s as initialised: skipped %d weights (%s)",
            ", ".join(r.rstrip(".") for r in reinit),
            len(skipped),
            ", ".join(skipped),
        )
    state = nnx.state(module, _LOADED)
    values = nnx.to_pure_dict(state)
    for path, array in updates.items():
        *parents, leaf = (int(p) if p.isdigit() else p for p in path.split("."))
        node = values
        for p in parents:
            node = node[p]
        node[leaf] = jnp.asarray(array, dtype=variables[path].dtype)
    nnx.replace_by_pure_dict(state, values)
    nnx.update(module, state)


def load_weights(
    module: nnx.Module,
    weights: Weights,
    rules: Rules,
    *,
    prefix: str = "",
    ignore: Sequence[str] = (),
    root: str = "",
    reinit: Sequence[str] = (),
    adapt: Callable[[str, np.ndarray, tuple[int, ...]], np.ndarray] | None = None,
) -> None:
    """Loads torch-named weights into `module` in place (generic; see the `load_*` helpers).

    Args:
      module: NNX module whose structure `rules` describe.
      weights: a .safetensors path or a dict torch key -> numpy array.
      rules: the architecture's rename table (`RESNET_RULES`, `VIT_RULES`, `LRASPP_RULES`).
      prefix: only keys starting with it are used, with it removed.
      ignore: regexes of (prefix-stripped) keys to drop silently, e.g. (r"pooler\\.",).
      root: see `assign_weights`.
      reinit: see `assign_weights`.
      adapt: see `assign_weights`.

    Raises:
      WeightMismatchError: listing missing, unexpected and mismatched entries.
    """
    mapped = map_torch_keys(load_tensors(weights, prefix), rules, ignore=ignore)
    assign_weights(module, mapped, root=root, reinit=reinit, adapt=adapt)


def load_resnet_weights(
    model: ResNet,
    weights: Weights,
    *,
    prefix: str = "",
    ignore: Sequence[str] = (),
    reinit_head: bool = False,
) -> None:
    """Loads torchvision ResNet weights into `model` in place.

    Args:
      model: a `ResNet` of the weights' depth.
      weights: a .safetensors path or a dict torch key -> numpy array.
      prefix: key prefix to select and strip.
      ignore: regexes of keys to drop.
      reinit_head: keep `model.fc` as initialised (for another class count).
    """
    reinit = ("fc.",) if reinit_head else ()
    load_weights(model, weights, RESNET_RULES, prefix=prefix, ignore=ignore, reinit=reinit)


def _resize_vit_positions(grid: tuple[int, int]):
    def adapt(path: str, array: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
        if path != "pos_embed" or array.shape == want or array.shape[2] != want[2]:
            return array
        resized = resize_position_embeddings(array, grid)
        logger.warning(
            "interpolated position embeddings from %d to %d tokens (grid %s)",
            array.shape[1],
            resized.shape[1],
            grid,
        )
        return resized

    return adapt


def load_vit_weights(
    model: ViT,
    weights: Weights,
    *,
    prefix: str = "",
    ignore: Sequence[str] = (),
    reinit_head: bool = False,
) -> None:
    """Loads Hugging Face ViT weights (classic or newer names) into `model` in place.

    Position embeddings trained at another resolution are bilinearly interpolated to the
    model's patch grid (`resize_position_embeddings`, logged).

    Args:
      model: a `ViT` of the weights' width and depth (any image size).
      weights: a .safetensors path or a dict torch key -> numpy array.
      prefix: key prefix to select and strip.
      ignore: regexes of keys to drop, e.g. (r"pooler\\.",) for ViTModel checkpoints.
      reinit_head: keep `model.head` as initialised (for another class count).
    """
    load_weights(
        model,
        weights,
        VIT_RULES,
        prefix=prefix,
        ignore=ignore,
        reinit=("head.",) if reinit_head else (),
        adapt=_resize_vit_positions(model.grid),
    )


def load_lraspp_selector_weights(
    module: nnx.Module,
    weights: Weights,
    *,
    prefix: str = "",
    ignore: Sequence[str] = (),
    reinit_heads: bool = False,
) -> None:
    """Loads torchvision LR-ASPP MobileNetV3 weights into a selector or a bare backbone.

    Torchvision's `backbone.*` and `classifier.cbr/scale` go to the `LRASPPMobileNetV3`;
    `classifier.low_classifier` / `classifier.high_classifier` go to the selector's
    `low_head` / `high_head` (1x1 `nnx.Conv`s). Given a bare `LRASPPMobileNetV3`, the head
    weights are skipped.

    Args:
      module: a selector (attributes `backbone`, `low_head`, `high_head`) or an
        `LRASPPMobileNetV3`.
      weights: a .safetensors path or a dict torch key -> numpy array.
      prefix: key prefix to select and strip (`P2P_SELECTOR_PREFIX` for a whole P2P file).
      ignore: regexes of keys to drop (e.g. r"classifier\\.\\d" for ImageNet MobileNetV3).
      reinit_heads: keep the selector's heads as initialised (e.g. loading torchvision's
        21-class COCO model into a 4-output selector).
    """
    backbone_only = isinstance(module, LRASPPMobileNetV3)
    load_weights(
        module,
        weights,
        LRASPP_RULES,
        prefix=prefix,
        ignore=ignore,
        root="backbone." if backbone_only else "",
        reinit=("low_head.", "high_head.") if reinit_heads and not backbone_only else (),
    )


def _new_model(
    factory: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs | None, *, concrete: bool
) -> nnx.Module:
    """Builds `factory(rngs)`; abstractly (shapes only) when a load will fill every variable.

    Random initialisation costs seconds of compilation on CPU the first time; a load fills
    an abstract model's variables with the weights, so it ends up concrete. The abstract
    build uses its own keys: `rngs` must not be advanced inside `nnx.eval_shape`'s trace.
    """
    if concrete:
        return factory(rngs or nnx.Rngs(0))
    return nnx.eval_shape(lambda: factory(nnx.Rngs(0)))


def _head_classes(mapped: MappedWeights, head: str) -> int | None:
    entry = mapped.arrays.get(f"{head}.kernel")
    return None if entry is None else int(entry[1].shape[-1])


def _resolve_classes(file_classes: int | None, num_classes: int | None) -> tuple[int, bool]:
    """Class count of the model to build and whether its head is re-initialised."""
    if num_classes is None:
        if file_classes is None:
            raise ValueError("the weights have no classifier head: pass num_classes.")
        return file_classes, False
    if num_classes != file_classes:
        logger.warning(
            "classifier head re-initialised for %d classes (the weights' head has %s)",
            num_classes,
            file_classes if file_classes is not None else "none",
        )
        return num_classes, True
    return num_classes, False


def load_vit(
    weights: Weights,
    *,
    variant: str = "ti",
    num_classes: int | None = None,
    image_size: int | tuple[int, int] = 224,
    layer_norm_eps: float = 1e-12,
    prefix: str = "",
    ignore: Sequence[str] = (),
    rngs: nnx.Rngs | None = None,
) -> ViT:
    """Builds a `ViT` and loads Hugging Face weights into it.

    Args:
      weights: a .safetensors path or a dict torch key -> numpy array.
      variant: "ti", "s" or "b" (ViT-Ti/16, ViT-S/16, ViT-B/16).
      num_classes: None keeps the weights' head; another count re-initialises the head
        (logged as a warning).
      image_size: model input size; position embeddings are interpolated if needed.
      layer_norm_eps: LayerNorm epsilon (HF default 1e-12).
      prefix: key prefix to select and strip (`P2P_CLASSIFIER_PREFIX` for a P2P file).
      ignore: regexes of keys to drop.
      rngs: initialisation keys (for a re-initialised head); default `nnx.Rngs(0)`.

    Returns:
      the loaded `ViT`.
    """
    tensors = load_tensors(weights, prefix)
    mapped = map_torch_keys(tensors, VIT_RULES, ignore=ignore)
    classes, reinit = _resolve_classes(_head_classes(mapped, "head"), num_classes)
    model = _new_model(
        lambda rngs: ViT(
            classes,
            variant=variant,
            image_size=image_size,
            layer_norm_eps=layer_norm_eps,
            rngs=rngs,
        ),
        rngs,
        concrete=reinit,
    )
    assign_weights(
        model,
        mapped,
        reinit=("head.",) if reinit else (),
        adapt=_resize_vit_positions(model.grid),
    )
    return model


def load_resnet(
    weights: Weights,
    *,
    depth: int = 18,
    num_classes: int | None = None,
    prefix: str = "",
    ignore: Sequence[str] = (),
    rngs: nnx.Rngs | None = None,
) -> ResNet:
    """Builds a `ResNet` and loads torchvision weights into it.

    Args:
      weights: a .safetensors path or a dict torch key -> numpy array.
      depth: 18 or 34.
      num_classes: None keeps the weights' head; another count re-initialises `fc` (logged).
      prefix: key prefix to select and strip.
      ignore: regexes of keys to drop.
      rngs: initialisation keys (for a re-initialised head); default `nnx.Rngs(0)`.

    Returns:
      the loaded `ResNet`.
    """
    mapped = map_torch_keys(load_tensors(weights, prefix), RESNET_RULES, ignore=ignore)
    classes, reinit = _resolve_classes(_head_classes(mapped, "fc"), num_classes)
    model = _new_model(lambda rngs: ResNet(classes, depth=depth, rngs=rngs), rngs, concrete=reinit)
    assign_weights(model, mapped, reinit=("fc.",) if reinit else ())
    return model


def load_lraspp_backbone(
    weights: Weights, *, prefix: str = "", ignore: Sequence[str] = ()
) -> LRASPPMobileNetV3:
    """Builds an `LRASPPMobileNetV3` and loads torchvision LR-ASPP weights (heads skipped).

    Args:
      weights: a .safetensors path or a dict torch key -> numpy array.
      prefix: key prefix to select and strip (`P2P_SELECTOR_PREFIX` for a P2P file).
      ignore: regexes of keys to drop.

    Returns:
      the loaded backbone.
    """
    backbone = _new_model(lambda rngs: LRASPPMobileNetV3(rngs=rngs), None, concrete=False)
    load_lraspp_selector_weights(backbone, weights, prefix=prefix, ignore=ignore)
    return backbone


# --------------------------------------------------------------------------------------------
# Whole-P2P conversion and the orbax checkpoint.


CLASSIFIERS = ("vit_ti", "vit_s", "vit_b", "resnet18", "resnet34")


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Architecture arguments of a converted P2P model (saved as convert_config.json).

    Attributes:
      classifier: one of `CLASSIFIERS`.
      num_classes: classifier outputs.
      image_size: ViT input size (ResNets take any).
      layer_norm_eps: ViT LayerNorm epsilon.
      num_outputs: selector head outputs (1 keep-logit + embedding dims).
    """

    classifier: str
    num_classes: int
    image_size: int = 224
    layer_norm_eps: float = 1e-12
    num_outputs: int = 4


def build_classifier(config: ConvertConfig, rngs: nnx.Rngs) -> nnx.Module:
    """A random-weight classifier for `config` (`ViT` or `ResNet`)."""
    kind = config.classifier
    if kind.startswith("vit_"):
        return ViT(
            config.num_classes,
            variant=kind.removeprefix("vit_"),
            image_size=config.image_size,
            layer_norm_eps=config.layer_norm_eps,
            rngs=rngs,
        )
    return ResNet(config.num_classes, depth=int(kind.removeprefix("resnet")), rngs=rngs)


def convert_p2p(
    *,
    classifier: str = "vit_ti",
    p2p_weights: Weights | None = None,
    selector_weights: Weights | None = None,
    classifier_weights: Weights | None = None,
    selector_prefix: str | None = None,
    classifier_prefix: str | None = None,
    num_classes: int | None = None,
    num_outputs: int = 4,
    image_size: int = 224,
    layer_norm_eps: float = 1e-12,
    seed: int = 0,
) -> tuple[P2P, ConvertConfig]:
    """Builds the P2P variables from published weights.

    Args:
      classifier: one of `CLASSIFIERS`.
      p2p_weights: a whole P2P file (selector and classifier, reference prefixes).
      selector_weights: torchvision LR-ASPP weights (instead of `p2p_weights`); heads with
        another output count than `num_outputs` are re-initialised.
      classifier_weights: HF ViT or torchvision ResNet weights (instead of `p2p_weights`).
      selector_prefix: key prefix; default `P2P_SELECTOR_PREFIX` with `p2p_weights`, else "".
      classifier_prefix: key prefix; default `P2P_CLASSIFIER_PREFIX` with `p2p_weights`,
        else "".
      num_classes: None keeps the weights' classifier head; another count re-initialises it.
      num_outputs: selector head outputs.
      image_size: ViT input size.
      layer_norm_eps: ViT LayerNorm epsilon.
      seed: initialisation seed for anything not loaded.

    Returns:
      (`P2P`, `ConvertConfig`).
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}.")
    if p2p_weights is not None:
        if selector_weights is not None or classifier_weights is not None:
            raise ValueError("give either p2p_weights or selector/classifier weights, not both.")
        p2p_weights = load_tensors(p2p_weights)  # read the file once for both parts
        selector_weights = classifier_weights = p2p_weights
        if selector_prefix is None:
            selector_prefix = P2P_SELECTOR_PREFIX
        if classifier_prefix is None:
            classifier_prefix = P2P_CLASSIFIER_PREFIX
    rngs = nnx.Rngs(seed)

    backbone = _new_model(
        lambda rngs: LRASPPMobileNetV3(rngs=rngs), rngs, concrete=selector_weights is None
    )
    selector = Selector(backbone, num_outputs=num_outputs, rngs=rngs)
    if selector_weights is None:
        logger.warning("no selector weights: the selector keeps its random initialisation")
    else:
        selector_tensors = load_tensors(selector_weights, selector_prefix or "")
        head = selector_tensors.get("classifier.low_classifier.weight")
        reinit_heads = head is None or head.shape[0] != num_outputs
        if reinit_heads:
            logger.warning("selector heads re-initialised for %d outputs", num_outputs)
        load_lraspp_selector_weights(selector, selector_tensors, reinit_heads=reinit_heads)

    if classifier_weights is None:
        if num_classes is None:
            raise ValueError("without classifier weights, num_classes is required.")
        logger.warning("no classifier weights: the classifier keeps its random initialisation")
        config = ConvertConfig(classifier, num_classes, image_size, layer_norm_eps, num_outputs)
        return P2P(selector, build_classifier(config, rngs)), config

    tensors = load_tensors(classifier_weights, classifier_prefix or "")
    if classifier.startswith("vit_"):
        model = load_vit(
            tensors,
            variant=classifier.removeprefix("vit_"),
            num_classes=num_classes,
            image_size=image_size,
            layer_norm_eps=layer_norm_eps,
            rngs=rngs,
        )
        classes = model.head.out_features
    else:
        model = load_resnet(
            tensors,
            depth=int(classifier.removeprefix("resnet")),
            num_classes=num_classes,
            rngs=rngs,
        )
        classes = model.fc.out_features
    config = ConvertConfig(classifier, classes, image_size, layer_norm_eps, num_outputs)
    return P2P(selector, model), config


def save_state(model: nnx.Module, directory: str | os.PathLike, *, force: bool = False):
    """Saves `nnx.to_pure_dict(nnx.state(model))` with orbax's `StandardCheckpointer`.

    Args:
      model: the module to save.
      directory: checkpoint folder (created; must not exist unless `force`).
      force: overwrite an existing checkpoint.
    """
    state = nnx.to_pure_dict(nnx.state(model))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(pathlib.Path(directory).resolve(), state, force=force)
    checkpointer.wait_until_finished()


def restore_state(directory: str | os.PathLike, model: nnx.Module | None = None):
    """Restores a checkpoint written by `save_state`.

    With `model` (e.g. a fresh `P2P`, or one from `nnx.eval_shape`), the checkpoint is read
    against the model's own state as the target and written into it; without it, the nested
    dict is returned as saved (list indices as "0", "1", ... keys, which
    `nnx.replace_by_pure_dict` accepts).

    Args:
      directory: the checkpoint folder (`DIR/state` of the CLI).
      model: optional module to restore into (in place).

    Returns:
      the restored nested dict of arrays.
    """
    checkpointer = ocp.StandardCheckpointer()
    path = pathlib.Path(directory).resolve()
    if model is None:
        return checkpointer.restore(path)
    state = nnx.state(model)
    restored = checkpointer.restore(path, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return restored


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (argparse: importing this module must not define global absl flags)."""
    parser = argparse.ArgumentParser(
        prog="python -m grouped_select.convert", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--p2p-weights", help="whole P2P .safetensors (reference prefixes)")
    parser.add_argument("--selector-weights", help="torchvision LR-ASPP .safetensors")
    parser.add_argument("--classifier-weights", help="HF ViT / torchvision ResNet .safetensors")
    parser.add_argument("--selector-prefix", default=None, help="key prefix to strip")
    parser.add_argument("--classifier-prefix", default=None, help="key prefix to strip")
    parser.add_argument("--classifier", default="vit_ti", choices=CLASSIFIERS)
    parser.add_argument("--num-classes", type=int, default=None, help="re-initialise the head")
    parser.add_argument("--num-outputs", type=int, default=4, help="selector head outputs")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--layer-norm-eps", type=float, default=1e-12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if not (args.p2p_weights or args.selector_weights or args.classifier_weights):
        parser.error("give --p2p-weights or --selector-weights / --classifier-weights")

    model, config = convert_p2p(
        classifier=args.classifier,
        p2p_weights=args.p2p_weights,
        selector_weights=args.selector_weights,
        classifier_weights=args.classifier_weights,
        selector_prefix=args.selector_prefix,
        classifier_prefix=args.classifier_prefix,
        num_classes=args.num_classes,
        num_outputs=args.num_outputs,
        image_size=args.image_size,
        layer_norm_eps=args.layer_norm_eps,
        seed=args.seed,
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_state(model, out / "state", force=args.overwrite)
    sources = {
        k: getattr(args, k)
        for k in ("p2p_weights", "selector_weights", "classifier_weights")
        if getattr(args, k)
    }
    (out / "convert_config.json").write_text(
        json.dumps({**dataclasses.asdict(config), "sources": sources}, indent=2) + "\n"
    )
    logger.info("saved %s and %s", out / "state", out / "convert_config.json")


def _log_to_console() -> None:
    """Shows this module's messages from INFO up; orbax and absl keep their own setup."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


if __name__ == "__main__":
    _log_to_console()
    main()
