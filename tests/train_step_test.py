"""benchmarks/train_step.py: the model FLOPs behind the MFU count every ViT block once."""

import argparse
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import train_step  # noqa: E402
from benchmarks.common import analysed_flops  # noqa: E402


@pytest.fixture
def small_vit_args(monkeypatch):
    """The built-in config with the small ViT classifier, at 32², batch 2."""
    paper_config = train_step.paper_config

    def with_small_vit(name, size, dtype, **overrides):
        config = paper_config(name, size, dtype, **overrides)
        config.model.classifier = "small_vit"
        return config

    monkeypatch.setattr(train_step, "paper_config", with_small_vit)
    return argparse.Namespace(
        config="default", size=32, batch=2, scan_layers=True, remat_layers=False,
        attention="xla", block_kernels="xla", pool_method="auto", matmul_precision="default",
    )  # fmt: skip


def _lowered_flops(args, **options):
    step, state, batch = train_step._jitted_step(
        args, "float32", {**train_step.model_options(args), **options}
    )
    return analysed_flops(step.lower(state, batch))


def test_model_flops_are_the_unrolled_steps_whatever_the_layout(small_vit_args):
    model = train_step.model_flops(small_vit_args, "float32")
    unrolled = _lowered_flops(small_vit_args, scan_layers=False)
    scanned = _lowered_flops(small_vit_args, scan_layers=True)
    assert model == unrolled
    assert scanned < 0.9 * unrolled  # the scanned count holds one block of several
