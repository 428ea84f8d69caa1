"""Trains and evaluates P2P.

    python train/main.py                                   # built-in benchmark on this machine
    python train/main.py --config=train/configs/imagenet9.py --config.data.root=/data/in9
    python train/main.py --config.p2p.dynamic_budget=False # the fixed-budget variant

Flags: --workdir (default ./runs/<config name>), --config (a config file, optionally
`file.py:arg`) and any `--config.key=value` override. Multi-host: set --distributed (or
P2P_DISTRIBUTED=1) to call jax.distributed.initialize(), which reads the cluster from the
environment (TPU pods need nothing else; see README).
"""

import os
import pathlib
import sys

# `python train/main.py` puts train/ on sys.path, not the repository root that holds the
# `train` package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # first thing: may restart this program (train/huge_pages.py)
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent / "configs" / "default.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Training configuration file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default ./runs/<config>).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    os.environ.get("P2P_DISTRIBUTED", "") == "1",
    "Call jax.distributed.initialize() (multi-host).",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # orbax, tfds and grain log every action at INFO; keep the console to warnings.
    logging.set_verbosity(logging.WARNING)
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from train import train

    config = flags.FLAGS.config
    name = pathlib.Path(flags.FLAGS["config"].config_filename.split(":")[0]).stem
    workdir = _WORKDIR.value or os.path.join("runs", name)
    train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    app.run(main)
