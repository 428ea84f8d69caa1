"""Trains P2P and its baselines with one config and writes the comparison table.

    python train/compare.py                                   # built-in benchmark, ~35 min CPU
    python train/compare.py --workdir=runs/compare --config.optim.num_epochs=20
    python train/compare.py --variants=p2p,black_box          # a subset

Every variant is the same config with one change, trained by `train_and_evaluate` into
<workdir>/<variant> (a finished variant is reused: rerunning the command only redoes what is
missing) and evaluated by `train/evaluate.py`'s `evaluate_run` on the config's eval split:
- p2p: the dynamic budget, τ chosen per image at --certainty;
- p2p_fixed: the fixed budget (config.p2p.dynamic_budget = False);
- p2p_pixels: selection per pixel, no superpixel grouping (config.p2p.regions = "pixels");
- black_box: the classifier alone on full images (config.model.kind = "black_box");
- gradient_x_input, integrated_gradients: post-hoc saliency on that black box, keeping per
  image as many pixels as P2P kept.
Writes <workdir>/comparison.json (every report) and <workdir>/comparison.md (the table).
"""

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent / "configs" / "default.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Base configuration file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Output folder.")
_CERTAINTY = flags.DEFINE_float("certainty", 0.9, "δ of P2P's dynamic budget search.")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default config.data.eval_split).")

# Variant -> the config overrides that make it from the base config.
TRAINED = {
    "p2p": {},
    "p2p_fixed": {"p2p.dynamic_budget": False},
    "p2p_pixels": {"p2p.regions": "pixels"},
    "black_box": {"model.kind": "black_box"},
}
POST_HOC = ("gradient_x_input", "integrated_gradients")
VARIANTS = (*TRAINED, *POST_HOC)

_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Which of {VARIANTS} to run.")

# (report key, column title, format); nested keys are "a.b".
COLUMNS = (
    ("accuracy", "accuracy", "{:.3f}"),
    ("kept_pixels", "kept pixels", "{:.3f}"),
    ("mask_precision", "mask precision", "{:.3f}"),
    ("mask_iou", "mask IoU", "{:.3f}"),
    ("pxap", "PxAP", "{:.3f}"),
    ("deletion_curve.area", "deletion AUC ↓", "{:.3f}"),
    ("insertion_curve.area", "insertion AUC ↑", "{:.3f}"),
)
# Columns that measure an explanation: none for the black box on full images.
UNEXPLAINED = ("pxap", "deletion_curve.area", "insertion_curve.area")
TITLES = {
    "p2p": "P2P (dynamic budget, δ = {certainty})",
    "p2p_fixed": "P2P, fixed budget τ = {fixed_budget}",
    "p2p_pixels": "P2P, pixel-level (no superpixels)",
    "black_box": "black box (full image)",
    "gradient_x_input": "black box + gradient × input",
    "integrated_gradients": "black box + integrated gradients",
}


def variant_config(base, variant: str):
    """The base config with `variant`'s overrides (a copy)."""
    config = base.copy_and_resolve_references()
    for dotted, value in TRAINED[variant].items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def _lookup(report: dict, dotted: str):
    value = report
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def markdown_table(reports: dict[str, dict], titles: dict[str, str]) -> str:
    """The comparison table. A black box on full images explains nothing: no PxAP or fidelity
    (its mask precision is that of keeping every pixel, the object's share of the image)."""
    header = "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    for variant, report in reports.items():
        cells = []
        for key, _, fmt in COLUMNS:
            value = _lookup(report, key)
            explained = variant != "black_box" or key not in UNEXPLAINED
            cells.append(fmt.format(value) if value is not None and explained else "—")
        lines.append(f"| {titles[variant]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_comparison(base, workdir: str, variants, *, certainty: float, split: str | None):
    """Trains (or reuses) and evaluates `variants`; returns {variant: report}."""
    from train import run_evaluation as evaluate
    from train import train

    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; choose from {VARIANTS}.")
    if set(variants) & set(POST_HOC) and not {"p2p", "black_box"} <= set(variants):
        raise ValueError(
            "--variants: the post-hoc baselines need 'p2p' (their kept fraction) and "
            "'black_box' (the model they explain)."
        )
    split = split or base.data.eval_split
    reports = {}
    for variant in [v for v in VARIANTS if v in variants]:
        if variant in TRAINED:
            run_dir = os.path.join(workdir, variant)
            if not os.path.exists(os.path.join(run_dir, "eval_results.json")):
                train.train_and_evaluate(variant_config(base, variant), run_dir)
            reports[variant] = evaluate.evaluate_run(
                run_dir, split=split, certainty=certainty, progress=False
            )
        else:
            run_dir = os.path.join(workdir, "black_box")
            reports[variant] = evaluate.evaluate_run(
                run_dir,
                split=split,
                saliency=variant,
                match_kept=reports["p2p"]["out"],
                out=os.path.join(run_dir, f"eval_{split}_{variant}"),
                progress=False,
            )
        print(f"{variant}: " + json.dumps({k: _lookup(reports[variant], k) for k, _, _ in COLUMNS}))
    return reports


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from train import run_evaluation as evaluate

    base = flags.FLAGS.config
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    try:
        reports = run_comparison(
            base, workdir, _VARIANTS.value, certainty=_CERTAINTY.value, split=_SPLIT.value
        )
    except (ValueError, evaluate.RunError) as e:
        sys.exit(f"compare.py: error: {e}")
    titles = {
        k: v.format(certainty=_CERTAINTY.value, fixed_budget=base.p2p.fixed_budget)
        for k, v in TITLES.items()
    }
    table = markdown_table(reports, titles)
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump(reports, f, indent=2)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
