"""benchmarks/matmul.py: the products it times are a training step's, and each way computes
x @ w to its stated precision."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import matmul  # noqa: E402


def test_product_shapes_are_each_linear_layers_three_products():
    shapes = {name: (m, k, n) for name, m, k, n in matmul.product_shapes(batch=2)}
    tokens = 2 * 197
    assert len(shapes) == 3 * len(matmul.LAYERS) == 12
    # fc1: 192 -> 768. Output x W, input gradient g Wᵀ, weight gradient xᵀ g.
    assert shapes["fc1/output"] == (tokens, 192, 768)
    assert shapes["fc1/input_gradient"] == (tokens, 768, 192)
    assert shapes["fc1/weight_gradient"] == (192, tokens, 768)
    assert shapes["qkv/output"] == (tokens, 192, 576)


# Largest error relative to the largest entry, against float64: float32 rounds once per
# sum (~1e-7), three bfloat16 products keep ~16 mantissa bits (~1e-5), one keeps 8 (~1e-3).
@pytest.mark.parametrize(
    "way, low, high",
    [
        ("float32", 0.0, 3e-6),
        ("bfloat16_products", 3e-4, 2e-2),
        ("bfloat16_3x_summed", 1e-7, 3e-5),
        ("bfloat16_3x_concatenated", 1e-7, 3e-5),
    ],
)
def test_each_way_computes_the_product_to_its_precision(way, low, high):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 96)).astype(np.float32)
    b = (rng.standard_normal((96, 80)) / np.sqrt(96)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    result = np.asarray(matmul.jax_ways()[way](a, b), dtype=np.float64)
    assert result.shape == exact.shape
    error = np.abs(result - exact).max() / np.abs(exact).max()
    assert low <= error <= high, error
