"""torchvision ResNet-18/34: sizes, train-mode BatchNorm and the golden ResNet-18 logits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select import convert
from grouped_select.backbones.resnet import ResNet
from grouped_select.precision import cast_floating


@pytest.fixture(scope="module")
def golden_resnet18(golden):
    model = convert.load_resnet(golden.root / "resnet18.safetensors", depth=18)
    model.eval()
    return model


@pytest.mark.parametrize(
    "depth, expected",
    # torchvision resnet18 / resnet34 with a 1000-class head.
    [(18, 11_689_512), (34, 21_797_672)],
)
def test_parameter_counts(depth, expected):
    model = nnx.eval_shape(lambda: ResNet(1000, depth=depth, rngs=nnx.Rngs(0)))
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == expected


def test_resnet34_train_step_shapes():
    model = ResNet(7, depth=34, rngs=nnx.Rngs(0))
    model.train()
    graphdef, state = nnx.split(model)

    @jax.jit
    def train_step(state, x):
        model = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(x)
            return (logits**2).mean(), logits

        # nnx.value_and_grad carries the BatchNorm statistics updated inside the grad trace.
        (_, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        return logits, grads, nnx.state(model, nnx.BatchStat)

    x = jax.random.normal(jax.random.key(0), (2, 48, 40, 3))
    logits, grads, stats = train_step(state, x)
    chex.assert_shape(logits, (2, 7))
    chex.assert_trees_all_equal_shapes(grads, nnx.state(model, nnx.Param))
    chex.assert_tree_all_finite((logits, grads))
    assert not np.allclose(stats["bn1"]["mean"], 0.0)


@pytest.mark.golden
@pytest.mark.slow
def test_golden_resnet18_logits(golden, golden_resnet18):
    data = golden("resnet18.npz")
    graphdef, state = nnx.split(golden_resnet18)
    apply = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    logits = apply(state, data["x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    chex.assert_shape(logits, data["logits"].shape)
    np.testing.assert_allclose(logits, data["logits"], atol=1e-4, rtol=0)


def test_bfloat16_parameters_and_input_run_in_bfloat16():
    """BatchNorm's float32 statistics do not turn a bfloat16 ResNet float32."""
    model = ResNet(5, depth=18, rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def features(params, x):
        model = nnx.merge(graphdef, cast_floating(params, x.dtype), rest, copy=True)
        return model.features(x)

    # 64² and batch 4 leave 16 values per channel to layer4's train-mode BatchNorm (at 32² and
    # batch 2 it normalises 2, and bfloat16 and float32 differ by ~50 % either way).
    x = jax.random.normal(jax.random.key(0), (4, 64, 64, 3))
    got = features(params, x.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    want = features(params, x)
    # 0.021 (0.012 with float32 activations after each BatchNorm).
    error = np.linalg.norm(np.asarray(got, np.float32) - want) / np.linalg.norm(want)
    assert error < 0.04, error
