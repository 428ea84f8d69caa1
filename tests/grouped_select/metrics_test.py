"""Metrics: golden localisation numbers and hand-built cases with known answers."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select import metrics, selection


@pytest.mark.golden
def test_golden_pxap_iou_and_precision(golden):
    data = golden("localisation.npz")
    pxap = metrics.PixelAveragePrecision()
    for b in range(data["score"].shape[0]):  # batch by batch, as over a split
        pxap.update(data["score"][b : b + 1], data["gt"][b : b + 1])
    np.testing.assert_allclose(pxap.compute(), data["pxap"], rtol=1e-6)
    overlap = jax.jit(metrics.mask_overlap)(data["score"] > 0.5, data["gt"])
    chex.assert_shape(overlap["iou"], data["mask_iou"].shape)
    np.testing.assert_allclose(overlap["iou"], data["mask_iou"], rtol=1e-5)
    np.testing.assert_allclose(overlap["precision"], data["mask_precision"], rtol=1e-5)


def test_perfect_and_uninformative_scores():
    rng = np.random.default_rng(0)
    gt = rng.uniform(size=(3, 20, 20)) < 0.3
    perfect = metrics.PixelAveragePrecision()
    perfect.update(gt.astype(np.float64), gt)
    assert perfect.compute() == pytest.approx(1.0, abs=1e-9)
    overlap = metrics.mask_overlap(gt, gt)
    np.testing.assert_allclose(overlap["precision"], 1.0)
    np.testing.assert_allclose(overlap["iou"], 1.0)
    constant = metrics.PixelAveragePrecision()
    constant.update(np.full(gt.shape, 0.5), gt)
    assert constant.compute() == pytest.approx(gt.mean(), rel=1e-6)  # precision = base rate
    excluded = metrics.PixelAveragePrecision()
    excluded.update(gt.astype(np.float64), gt, weight=np.array([1, 0, 1]))
    assert excluded.object_hist.sum() == gt[[0, 2]].sum()
    with pytest.raises(ValueError, match="object pixels"):
        metrics.PixelAveragePrecision().compute()


def test_nothing_kept_has_zero_precision_not_nan():
    gt = np.ones((1, 4, 4), bool)
    overlap = metrics.mask_overlap(np.zeros_like(gt), gt)
    np.testing.assert_array_equal(overlap["precision"], 0.0)


@functools.partial(jax.jit, static_argnames="mode")
def _keep(probs, sizes, fraction, mode):
    return metrics.fidelity_keep(probs, sizes, fraction, mode)


def test_fidelity_keep_follows_the_reference_rules():
    # Regions by probability: 2 (0.9, 30%), 0 (0.7, 10%), 3 (0.5, 20%), 1 (0.1, 40%).
    probs = np.array([[0.7, 0.1, 0.9, 0.5]], np.float32)
    sizes = np.array([[10, 40, 30, 20]], np.float32)
    # Deletion 5%: nothing is below 5%, the first region crossing it (2) goes.
    np.testing.assert_array_equal(_keep(probs, sizes, 0.05, mode="deletion"), [[1, 1, 0, 1]])
    # Deletion 35%: region 2 (30%) is below; region 0 crosses (40%) and goes too.
    np.testing.assert_array_equal(_keep(probs, sizes, 0.35, mode="deletion"), [[0, 1, 0, 1]])
    # Insertion with 50% masked: keep top regions whose cumulative area stays under 50%.
    np.testing.assert_array_equal(_keep(probs, sizes, 0.5, mode="insertion"), [[1, 0, 1, 0]])
    np.testing.assert_array_equal(_keep(probs, sizes, 0.8, mode="insertion"), [[0, 0, 0, 0]])
    with pytest.raises(ValueError, match="deletion"):
        metrics.fidelity_keep(probs, sizes, 0.1, "both")


def test_fidelity_of_a_model_that_ignores_its_input_is_flat():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    ids = np.tile(np.arange(8, dtype=np.int32), (4, 8, 1))
    probs = rng.uniform(size=(4, 8)).astype(np.float32)
    sizes = np.full((4, 8), 8.0, np.float32)
    weights = rng.normal(size=(3, 5)).astype(np.float32)

    def classify(x):  # ignores the pixels: a constant per image position in the batch
        return jnp.zeros((x.shape[0], 3)) @ weights + jnp.arange(5.0)

    original = np.argmax(classify(image), -1)
    fractions = np.linspace(0, 1, 11)
    agreement = []
    for t in fractions:
        keep = _keep(probs, sizes, float(t), mode="deletion")
        masked = selection.mask_regions(image, ids, keep, selection.black_value())
        agreement.append(np.mean(np.argmax(classify(masked), -1) == original))
    np.testing.assert_array_equal(agreement, 1.0)
    assert metrics.normalized_curve_area(fractions, agreement) == pytest.approx(1.0)


def test_auroc_aupr():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    perfect = np.eye(3)[labels]
    result = metrics.class_scores_auc(labels, perfect)
    assert result == {"auroc": 1.0, "aupr": 1.0}
    reversed_scores = 1 - perfect
    assert metrics.class_scores_auc(labels, reversed_scores)["auroc"] == 0.0
    assert np.isnan(metrics.class_scores_auc(np.zeros(4, int), np.ones((4, 3)) / 3)["auroc"])
