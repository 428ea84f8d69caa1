"""One-pass inference: a small head predicts the budget τ the dynamic search would choose.

The dynamic budget search classifies each image at up to 20 budgets. `BudgetHead` reads the
selector's own features, globally averaged, and predicts the searched τ* directly, so
inference runs the selector once and the classifier once (`one_pass_forward`).

Target and training (`train/budget_head.py`): τ* is the search's choice at a certainty δ on
the training images of the finished model; the head is fitted on (features, τ*) pairs with
the P2P model frozen, by the pinball loss at a quantile q (`head_loss`; q = 0.8 by default:
erring towards larger budgets costs kept fraction, towards smaller ones accuracy) or by
least squares. This is the "searched τ on the training batch"
target computed once at the end instead of every few steps during training: the head reads
features through a stop-gradient either way (it must not change the selector), and fitted
after training its targets come from the final model rather than from earlier, different
ones. The exact search stays the default everywhere; the head is an option.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from grouped_select.model import P2P, EvalOutputs


def pooled_features(low: jax.Array, high: jax.Array) -> jax.Array:
    """The head's input: global averages of the selector backbone's two maps.

    Args:
      low: [B, h, w, C_low] and
      high: [B, h, w, C_high] feature maps (`Selector.features`).

    Returns:
      [B, C_low + C_high] float32, gradient-stopped (the head never trains the selector).
    """
    pooled = jnp.concatenate(
        [low.mean(axis=(1, 2)).astype(jnp.float32), high.mean(axis=(1, 2)).astype(jnp.float32)],
        axis=-1,
    )
    return jax.lax.stop_gradient(pooled)


class FeatureStats(nnx.Variable):
    """Input statistics of `BudgetHead`: state, not trainable parameters."""


class BudgetHead(nnx.Module):
    """MLP [F] -> hidden -> τ̂ in (0, 1): the predicted instance budget.

    Attributes:
      hidden: `nnx.Linear` [F, hidden].
      out: `nnx.Linear` [hidden, 1].
      feature_mean, feature_scale: [F] input standardisation (`FeatureStats`, not trained;
        set by `set_normalization`: selector features have arbitrary scales).
    """

    def __init__(self, num_features: int, *, hidden: int = 64, rngs: nnx.Rngs):
        """Builds the head for `num_features` = C_low + C_high inputs."""
        self.hidden = nnx.Linear(num_features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)
        self.feature_mean = FeatureStats(jnp.zeros((num_features,), jnp.float32))
        self.feature_scale = FeatureStats(jnp.ones((num_features,), jnp.float32))

    def set_normalization(self, features: jax.Array) -> None:
        """Standardises inputs with the mean and std of `features` [N, F] (in place)."""
        self.feature_mean[...] = features.mean(0)
        self.feature_scale[...] = features.std(0) + 1e-6

    def __call__(self, features: jax.Array) -> jax.Array:
        """[B, F] pooled features -> [B] predicted budgets τ̂ in (0, 1)."""
        x = (features - self.feature_mean[...]) / self.feature_scale[...]
        return jax.nn.sigmoid(self.out(nnx.relu(self.hidden(x)))[..., 0])


def one_pass_forward(
    model: P2P,
    head: BudgetHead,
    x: jax.Array,
    region_ids: jax.Array,
    *,
    num_regions: int,
) -> tuple[EvalOutputs, jax.Array]:
    """Selector once, τ̂ from the head, classifier once.

    Args:
      model: a trained dynamic-budget `P2P` model (evaluation mode).
      head: its fitted `BudgetHead`.
      x: [B, H, W, 3] normalised images.
      region_ids: [B, H, W] ids in [0, num_regions).
      num_regions: static K.

    Returns:
      (`EvalOutputs` at τ̂, [B] τ̂).
    """
    selector = model.selector
    low, high = selector.features(x)
    budget = head(pooled_features(low, high))
    base = selector.pool(selector.pixel_outputs(low, high, x.shape[1:3]), region_ids, num_regions)
    outputs = model.classify_selection(x, region_ids, selector.with_budget(base, budget))
    return outputs, budget


def head_loss(
    head: BudgetHead, features: jax.Array, target: jax.Array, quantile: float | None = None
) -> jax.Array:
    """How far τ̂ = head(features) is from the searched τ* ([B] each).

    Args:
      head: the head.
      features: [B, F] pooled features.
      target: [B] searched budgets τ*.
      quantile: None for the mean squared error; q in (0, 1) for the pinball loss, whose
        minimiser is the q-quantile of τ* given the features: q > 0.5 errs towards larger
        budgets, which cost kept fraction, rather than smaller ones, which cost accuracy.

    Returns:
      scalar loss.
    """
    error = target - head(features)
    if quantile is None:
        return jnp.mean(error**2)
    return jnp.mean(jnp.maximum(quantile * error, (quantile - 1.0) * error))
