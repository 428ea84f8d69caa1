"""Fits the one-pass budget head of a finished dynamic-budget run and measures it.

    python train/budget_head.py --workdir=runs/default                 # δ = 0.9
    python train/evaluate.py --workdir=runs/default --one_pass        # then evaluate with it

The head (`grouped_select.budget_head`) learns to predict, from the selector's pooled
features, the budget τ* that the dynamic search chooses at --certainty on the run's training
images (no augmentation); the P2P model stays frozen. Then, on the evaluation split, it
compares one-pass inference (τ̂ from the head) with the exact search: |τ̂ − τ*|, accuracy,
kept pixels, mask precision, and images/s of both. Writes <workdir>/budget_head/ (the head,
orbax) and <workdir>/budget_head.json (settings and measurements).
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # first thing: may restart this program (train/huge_pages.py)
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402

from train.one_pass import fit_and_measure  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A dynamic-budget run written by train/main.py.")
_CERTAINTY = flags.DEFINE_float("certainty", 0.9, "δ of the search whose τ the head learns.")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "Hidden units of the head.")
_EPOCHS = flags.DEFINE_integer("epochs", 100, "Passes over the training features.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
_QUANTILE = flags.DEFINE_float(
    "quantile",
    0.8,
    "Pinball-loss quantile q of τ* the head predicts (higher: larger budgets, more accuracy, "
    "more kept); 0 for least squares.",
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        report = fit_and_measure(
            _WORKDIR.value,
            certainty=_CERTAINTY.value,
            hidden=_HIDDEN.value,
            epochs=_EPOCHS.value,
            learning_rate=_LEARNING_RATE.value,
            quantile=_QUANTILE.value or None,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"budget_head.py: error: {e}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
