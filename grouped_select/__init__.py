"""grouped_select: P2P (instance-wise grouped feature selection) in JAX and Flax NNX.

The library is pure functions plus NNX modules with explicit arguments:
- `regions`: pooling per-pixel features into superpixels and back.
- `selection`: sampling keep-decisions, the hard mask, masking images.
- `objective`: the P2P loss terms and their schedules.
- `selector`, `model`: the selector module and the `P2P` model.
- `budget`: the dynamic budget search at inference.
- `color`: ImageNet normalisation and colour jitter of uint8 batches, on the accelerator.
"""

from grouped_select.budget import BudgetSearch, budget_grid, dynamic_budget_search
from grouped_select.model import P2P, EvalOutputs, TrainOutputs
from grouped_select.objective import (
    Losses,
    annealed_sparsity_weight,
    covariance_penalty,
    cross_entropy,
    mc_log_probs,
    p2p_losses,
    sparsity_penalty,
    sparsity_weight_for_epoch,
    temperature,
)
from grouped_select.regions import (
    broadcast_selections,
    broadcast_to_pixels,
    kept_fraction,
    pool_regions,
    region_sizes,
    region_sums,
    validate_region_ids,
)
from grouped_select.selection import (
    black_value,
    hard_selection,
    mask_image,
    mask_regions,
    region_covariance,
    relaxed_bernoulli,
    sample_region_logits,
)
from grouped_select.selector import RegionScores, Selector

__all__ = [
    "P2P",
    "BudgetSearch",
    "EvalOutputs",
    "Losses",
    "RegionScores",
    "Selector",
    "TrainOutputs",
    "annealed_sparsity_weight",
    "black_value",
    "broadcast_selections",
    "broadcast_to_pixels",
    "budget_grid",
    "covariance_penalty",
    "cross_entropy",
    "dynamic_budget_search",
    "hard_selection",
    "kept_fraction",
    "mask_image",
    "mask_regions",
    "mc_log_probs",
    "p2p_losses",
    "pool_regions",
    "region_covariance",
    "region_sizes",
    "region_sums",
    "relaxed_bernoulli",
    "sample_region_logits",
    "sparsity_penalty",
    "sparsity_weight_for_epoch",
    "temperature",
    "validate_region_ids",
]
