"""Figures and the markdown table of a split evaluation (`grouped_select.evaluation`).

Split from the computation so that the metrics need no plotting library at import time.
"""

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.typing import ArrayLike

from grouped_select.evaluation import EvalAccumulator, GalleryExample


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fidelity_curves(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Deletion and insertion curves side by side, with their normalised areas.

    Args:
      summary: `EvalAccumulator.summary()`.
      path: output .png.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name, xlabel, better in (
        (axes[0], "deletion", "fraction of the kept image removed", "lower is better"),
        (axes[1], "insertion", "fraction of the kept image shown", "higher is better"),
    ):
        curve = summary[f"{name}_curve"]
        ax.plot(curve["fractions"], curve["agreement"], marker="o", markersize=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("agreement with the model's prediction")
        ax.set_title(f"{name} ({better}): area {curve['area']:.3f}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gallery(
    examples: Sequence[GalleryExample],
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    columns: int = 4,
    display_size: int = 128,
) -> None:
    """A grid of examples: each the input with its superpixels, and what the model kept.

    Args:
      examples: `GalleryExample`s (e.g. `EvalAccumulator.gallery`).
      path: output .png.
      class_names: names of the class indices (default: the indices).
      columns: examples per row (each takes two panels).
      display_size: images smaller than this are enlarged to about it before drawing.
    """
    from skimage.segmentation import mark_boundaries

    plt = _pyplot()
    columns = max(1, min(columns, len(examples)))
    rows = max(1, math.ceil(len(examples) / columns))
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(4 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def name(c: int) -> str:
        return str(class_names[c]) if class_names else str(c)

    for i, ex in enumerate(examples):
        row, col = divmod(i, columns)
        # Small images are enlarged (nearest) so that one-pixel boundaries stay thin.
        scale = max(1, math.ceil(display_size / max(ex.region_ids.shape)))
        ids = np.kron(ex.region_ids, np.ones((scale, scale), ex.region_ids.dtype))
        image = np.kron(ex.pixels.astype(np.float32) / 255.0, np.ones((scale, scale, 1)))
        kept = np.asarray(ex.selected)[ids] > 0
        axes[row, 2 * col].imshow(mark_boundaries(image, ids, color=(1, 1, 0)))
        axes[row, 2 * col].set_title(f"true: {name(ex.label)}", fontsize=8)
        # What the classifier saw (removed regions black), the kept area outlined.
        shown = image * kept[..., None]
        axes[row, 2 * col + 1].imshow(
            mark_boundaries(shown, kept.astype(np.int32), color=(1, 0.3, 0.3))
        )
        axes[row, 2 * col + 1].set_title(
            f"{name(ex.prediction)} {ex.confidence:.0%}\n"
            f"τ={ex.budget:.2f} kept {ex.kept_pixels:.0%}",
            fontsize=8,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_kept_vs_budget(
    budget: ArrayLike,
    kept_pixels: ArrayLike,
    kept_fraction: ArrayLike,
    path: str | os.PathLike,
) -> None:
    """Scatter of the kept fraction (hard and soft) against the budget τ used, per example.

    Args:
      budget: [N] τ per example.
      kept_pixels: [N] hard-mask pixel fraction.
      kept_fraction: [N] soft p̄.
      path: output .png.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(budget, kept_pixels, s=10, alpha=0.5, label="hard mask (pixels kept)")
    ax.scatter(budget, kept_fraction, s=10, alpha=0.5, marker="x", label="soft p̄")
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="kept = τ")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("budget τ")
    ax.set_ylabel("kept fraction")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_per_class_accuracy(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Bar chart of accuracy per class (classes absent from the split are left empty).

    Args:
      summary: `EvalAccumulator.summary()`.
      path: output .png.
    """
    plt = _pyplot()
    names = list(summary["per_class"])
    values = [summary["per_class"][n]["accuracy"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 1), 4))
    ax.bar(range(len(names)), [0.0 if v is None else v for v in values])
    ax.axhline(summary["accuracy"], color="gray", ls="--", lw=1, label="overall")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


FIGURES = {
    "fidelity_curves": "fidelity_curves.png",
    "gallery": "gallery.png",
    "kept_vs_budget": "kept_vs_budget.png",
    "per_class_accuracy": "per_class_accuracy.png",
}


def write_figures(accumulator: EvalAccumulator, out_dir: str | os.PathLike) -> dict[str, str]:
    """Writes every figure of the report into `out_dir`.

    Args:
      accumulator: a filled `EvalAccumulator`.
      out_dir: an existing folder.

    Returns:
      `FIGURES`: figure name -> file name (relative to `out_dir`).
    """
    summary = accumulator.summary()

    def join(name: str) -> str:
        return os.path.join(out_dir, FIGURES[name])

    plot_fidelity_curves(summary, join("fidelity_curves"))
    plot_gallery(accumulator.gallery, join("gallery"), accumulator.class_names)
    plot_kept_vs_budget(
        accumulator.column("budget"),
        accumulator.column("kept_pixels"),
        accumulator.column("kept_fraction"),
        join("kept_vs_budget"),
    )
    plot_per_class_accuracy(summary, join("per_class_accuracy"))
    return dict(FIGURES)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_report(
    summary: dict[str, Any], figures: dict[str, str], title: str = "P2P evaluation"
) -> str:
    """The report as markdown: a table of the numbers, per-class accuracy, the figures.

    Args:
      summary: `EvalAccumulator.summary()`.
      figures: figure name -> path relative to the markdown file (`write_figures`).
      title: the heading.

    Returns:
      Markdown text.
    """
    s = summary
    if s["mode"] == "dynamic":
        setting = f"dynamic budget, certainty δ = {s['certainty']}"
    else:
        setting = f"fixed budget (τ = {s['budget']:.2f} in training)"
    rows = [
        ("examples", s["count"]),
        ("accuracy (masked input)", s["accuracy"]),
        ("AUROC (one-vs-rest, weighted)", s["auroc"]),
        ("AUPR (one-vs-rest, weighted)", s["aupr"]),
        ("kept fraction p̄ (soft)", s["kept_fraction"]),
        ("kept pixels (hard mask)", s["kept_pixels"]),
        ("mean budget τ", s["budget"]),
    ]
    if s["confident_fraction"] is not None:
        rows.append(("confident below τ = 1", s["confident_fraction"]))
    rows += [(f"deletion fidelity @ {float(t):.0%} ↓", v) for t, v in s["deletion"].items()]
    rows += [
        (f"insertion fidelity @ {float(t):.0%} masked ↑", v) for t, v in s["insertion"].items()
    ]
    rows += [
        ("deletion curve area ↓", s["deletion_curve"]["area"]),
        ("insertion curve area ↑", s["insertion_curve"]["area"]),
        (f"PxAP (bin width {s['pxap_bin_width']:g})", s["pxap"]),
        ("mask IoU", s["mask_iou"]),
        ("mask precision", s["mask_precision"]),
        ("examples with object masks", s["mask_count"]),
    ]
    lines = [f"# {title}", "", setting, "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    lines += ["", "## Per-class accuracy", "", "| class | examples | accuracy |", "|---|---|---|"]
    lines += [
        f"| {name} | {v['count']} | {_fmt(v['accuracy'])} |" for name, v in s["per_class"].items()
    ]
    lines += ["", "## Figures", ""]
    captions = {
        "fidelity_curves": "Deletion and insertion fidelity curves",
        "gallery": "Gallery: input with superpixels, and the kept regions",
        "kept_vs_budget": "Kept fraction versus the budget τ",
        "per_class_accuracy": "Per-class accuracy",
    }
    for name, file in figures.items():
        lines += [f"### {captions.get(name, name)}", "", f"![{name}]({file})", ""]
    return "\n".join(lines)
