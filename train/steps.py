"""The jitted training and evaluation steps, as functions of pytrees.

The model is split once into a static graph definition and pytrees (`params`: the trainable
`nnx.Param`s; `rest`: everything else, e.g. BatchNorm statistics). Steps merge them back
inside the traced function (gemma's `jax_train_step` pattern), so they compile once and work
with plain `jax.jit` + shardings.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct

from grouped_select import budget as budget_lib
from grouped_select import color, metrics, objective, regions, selection
from grouped_select.precision import cast_floating


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes (a pytree; saved in checkpoints).

    Attributes:
      step: int32 scalar, the number of steps taken.
      params: trainable parameters (`nnx.State` of `nnx.Param`).
      rest: other model state (BatchNorm statistics).
      opt_state: optax state.
      rng: uint32 key data; the step's key is `fold_in(key, step)`, so resumed runs draw the
        same randomness.
    """

    step: jax.Array
    params: Any
    rest: Any
    opt_state: Any
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static hyperparameters of the steps (taken from the config by the training loop)."""

    num_regions: int
    num_epochs: int
    steps_per_epoch: int
    model_kind: str = "p2p"
    pixel_regions: bool = False
    dynamic_budget: bool = True
    fixed_budget: float = 0.2
    min_budget: float = 0.05
    sparsity: str = "kl"
    sparsity_weight: float = 10.0
    anneal_sparsity: bool = True
    sparsity_warmup_epochs: int = 0
    covariance_weight: float = 0.01
    final_temperature: float = 0.5
    num_samples: int = 1
    straight_through: bool = False
    jitter: float = 1e-6
    compute_dtype: Any = jnp.float32
    certainties: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99)
    budget_step: float = 0.05
    budget_chunk: int | None = 5  # budgets per classifier batch in the search (None: all)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODEL_KINDS = ("p2p", "black_box")
REGION_KINDS = ("superpixels", "pixels")


def create_optimizer(
    config: ml_collections.ConfigDict, total_steps: int = 1
) -> optax.GradientTransformation:
    """Adam (AdamW when weight decay is set), a learning-rate schedule, optional clipping.

    Args:
      config: the training config (`config.optim`).
      total_steps: steps of the whole run, for the "cosine" and "stable_decay" schedules.
    """
    o = config.optim
    total_steps = max(total_steps, 1)
    if o.schedule == "constant":
        learning_rate = o.learning_rate
    elif o.schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(o.learning_rate, total_steps)
    elif o.schedule == "stable_decay":
        # Constant, then linearly to zero over the last `decay_fraction` of the run: the
        # annealed objective is fixed by then, and the decay settles the noisy Monte-Carlo
        # gradients of the sampled masks.
        if not 0.0 < o.decay_fraction <= 1.0:
            raise ValueError(f"config.optim.decay_fraction={o.decay_fraction} must be in (0, 1].")
        decay_steps = max(round(o.decay_fraction * total_steps), 1)
        learning_rate = optax.join_schedules(
            [
                optax.constant_schedule(o.learning_rate),
                optax.linear_schedule(o.learning_rate, 0.0, decay_steps),
            ],
            boundaries=[total_steps - decay_steps],
        )
    else:
        raise ValueError(
            f"config.optim.schedule={o.schedule!r} must be 'constant', 'cosine' or 'stable_decay'."
        )
    if o.weight_decay:
        tx = optax.adamw(learning_rate, weight_decay=o.weight_decay)
    else:
        tx = optax.adam(learning_rate)
    if o.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    return tx


def step_settings(config: ml_collections.ConfigDict, steps_per_epoch: int) -> StepSettings:
    """The static hyperparameters of the steps, read from the config."""
    p = config.p2p
    if config.compute_dtype not in DTYPES:
        raise ValueError(
            f"config.compute_dtype={config.compute_dtype!r} must be one of {sorted(DTYPES)}."
        )
    if config.model.kind not in MODEL_KINDS:
        raise ValueError(f"config.model.kind={config.model.kind!r} must be one of {MODEL_KINDS}.")
    if p.regions not in REGION_KINDS:
        raise ValueError(f"config.p2p.regions={p.regions!r} must be one of {REGION_KINDS}.")
    pixel_regions = p.regions == "pixels"
    return StepSettings(
        num_regions=config.data.image_size**2 if pixel_regions else config.data.num_regions,
        num_epochs=config.optim.num_epochs,
        steps_per_epoch=steps_per_epoch,
        model_kind=config.model.kind,
        pixel_regions=pixel_regions,
        dynamic_budget=p.dynamic_budget,
        fixed_budget=p.fixed_budget,
        min_budget=p.min_budget,
        sparsity=p.sparsity,
        sparsity_weight=p.sparsity_weight,
        anneal_sparsity=p.anneal_sparsity,
        sparsity_warmup_epochs=p.sparsity_warmup_epochs,
        covariance_weight=p.covariance_weight,
        final_temperature=p.final_temperature,
        num_samples=p.num_samples,
        straight_through=p.straight_through,
        jitter=p.jitter,
        compute_dtype=DTYPES[config.compute_dtype],
        certainties=tuple(float(c) for c in p.certainties),
        budget_step=p.budget_step,
        budget_chunk=p.budget_chunk or None,
    )


def initial_state(
    model: nnx.Module, optimizer: optax.GradientTransformation, seed: int
) -> tuple[nnx.GraphDef, TrainState]:
    """Splits a model into its graph definition and a fresh `TrainState`."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
    return graphdef, state


def eval_graphdef(model: nnx.Module) -> nnx.GraphDef:
    """The graph definition of `model` in evaluation mode (BatchNorm uses running stats)."""
    model.eval()
    graphdef = nnx.graphdef(model)
    model.train()
    return graphdef


def schedules(step: jax.Array, s: StepSettings) -> tuple[jax.Array, jax.Array]:
    """(temperature, λ₁) for a step: per-epoch schedules, epoch = step // steps_per_epoch.

    With `sparsity_warmup_epochs` W > 0, λ₁ is 0 for epochs < W and the paper's schedules
    (annealed λ₁, temperature) then run over the remaining E - W epochs as if they were a
    whole training run; W = 0 is the paper's schedule. W is capped at E - 1 (short runs).
    """
    epoch = step // s.steps_per_epoch
    if s.sparsity_warmup_epochs < 0:
        raise ValueError(f"sparsity_warmup_epochs={s.sparsity_warmup_epochs} must be >= 0.")
    warmup = min(s.sparsity_warmup_epochs, s.num_epochs - 1)
    epoch = jnp.maximum(epoch - warmup, 0)
    num_epochs = s.num_epochs - warmup
    temperature = objective.temperature(epoch, num_epochs, s.final_temperature)
    if s.anneal_sparsity:
        weight = objective.sparsity_weight_for_epoch(epoch, num_epochs, s.sparsity_weight)
    else:
        weight = jnp.float32(s.sparsity_weight)
    if warmup:
        weight = jnp.where(step < warmup * s.steps_per_epoch, 0.0, weight)
    return temperature, weight


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    settings: StepSettings,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step on a (sharded) global batch.

    Args:
      state: the `TrainState`.
      batch: "image" [B, H, W, 3] uint8, "region_ids" [B, H, W] int32, "label" [B] int32,
        and optionally "jitter_factors" [B, 4], "jitter_order" [B, 4] (see `input_images`).
      graphdef: the model's graph definition (training mode).
      optimizer: the optax transformation.
      settings: static hyperparameters.

    Returns:
      (new state, scalar metrics).
    """
    s = settings
    if s.model_kind == "black_box":
        return _black_box_train_step(state, batch, graphdef, optimizer, s)
    batch = with_region_ids(batch, s)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    key_budget, key_model = jax.random.split(key)
    temperature, sparsity_weight = schedules(state.step, s)
    images, ids, labels = input_images(batch, s), batch["region_ids"], batch["label"]
    if s.dynamic_budget:
        budget = jax.random.uniform(key_budget, labels.shape, jnp.float32, s.min_budget, 1.0)
        loss_budget = budget
    else:
        budget, loss_budget = None, jnp.float32(s.fixed_budget)

    # `rest` enters as an argument so its variables belong to the gradient's trace: BatchNorm
    # updates its running statistics in place during the forward pass.
    def loss_fn(params, rest):
        model = nnx.merge(graphdef, cast_floating(params, s.compute_dtype), rest, copy=True)
        out = model.train_forward(
            images,
            ids,
            key_model,
            num_regions=s.num_regions,
            budget=budget,
            temperature=temperature,
            num_samples=s.num_samples,
            straight_through=s.straight_through,
            jitter=s.jitter,
        )
        covariance = selection.region_covariance(out.scores.embeddings, s.jitter)
        losses = objective.p2p_losses(
            out.log_probs,
            labels,
            out.scores.kept_fraction,
            loss_budget,
            covariance,
            sparsity_weight=sparsity_weight,
            covariance_weight=s.covariance_weight,
            variant=s.sparsity,
        )
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return losses.total, (losses, out, rest)

    grads, (losses, out, rest) = jax.grad(loss_fn, has_aux=True)(state.params, state.rest)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    hard_kept = regions.kept_fraction(
        (out.region_masks > 0.5).astype(jnp.float32).mean(0), out.scores.sizes
    )
    step_metrics = {
        "loss": losses.total,
        "cross_entropy": losses.cross_entropy,
        "sparsity_loss": losses.sparsity,
        "covariance_loss": losses.covariance,
        "accuracy": metrics.correct(out.log_probs, labels).mean(),
        "kept_fraction": losses.kept_fraction.mean(),
        "sampled_kept_fraction": hard_kept.mean(),
        "temperature": temperature,
        "sparsity_weight": sparsity_weight,
        "grad_norm": global_norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        rest=_keep_dtypes(rest, state.rest),
        opt_state=opt_state,
    )
    return new_state, step_metrics


def input_images(batch: dict[str, jax.Array], settings: StepSettings) -> jax.Array:
    """The model's input from a batch of the input pipeline, on the accelerator.

    Colour jitter (when the batch carries its parameters: training with
    `config.data.color_jitter`), then ImageNet normalisation, in the compute dtype.

    Args:
      batch: "image" [B, H, W, 3] uint8, optionally "jitter_factors" [B, 4] float32 and
        "jitter_order" [B, 4] int32.
      settings: static hyperparameters (the compute dtype).

    Returns:
      [B, H, W, 3] normalised images in `settings.compute_dtype`.
    """
    images = batch["image"]
    if "jitter_factors" in batch:
        images = color.color_jitter(images, batch["jitter_factors"], batch["jitter_order"])
    return color.normalize(images).astype(settings.compute_dtype)


def with_region_ids(batch: dict[str, jax.Array], settings: StepSettings) -> dict[str, jax.Array]:
    """The batch with the region ids the model uses: the superpixels, or one region per
    pixel (`config.p2p.regions = "pixels"`, the paper's pixel-level ablation)."""
    if not settings.pixel_regions:
        return batch
    return {**batch, "region_ids": regions.pixel_region_ids(*batch["region_ids"].shape)}


def _black_box_train_step(state, batch, graphdef, optimizer, s: StepSettings):
    """`train_step` of the black-box baseline: cross-entropy on full images."""
    images, labels = input_images(batch, s), batch["label"]

    def loss_fn(params, rest):
        model = nnx.merge(graphdef, cast_floating(params, s.compute_dtype), rest, copy=True)
        logits = model.classify(images)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return objective.cross_entropy(logits, labels), (logits, rest)

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.rest
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    step_metrics = {
        "loss": loss,
        "cross_entropy": loss,
        "accuracy": metrics.correct(logits, labels).mean(),
        "kept_fraction": jnp.float32(1.0),
        "grad_norm": global_norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        rest=_keep_dtypes(rest, state.rest),
        opt_state=opt_state,
    )
    return new_state, step_metrics


def _keep_dtypes(new, old):
    # BatchNorm statistics updated from bfloat16 activations stay in their stored dtype.
    return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


def _per_image(outputs, batch: dict[str, jax.Array], weight: jax.Array) -> dict[str, jax.Array]:
    """Sums over the batch of per-image metrics of `EvalOutputs`, padding excluded."""
    pixel_mask = regions.broadcast_to_pixels(outputs.selected, batch["region_ids"])
    overlap = metrics.mask_overlap(pixel_mask, batch["mask"])
    has_mask = batch["has_mask"].astype(jnp.float32) * weight
    return {
        "correct": jnp.sum(metrics.correct(outputs.log_probs, batch["label"]) * weight),
        "kept_pixels": jnp.sum(outputs.kept_pixels * weight),
        "kept_fraction": jnp.sum(outputs.scores.kept_fraction * weight),
        "mask_precision": jnp.sum(overlap["precision"] * has_mask),
        "mask_iou": jnp.sum(overlap["iou"] * has_mask),
        "count": jnp.sum(weight),
        "mask_count": jnp.sum(has_mask),
    }


def eval_step(
    params: Any,
    rest: Any,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    settings: StepSettings,
) -> dict[str, jax.Array]:
    """Metric sums on one evaluation batch.

    Dynamic-budget models are evaluated at every certainty δ (one classifier sweep over the
    budget grid serves them all) and at τ = 1; fixed-budget models with their hard mask; the
    black box on full images (group "full").

    Args:
      params, rest: model state (evaluation-mode `graphdef`).
      batch: as in `train_step`, plus "mask" [B, H, W], "has_mask" [B] and "valid" [B].
      graphdef: the model's graph definition in evaluation mode.
      settings: static hyperparameters.

    Returns:
      Flat dict "<name>/<metric>" -> scalar sums; divide by ".../count" to average.
    """
    s = settings
    model = nnx.merge(graphdef, cast_floating(params, s.compute_dtype), rest)
    images = input_images(batch, s)
    weight = batch["valid"].astype(jnp.float32)
    out: dict[str, jax.Array] = {}
    if s.model_kind == "black_box":
        return _prefixed("full", _full_image_sums(model.classify(images), batch, weight))
    batch = with_region_ids(batch, s)
    if not s.dynamic_budget:
        result = model.eval_forward(images, batch["region_ids"], num_regions=s.num_regions)
        out.update(_prefixed("fixed", _per_image(result, batch, weight)))
        return out
    full = model.eval_forward(images, batch["region_ids"], num_regions=s.num_regions, budget=1.0)
    out.update(_prefixed("budget_1.0", _per_image(full, batch, weight)))
    searches = budget_lib.dynamic_budget_searches(
        model,
        images,
        batch["region_ids"],
        s.certainties,
        num_regions=s.num_regions,
        step=s.budget_step,
        grid_chunk=s.budget_chunk,
    )
    for certainty, search in zip(s.certainties, searches, strict=True):
        sums = _per_image(search.outputs, batch, weight)
        sums["budget"] = jnp.sum(search.budget * weight)
        out.update(_prefixed(f"certainty_{certainty}", sums))
    return out


def _full_image_sums(logits, batch, weight) -> dict[str, jax.Array]:
    """`_per_image` for a classifier that sees every pixel (kept fraction 1)."""
    overlap = metrics.mask_overlap(jnp.ones_like(batch["mask"]), batch["mask"])
    has_mask = batch["has_mask"].astype(jnp.float32) * weight
    return {
        "correct": jnp.sum(metrics.correct(logits, batch["label"]) * weight),
        "kept_pixels": jnp.sum(weight),
        "kept_fraction": jnp.sum(weight),
        "mask_precision": jnp.sum(overlap["precision"] * has_mask),
        "mask_iou": jnp.sum(overlap["iou"] * has_mask),
        "count": jnp.sum(weight),
        "mask_count": jnp.sum(has_mask),
    }


def _prefixed(prefix: str, values: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def summarize(sums: dict[str, float], names: Sequence[str] | None = None) -> dict[str, float]:
    """Turns accumulated metric sums into means ("x/correct" -> "x/accuracy", ...)."""
    groups = sorted({k.split("/")[0] for k in sums} if names is None else names)
    result = {}
    for group in groups:
        count = max(sums[f"{group}/count"], 1.0)
        mask_count = max(sums[f"{group}/mask_count"], 1.0)
        result[f"{group}/accuracy"] = sums[f"{group}/correct"] / count
        result[f"{group}/kept_pixels"] = sums[f"{group}/kept_pixels"] / count
        result[f"{group}/kept_fraction"] = sums[f"{group}/kept_fraction"] / count
        if sums[f"{group}/mask_count"] > 0:
            result[f"{group}/mask_precision"] = sums[f"{group}/mask_precision"] / mask_count
            result[f"{group}/mask_iou"] = sums[f"{group}/mask_iou"] / mask_count
        if f"{group}/budget" in sums:
            result[f"{group}/budget"] = sums[f"{group}/budget"] / count
        result[f"{group}/count"] = sums[f"{group}/count"]
    return result


def global_norm(tree, *, concatenate: bool | None = None) -> jax.Array:
    """The L2 norm of all of a pytree's leaves together, in float32, cheap on a GPU.

    Summed leaf by leaf (as `optax.tree.norm`), it is one reduction per leaf: on a GPU ~170
    kernels for the paper's model, 0.4 ms of a ~16 ms step by the H200 census, for a logged
    metric. There the leaves are concatenated first and summed in one reduction (XLA fuses
    the pieces into a few kernels). Not on a CPU, where the concatenation is a 35 MB copy:
    15 ms against 1 ms for the per-leaf sums.

    Args:
      tree: a pytree of arrays (the gradients).
      concatenate: one reduction over the concatenated leaves; None: except on a CPU.

    Returns:
      [] float32 norm.
    """
    if concatenate is None:
        concatenate = jax.default_backend() != "cpu"
    leaves = [leaf.astype(jnp.float32) for leaf in jax.tree.leaves(tree)]
    if concatenate:
        return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate([jnp.ravel(x) for x in leaves]))))
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))
