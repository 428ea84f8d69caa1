"""Evaluates a trained run on a split: writes report.json, report.md and figures.

    python train/evaluate.py --workdir=runs/default                     # test split, δ = 0.9
    python train/evaluate.py --workdir=runs/default --split=validation --certainty=0.95
    python train/evaluate.py --workdir=runs/fixed --out=/tmp/fixed_eval

Dynamic-budget runs choose τ per image by the search at --certainty; fixed-budget runs
(config.p2p.dynamic_budget False) are evaluated without budget injection. The output folder
(default <workdir>/eval_<split>) receives report.json (every number, and the fidelity curves),
report.md (a table and the figures) and the figures: fidelity_curves.png, gallery.png,
kept_vs_budget.png, per_class_accuracy.png. The metrics are in `grouped_select.evaluation`.
Single process (all local devices); evaluation runs in float32.
"""

import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder written by train/main.py.")
_SPLIT = flags.DEFINE_string("split", "test", "Which split of the run's dataset to evaluate.")
_CERTAINTY = flags.DEFINE_float("certainty", 0.9, "Certainty δ of the dynamic budget search.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default <workdir>/eval_<split>).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Batch size (0: config.eval_batch_size).")
_CURVE_STEP = flags.DEFINE_float("curve_step", 0.05, "Grid step of the fidelity curves.")
_FRACTION_CHUNK = flags.DEFINE_integer(
    "fraction_chunk", 0, "Fidelity: classify this many fractions at once (0: all)."
)
_GALLERY = flags.DEFINE_integer("gallery", 8, "Images in the gallery figure.")
flags.mark_flags_as_required(["workdir"])


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

    Returns:
      The report (what report.json holds).

    Raises:
      RunError: not a run folder, a checkpoint that does not fit, an unknown or empty split,
        a certainty outside (0, 1], a curve step that does not divide [0, 1], or several
        processes.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    from tqdm import tqdm

    from grouped_select import evaluation
    from grouped_select import report as report_lib
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

    dynamic = bool(config.p2p.dynamic_budget)
    devices = jax.local_devices()
    if config.eval_batch_size % len(devices):
        devices = devices[:1]
    # Auto axis, as in training: the library's reshapes carry no sharding annotations.
    mesh = jax.make_mesh(
        (len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )
    model = _replicated(model, NamedSharding(mesh, PartitionSpec()))
    evaluate = evaluation.batch_evaluator(
        model,
        num_regions=config.data.num_regions,
        certainty=certainty if dynamic else None,
        fixed_budget=config.p2p.fixed_budget,
        budget_step=config.p2p.budget_step,
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
    num_examples = len(data.sources[data.eval_split])
    bar = tqdm(
        total=num_examples, desc=f"evaluate {split}", unit="img", disable=not progress, leave=False
    )
    start = time.perf_counter()
    for local_batch in data.eval_batches(config):
        batch = input_pipeline.to_global(local_batch, mesh)
        results = evaluate(batch["image"], batch["region_ids"], batch["mask"])
        acc.update(
            results,
            local_batch["label"],
            local_batch["valid"],
            local_batch["has_mask"],
            images=local_batch["image"],
            region_ids=local_batch["region_ids"],
        )
        bar.update(int(local_batch["valid"].sum()))
    bar.close()
    if acc.count == 0:
        raise RunError(f"split {split!r} has no examples.")
    seconds = time.perf_counter() - start

    out = os.path.abspath(out or os.path.join(workdir, f"eval_{split}"))
    os.makedirs(out, exist_ok=True)
    summary = acc.summary()
    figures = report_lib.write_figures(acc, out)
    report = {
        "workdir": workdir,
        "out": out,
        "split": split,
        "step": _checkpoint_step(workdir),
        "model": {
            "selector": config.model.selector,
            "classifier": config.model.classifier,
            "dynamic_budget": dynamic,
            "image_size": config.data.image_size,
            "num_regions": config.data.num_regions,
        },
        **summary,
        "figures": figures,
        "seconds": seconds,
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    title = f"P2P evaluation: {os.path.basename(workdir)}, split {split}, step {report['step']}"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report_lib.markdown_report(summary, figures, title) + "\n")
    return report


def _replicated(model, sharding):
    """The model with its state placed on `sharding` (a copy)."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, sharding))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        report = evaluate_run(
            _WORKDIR.value,
            split=_SPLIT.value,
            certainty=_CERTAINTY.value,
            out=_OUT.value,
            batch_size=_BATCH_SIZE.value,
            curve_step=_CURVE_STEP.value,
            fraction_chunk=_FRACTION_CHUNK.value,
            gallery_size=_GALLERY.value,
        )
    except RunError as e:
        sys.exit(f"evaluate.py: error: {e}")
    keys = ("out", "accuracy", "kept_pixels", "budget", "pxap", "mask_precision", "count")
    print(json.dumps({k: report[k] for k in keys}))


if __name__ == "__main__":
    app.run(main)
