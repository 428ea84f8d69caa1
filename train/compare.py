"""Trains P2P and its baselines with one config and writes the comparison table.

    python train/compare.py                          # built-in benchmark, ~50 min on 2 cores
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

if __name__ == "__main__":  # first thing: may restart this program (train/huge_pages.py)
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from train.comparison import TITLES, VARIANTS, markdown_table, run_comparison  # noqa: E402

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent / "configs" / "default.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Base configuration file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Output folder.")
_CERTAINTY = flags.DEFINE_float("certainty", 0.9, "δ of P2P's dynamic budget search.")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default config.data.eval_split).")

_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Which of {VARIANTS} to run.")


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
