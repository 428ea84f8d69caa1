"""CPU-sized networks: the selector backbone's feature strides and the small CNN classifier."""

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from grouped_select.backbones.small import (
    SmallCNNClassifier,
    SmallSelectorBackbone,
    group_norm,
)
from grouped_select.model import P2P
from grouped_select.selector import Selector

BATCH, SIZE, NUM_CLASSES, NUM_REGIONS = 3, 32, 8, 20


def _jit_apply(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    return lambda x: apply(state, x)


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize("low_stride", [2, 4, 8])
def test_selector_backbone_strides(low_stride):
    backbone = SmallSelectorBackbone(low_stride=low_stride, rngs=nnx.Rngs(0))
    low, high = _jit_apply(backbone)(_images())
    side = SIZE // low_stride
    chex.assert_shape(low, (BATCH, side, side, backbone.low_channels))
    chex.assert_shape(high, (BATCH, side, side, backbone.high_channels))
    chex.assert_tree_all_finite((low, high))


def test_selector_backbone_default_is_lraspp_stride_without_fusion():
    backbone = SmallSelectorBackbone(rngs=nnx.Rngs(0))
    assert backbone.low_stride == 8 and not hasattr(backbone, "fuse")
    with pytest.raises(ValueError, match="low_stride"):
        SmallSelectorBackbone(low_stride=16, rngs=nnx.Rngs(0))


def test_cnn_classifier_shapes_and_per_image_normalisation():
    model = SmallCNNClassifier(NUM_CLASSES, rngs=nnx.Rngs(0))
    apply = _jit_apply(model)
    x = _images()
    logits = apply(x)
    chex.assert_shape(logits, (BATCH, NUM_CLASSES))
    chex.assert_tree_all_finite(logits)
    # GroupNorm: an image's logits do not depend on the other images of the batch.
    np.testing.assert_allclose(apply(x[:1])[0], logits[0], rtol=1e-4, atol=1e-5)


def test_cnn_classifier_in_p2p_through_jit():
    rngs = nnx.Rngs(0)
    selector = Selector(SmallSelectorBackbone(low_stride=2, rngs=rngs), rngs=rngs)
    model = P2P(selector, SmallCNNClassifier(NUM_CLASSES, rngs=rngs))
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, NUM_REGIONS, size=(BATCH, SIZE // 4, SIZE // 4))
    ids = np.repeat(np.repeat(tiles, 4, axis=1), 4, axis=2).astype(np.int32)
    budget = np.full((BATCH,), 0.3, np.float32)

    @nnx.jit
    def forward(model, x, ids, key):
        return model.train_forward(x, ids, key, num_regions=NUM_REGIONS, budget=budget)

    out = forward(model, _images(), ids, jax.random.key(0))
    chex.assert_shape(out.log_probs, (BATCH, NUM_CLASSES))
    chex.assert_shape(out.region_masks, (1, BATCH, NUM_REGIONS))
    chex.assert_tree_all_finite(out.log_probs)


def test_cnn_classifier_strides_set_each_stage_resolution():
    model = SmallCNNClassifier(NUM_CLASSES, widths=(8, 16, 32), strides=(1, 2, 2), rngs=nnx.Rngs(0))
    sides = []
    h = _images()
    for layer in model.stages:
        h = layer(h)
        sides.append(h.shape[1])
    assert sides == [SIZE, SIZE, SIZE // 2, SIZE // 2, SIZE // 4, SIZE // 4]
    chex.assert_shape(_jit_apply(model)(_images()), (BATCH, NUM_CLASSES))
    with pytest.raises(ValueError, match="one entry per stage"):
        SmallCNNClassifier(NUM_CLASSES, widths=(8, 16), strides=(1,), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_group_norm_equals_flax_group_norm(groups):
    channels = 16
    norm = nnx.GroupNorm(channels, num_groups=groups, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(groups)
    norm.scale[...] = rng.normal(size=channels).astype(np.float32)
    norm.bias[...] = rng.normal(size=channels).astype(np.float32)
    x = (3.0 + rng.normal(size=(BATCH, 8, 8, channels))).astype(np.float32)
    fast = jax.jit(group_norm, static_argnums=(3, 4))(
        x, norm.scale[...], norm.bias[...], groups, norm.epsilon
    )
    chex.assert_trees_all_close(fast, _jit_apply(norm)(x), rtol=1e-5, atol=1e-5)
