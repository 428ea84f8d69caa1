"""P2P and its baselines, each the same config with one change: training, evaluation and the
comparison table (`train/compare.py` is the command).
"""

import json
import os

# Variant -> the config overrides that make it from the base config.
TRAINED = {
    "p2p": {},
    "p2p_fixed": {"p2p.dynamic_budget": False},
    "p2p_pixels": {"p2p.regions": "pixels"},
    "black_box": {"model.kind": "black_box"},
}
POST_HOC = ("gradient_x_input", "integrated_gradients")
VARIANTS = (*TRAINED, *POST_HOC)

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
