"""LR-ASPP MobileNetV3-Large: shapes, size, train-mode BatchNorm and the golden selector output."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select import convert
from grouped_select.backbones.mobilenet_v3 import LRASPPMobileNetV3, resize_bilinear
from grouped_select.precision import cast_floating
from grouped_select.selector import Selector


@pytest.fixture(scope="module")
def golden_selector(golden):
    """The golden P2P file's selector (backbone + 4-output heads), BatchNorm in eval mode."""
    # Shapes only: the load fills every variable, so random initialisation is skipped.
    backbone = nnx.eval_shape(lambda: LRASPPMobileNetV3(rngs=nnx.Rngs(0)))
    selector = Selector(backbone, num_outputs=4, rngs=nnx.Rngs(0))
    convert.load_lraspp_selector_weights(
        selector,
        golden.root / "p2p_vit_tiny_lraspp.safetensors",
        prefix=convert.P2P_SELECTOR_PREFIX,
    )
    selector.eval()
    return selector


def test_parameter_count_matches_torchvision():
    backbone = nnx.eval_shape(lambda: LRASPPMobileNetV3(rngs=nnx.Rngs(0)))
    count = sum(p.size for p in jax.tree.leaves(nnx.state(backbone, nnx.Param)))
    # torchvision lraspp_mobilenet_v3_large: 3,221,538 with its two 21-class 1x1 heads
    # (40*21 + 21 + 128*21 + 21 = 3,570 parameters), which this module leaves to the selector.
    assert count == 3_221_538 - 3_570
    assert (backbone.low_channels, backbone.high_channels) == (40, 128)


@pytest.mark.parametrize("size", [(64, 96), (50, 37)])
def test_train_mode_shapes_and_batch_stats(size):
    model = LRASPPMobileNetV3(rngs=nnx.Rngs(0))
    model.train()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        model = nnx.merge(graphdef, state)
        low, high = model(x)
        return low, high, nnx.state(model, nnx.BatchStat)

    x = jax.random.normal(jax.random.key(0), (2, *size, 3))
    low, high, stats = forward(state, x)
    # torchvision's padding: each stride-2 conv maps n -> ceil(n / 2); three of them to low.
    h, w = (-(-n // 8) for n in size)
    chex.assert_shape(low, (2, h, w, 40))
    chex.assert_shape(high, (2, h, w, 128))
    chex.assert_tree_all_finite((low, high))
    before = nnx.state(model, nnx.BatchStat)
    assert not np.allclose(stats["features"][0]["bn"]["mean"], before["features"][0]["bn"]["mean"])


def test_resize_bilinear_matches_half_pixel_formula():
    # torch F.interpolate(align_corners=False): src = (dst + 0.5) * in / out - 0.5, clamped.
    def reference(values, out):
        src = np.clip((np.arange(out) + 0.5) * len(values) / out - 0.5, 0, None)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, len(values) - 1)
        return values[lo] * (1 - (src - lo)) + values[hi] * (src - lo)

    values = np.random.default_rng(0).normal(size=7).astype(np.float32)
    for out in (3, 14, 17):
        got = jax.jit(resize_bilinear, static_argnums=1)(values[None, :, None, None], (out, 1))
        np.testing.assert_allclose(got[0, :, 0, 0], reference(values, out), atol=1e-6)


@pytest.mark.golden
@pytest.mark.slow
def test_selector_pixel_outputs_match_reference(golden, golden_selector):
    data = golden("p2p_eval.npz")
    x = jnp.asarray(data["x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    graphdef, state = nnx.split(golden_selector)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def pixel_outputs(state, x, tau):
        # The reference selector: both heads see features + tau, their sum is upsampled.
        selector = nnx.merge(graphdef, state)
        low, high = selector.backbone(x)
        chex.assert_shape(low, (x.shape[0], x.shape[1] // 8, x.shape[2] // 8, 40))
        chex.assert_shape(high, (x.shape[0], x.shape[1] // 8, x.shape[2] // 8, 128))
        out = selector.low_head(low + tau) + selector.high_head(high + tau)
        return resize_bilinear(out, x.shape[1:3])

    for tau in (0.3, 0.7):
        got = pixel_outputs(state, x, jnp.float32(tau))
        want = data[f"tau{tau}_pixel_emb"].transpose(0, 2, 3, 1)
        chex.assert_shape(got, want.shape)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_depthwise_method_changes_speed_not_results():
    """`depthwise_method` reaches every depthwise layer; conv and shifted sum agree, with the
    same parameters, on the outputs and the input gradient (BatchNorm in eval mode: its
    train-mode statistics updates cannot run under `jax.grad` of a merged module)."""

    def run(method):
        model = LRASPPMobileNetV3(depthwise_method=method, rngs=nnx.Rngs(0))
        methods = {
            layer.depthwise_method
            for _, layer in nnx.iter_graph(model)
            if getattr(layer, "depthwise", False)
        }
        assert methods == {method}
        model.eval()
        graphdef, state = nnx.split(model)

        @jax.jit
        def outputs_and_input_grad(state, x):
            def loss(x):
                low, high = nnx.merge(graphdef, state)(x)
                return jnp.sum(low**2) + jnp.sum(high**2), (low, high)

            return jax.grad(loss, has_aux=True)(x)

        x = jax.random.normal(jax.random.key(1), (2, 40, 40, 3))
        return state, outputs_and_input_grad(state, x)

    conv_state, (conv_grad, conv_out) = run("conv")
    sum_state, (sum_grad, sum_out) = run("shifted_sum")
    chex.assert_trees_all_equal(nnx.to_pure_dict(conv_state), nnx.to_pure_dict(sum_state))
    chex.assert_trees_all_close(sum_out, conv_out, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(sum_grad, conv_grad, rtol=1e-3, atol=1e-3 * np.abs(conv_grad).max())


def test_bfloat16_parameters_and_input_run_in_bfloat16():
    """With bfloat16 parameters (float32 BatchNorm statistics, as the train step casts them)
    every layer's output stays bfloat16, close to the float32 network's."""
    model = LRASPPMobileNetV3(rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @functools.partial(jax.jit, static_argnums=2)
    def forward(params, x, dtype):
        model = nnx.merge(graphdef, cast_floating(params, dtype), rest, copy=True)
        return model(x.astype(dtype))

    x = jax.random.normal(jax.random.key(2), (2, 48, 48, 3))
    low, high = forward(params, x, jnp.bfloat16)
    assert (low.dtype, high.dtype) == (jnp.bfloat16, jnp.bfloat16)
    want_low, want_high = forward(params, x, jnp.float32)
    # Relative errors of a random network after 4 (low) and 17 (high) layers; with float32
    # activations (bfloat16 parameters and input only) they were 0.012 and 0.051 here, now
    # 0.018 and 0.083.
    for got, want, bound in ((low, want_low, 0.03), (high, want_high, 0.12)):
        error = np.linalg.norm(np.asarray(got, np.float32) - want) / np.linalg.norm(want)
        assert error < bound, error


@pytest.mark.parametrize(
    "dtype, train, barriers_per_depthwise_layer",
    [(jnp.bfloat16, True, 2), (jnp.bfloat16, False, 1), (jnp.float32, True, 0)],
)
def test_bfloat16_training_stores_depthwise_tensors_in_bfloat16(
    dtype, train, barriers_per_depthwise_layer
):
    """In bfloat16 each depthwise layer's result, and in train mode its conv's output too, is
    kept in bfloat16 between kernels (`precision.materialized`); float32 has no barriers."""
    model = LRASPPMobileNetV3(rngs=nnx.Rngs(0))
    if train:
        model.train()
    else:
        model.eval()
    depthwise_layers = sum(getattr(layer, "depthwise", False) for _, layer in nnx.iter_graph(model))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(params, x):
        model = nnx.merge(graphdef, cast_floating(params, dtype), rest, copy=True)
        return model(x.astype(dtype))

    x = jnp.zeros((1, 32, 32, 3))
    text = jax.jit(forward).lower(params, x).as_text()
    assert depthwise_layers == 15
    assert text.count("stablehlo.optimization_barrier") == (
        barriers_per_depthwise_layer * depthwise_layers
    )
