"""The P2P selector: a backbone's two feature maps -> per-region keep-logits and embeddings.

A backbone (any NNX module returning `(low, high)`, both [B, h, w, ·] at the same stride)
feeds two 1x1 heads, `low_head` and `high_head`, whose sum is bilinearly upsampled to the
image: channel 0 is a per-pixel keep-logit, channels 1.. an embedding. The budget τ is added
to both heads' inputs.

Why the budget costs nothing here: the heads are affine and bilinear upsampling and region
means both preserve constants, so adding τ to the heads' inputs adds exactly
τ · (Σ_c W_low[c] + Σ_c W_high[c]) to every pixel's output and to every non-empty region's
mean. The selector therefore pools once at τ = 0 and shifts the region outputs per τ; the
dynamic-budget search costs one backbone pass and one pooling for all τ.
"""

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from grouped_select import regions
from grouped_select.backbones.pointwise import pointwise_conv
from grouped_select.regions import PoolMethod


class SelectorBackbone(Protocol):
    """What a selector backbone provides (e.g. LR-ASPP MobileNetV3, `SmallSelectorBackbone`).

    `__call__(x [B, H, W, 3]) -> (low [B, h, w, low_channels], high [B, h, w, high_channels])`.
    """

    low_channels: int
    high_channels: int

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]: ...


class RegionScores(NamedTuple):
    """What the selector says about each region of each image.

    Attributes:
      logits: [B, K] mean keep-logit μ per region (0 for empty regions).
      embeddings: [B, K, D] mean embedding E per region (0 for empty regions).
      sizes: [B, K] region pixel counts.
      kept_fraction: [B] p̄ = Σ_j sigmoid(μ_j)|R_j| / (H W).
    """

    logits: jax.Array
    embeddings: jax.Array
    sizes: jax.Array
    kept_fraction: jax.Array

    @property
    def probs(self) -> jax.Array:
        """[B, K] keep-probabilities sigmoid(μ)."""
        return jax.nn.sigmoid(self.logits)


class Selector(nnx.Module):
    """Backbone + two 1x1 heads with budget injection + region pooling.

    Attributes:
      backbone: the feature extractor.
      low_head, high_head: 1x1 convolutions to `num_outputs` channels.
    """

    def __init__(
        self,
        backbone: SelectorBackbone,
        *,
        num_outputs: int = 4,
        pool_method: PoolMethod = "auto",
        rngs: nnx.Rngs,
    ):
        """Builds the heads on top of `backbone`.

        Args:
          backbone: module returning `(low, high)` feature maps.
          num_outputs: channels per pixel: 1 keep-logit + (num_outputs - 1) embedding dims.
          pool_method: region pooling implementation (see `regions.region_sums`).
          rngs: initialisation keys.
        """
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}.")
        self.backbone = backbone
        self.low_head = nnx.Conv(backbone.low_channels, num_outputs, (1, 1), rngs=rngs)
        self.high_head = nnx.Conv(backbone.high_channels, num_outputs, (1, 1), rngs=rngs)
        self.pool_method = pool_method

    def features(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Runs the backbone once: x [B, H, W, 3] -> (low, high) feature maps."""
        return self.backbone(x)

    def budget_direction(self) -> jax.Array:
        """[num_outputs] change of the output per unit of budget τ (see module docstring)."""
        low = self.low_head.kernel[...].sum(axis=(0, 1, 2))
        high = self.high_head.kernel[...].sum(axis=(0, 1, 2))
        return (low + high).astype(jnp.float32)

    def pixel_outputs(
        self,
        low: jax.Array,
        high: jax.Array,
        image_hw: tuple[int, int],
        budget: ArrayLike | None = None,
    ) -> jax.Array:
        """Per-pixel head outputs, the budget added to the heads' inputs as in the reference.

        Args:
          low: [B, h, w, C_low] and
          high: [B, h, w, C_high] backbone features.
          image_hw: static (H, W) to upsample to.
          budget: None (no injection), a scalar, or [B] budgets τ.

        Returns:
          [B, H, W, num_outputs] float32 per-pixel outputs.
        """
        if budget is not None:
            tau = jnp.broadcast_to(jnp.asarray(budget, low.dtype), (low.shape[0],))
            low = low + tau[:, None, None, None]
            high = high + tau[:, None, None, None].astype(high.dtype)
        out = pointwise_conv(self.low_head, low) + pointwise_conv(self.high_head, high)
        batch, _, _, channels = out.shape
        # jax.image.resize "bilinear" uses half-pixel centres (torch align_corners=False); when
        # upsampling it matches torch's F.interpolate, including the clamped borders.
        out = jax.image.resize(out, (batch, *image_hw, channels), "bilinear")
        return out.astype(jnp.float32)

    def pool(
        self, pixel_outputs: jax.Array, region_ids: jax.Array, num_regions: int
    ) -> RegionScores:
        """Pools per-pixel outputs into regions (at τ = 0 or any fixed injection).

        Args:
          pixel_outputs: [B, H, W, num_outputs].
          region_ids: [B, H, W] ids in [0, num_regions).
          num_regions: static K.

        Returns:
          `RegionScores`.
        """
        sizes = regions.region_sizes(region_ids, num_regions)
        means = regions.pool_regions(
            pixel_outputs, region_ids, num_regions, self.pool_method, sizes=sizes
        )
        return _scores(means, sizes)

    def with_budget(self, base: RegionScores, budget: ArrayLike) -> RegionScores:
        """Region scores at budget τ from those pooled without injection.

        Args:
          base: `RegionScores` pooled from `pixel_outputs(..., budget=None)`.
          budget: scalar or [B] budgets τ.

        Returns:
          `RegionScores` equal to pooling `pixel_outputs(..., budget=budget)`.
        """
        batch = base.logits.shape[0]
        tau = jnp.broadcast_to(jnp.asarray(budget, jnp.float32), (batch,))
        nonempty = (base.sizes > 0).astype(jnp.float32)
        shift = tau[:, None, None] * self.budget_direction() * nonempty[..., None]
        means = jnp.concatenate([base.logits[..., None], base.embeddings], axis=-1) + shift
        return _scores(means, base.sizes)

    def __call__(
        self,
        x: jax.Array,
        region_ids: jax.Array,
        num_regions: int,
        budget: ArrayLike | None = None,
    ) -> RegionScores:
        """Selector forward pass.

        Args:
          x: [B, H, W, 3] normalised images.
          region_ids: [B, H, W] superpixel ids in [0, num_regions).
          num_regions: static K.
          budget: None (fixed-budget model: no injection), scalar or [B] budgets τ.

        Returns:
          `RegionScores` at that budget.
        """
        low, high = self.features(x)
        base = self.pool(self.pixel_outputs(low, high, x.shape[1:3]), region_ids, num_regions)
        return base if budget is None else self.with_budget(base, budget)


def _scores(means: jax.Array, sizes: jax.Array) -> RegionScores:
    logits, embeddings = means[..., 0], means[..., 1:]
    kept = regions.kept_fraction(jax.nn.sigmoid(logits), sizes)
    return RegionScores(logits, embeddings, sizes, kept)
