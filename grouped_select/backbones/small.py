"""CPU-sized networks for laptop runs: a selector backbone and two classifiers.

`SmallSelectorBackbone` has the same two-map interface as LR-ASPP MobileNetV3: `low`
features at stride 8, and `high` features computed at stride 16, gated by a sigmoid of their
global average (LR-ASPP's "scale" branch) and bilinearly upsampled to stride 8. About 34k
parameters at the defaults.

Classifiers: `SmallCNNClassifier` (GroupNorm CNN; learns shapes in a few epochs on a CPU) and
`small_vit_classifier` (a 3-layer ViT in the layout of the paper's ViTs).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from grouped_select.backbones.matmul import MatmulPrecision
from grouped_select.backbones.vit import ViT, ViTVariant


class SmallSelectorBackbone(nnx.Module):
    """Four strided 3x3 conv layers (strides 2, 2, 2, 2) and an LR-ASPP-style head body.

    `__call__(x [B, H, W, 3]) -> (low [B, H/s, W/s, low_channels],
    high [B, H/s, W/s, high_channels])` with s = `low_stride` (8, as LR-ASPP, by default).

    With `low_stride` 2 or 4 the `low` map is finer than LR-ASPP's: the features after the
    first (s = 2) or second (s = 4) convolution, concatenated with the upsampled stride-8
    features and mixed by a 3x3 conv (`fuse`), so that small images still get a keep-logit
    map fine enough to follow superpixels (at 32x32, stride 8 leaves a 4x4 map).
    """

    def __init__(
        self,
        *,
        widths: tuple[int, int, int, int] = (16, 24, 32, 64),
        high_channels: int = 32,
        low_stride: int = 8,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          widths: output channels of the four stride-2 convolutions; the third is the stride-8
            map (`low` when low_stride is 8), the fourth feeds the stride-16 `high` branch.
          high_channels: channels of the `high` map.
          low_stride: 2, 4 or 8, the stride of both returned maps.
          rngs: initialisation keys.
        """
        if low_stride not in (2, 4, 8):
            raise ValueError(f"low_stride must be 2, 4 or 8, got {low_stride}.")
        in_channels = (3, *widths[:-1])
        self.convs = nnx.List(
            [
                nnx.Conv(c_in, c_out, (3, 3), strides=2, padding=1, rngs=rngs)
                for c_in, c_out in zip(in_channels, widths, strict=True)
            ]
        )
        self.high_proj = nnx.Conv(widths[3], high_channels, (1, 1), rngs=rngs)
        self.high_gate = nnx.Conv(widths[3], high_channels, (1, 1), rngs=rngs)
        self.low_stride = low_stride
        self.low_channels = widths[2]
        if low_stride < 8:
            fine = widths[low_stride.bit_length() - 2]  # after conv 1 (s=2) or 2 (s=4)
            self.fuse = nnx.Conv(fine + widths[2], widths[2], (3, 3), padding=1, rngs=rngs)
        self.high_channels = high_channels

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Feature maps of a batch of normalised images.

        Args:
          x: [B, H, W, 3], H and W divisible by 16.

        Returns:
          (low [B, H/s, W/s, low_channels], high [B, H/s, W/s, high_channels]), s the
          `low_stride`.
        """
        h = x
        features = []
        for conv in self.convs[:3]:
            h = nnx.relu(conv(h))
            features.append(h)
        low = h
        deep = nnx.relu(self.convs[3](low))
        gate = nnx.sigmoid(self.high_gate(deep.mean(axis=(1, 2), keepdims=True)))
        high = nnx.relu(self.high_proj(deep)) * gate
        if self.low_stride < 8:
            fine = features[self.low_stride.bit_length() - 2]
            context = jax.image.resize(low, (*fine.shape[:3], low.shape[-1]), "bilinear")
            low = nnx.relu(self.fuse(jnp.concatenate([fine, context], axis=-1)))
        batch, height, width, _ = low.shape
        high = jax.image.resize(high, (batch, height, width, high.shape[-1]), "bilinear")
        return low, high.astype(jnp.result_type(low))


# A ViT small enough to train in minutes on a laptop CPU at 64x64 (patch 8: 64 tokens).
SMALL_VIT = ViTVariant(hidden_size=64, num_layers=3, num_heads=4, mlp_dim=128)


def small_vit_classifier(
    num_classes: int,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    scan_layers: bool = True,
    matmul_precision: MatmulPrecision = "default",
    rngs: nnx.Rngs,
) -> ViT:
    """The CPU-sized classifier: a 3-layer, 64-wide ViT (about 118k parameters).

    Args:
      num_classes: classifier outputs.
      image_size: input side (a multiple of `patch_size`).
      patch_size: patch side.
      scan_layers: run the blocks as one `lax.scan` (see `ViT.encode`).
      matmul_precision: its products' ("default" or "bfloat16", see `ViT`).
      rngs: initialisation keys.

    Returns:
      A `ViT` in the Hugging Face layout, so the same code paths serve it and ViT-Ti/S/B.
    """
    return ViT(
        num_classes,
        variant=SMALL_VIT,
        image_size=image_size,
        patch_size=patch_size,
        scan_layers=scan_layers,
        matmul_precision=matmul_precision,
        rngs=rngs,
    )


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float):
    """GroupNorm of NHWC activations, as `nnx.GroupNorm` computes it, from per-channel sums.

    Statistics are reduced over H and W first ([B, C] means of x and x², a reduction XLA's CPU
    backend vectorises along the contiguous channel axis), then over each group's channels;
    the normalisation is one fused multiply-add with [B, 1, 1, C] coefficients. On CPU this is
    about 3x faster than reducing a [B, H·W, G, C/G] view, which made GroupNorm half of the
    small classifier's training step. Variance as E[x²] - E[x]² (nnx.GroupNorm's default
    `use_fast_variance`), computed in float32, clipped at 0.

    Args:
      x: [B, H, W, C].
      scale, bias: [C].
      groups: G, divides C.
      eps: added to the variance.

    Returns:
      [B, H, W, C] in x's dtype.
    """
    batch, _, _, channels = x.shape
    x32 = x.astype(jnp.float32)
    mean_c = jnp.mean(x32, axis=(1, 2))  # [B, C]
    square_c = jnp.mean(jnp.square(x32), axis=(1, 2))
    mean_g = mean_c.reshape(batch, groups, -1).mean(-1)  # [B, G]
    var_g = jnp.maximum(square_c.reshape(batch, groups, -1).mean(-1) - jnp.square(mean_g), 0.0)
    per_group = channels // groups
    a = jnp.repeat(jax.lax.rsqrt(var_g + eps), per_group, axis=1) * scale  # [B, C]
    b = bias - jnp.repeat(mean_g, per_group, axis=1) * a
    return (x32 * a[:, None, None, :] + b[:, None, None, :]).astype(x.dtype)


class ConvNormAct(nnx.Module):
    """3x3 conv (no bias) -> GroupNorm -> ReLU.

    GroupNorm, not BatchNorm: statistics are per image, so training (sampled soft masks) and
    evaluation (hard masks, one image's budget search) normalise alike. The parameters live in
    an `nnx.GroupNorm` (checkpoint layout); `group_norm` computes it faster on CPU.

    Attributes:
      conv: `nnx.Conv` 3x3.
      norm: `nnx.GroupNorm`, its `scale` and `bias` applied by `group_norm`.
    """

    def __init__(self, c_in: int, c_out: int, *, stride: int, groups: int, rngs: nnx.Rngs):
        """Builds the layer; `c_out` must be divisible by `groups`."""
        self.conv = nnx.Conv(
            c_in, c_out, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs
        )
        self.norm = nnx.GroupNorm(c_out, num_groups=groups, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H / stride, W / stride, C_out]."""
        n = self.norm
        h = group_norm(self.conv(x), n.scale[...], n.bias[...], n.num_groups, n.epsilon)
        return nnx.relu(h)


class SmallCNNClassifier(nnx.Module):
    """Stages of (3x3 strided conv, 3x3 conv), each GroupNorm + ReLU, global average pool,
    linear head. About 290k parameters at the defaults.

    `__call__(x [B, H, W, 3]) -> [B, num_classes]` logits; any H, W.

    Attributes:
      stages: `nnx.List` of `ConvNormAct`, two per stage.
      head: `nnx.Linear` [widths[-1], num_classes].
    """

    def __init__(
        self,
        num_classes: int,
        *,
        widths: tuple[int, ...] = (32, 64, 128),
        strides: tuple[int, ...] | None = None,
        groups: int = 8,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          num_classes: classifier outputs.
          widths: output channels of each stage (one stage per entry).
          strides: stride of each stage's first conv; None: 2 for every stage. A first stage
            at stride 1 keeps full resolution for small inputs (thin strokes at 32x32).
          groups: GroupNorm groups (divides every width).
          rngs: initialisation keys.
        """
        strides = (2,) * len(widths) if strides is None else tuple(strides)
        if len(strides) != len(widths):
            raise ValueError(f"strides {strides} must have one entry per stage of {widths}.")
        layers = []
        c_in = 3
        for width, stride in zip(widths, strides, strict=True):
            layers.append(ConvNormAct(c_in, width, stride=stride, groups=groups, rngs=rngs))
            layers.append(ConvNormAct(width, width, stride=1, groups=groups, rngs=rngs))
            c_in = width
        self.stages = nnx.List(layers)
        self.head = nnx.Linear(c_in, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits of a batch of normalised images.

        Args:
          x: [B, H, W, 3].

        Returns:
          [B, num_classes].
        """
        h = x
        for layer in self.stages:
            h = layer(h)
        return self.head(h.mean(axis=(1, 2)))
