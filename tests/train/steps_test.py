"""The jitted training step: sharded over 8 devices it equals the one-device step."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image, ImageEnhance

from grouped_select import color
from train import models, steps

BATCH, SIZE, NUM_REGIONS, NUM_CLASSES = 8, 32, 32, 4


def _batch(seed=0, jitter=(0.4, 0.4, 0.4, 0.2)):
    """A batch as the input pipeline yields it; with `jitter`, a training batch's colour-jitter
    parameters (brightness, contrast, saturation, hue)."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, NUM_REGIONS, size=(BATCH, SIZE // 4, SIZE // 4))
    batch = {
        "image": rng.integers(0, 256, size=(BATCH, SIZE, SIZE, 3), dtype=np.uint8),
        "region_ids": np.repeat(np.repeat(tiles, 4, 1), 4, 2).astype(np.int32),
        "label": rng.integers(0, NUM_CLASSES, size=(BATCH,)).astype(np.int32),
        "mask": (rng.uniform(size=(BATCH, SIZE, SIZE)) > 0.5).astype(np.uint8),
        "has_mask": np.ones((BATCH,), bool),
        "valid": np.array([True] * (BATCH - 1) + [False]),
    }
    if jitter:
        b, c, s, h = jitter
        batch.update(
            color.sample_color_jitter(
                rng, brightness=b, contrast=c, saturation=s, hue=h, batch=BATCH
            )
        )
    return batch


def _setup(tiny_config, optimizer=None):
    tiny_config.data.num_regions = NUM_REGIONS
    model = models.create_model(tiny_config, NUM_CLASSES, seed=0)
    optimizer = optimizer or steps.create_optimizer(tiny_config)
    graphdef, state = steps.initial_state(model, optimizer, seed=0)
    settings = steps.step_settings(tiny_config, steps_per_epoch=4)
    return model, graphdef, state, optimizer, settings


def _run_steps(devices, graphdef, state, optimizer, settings, num_steps=2):
    mesh = jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    fn = jax.jit(
        functools.partial(
            steps.train_step, graphdef=graphdef, optimizer=optimizer, settings=settings
        ),
        out_shardings=(replicated, replicated),
    )
    state = jax.device_put(state, replicated)
    for i in range(num_steps):
        batch = jax.device_put(_batch(i), NamedSharding(mesh, PartitionSpec("data")))
        state, metrics = fn(state, batch)
    return jax.device_get(state), jax.device_get(metrics)


def test_eight_devices_give_the_same_parameters_as_one(tiny_config):
    """Data-parallel sharding must not change the step (float32, tolerance 1e-5).

    Plain SGD with learning rate 1 makes the parameter change equal to the gradient, so this
    compares gradients. (Adam divides by sqrt(v) + 1e-8: for a parameter whose gradient is
    ~1e-8, the 1e-13 differences of another reduction order become 1e-5 changes.)
    """
    assert jax.device_count() == 8, "tests/conftest.py fakes 8 CPU devices"
    _, graphdef, state, optimizer, settings = _setup(tiny_config, optax.sgd(1.0))
    one, metrics_one = _run_steps(jax.devices()[:1], graphdef, state, optimizer, settings, 1)
    eight, metrics_eight = _run_steps(jax.devices(), graphdef, state, optimizer, settings, 1)
    assert int(one.step) == int(eight.step) == 1
    chex.assert_trees_all_close(one.params, eight.params, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(one.rest, eight.rest, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics_one["loss"], metrics_eight["loss"], rtol=1e-5)
    # The parameters did move.
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), one.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-5


def test_step_metrics_and_schedules(tiny_config):
    _, graphdef, state, optimizer, settings = _setup(tiny_config)
    final, metrics = _run_steps(jax.devices()[:1], graphdef, state, optimizer, settings, 1)
    for key in ("loss", "cross_entropy", "sparsity_loss", "covariance_loss", "kept_fraction"):
        assert np.isfinite(metrics[key]), key
    np.testing.assert_allclose(
        metrics["loss"],
        metrics["cross_entropy"] + metrics["sparsity_loss"] + metrics["covariance_loss"],
        rtol=1e-5,
    )
    temperature, weight = steps.schedules(jnp.int32(0), settings)
    np.testing.assert_allclose(metrics["temperature"], temperature)
    np.testing.assert_allclose(metrics["sparsity_weight"], weight)


def test_eval_step_excludes_padding_and_reports_every_certainty(tiny_config):
    model, graphdef, state, _, settings = _setup(tiny_config)
    eval_def = steps.eval_graphdef(model)
    batch = _batch(3, jitter=None)
    sums = jax.jit(functools.partial(steps.eval_step, graphdef=eval_def, settings=settings))(
        state.params, state.rest, batch
    )
    sums = {k: float(v) for k, v in jax.device_get(sums).items()}
    for certainty in settings.certainties:
        assert sums[f"certainty_{certainty}/count"] == BATCH - 1  # the padded example is out
        assert 0.05 * (BATCH - 1) - 1e-4 <= sums[f"certainty_{certainty}/budget"] <= BATCH - 1
    summary = steps.summarize(sums)
    assert 0.0 <= summary["budget_1.0/accuracy"] <= 1.0
    assert "certainty_0.9/mask_precision" in summary


def test_eval_step_budget_chunks_give_the_same_sums(tiny_config):
    """config.p2p.budget_chunk reaches the search: chunks of 3 budgets, one at a time and
    all 20 at once (0) report the same budgets and accuracies."""
    results = []
    for chunk, loop in ((3, "length=6"), (1, "length=20"), (0, None)):
        tiny_config.p2p.budget_chunk = chunk
        model, graphdef, state, _, settings = _setup(tiny_config)
        assert settings.budget_chunk == (chunk or None)
        eval_fn = functools.partial(
            steps.eval_step, graphdef=steps.eval_graphdef(model), settings=settings
        )
        args = (state.params, state.rest, _batch(3, jitter=None))
        # The search's loop over chunks of budgets is in the traced step (none for all 20).
        loops = re.findall(r"length=\d+", str(jax.make_jaxpr(eval_fn)(*args)))
        assert (loop in loops) if loop else not {"length=6", "length=20"} & set(loops)
        results.append(jax.device_get(jax.jit(eval_fn)(*args)))
    for other in results[1:]:
        chex.assert_trees_all_close(other, results[0], atol=1e-5)


def test_paper_backbones_train_and_update_batchnorm_statistics(tiny_config):
    """The LR-ASPP selector has BatchNorm: a step must update its running statistics."""
    tiny_config.model.selector = "lraspp_mobilenet_v3_large"
    tiny_config.model.classifier = "vit_ti"
    tiny_config.model.patch_size = 16
    tiny_config.data.image_size = 64
    tiny_config.data.num_regions = NUM_REGIONS
    model = models.create_model(tiny_config, NUM_CLASSES, seed=0)
    optimizer = steps.create_optimizer(tiny_config)
    graphdef, state = steps.initial_state(model, optimizer, seed=0)
    settings = steps.step_settings(tiny_config, steps_per_epoch=4)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8),
        "region_ids": rng.integers(0, NUM_REGIONS, size=(2, 64, 64)).astype(np.int32),
        "label": np.array([0, 1], np.int32),
    }
    before = jax.tree.map(np.asarray, state.rest)
    step = jax.jit(
        functools.partial(
            steps.train_step, graphdef=graphdef, optimizer=optimizer, settings=settings
        )
    )
    new_state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    changed = jax.tree.map(
        lambda a, b: not np.allclose(a, b), before, jax.tree.map(np.asarray, new_state.rest)
    )
    assert sum(jax.tree.leaves(changed)) > 10  # running means/variances moved


def test_black_box_step_is_cross_entropy_on_full_images(tiny_config):
    """The baseline trains the classifier alone: its loss is the full-image cross-entropy,
    its gradient that of the classifier, and evaluation reports the "full" group."""
    tiny_config.model.kind = "black_box"
    model, graphdef, state, optimizer, settings = _setup(tiny_config, optax.sgd(1.0))
    assert set(nnx.state(model).keys()) == {"classifier"}  # no selector
    batch = _batch(4, jitter=None)
    logits = model(color.normalize(batch["image"]))
    want_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    step = jax.jit(
        functools.partial(
            steps.train_step, graphdef=graphdef, optimizer=optimizer, settings=settings
        )
    )
    new_state, metrics = step(state, batch)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    assert float(metrics["kept_fraction"]) == 1.0
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-5

    eval_def = steps.eval_graphdef(model)
    sums = jax.jit(functools.partial(steps.eval_step, graphdef=eval_def, settings=settings))(
        state.params, state.rest, batch
    )
    summary = steps.summarize({k: float(v) for k, v in sums.items()})
    valid = batch["valid"]
    correct = np.argmax(logits, -1)[valid] == batch["label"][valid]
    np.testing.assert_allclose(summary["full/accuracy"], correct.mean(), rtol=1e-6)
    np.testing.assert_allclose(summary["full/kept_pixels"], 1.0)
    # Keeping every pixel: precision is the object's share of the image.
    np.testing.assert_allclose(
        summary["full/mask_precision"], batch["mask"][valid].mean(axis=(1, 2)).mean(), rtol=1e-5
    )


def test_pixel_level_selection_has_one_region_per_pixel(tiny_config):
    tiny_config.p2p.regions = "pixels"
    model, graphdef, state, optimizer, settings = _setup(tiny_config)
    assert settings.num_regions == SIZE * SIZE
    batch = _batch(5)
    ids = steps.with_region_ids(jax.tree.map(jnp.asarray, batch), settings)["region_ids"]
    np.testing.assert_array_equal(ids[2], np.arange(SIZE * SIZE).reshape(SIZE, SIZE))
    final, metrics = _run_steps(jax.devices()[:1], graphdef, state, optimizer, settings, 1)
    assert np.isfinite(metrics["loss"])
    eval_def = steps.eval_graphdef(model)
    sums = jax.jit(functools.partial(steps.eval_step, graphdef=eval_def, settings=settings))(
        final.params, final.rest, batch
    )
    summary = steps.summarize({k: float(v) for k, v in sums.items()})
    # A pixel region's hard mask keeps whole pixels: kept pixels = kept regions / (H W).
    assert 0.0 <= summary["certainty_0.9/kept_pixels"] <= 1.0
    tiny_config.p2p.regions = "patches"
    with pytest.raises(ValueError, match="config.p2p.regions='patches'"):
        steps.step_settings(tiny_config, steps_per_epoch=4)


def test_stable_decay_learning_rate_is_constant_then_linear_to_zero(tiny_config):
    tiny_config.optim.schedule = "stable_decay"
    tiny_config.optim.decay_fraction = 0.25
    tiny_config.optim.learning_rate = 0.5
    optimizer = steps.create_optimizer(tiny_config, total_steps=8)
    # With a constant gradient Adam's step is lr * m̂ / sqrt(v̂) = lr: the steps trace the rate.
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    lrs = []
    for _ in range(8):
        updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(updates["w"]))
    np.testing.assert_allclose(lrs, [0.5] * 6 + [0.5, 0.25], rtol=1e-4)
    tiny_config.optim.decay_fraction = 0.0
    with pytest.raises(ValueError, match="decay_fraction"):
        steps.create_optimizer(tiny_config, total_steps=8)


def _pillow_jitter(image, factors, order):
    """Brightness, contrast and saturation as torchvision's PIL path applies them."""
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    pil = Image.fromarray(image)
    for op in order[order >= 0]:
        pil = enhancers[op](pil).enhance(float(factors[op]))
    return np.asarray(pil)


def test_train_step_applies_the_batchs_color_jitter(tiny_config):
    """The step jitters and normalises the uint8 images: a batch carrying jitter parameters
    trains exactly like the same images jittered beforehand by Pillow."""
    _, graphdef, state, optimizer, settings = _setup(tiny_config)
    step = jax.jit(
        functools.partial(
            steps.train_step, graphdef=graphdef, optimizer=optimizer, settings=settings
        )
    )
    batch = _batch(6, jitter=(0.4, 0.4, 0.4, 0.0))  # no hue: Pillow-exact on the device
    plain = {k: v for k, v in batch.items() if k not in color.JITTER_KEYS}
    jittered = dict(plain)
    jittered["image"] = np.stack(
        [
            _pillow_jitter(*args)
            for args in zip(
                batch["image"], batch["jitter_factors"], batch["jitter_order"], strict=True
            )
        ]
    )
    loss = {name: float(step(state, b)[1]["loss"]) for name, b in (
        ("params", batch), ("pillow", jittered), ("plain", plain))}  # fmt: skip
    np.testing.assert_allclose(loss["params"], loss["pillow"], rtol=1e-6)
    assert abs(loss["params"] - loss["plain"]) > 1e-4

    with pytest.raises(ValueError, match="uint8"):
        step(state, {**plain, "image": color.normalize(plain["image"])})


@pytest.mark.parametrize("concatenate", [True, False, None])
def test_global_norm_is_optax_tree_norm(concatenate):
    """Both forms (one reduction over the concatenated leaves, or a reduction per leaf) give
    the norm of all the leaves together, in float32 also for bfloat16 leaves; the same as
    `optax.tree.norm` (the metric's definition before) for float32 leaves."""
    keys = jax.random.split(jax.random.key(0), 3)
    tree = {
        "kernel": jax.random.normal(keys[0], (3, 3, 8, 16)),
        "bias": jax.random.normal(keys[1], (16,), jnp.bfloat16),
        "blocks": [jax.random.normal(keys[2], (5, 7)), jnp.zeros((0,))],
    }
    got = jax.jit(functools.partial(steps.global_norm, concatenate=concatenate))(tree)
    want = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    float32 = jax.tree.map(lambda x: x.astype(jnp.float32), tree)
    np.testing.assert_allclose(got, optax.tree.norm(float32), rtol=1e-6)
