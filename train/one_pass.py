"""Fitting and measuring the one-pass budget head of a finished run (`train/budget_head.py`
is the command; `load_head` serves `train/evaluate.py --one_pass`).
"""

import json
import os
import time

HEAD_DIR = "budget_head"
REPORT_FILE = "budget_head.json"


def _search_and_features(model, num_regions, certainty, budget_step, budget_chunk):
    """Jitted (uint8 images, ids) -> (pooled features [B, F], searched τ* [B], search outputs)."""
    import jax
    from flax import nnx

    from grouped_select import budget, budget_head, color

    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, pixels, region_ids):
        m = nnx.merge(graphdef, state)
        images = color.normalize(pixels)
        search = budget.dynamic_budget_search(
            m,
            images,
            region_ids,
            certainty,
            num_regions=num_regions,
            step=budget_step,
            grid_chunk=budget_chunk,
        )
        features = budget_head.pooled_features(*m.selector.features(images))
        return features, search.budget, search.outputs

    return lambda images, ids: run(state, images, ids)


def _one_pass(model, head, num_regions):
    import jax
    from flax import nnx

    from grouped_select import budget_head, color

    graphdef, state = nnx.split((model, head))

    @jax.jit
    def run(state, pixels, region_ids):
        m, h = nnx.merge(graphdef, state)
        images = color.normalize(pixels)
        return budget_head.one_pass_forward(m, h, images, region_ids, num_regions=num_regions)

    return lambda images, ids: run(state, images, ids)


def fit_head(
    features,
    targets,
    *,
    hidden: int,
    epochs: int,
    learning_rate: float,
    seed: int,
    quantile: float | None = None,
):
    """Fits a `BudgetHead` on (features [N, F], τ* [N]) by `head_loss`; returns the head."""
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from grouped_select.budget_head import BudgetHead, head_loss

    head = BudgetHead(features.shape[1], hidden=hidden, rngs=nnx.Rngs(seed))
    head.set_normalization(jnp.asarray(features))
    optimizer = nnx.Optimizer(head, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(head, optimizer, x, y):
        loss, grads = nnx.value_and_grad(head_loss)(head, x, y, quantile)
        optimizer.update(head, grads)
        return loss

    rng = np.random.default_rng(seed)
    batch = min(256, len(targets))
    for _ in range(epochs):
        order = rng.permutation(len(targets))
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start : start + batch]
            step(head, optimizer, jnp.asarray(features[idx]), jnp.asarray(targets[idx]))
    return head


def save_head(head, workdir: str) -> str:
    """Writes the head's state to <workdir>/budget_head (orbax, replacing an older one)."""
    import orbax.checkpoint as ocp
    from flax import nnx

    path = os.path.join(workdir, HEAD_DIR)
    with ocp.StandardCheckpointer() as saver:
        saver.save(path, nnx.to_pure_dict(nnx.state(head)), force=True)
    return path


def load_head(workdir: str):
    """The `BudgetHead` fitted for the run in `workdir` (raises FileNotFoundError if none)."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from grouped_select.budget_head import BudgetHead

    path = os.path.abspath(os.path.join(workdir, HEAD_DIR))
    report = os.path.join(workdir, REPORT_FILE)
    if not (os.path.isdir(path) and os.path.exists(report)):
        raise FileNotFoundError(
            f"{path} does not exist: fit the head first with "
            f"`python train/budget_head.py --workdir={workdir}`."
        )
    with open(report) as f:
        settings = json.load(f)["settings"]
    head = BudgetHead(settings["num_features"], hidden=settings["hidden"], rngs=nnx.Rngs(0))
    with ocp.StandardCheckpointer() as loader:
        values = loader.restore(path)
    state = nnx.state(head)
    nnx.replace_by_pure_dict(state, values)
    nnx.update(head, state)
    return head


def fit_and_measure(
    workdir: str,
    *,
    certainty: float = 0.9,
    hidden: int = 64,
    epochs: int = 100,
    learning_rate: float = 3e-3,
    seed: int = 0,
    quantile: float | None = 0.8,
) -> dict:
    """Fits the head on the training split, saves it, measures it on the eval split.

    Returns:
      The report written to <workdir>/budget_head.json.

    Raises:
      ValueError: not a dynamic-budget run, certainty outside (0, 1] or quantile outside
        (0, 1).
    """
    import jax
    import numpy as np

    from grouped_select import metrics, regions
    from train import checkpointing, input_pipeline

    if not 0 < certainty <= 1:
        raise ValueError(f"--certainty={certainty} must be in (0, 1].")
    if quantile is not None and not 0 < quantile < 1:
        raise ValueError(f"--quantile={quantile} must be in (0, 1) (or 0: least squares).")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    model, config, _ = checkpointing.load_run(workdir)
    if not config.p2p.dynamic_budget or config.model.kind != "p2p":
        raise ValueError(f"{workdir} is not a dynamic-budget P2P run; it has no budget to learn.")
    num_regions = config.data.num_regions
    collect = _search_and_features(
        model, num_regions, certainty, config.p2p.budget_step, config.p2p.budget_chunk or None
    )

    def batches(split):
        c = config.copy_and_resolve_references()
        c.data.eval_split = split
        data = input_pipeline.create(c)
        for batch in data.eval_batches(c):
            yield batch, batch["valid"].astype(bool)

    features, targets = [], []
    for batch, valid in batches(config.data.train_split):
        f, tau, _ = jax.device_get(collect(batch["image"], batch["region_ids"]))
        features.append(f[valid])
        targets.append(tau[valid])
    features, targets = np.concatenate(features), np.concatenate(targets)
    head = fit_head(
        features,
        targets,
        hidden=hidden,
        epochs=epochs,
        learning_rate=learning_rate,
        seed=seed,
        quantile=quantile,
    )
    one_pass = _one_pass(model, head, num_regions)

    sums = {
        k: 0.0
        for k in (
            "count",
            "abs_error",
            "search_correct",
            "one_pass_correct",
            "search_kept",
            "one_pass_kept",
            "search_precision",
            "one_pass_precision",
            "mask_count",
            "constant_error",
        )
    }
    times = {"search": 0.0, "one_pass": 0.0}
    eval_batches = list(batches(config.data.eval_split))
    for warm_up in (True, False):  # the first pass compiles; the second is timed
        for batch, valid in eval_batches:
            images, ids = batch["image"], batch["region_ids"]
            start = time.perf_counter()
            search_out = jax.block_until_ready(collect(images, ids))
            middle = time.perf_counter()
            one_out = jax.block_until_ready(one_pass(images, ids))
            end = time.perf_counter()
            if warm_up:
                continue
            times["search"] += middle - start
            times["one_pass"] += end - middle
            _, tau, search = jax.device_get(search_out)
            outputs, tau_hat = jax.device_get(one_out)
            with_mask = valid & batch["has_mask"].astype(bool)
            sums["count"] += valid.sum()
            sums["mask_count"] += with_mask.sum()
            sums["abs_error"] += np.abs(tau_hat - tau)[valid].sum()
            sums["constant_error"] += np.abs(np.median(targets) - tau)[valid].sum()
            for name, out in (("search", search), ("one_pass", outputs)):
                right = np.asarray(metrics.correct(out.log_probs, batch["label"]))
                sums[f"{name}_correct"] += right[valid].sum()
                sums[f"{name}_kept"] += np.asarray(out.kept_pixels)[valid].sum()
                pixels = regions.broadcast_to_pixels(out.selected, ids)
                precision = np.asarray(metrics.mask_overlap(pixels, batch["mask"])["precision"])
                sums[f"{name}_precision"] += precision[with_mask].sum()
    n, m = sums["count"], max(sums["mask_count"], 1)
    report = {
        "settings": {
            "certainty": certainty,
            "hidden": hidden,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "quantile": quantile,
            "num_features": int(features.shape[1]),
            "train_examples": int(len(targets)),
            "train_mean_budget": float(targets.mean()),
        },
        "eval_split": config.data.eval_split,
        "count": int(n),
        "budget_mean_abs_error": sums["abs_error"] / n,
        # The same error of predicting every image the training median τ*: what the head adds.
        "constant_budget_mean_abs_error": sums["constant_error"] / n,
        "search": {
            "accuracy": sums["search_correct"] / n,
            "kept_pixels": sums["search_kept"] / n,
            "mask_precision": sums["search_precision"] / m,
            "images_per_second": n / times["search"],
        },
        "one_pass": {
            "accuracy": sums["one_pass_correct"] / n,
            "kept_pixels": sums["one_pass_kept"] / n,
            "mask_precision": sums["one_pass_precision"] / m,
            "images_per_second": n / times["one_pass"],
        },
        "device": jax.devices()[0].device_kind,
    }
    report = json.loads(json.dumps(report, default=float))
    save_head(head, workdir)
    with open(os.path.join(workdir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    return report
