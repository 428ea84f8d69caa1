"""torchvision ResNet-18 / ResNet-34 (BasicBlock) image classifiers.

7x7 stride-2 stem conv, BN, ReLU, 3x3 stride-2 max pool, four stages of BasicBlocks (two 3x3
convs; a 1x1 strided conv + BN projects the shortcut when the shape changes), global average
pool and a linear classifier. Attribute names follow torchvision (`conv1`, `bn1`,
`layer1..layer4`, `downsample`, `fc`) so `grouped_select.convert` maps keys with a short table.
Padding is torchvision's explicit symmetric padding, BatchNorm uses eps 1e-5 and torch
momentum 0.1 (flax momentum 0.9); `model.eval()` switches BatchNorm to running statistics.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from grouped_select.backbones.batch_norm import batch_norm

_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

# Blocks per stage.
RESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _conv(c_in: int, c_out: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = (kernel - 1) // 2
    return nnx.Conv(
        c_in,
        c_out,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_CONV_INIT,
        rngs=rngs,
    )


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, epsilon=1e-5, momentum=0.9, use_fast_variance=False, rngs=rngs)


def _norm(bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
    """`bn(x)` (with `batch_norm`'s hand-written gradient) in x's dtype: BatchNorm normalises
    with its float32 statistics, which would otherwise turn a bfloat16 network float32 from
    its first layer on."""
    return batch_norm(bn, x).astype(x.dtype)


class Downsample(nnx.Module):
    """Shortcut projection: 1x1 strided conv + BN (torchvision's `downsample` Sequential).

    Attributes:
      conv: `nnx.Conv` 1x1, no bias.
      bn: `nnx.BatchNorm`.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs):
        """Builds the projection."""
        self.conv = _conv(c_in, c_out, 1, stride, rngs)
        self.bn = _bn(c_out, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H / stride, W / stride, C_out]."""
        return _norm(self.bn, self.conv(x))


class BasicBlock(nnx.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    Attributes:
      conv1, bn1, conv2, bn2: the residual branch (3x3 convs, the first strided).
      downsample: `Downsample` or None (identity shortcut).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs):
        """Builds the block; the shortcut is projected when stride or width change."""
        self.conv1 = _conv(c_in, c_out, 3, stride, rngs)
        self.bn1 = _bn(c_out, rngs)
        self.conv2 = _conv(c_out, c_out, 3, 1, rngs)
        self.bn2 = _bn(c_out, rngs)
        needs_projection = stride != 1 or c_in != c_out
        self.downsample = Downsample(c_in, c_out, stride, rngs=rngs) if needs_projection else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H / stride, W / stride, C_out]."""
        y = jax.nn.relu(_norm(self.bn1, self.conv1(x)))
        y = _norm(self.bn2, self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class ResNet(nnx.Module):
    """torchvision ResNet with BasicBlocks (depth 18 or 34).

    Attributes:
      conv1, bn1: the 7x7 stride-2 stem.
      layer1, layer2, layer3, layer4: `nnx.List`s of `BasicBlock` (64, 128, 256, 512 wide).
      fc: `nnx.Linear` [512, num_classes].
    """

    def __init__(self, num_classes: int, *, depth: int = 18, rngs: nnx.Rngs):
        """Builds a ResNet with random weights (see `grouped_select.convert` to load some).

        Args:
          num_classes: classifier outputs.
          depth: 18 or 34.
          rngs: initialisation keys.
        """
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}.")
        self.conv1 = nnx.Conv(
            3,
            64,
            (7, 7),
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            kernel_init=_CONV_INIT,
            rngs=rngs,
        )
        self.bn1 = _bn(64, rngs)
        c_in = 64
        for stage, (blocks, width) in enumerate(
            zip(RESNET_DEPTHS[depth], (64, 128, 256, 512), strict=True), start=1
        ):
            stride = 1 if stage == 1 else 2
            layer = []
            for i in range(blocks):
                layer.append(BasicBlock(c_in, width, stride if i == 0 else 1, rngs=rngs))
                c_in = width
            setattr(self, f"layer{stage}", nnx.List(layer))
        self.fc = nnx.Linear(512, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """[B, H, W, 3] ImageNet-normalised images -> [B, 512] pooled features."""
        x = jax.nn.relu(_norm(self.bn1, self.conv1(x)))
        # torch pads max pooling with -inf, which nnx.max_pool's explicit padding also does.
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Classifies images.

        Args:
          x: [B, H, W, 3] ImageNet-normalised images.

        Returns:
          [B, num_classes] logits.
        """
        return self.fc(self.features(x))
