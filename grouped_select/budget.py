"""Dynamic budget: per image, the smallest budget τ on a grid at which the classifier is sure.

Semantics of the published code: every image starts at τ = 0.05; it is classified with the
hard mask; an image whose max softmax probability reaches the certainty δ is done (sticky);
the others get τ += 0.05 (accumulated in float32, so 0.45000005, not 0.45); the loop runs
while the largest τ is below 1; images never confident end at τ = 1. At most 20 classifier
passes (19 grid points below 1, then τ = 1).

Both methods here run the selector backbone and the region pooling once; the budget only
shifts region outputs (see `grouped_select.selector`):
- "grid": classifies all images at every grid τ in one batched pass (no data-dependent
  control flow; best on accelerators with memory to spare). `grid_chunk` bounds memory.
- "while_loop": a `lax.while_loop` that stops as soon as every image is done (cheapest when
  images get confident early, e.g. trained models on easy data).
Both give identical results.
"""

from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from grouped_select.model import P2P, EvalOutputs
from grouped_select.selector import RegionScores

SearchMethod = Literal["grid", "while_loop"]


class BudgetSearch(NamedTuple):
    """Result of the dynamic budget search.

    Attributes:
      budget: [B] chosen τ per image (float32 grid values, or 1.0).
      outputs: `EvalOutputs` at the chosen budget (prediction, mask, masked image, ...).
      confident: [B] whether the certainty was reached below τ = 1 (else τ = 1 by default).
      max_probs: [G, B] max class probability at every grid budget (grid method; for the
        while_loop method the entries not evaluated are NaN).
    """

    budget: jax.Array
    outputs: EvalOutputs
    confident: jax.Array
    max_probs: jax.Array


def budget_grid(step: float = 0.05, max_budget: float = 1.0) -> np.ndarray:
    """The budgets the search visits, accumulated in float32 as the reference does.

    Args:
      step: increment (and first value) of τ.
      max_budget: the search stops once τ reaches it; it is the last grid value.

    Returns:
      [G] float32: step, fl(step + step), ... while < max_budget, then max_budget.
    """
    step32, values = np.float32(step), [np.float32(step)]
    while True:
        nxt = np.float32(values[-1] + step32)
        if nxt >= max_budget:
            break
        values.append(nxt)
    return np.asarray([*values, max_budget], np.float32)


def _max_prob(log_probs: jax.Array) -> jax.Array:
    # The reference takes softmax of its log(p + 1e-6) "logits" before comparing to δ.
    return jax.nn.softmax(log_probs, axis=-1).max(axis=-1)


def _base_scores(model: P2P, x: jax.Array, region_ids: jax.Array, num_regions: int):
    selector = model.selector
    low, high = selector.features(x)
    return selector.pool(selector.pixel_outputs(low, high, x.shape[1:3]), region_ids, num_regions)


def _choose(
    model: P2P,
    x: jax.Array,
    region_ids: jax.Array,
    base: RegionScores,
    grid: jax.Array,
    grid_log_probs: jax.Array,
    certainty: jax.Array,
) -> BudgetSearch:
    """The search's result from the classifier's output at every grid budget."""
    max_probs = _max_prob(grid_log_probs)  # [G, B]
    # The last grid value (τ = 1) is the fallback, not a test: confident below it only.
    hits = max_probs[:-1] >= certainty
    confident = hits.any(axis=0)
    index = jnp.where(confident, jnp.argmax(hits, axis=0), grid.shape[0] - 1)
    budget = grid[index]
    chosen = grid_log_probs[index, jnp.arange(x.shape[0])]
    scores = model.selector.with_budget(base, budget)
    outputs = model.classify_selection(x, region_ids, scores, chosen)
    return BudgetSearch(budget, outputs, confident, max_probs)


def dynamic_budget_searches(
    model: P2P,
    x: jax.Array,
    region_ids: jax.Array,
    certainties: Sequence[float],
    *,
    num_regions: int,
    step: float = 0.05,
    grid_chunk: int | None = None,
) -> tuple[BudgetSearch, ...]:
    """The grid search at several certainties for the price of one (one classifier sweep).

    Args:
      model, x, region_ids, num_regions, step, grid_chunk: as `dynamic_budget_search`.
      certainties: the δ values.

    Returns:
      One `BudgetSearch` per certainty, in order.
    """
    base = _base_scores(model, x, region_ids, num_regions)
    grid = jnp.asarray(budget_grid(step))
    grid_log_probs = _grid_log_probs(model, x, region_ids, base, grid, grid_chunk)
    return tuple(
        _choose(model, x, region_ids, base, grid, grid_log_probs, jnp.float32(c))
        for c in certainties
    )


def _grid_log_probs(model, x, region_ids, base, grid, grid_chunk) -> jax.Array:
    """[G, B, C]: the classifier's log-probabilities at every grid budget, `grid_chunk` budgets
    (None: all) per classifier call.

    A chunk's budgets are stacked along the batch axis, one classifier batch of chunk x B
    images (the classifier is per image in evaluation mode), rather than vmapped: then the
    classifier's own batching applies to all of them (on CPU its attention runs in blocks of
    `attention.CPU_IMAGES_PER_BLOCK` images, which a vmapped axis would hide).
    """

    def at(taus: jax.Array) -> jax.Array:  # [g] -> [g, B, C]
        scores = jax.vmap(model.selector.with_budget, in_axes=(None, 0))(base, taus)
        return model.classify_selection(x, region_ids, scores).log_probs

    num_budgets = grid.shape[0]
    if grid_chunk is None or grid_chunk >= num_budgets:
        return at(grid)
    whole = num_budgets // grid_chunk * grid_chunk  # a loop over the whole chunks, then the rest
    chunks = jax.lax.map(at, grid[:whole].reshape(-1, grid_chunk))
    out = chunks.reshape(whole, *chunks.shape[2:])
    return out if whole == num_budgets else jnp.concatenate([out, at(grid[whole:])])


def dynamic_budget_search(
    model: P2P,
    x: jax.Array,
    region_ids: jax.Array,
    certainty: ArrayLike,
    *,
    num_regions: int,
    step: float = 0.05,
    method: SearchMethod = "grid",
    grid_chunk: int | None = None,
) -> BudgetSearch:
    """Finds, per image, the smallest grid budget at which the prediction is confident.

    Args:
      model: a `P2P` model trained with budget injection.
      x: [B, H, W, 3] normalised images.
      region_ids: [B, H, W] ids in [0, num_regions).
      certainty: δ, scalar (may be traced).
      num_regions: static K.
      step: grid step (0.05 in the paper).
      method: "grid" or "while_loop" (same results).
      grid_chunk: grid method only: classify this many budgets at a time (None = all).

    Returns:
      `BudgetSearch`.
    """
    base = _base_scores(model, x, region_ids, num_regions)
    grid = jnp.asarray(budget_grid(step))
    certainty = jnp.asarray(certainty, jnp.float32)
    if method == "grid":
        grid_log_probs = _grid_log_probs(model, x, region_ids, base, grid, grid_chunk)
        return _choose(model, x, region_ids, base, grid, grid_log_probs, certainty)
    if method != "while_loop":
        raise ValueError(f"method must be 'grid' or 'while_loop', got {method!r}.")

    def evaluate(tau: jax.Array) -> EvalOutputs:
        return model.classify_selection(x, region_ids, model.selector.with_budget(base, tau))

    step32 = jnp.float32(step)
    num_grid = grid.shape[0]

    def cond(state):
        _, tau, done, _ = state
        return (tau.max() < 1.0) & ~done.all()

    def body(state):
        k, tau, done, max_probs = state
        prob = _max_prob(evaluate(tau).log_probs)
        row = jnp.minimum(k, num_grid - 1)
        max_probs = max_probs.at[row].set(jnp.where(done, max_probs[row], prob))
        done = done | (prob >= certainty)
        tau = tau + (1.0 - done.astype(jnp.float32)) * step32
        return k + 1, tau, done, max_probs

    batch = x.shape[0]
    init = (
        jnp.int32(0),
        jnp.full((batch,), step32),
        jnp.zeros((batch,), bool),
        jnp.full((num_grid, batch), jnp.nan, jnp.float32),
    )
    _, tau, confident, max_probs = jax.lax.while_loop(cond, body, init)
    budget = jnp.minimum(tau, 1.0)
    # One more classifier pass: images never confident end at τ = 1, not yet evaluated.
    return BudgetSearch(budget, evaluate(budget), confident, max_probs)
