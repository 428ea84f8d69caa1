"""Explains images with a trained run: writes a PNG of what the model kept and predicted.

    python train/explain.py --workdir=runs/default --image=cat.jpg --out=cat_explained.png
    python train/explain.py --workdir=runs/default --image=a.png --image=b.jpg --out=explained/

Any image size, RGB, grayscale or RGBA. Dynamic-budget models choose τ by the search at
--certainty; --budget fixes it instead.
"""

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # first thing: may restart this program (train/huge_pages.py)
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder written by train/main.py.")
_IMAGES = flags.DEFINE_multi_string("image", [], "Image file(s) to explain.")
_OUT = flags.DEFINE_string("out", None, "Output .png (one image) or folder (several).")
_CERTAINTY = flags.DEFINE_float("certainty", 0.9, "Certainty δ of the dynamic budget search.")
_BUDGET = flags.DEFINE_float("budget", None, "A fixed budget τ instead of the search.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _IMAGES.value:
        raise app.UsageError("give at least one --image=PATH")
    logging.set_verbosity(logging.WARNING)
    from grouped_select import explain
    from train import checkpointing

    model, config, class_names = checkpointing.load_run(_WORKDIR.value)
    if config.model.kind != "p2p" or config.p2p.regions != "superpixels":
        sys.exit(
            f"explain.py: error: {_WORKDIR.value} is a {config.model.kind} run with "
            f"{config.p2p.regions} regions; explain draws a superpixel P2P run's selection. "
            "Explain a black box post hoc with `train/evaluate.py --saliency=...`."
        )
    dynamic = config.p2p.dynamic_budget
    several = len(_IMAGES.value) > 1
    if several:
        os.makedirs(_OUT.value, exist_ok=True)
    for image_path in _IMAGES.value:
        prepared = explain.prepare_image(
            image_path,
            image_size=config.data.image_size,
            num_regions=config.data.num_regions,
            n_segments=config.data.slic_segments,
            compactness=config.data.slic_compactness,
            crop_fraction=config.data.eval_crop_fraction,
        )
        result = explain.explain(
            model,
            prepared,
            num_regions=config.data.num_regions,
            certainty=_CERTAINTY.value if dynamic else None,
            budget=_BUDGET.value,
        )
        out = (
            os.path.join(_OUT.value, pathlib.Path(image_path).stem + "_explained.png")
            if several
            else _OUT.value
        )
        explain.render(prepared, result, out, class_names)
        print(
            json.dumps(
                {
                    "image": image_path,
                    "out": out,
                    "class": class_names[result.label],
                    "confidence": round(result.confidence, 4),
                    "budget": round(result.budget, 4),
                    "kept_fraction": round(result.kept_fraction, 4),
                }
            )
        )


if __name__ == "__main__":
    app.run(main)
