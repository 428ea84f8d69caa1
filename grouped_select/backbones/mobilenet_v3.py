"""LR-ASPP MobileNetV3-Large, the P2P selector's backbone, in the torchvision layout.

This is torchvision's `mobilenet_v3_large(dilated=True)` feature extractor as used by
`torchvision.models.segmentation.lraspp_mobilenet_v3_large`, plus the part of its
`LRASPPHead` that precedes the two 1x1 classifiers:

- `features[0]`: 3x3 stride-2 conv, BN, hardswish.
- `features[1..15]`: inverted residual blocks (expand 1x1, depthwise kxk, optional
  squeeze-excitation with a hardsigmoid gate, project 1x1). With `dilated=True` the last
  three blocks use dilation 2 instead of stride 2, so the deepest features are at stride 16.
- `features[16]`: 1x1 conv to 960 channels, BN, hardswish.
- `cbr`, `scale`: LR-ASPP's conv-BN-ReLU of the 960-channel features and its sigmoid gate
  computed from their global average.

The module returns LR-ASPP's two feature maps, "low" (the 40-channel stride-8 output of
`features[4]`) and "high" (the gated 128-channel map bilinearly upsampled to low's size). The
two 1x1 classifier heads belong to the selector (`grouped_select.selector.Selector`).

The nesting mirrors torchvision's (`features.N.block.M`), so that `grouped_select.convert`
maps torchvision keys with a short table. Convolutions use torchvision's symmetric padding
`(k - 1) // 2 * dilation` (not "SAME", which pads stride-2 convs asymmetrically). BatchNorm
follows torchvision: eps 1e-3 and torch momentum 0.01 (flax momentum 0.99) in MobileNetV3,
eps 1e-5 and torch momentum 0.1 in LR-ASPP's `cbr`. `model.eval()` switches BatchNorm to its
running statistics, `model.train()` back to batch statistics.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from grouped_select.backbones.batch_norm import batch_norm
from grouped_select.backbones.depthwise import Method, depthwise_conv
from grouped_select.backbones.matmul import MatmulPrecision
from grouped_select.backbones.pointwise import is_pointwise, pointwise_conv
from grouped_select.precision import materialized

# torchvision initialises every conv with kaiming_normal_(mode="fan_out").
_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

_ACTIVATIONS = {
    None: lambda x: x,
    "relu": jax.nn.relu,
    "hardswish": jax.nn.hard_swish,
}


class BlockConfig(NamedTuple):
    """One inverted residual block, in torchvision's `InvertedResidualConfig` order."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    activation: str
    stride: int
    dilation: int


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds channel counts like torchvision's `_make_divisible` (never below 90%)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def large_block_configs(dilated: bool = True) -> tuple[BlockConfig, ...]:
    """The 15 inverted residual blocks of MobileNetV3-Large (torchvision's table).

    Args:
      dilated: replace the stride of the last stage by dilation 2 (output stride 16).

    Returns:
      15 `BlockConfig`s for `features[1..15]`.
    """
    d = 2 if dilated else 1
    return tuple(
        BlockConfig(*row)
        for row in (
            (16, 3, 16, 16, False, "relu", 1, 1),
            (16, 3, 64, 24, False, "relu", 2, 1),
            (24, 3, 72, 24, False, "relu", 1, 1),
            (24, 5, 72, 40, True, "relu", 2, 1),
            (40, 5, 120, 40, True, "relu", 1, 1),
            (40, 5, 120, 40, True, "relu", 1, 1),
            (40, 3, 240, 80, False, "hardswish", 2, 1),
            (80, 3, 200, 80, False, "hardswish", 1, 1),
            (80, 3, 184, 80, False, "hardswish", 1, 1),
            (80, 3, 184, 80, False, "hardswish", 1, 1),
            (80, 3, 480, 112, True, "hardswish", 1, 1),
            (112, 3, 672, 112, True, "hardswish", 1, 1),
            (112, 5, 672, 160, True, "hardswish", 2, d),
            (160, 5, 960, 160, True, "hardswish", 1, d),
            (160, 5, 960, 160, True, "hardswish", 1, d),
        )
    )


class ConvBNAct(nnx.Module):
    """Conv (no bias) + BatchNorm + optional activation: torchvision `Conv2dNormActivation`.

    Attributes:
      conv: `nnx.Conv` with explicit symmetric padding `(k - 1) // 2 * dilation`.
      bn: `nnx.BatchNorm`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: str | None = None,
        bn_epsilon: float = 1e-3,
        bn_momentum: float = 0.99,
        depthwise_method: Method = "auto",
        matmul_precision: MatmulPrecision = "default",
        rngs: nnx.Rngs,
    ):
        """Builds the layer.

        Args:
          in_channels: input channels.
          out_channels: output channels.
          kernel: square kernel size.
          stride: conv stride.
          dilation: conv dilation.
          groups: feature groups (`in_channels` for a depthwise conv).
          activation: None, "relu" or "hardswish".
          bn_epsilon: BatchNorm epsilon.
          bn_momentum: flax BatchNorm momentum (1 - torch momentum).
          depthwise_method: how a depthwise conv runs (`depthwise.depthwise_conv`'s `method`).
          matmul_precision: a 1x1 conv's product ("default" or "bfloat16": bfloat16-rounded
            operands, float32 sums; `grouped_select.backbones.matmul`).
          rngs: initialisation keys.
        """
        pad = (kernel - 1) // 2 * dilation
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            (kernel, kernel),
            strides=stride,
            padding=((pad, pad), (pad, pad)),
            kernel_dilation=dilation,
            feature_group_count=groups,
            use_bias=False,
            kernel_init=_CONV_INIT,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            out_channels,
            epsilon=bn_epsilon,
            momentum=bn_momentum,
            use_fast_variance=False,
            rngs=rngs,
        )
        self.activation = activation
        # Depthwise convs go through `depthwise_conv` (fast on CPU); parameters stay those of
        # `nnx.Conv`, so checkpoints and converted weights do not depend on the backend.
        self.depthwise = groups == in_channels == out_channels and groups > 1
        self.pointwise = is_pointwise(self.conv)
        self.stride, self.dilation, self.pad = stride, dilation, pad
        self.depthwise_method = depthwise_method
        self.matmul_precision = matmul_precision

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H', W', C_out]."""
        if self.depthwise:
            y = depthwise_conv(
                x,
                self.conv.kernel[...],
                stride=self.stride,
                dilation=self.dilation,
                padding=self.pad,
                method=self.depthwise_method,
            )
        elif self.pointwise:
            y = pointwise_conv(self.conv, x, self.matmul_precision)
        else:
            y = self.conv(x)
        # A depthwise layer's result feeds two float32 kernels when a squeeze-excitation
        # follows (its mean and its scaling), and in training so do the conv's output (batch
        # statistics and normalisation) and that output's gradient (the taps' and the
        # kernel's gradients). XLA would pass them between those kernels in float32
        # ("excess precision"); `materialized` keeps them in the layer's dtype: in the H200
        # training step compiled here, 28.7 -> 27.0 GB moved (`benchmarks/compile_census.py`).
        # Not the conv's output in eval mode: there normalisation fuses into the conv's kernel.
        if self.depthwise and not self.bn.use_running_average:
            y = materialized(y)
        # Back to the conv's dtype: BatchNorm normalises with its float32 statistics, so a
        # bfloat16 network would otherwise run float32 from its first layer on (as the whole
        # selector did in the compiled H200 step: twice the memory traffic).
        y = _ACTIVATIONS[self.activation](batch_norm(self.bn, y)).astype(y.dtype)
        return materialized(y, gradient=False) if self.depthwise else y


class SqueezeExcitation(nnx.Module):
    """Channel gate: global average -> 1x1 conv, ReLU -> 1x1 conv, hardsigmoid -> scale.

    Attributes:
      fc1: 1x1 conv to the squeeze width (with bias).
      fc2: 1x1 conv back to the input width (with bias).
    """

    def __init__(self, channels: int, squeeze: int, *, rngs: nnx.Rngs):
        """Builds the gate for `channels` inputs squeezed to `squeeze` channels."""
        self.fc1 = nnx.Conv(channels, squeeze, (1, 1), kernel_init=_CONV_INIT, rngs=rngs)
        self.fc2 = nnx.Conv(squeeze, channels, (1, 1), kernel_init=_CONV_INIT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]."""
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = jax.nn.relu(pointwise_conv(self.fc1, scale))
        scale = jax.nn.hard_sigmoid(pointwise_conv(self.fc2, scale))
        return x * scale


class InvertedResidual(nnx.Module):
    """MobileNetV3 block; `block` holds the layers in torchvision's order.

    Attributes:
      block: [expand ConvBNAct]? + depthwise ConvBNAct + [SqueezeExcitation]? + project
        ConvBNAct, as an `nnx.List` indexed like torchvision's `block` Sequential.
      use_residual: whether the input is added to the output (stride 1, same width).
    """

    def __init__(
        self,
        cfg: BlockConfig,
        *,
        depthwise_method: Method = "auto",
        matmul_precision: MatmulPrecision = "default",
        rngs: nnx.Rngs,
    ):
        """Builds the block from its `BlockConfig` (`depthwise_method`, `matmul_precision`:
        see `ConvBNAct`; the latter for the expansion and projection)."""
        layers = []
        if cfg.expanded != cfg.in_channels:
            layers.append(
                ConvBNAct(
                    cfg.in_channels,
                    cfg.expanded,
                    1,
                    activation=cfg.activation,
                    matmul_precision=matmul_precision,
                    rngs=rngs,
                )
            )
        layers.append(
            ConvBNAct(
                cfg.expanded,
                cfg.expanded,
                cfg.kernel,
                # A dilated block keeps the resolution: dilation replaces the stride.
                stride=1 if cfg.dilation > 1 else cfg.stride,
                dilation=cfg.dilation,
                groups=cfg.expanded,
                activation=cfg.activation,
                depthwise_method=depthwise_method,
                rngs=rngs,
            )
        )
        if cfg.use_se:
            squeeze = _make_divisible(cfg.expanded // 4, 8)
            layers.append(SqueezeExcitation(cfg.expanded, squeeze, rngs=rngs))
        layers.append(
            ConvBNAct(
                cfg.expanded, cfg.out_channels, 1, matmul_precision=matmul_precision, rngs=rngs
            )
        )
        self.block = nnx.List(layers)
        # torchvision decides from the configured stride, even when dilation replaced it.
        self.use_residual = cfg.stride == 1 and cfg.in_channels == cfg.out_channels

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H', W', C_out]."""
        y = x
        for layer in self.block:
            y = layer(y)
        return y + x if self.use_residual else y


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize with half-pixel centres, like torch `F.interpolate(align_corners=False)`.

    `antialias=False` gives torch's two-tap interpolation also when shrinking; when growing,
    jax's renormalised border weights equal torch's clamped source indices.

    Args:
      x: [B, h, w, C].
      size: static output (H, W).

    Returns:
      [B, H, W, C].
    """
    batch, _, _, channels = x.shape
    return jax.image.resize(x, (batch, *size, channels), "bilinear", antialias=False)


class LRASPPMobileNetV3(nnx.Module):
    """MobileNetV3-Large (dilated) + LR-ASPP head body: image -> (low, high) feature maps.

    Attributes:
      features: `nnx.List` of 17 layers, indexed like torchvision's `backbone.features`.
      cbr: LR-ASPP's 1x1 conv (960 -> 128, no bias) + BatchNorm (eps 1e-5) + ReLU.
      scale: LR-ASPP's 1x1 conv (960 -> 128, no bias) on the global average, sigmoid gate.
      low_channels: 40, channels of `low`.
      high_channels: 128, channels of `high`.
    """

    low_index = 4  # features[4] ends the stride-8 stage ("C2" in torchvision).

    def __init__(
        self,
        *,
        dilated: bool = True,
        inter_channels: int = 128,
        depthwise_method: Method = "auto",
        matmul_precision: MatmulPrecision = "default",
        rngs: nnx.Rngs,
    ):
        """Builds the network with random weights (see `grouped_select.convert` to load some).

        Args:
          dilated: dilate the last stage (output stride 16), as LR-ASPP does.
          inter_channels: width of LR-ASPP's `cbr` and `scale` (128 in torchvision).
          depthwise_method: how the depthwise convs run: "auto" (the shifted sum on CPU and
            GPU, XLA's grouped convolution on TPU), "conv" or "shifted_sum"; same parameters
            and results either way (`grouped_select.backbones.depthwise`).
          matmul_precision: "default" or "bfloat16": the 1x1 convs of the blocks, the last
            layer and LR-ASPP's `cbr` from bfloat16-rounded operands with float32 sums
            (`grouped_select.backbones.matmul`); the squeeze-excitation gates and `scale`
            (one pixel each) keep "default". Same parameters.
          rngs: initialisation keys.
        """
        configs = large_block_configs(dilated)
        last_in = configs[-1].out_channels
        last_out = 6 * last_in
        layers = [
            ConvBNAct(3, configs[0].in_channels, 3, stride=2, activation="hardswish", rngs=rngs)
        ]
        layers += [
            InvertedResidual(
                cfg,
                depthwise_method=depthwise_method,
                matmul_precision=matmul_precision,
                rngs=rngs,
            )
            for cfg in configs
        ]
        layers.append(
            ConvBNAct(
                last_in,
                last_out,
                1,
                activation="hardswish",
                matmul_precision=matmul_precision,
                rngs=rngs,
            )
        )
        self.features = nnx.List(layers)
        # LR-ASPP's own BatchNorm is torch's default one: eps 1e-5, momentum 0.1.
        self.cbr = ConvBNAct(
            last_out,
            inter_channels,
            1,
            activation="relu",
            bn_epsilon=1e-5,
            bn_momentum=0.9,
            matmul_precision=matmul_precision,
            rngs=rngs,
        )
        self.scale = nnx.Conv(
            last_out, inter_channels, (1, 1), use_bias=False, kernel_init=_CONV_INIT, rngs=rngs
        )
        self.low_channels = configs[self.low_index - 1].out_channels
        self.high_channels = inter_channels

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Computes LR-ASPP's two feature maps.

        Args:
          x: [B, H, W, 3] ImageNet-normalised images.

        Returns:
          low: [B, h, w, 40] stride-8 features (h = ceil(H / 8)).
          high: [B, h, w, 128] `relu(bn(cbr(f)))` * `sigmoid(scale(mean(f)))` of the stride-16
            960-channel features f, bilinearly upsampled (half-pixel centres) to (h, w).
        """
        for layer in self.features[: self.low_index + 1]:
            x = layer(x)
        low = x
        for layer in self.features[self.low_index + 1 :]:
            x = layer(x)
        gate = jax.nn.sigmoid(pointwise_conv(self.scale, jnp.mean(x, axis=(1, 2), keepdims=True)))
        high = self.cbr(x) * gate
        high = resize_bilinear(high, low.shape[1:3])
        return low, high
