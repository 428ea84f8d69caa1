"""`evaluate_run`: evaluates a trained run on a split and writes its report (the body of
`train/evaluate.py`, importable without its command-line flags, e.g. by `train/comparison.py`).
"""

import json
import os
import time


class RunError(Exception):
    """The run or the split cannot be evaluated (a message for the user)."""


def _checkpoint_step(workdir: str) -> int | None:
    folder = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    return max(steps) if steps else None


def evaluate_run(
    workdir: str,
    *,
    split: str = "test",
    certainty: float = 0.9,
    out: str | None = None,
    batch_size: int = 0,
    curve_step: float = 0.05,
    fraction_chunk: int = 0,
    gallery_size: int = 8,
    progress: bool = True,
    saliency: str = "gradient_x_input",
    kept_fraction: float = 1.0,
    match_kept: str | None = None,
    ig_steps: int = 32,
    one_pass: bool = False,
) -> dict:
    """Evaluates a run's latest checkpoint on a split and writes the report.

    Args:
      workdir: the run's folder.
      split: a split of the run's dataset.
      certainty: δ for dynamic-budget runs (ignored for fixed-budget runs).
      out: output folder (default <workdir>/eval_<split>).
      batch_size: evaluation batch (0: the run's config.eval_batch_size).
      curve_step: fidelity curve grid step.
      fraction_chunk: fidelity fractions classified at once (0: all).
      gallery_size: images in the gallery.
      progress: show a progress bar.
      saliency: black-box runs: "gradient_x_input" or "integrated_gradients".
      kept_fraction: black-box runs: fraction of the most salient pixels kept.
      match_kept: black-box runs: a folder with another evaluation's examples.npz of this
        split; keep per image as many pixels as it did (overrides `kept_fraction`).
      ig_steps: integrated gradients' path points.
      one_pass: dynamic-budget runs: τ from the run's fitted budget head
        (`train/budget_head.py`) instead of the search; default output folder
        <workdir>/eval_<split>_one_pass.

    Returns:
      The report (what report.json holds).

    Raises:
      RunError: not a run folder, a checkpoint that does not fit, an unknown or empty split,
        a certainty outside (0, 1], a curve step that does not divide [0, 1], a
        `match_kept` folder without examples.npz or of another split, or several processes.
    """
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from tqdm import tqdm

    from grouped_select import color, evaluation, regions
    from grouped_select import report as report_lib
    from grouped_select import saliency as saliency_lib
    from train import checkpointing, input_pipeline

    if jax.process_count() > 1:
        raise RunError("evaluation runs in a single process; start it on one host.")
    if not 0 < certainty <= 1:
        raise RunError(f"--certainty={certainty} must be in (0, 1].")
    try:
        deletion, insertion = evaluation.fidelity_fractions(curve_step)
    except ValueError as e:
        raise RunError(f"--curve_step={curve_step}: {e}") from e
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        model, config, class_names = checkpointing.load_run(workdir)
    except (FileNotFoundError, ValueError) as e:
        raise RunError(str(e)) from e
    config.data.eval_split = split
    if batch_size:
        config.eval_batch_size = batch_size
    try:
        data = input_pipeline.create(config)
    except ValueError as e:
        raise RunError(f"--split={split}: {e}") from e

    black_box = config.model.kind == "black_box"
    pixel_regions = config.p2p.regions == "pixels"
    dynamic = bool(config.p2p.dynamic_budget) and not black_box
    num_examples = len(data.sources[data.eval_split])
    kept_target = _kept_per_example(match_kept, num_examples) if black_box else None
    if kept_target is None:
        if not 0 <= kept_fraction <= 1:
            raise RunError(f"--kept_fraction={kept_fraction} must be in [0, 1].")
        kept_target = np.full(num_examples, kept_fraction, np.float32)
    devices = jax.local_devices()
    if config.eval_batch_size % len(devices):
        devices = devices[:1]
    # Auto axis, as in training: the library's reshapes carry no sharding annotations.
    mesh = jax.make_mesh(
        (len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )
    model = _replicated(model, NamedSharding(mesh, PartitionSpec()))
    size = config.data.image_size
    head = None
    if one_pass:
        if not dynamic:
            raise RunError("--one_pass needs a dynamic-budget P2P run.")
        from train import one_pass as one_pass_lib

        try:
            head = one_pass_lib.load_head(workdir)
        except FileNotFoundError as e:
            raise RunError(str(e)) from e
        head = _replicated(head, NamedSharding(mesh, PartitionSpec()))
    if black_box:
        explain = saliency_lib.saliency_evaluator(
            model,
            saliency,
            deletion_fractions=deletion,
            insertion_fractions=insertion,
            fraction_chunk=fraction_chunk or None,
            num_steps=ig_steps,
        )
    else:
        evaluate = evaluation.batch_evaluator(
            model,
            budget_head=head,
            num_regions=size * size if pixel_regions else config.data.num_regions,
            certainty=certainty if dynamic else None,
            fixed_budget=config.p2p.fixed_budget,
            budget_step=config.p2p.budget_step,
            grid_chunk=config.p2p.budget_chunk or None,
            deletion_fractions=deletion,
            insertion_fractions=insertion,
            fraction_chunk=fraction_chunk or None,
        )
    acc = evaluation.EvalAccumulator(
        class_names,
        deletion,
        insertion,
        certainty=certainty if dynamic else None,
        gallery_size=gallery_size,
    )
    bar = tqdm(
        total=num_examples, desc=f"evaluate {split}", unit="img", disable=not progress, leave=False
    )
    normalize = jax.jit(color.normalize)  # the pipeline yields uint8 images
    start, seen = time.perf_counter(), 0
    for local_batch in data.eval_batches(config):
        valid = local_batch["valid"].astype(bool)
        if black_box or pixel_regions:
            local_batch["region_ids"] = np.asarray(regions.pixel_region_ids(len(valid), size, size))
        batch = input_pipeline.to_global(local_batch, mesh)
        images = normalize(batch["image"])
        if black_box:
            # Padding examples (valid False, always last) keep everything.
            kept = np.ones(len(valid), np.float32)
            kept[valid] = kept_target[seen : seen + int(valid.sum())]
            results = explain(images, batch["mask"], kept)
        else:
            results = evaluate(images, batch["region_ids"], batch["mask"])
        acc.update(
            results,
            local_batch["label"],
            valid,
            local_batch["has_mask"],
            pixels=local_batch["image"],
            region_ids=local_batch["region_ids"],
        )
        seen += int(valid.sum())
        bar.update(int(valid.sum()))
    bar.close()
    if acc.count == 0:
        raise RunError(f"split {split!r} has no examples.")
    seconds = time.perf_counter() - start

    suffix = "_one_pass" if one_pass else ""
    out = os.path.abspath(out or os.path.join(workdir, f"eval_{split}{suffix}"))
    os.makedirs(out, exist_ok=True)
    summary = acc.summary()
    figures = report_lib.write_figures(acc, out)
    report = {
        "workdir": workdir,
        "out": out,
        "split": split,
        "step": _checkpoint_step(workdir),
        "model": {
            "kind": config.model.kind,
            "selector": None if black_box else config.model.selector,
            "classifier": config.model.classifier,
            "dynamic_budget": dynamic,
            "regions": config.p2p.regions,
            "image_size": size,
            "num_regions": size * size if pixel_regions else config.data.num_regions,
            "saliency": saliency if black_box else None,
            "kept_fraction_target": float(kept_target.mean()) if black_box else None,
            "one_pass": one_pass,
        },
        **summary,
        "figures": figures,
        "seconds": seconds,
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    np.savez(
        os.path.join(out, EXAMPLES_FILE),
        **{name: acc.column(name) for name in evaluation.EXAMPLE_COLUMNS},
    )
    title = f"P2P evaluation: {os.path.basename(workdir)}, split {split}, step {report['step']}"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report_lib.markdown_report(summary, figures, title) + "\n")
    return report


EXAMPLES_FILE = "examples.npz"


def _kept_per_example(folder: str | None, num_examples: int):
    """[N] kept pixel fractions of the evaluation in `folder` (None: no folder given)."""
    import numpy as np

    if folder is None:
        return None
    path = os.path.join(os.path.expanduser(folder), EXAMPLES_FILE)
    if not os.path.exists(path):
        raise RunError(
            f"--match_kept={folder!r}: {path} does not exist; pass the output folder of a "
            "train/evaluate.py run on the same split."
        )
    kept = np.load(path)["kept_pixels"].astype(np.float32)
    if len(kept) != num_examples:
        raise RunError(
            f"--match_kept={folder!r} holds {len(kept)} examples but this split has "
            f"{num_examples}; evaluate both on the same split."
        )
    return kept


def _replicated(model, sharding):
    """The model with its state placed on `sharding` (a copy)."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, sharding))
