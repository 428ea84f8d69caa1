"""Evaluates a trained run on a split: writes report.json, report.md and figures.

    python train/evaluate.py --workdir=runs/default                     # test split, δ = 0.9
    python train/evaluate.py --workdir=runs/default --split=validation --certainty=0.95
    python train/evaluate.py --workdir=runs/fixed --out=/tmp/fixed_eval

    python train/evaluate.py --workdir=runs/black_box --saliency=integrated_gradients \
        --match_kept=runs/default/eval_test                            # post-hoc baseline

Dynamic-budget runs choose τ per image by the search at --certainty; fixed-budget runs
(config.p2p.dynamic_budget False) are evaluated without budget injection; pixel-level runs
(config.p2p.regions = "pixels") with one region per pixel. Black-box runs
(config.model.kind = "black_box") are explained post hoc (`grouped_select.saliency`): the
classifier sees its top --kept_fraction salient pixels, or per image as many as another
evaluation kept (--match_kept, a folder holding that evaluation's examples.npz). The output
folder (default <workdir>/eval_<split>) receives report.json (every number, and the fidelity
curves), report.md (a table and the figures), examples.npz (per example: label, class
probabilities, τ, kept fractions) and the figures: fidelity_curves.png, gallery.png,
kept_vs_budget.png, per_class_accuracy.png. The metrics are in `grouped_select.evaluation`.
Single process (all local devices); evaluation runs in float32.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # first thing: may restart this program (train/huge_pages.py)
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402

from train.run_evaluation import RunError, evaluate_run  # noqa: E402

__all__ = ["RunError", "evaluate_run"]

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
_SALIENCY = flags.DEFINE_enum(
    "saliency",
    "gradient_x_input",
    ["gradient_x_input", "integrated_gradients"],
    "Black-box runs: the post-hoc saliency that ranks pixels.",
)
_KEPT_FRACTION = flags.DEFINE_float(
    "kept_fraction", 1.0, "Black-box runs: fraction of the most salient pixels kept."
)
_MATCH_KEPT = flags.DEFINE_string(
    "match_kept",
    None,
    "Black-box runs: keep per image as many pixels as the evaluation in this folder did "
    "(its examples.npz; same split). Overrides --kept_fraction.",
)
_ONE_PASS = flags.DEFINE_bool(
    "one_pass",
    False,
    "Dynamic-budget runs: τ from the budget head fitted by train/budget_head.py (one "
    "classifier pass) instead of the search.",
)
_IG_STEPS = flags.DEFINE_integer("ig_steps", 32, "Integrated gradients: path points.")
flags.mark_flags_as_required(["workdir"])


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
            saliency=_SALIENCY.value,
            kept_fraction=_KEPT_FRACTION.value,
            match_kept=_MATCH_KEPT.value,
            ig_steps=_IG_STEPS.value,
            one_pass=_ONE_PASS.value,
        )
    except RunError as e:
        sys.exit(f"evaluate.py: error: {e}")
    keys = ("out", "accuracy", "kept_pixels", "budget", "pxap", "mask_precision", "count")
    print(json.dumps({k: report[k] for k in keys}))


if __name__ == "__main__":
    app.run(main)
