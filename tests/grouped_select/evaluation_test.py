"""Split evaluation: fidelity curves, the batch evaluator and the accumulator on known answers."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select import budget as budget_lib
from grouped_select import evaluation, metrics, regions, report
from grouped_select.backbones.small import SmallSelectorBackbone
from grouped_select.model import P2P
from grouped_select.selector import Selector


def test_fidelity_fractions_hold_the_grid_and_the_reported_points():
    deletion, insertion = evaluation.fidelity_fractions(0.05)
    chex.assert_shape([deletion, insertion], (21,))
    for t in (0.0, 0.05, 0.1, 0.2, 1.0):
        assert t in deletion
    for t in (0.0, 0.8, 0.9, 0.95, 1.0):
        assert t in insertion
    deletion, insertion = evaluation.fidelity_fractions(0.25)  # the points are added
    np.testing.assert_array_equal(deletion, [0, 0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(insertion, [0, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 1])
    with pytest.raises(ValueError, match="equal parts"):
        evaluation.fidelity_fractions(0.3)


@functools.partial(jax.jit, static_argnames=("classify", "mode", "chunk"))
def _agreement(classify, image, ids, probs, sizes, prediction, fractions, mode, chunk=None):
    return evaluation.fidelity_agreement(
        classify,
        image,
        ids,
        probs,
        sizes,
        prediction,
        fractions,
        mode=mode,
        fill_value=jnp.zeros(3),
        chunk=chunk,
    )


def _stripes():
    # One row of 10 pixels, regions of 1, 2, 3 and 4 pixels ranked 0 > 1 > 2 > 3: cumulative
    # areas 0.1, 0.3, 0.6, 1.0 in that order. Image 0 is all lit; image 1 only regions 0, 1.
    ids = np.array([[0, 1, 1, 2, 2, 2, 3, 3, 3, 3]], np.int32)[None].repeat(2, 0)  # [2, 1, 10]
    image = np.ones((2, 1, 10, 3), np.float32)
    image[1, :, 3:] = 0.0
    probs = np.array([[0.9, 0.8, 0.3, 0.1]] * 2, np.float32)
    sizes = np.array([[1, 2, 3, 4]] * 2, np.float32)
    return image, ids, probs, sizes


def _lit_majority(x):
    # Class 1 when more than half of the pixels are not the fill value (0): [..., B, 2].
    lit = jnp.sum(jnp.any(x != 0, axis=-1), axis=(-2, -1)).astype(jnp.float32)
    return jnp.stack([jnp.full_like(lit, 5.5), lit], axis=-1)


def test_constant_classifier_gives_flat_curves_of_one():
    image, ids, probs, sizes = _stripes()

    def constant(x):  # ignores its input
        return jnp.broadcast_to(jnp.array([0.0, 2.0, 1.0]), (*x.shape[:-3], 3))

    deletion, insertion = evaluation.fidelity_fractions(0.1)
    for mode, fractions in (("deletion", deletion), ("insertion", insertion)):
        for chunk in (None, 3):
            agreement = _agreement(
                constant, image, ids, probs, sizes, jnp.array([1, 1]), fractions, mode, chunk
            )
            chex.assert_shape(agreement, (len(fractions), 2))
            chex.assert_type(agreement, jnp.float32)
            np.testing.assert_array_equal(agreement, 1.0)
            assert metrics.normalized_curve_area(fractions, agreement.mean(-1)) == 1.0


def test_fidelity_agreement_known_answers():
    image, ids, probs, sizes = _stripes()
    prediction = jnp.argmax(_lit_majority(image), -1)
    np.testing.assert_array_equal(prediction, [1, 0])  # 10 lit pixels; 3 lit pixels
    fractions = np.array([0.0, 0.05, 0.2, 0.35, 1.0])
    deletion = _agreement(
        _lit_majority, image, ids, probs, sizes, prediction, fractions, "deletion"
    )
    chex.assert_shape(deletion, (5, 2))
    # Image 0, deletion removes: t=0 and 0.05 region 0 (9 lit), t=0.2 regions 0, 1 (7 lit),
    # t=0.35 regions 0-2 (4 lit: flips), t=1 everything. Image 1 stays class 0 throughout.
    np.testing.assert_array_equal(deletion[:, 0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(deletion[:, 1], 1)
    masked = np.array([0.3, 0.5, 0.95, 1.0])
    insertion = _agreement(_lit_majority, image, ids, probs, sizes, prediction, masked, "insertion")
    # Image 0, insertion keeps cumulative area < 1 - t: t=0.3 regions 0-2 (6 lit), t=0.5
    # regions 0, 1 (3 lit: flips), t=0.95 and 1 nothing.
    np.testing.assert_array_equal(insertion[:, 0], [1, 0, 0, 0])
    np.testing.assert_array_equal(insertion[:, 1], 1)


class _MeanColour(nnx.Module):
    """A cheap classifier: a linear layer on the mean colour of the masked image."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.linear(x.mean(axis=(1, 2)))


SIZE, NUM_REGIONS, NUM_CLASSES, BATCH = 32, 20, 3, 4


@pytest.fixture(scope="module")
def small_case():
    rngs = nnx.Rngs(0)
    model = P2P(
        Selector(SmallSelectorBackbone(rngs=rngs), rngs=rngs), _MeanColour(NUM_CLASSES, rngs=rngs)
    )
    model.eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    tiles = rng.integers(0, NUM_REGIONS - 2, size=(BATCH, SIZE // 8, SIZE // 8))
    ids = np.repeat(np.repeat(tiles, 8, axis=1), 8, axis=2).astype(np.int32)
    mask = np.zeros((BATCH, SIZE, SIZE), np.uint8)
    mask[:, 8:24, 4:20] = 1
    return model, x, ids, mask


@pytest.mark.parametrize("certainty", [0.4, None])
def test_evaluate_batch_matches_the_model(small_case, certainty):
    model, x, ids, mask = small_case
    deletion, insertion = evaluation.fidelity_fractions(0.25)
    evaluate = evaluation.batch_evaluator(
        model,
        num_regions=NUM_REGIONS,
        certainty=certainty,
        fixed_budget=0.2,
        deletion_fractions=deletion,
        insertion_fractions=insertion,
        fraction_chunk=3,
    )
    r = evaluate(x, ids, mask)
    chex.assert_shape(r.log_probs, (BATCH, NUM_CLASSES))
    chex.assert_shape(
        [r.budget, r.confident, r.kept_fraction, r.kept_pixels, r.mask_precision, r.mask_iou],
        (BATCH,),
    )
    chex.assert_shape([r.selected, r.region_probs, r.region_sizes, r.object_pixels], (4, 20))
    chex.assert_shape(r.deletion, (len(deletion), BATCH))
    chex.assert_shape(r.insertion, (len(insertion), BATCH))

    if certainty is None:
        expected = model.eval_forward(x, ids, num_regions=NUM_REGIONS)
        np.testing.assert_array_equal(r.budget, np.float32(0.2))
        assert not np.any(r.confident)
    else:
        search = nnx.jit(
            lambda m, x, i: budget_lib.dynamic_budget_search(m, x, i, 0.4, num_regions=NUM_REGIONS)
        )(model, x, ids)
        expected = search.outputs
        np.testing.assert_array_equal(r.budget, search.budget)
        np.testing.assert_array_equal(r.confident, search.confident)
    np.testing.assert_allclose(r.log_probs, expected.log_probs, atol=1e-5)
    np.testing.assert_array_equal(r.selected, expected.selected)
    np.testing.assert_allclose(r.kept_pixels, expected.kept_pixels, atol=1e-6)
    np.testing.assert_allclose(r.kept_fraction, expected.scores.kept_fraction, atol=1e-6)
    overlap = metrics.mask_overlap(regions.broadcast_to_pixels(r.selected, ids), mask)
    np.testing.assert_allclose(r.mask_precision, overlap["precision"], atol=1e-6)
    np.testing.assert_allclose(r.mask_iou, overlap["iou"], atol=1e-6)
    np.testing.assert_array_equal(np.sum(r.object_pixels, -1), mask.sum((1, 2)))
    np.testing.assert_array_equal(np.sum(r.region_sizes, -1), SIZE * SIZE)
    # Deletion of everything and insertion with everything masked show the classifier a fully
    # black image: agreement is whether that image gets the same class.
    prediction = np.argmax(r.log_probs, -1)
    black = np.broadcast_to(model.fill_value, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    same = (np.argmax(model.classify(jnp.asarray(black)), -1) == prediction).astype(np.float32)
    np.testing.assert_array_equal(r.deletion[-1], same)
    np.testing.assert_array_equal(r.insertion[-1], same)


def _fake_results(rng, batch, num_classes=3, num_regions=6, fd=4, fi=5):
    sizes = rng.integers(0, 20, size=(batch, num_regions)).astype(np.float32)
    return evaluation.BatchResults(
        log_probs=np.log(rng.dirichlet(np.ones(num_classes), size=batch) + 1e-6),
        budget=rng.choice([0.05, 0.5, 1.0], size=batch).astype(np.float32),
        confident=rng.uniform(size=batch) < 0.5,
        kept_fraction=rng.uniform(size=batch).astype(np.float32),
        kept_pixels=rng.uniform(size=batch).astype(np.float32),
        selected=(rng.uniform(size=(batch, num_regions)) < 0.5).astype(np.float32),
        region_probs=rng.uniform(size=(batch, num_regions)).astype(np.float32),
        region_sizes=sizes,
        object_pixels=np.floor(sizes * rng.uniform(size=sizes.shape)).astype(np.float32),
        mask_precision=rng.uniform(size=batch).astype(np.float32),
        mask_iou=rng.uniform(size=batch).astype(np.float32),
        deletion=(rng.uniform(size=(fd, batch)) < 0.5).astype(np.float32),
        insertion=(rng.uniform(size=(fi, batch)) < 0.5).astype(np.float32),
    )


def test_accumulator_ignores_padding_and_matches_one_pass():
    rng = np.random.default_rng(3)
    deletion = np.array([0.0, 0.05, 0.1, 0.2])
    insertion = np.array([0.0, 0.8, 0.9, 0.95, 1.0])
    parts = [_fake_results(rng, 6), _fake_results(rng, 6)]
    labels = [np.array([0, 1, 2, 0, 1, 2]), np.array([2, 2, 0, 1, 0, 0])]
    valid = [np.ones(6, bool), np.array([1, 1, 1, 1, 0, 0], bool)]  # last two: padding
    has_mask = [np.array([1, 1, 0, 1, 1, 1], bool), np.ones(6, bool)]
    acc = evaluation.EvalAccumulator(["a", "b", "c"], deletion, insertion, certainty=0.9)
    for r, y, v, m in zip(parts, labels, valid, has_mask, strict=True):
        acc.update(r, y, v, m)
    s = acc.summary()

    # The same numbers from the valid rows, all at once.
    keep = np.concatenate(valid)
    cat = evaluation.BatchResults(
        *(
            np.concatenate(
                [getattr(p, f) for p in parts], -1 if f in ("deletion", "insertion") else 0
            )
            for f in evaluation.BatchResults._fields
        )
    )
    y = np.concatenate(labels)[keep]
    with_mask = keep & np.concatenate(has_mask)
    probs = np.exp(cat.log_probs[keep])
    assert s["count"] == 10 and s["mask_count"] == with_mask.sum() == 9
    assert s["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == y))
    auc = metrics.class_scores_auc(y, probs)
    assert s["auroc"] == pytest.approx(auc["auroc"]) and s["aupr"] == pytest.approx(auc["aupr"])
    assert s["budget"] == pytest.approx(cat.budget[keep].mean())
    assert s["kept_pixels"] == pytest.approx(cat.kept_pixels[keep].mean())
    assert s["kept_fraction"] == pytest.approx(cat.kept_fraction[keep].mean())
    assert s["confident_fraction"] == pytest.approx(cat.confident[keep].mean())
    assert s["mask_iou"] == pytest.approx(cat.mask_iou[with_mask].mean())
    assert s["mask_precision"] == pytest.approx(cat.mask_precision[with_mask].mean())
    per_deletion = cat.deletion[:, keep].mean(-1)
    assert list(s["deletion"]) == ["0.05", "0.1", "0.2"]
    assert s["deletion"]["0.2"] == pytest.approx(per_deletion[3])
    np.testing.assert_allclose(s["deletion_curve"]["agreement"], per_deletion)
    assert s["deletion_curve"]["area"] == pytest.approx(
        metrics.normalized_curve_area(deletion, per_deletion)
    )
    per_insertion = cat.insertion[:, keep].mean(-1)
    assert s["insertion"]["0.8"] == pytest.approx(per_insertion[1])
    np.testing.assert_allclose(s["insertion_curve"]["fractions"], [0, 0.05, 0.1, 0.2, 1.0])
    np.testing.assert_allclose(s["insertion_curve"]["agreement"], per_insertion[::-1])
    for c, name in enumerate("abc"):
        members = y == c
        assert s["per_class"][name]["count"] == members.sum()
        assert s["per_class"][name]["accuracy"] == pytest.approx(
            np.mean(probs.argmax(-1)[members] == c)
        )

    # PxAP from per-region counts equals PxAP over every pixel with its region's score.
    pixel = metrics.PixelAveragePrecision(1e-5)
    for b in np.flatnonzero(with_mask):
        region_of_pixel = np.repeat(np.arange(6), cat.region_sizes[b].astype(int))
        is_object = np.concatenate(
            [
                np.arange(n) < o
                for n, o in zip(cat.region_sizes[b], cat.object_pixels[b], strict=True)
            ]
        )
        pixel.update(cat.region_probs[b][region_of_pixel][None], is_object[None])
    np.testing.assert_array_equal(acc.pxap.object_hist, pixel.object_hist)
    np.testing.assert_array_equal(acc.pxap.background_hist, pixel.background_hist)
    assert s["pxap"] == pytest.approx(pixel.compute(), rel=1e-12)
    assert s["pxap_bin_width"] == 1e-5
    json.dumps(s, allow_nan=False)  # JSON-ready


def test_accumulator_without_masks_or_examples():
    acc = evaluation.EvalAccumulator(["a", "b"], [0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="no valid example"):
        acc.summary()
    r = _fake_results(np.random.default_rng(0), 3, num_classes=2, fd=2, fi=2)
    acc.update(r, np.zeros(3, int), np.ones(3, bool), np.zeros(3, bool))
    s = acc.summary()
    assert s["mode"] == "fixed" and s["confident_fraction"] is None
    assert s["pxap"] is None and s["mask_iou"] is None and s["mask_count"] == 0
    assert s["auroc"] is None  # one class present
    assert s["per_class"]["b"] == {"count": 0, "accuracy": None}
    json.dumps(s, allow_nan=False)


def test_figures_and_markdown(tmp_path):
    rng = np.random.default_rng(1)
    deletion, insertion = evaluation.fidelity_fractions(0.25)
    acc = evaluation.EvalAccumulator(
        ["circle", "square", "star"], deletion, insertion, certainty=0.9, gallery_size=3
    )
    r = _fake_results(rng, 5, num_regions=4, fd=len(deletion), fi=len(insertion))
    pixels = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    ids = rng.integers(0, 4, size=(5, 16, 16)).astype(np.int32)
    acc.update(r, np.array([0, 1, 2, 0, 1]), np.ones(5, bool), np.ones(5, bool), pixels, ids)
    assert len(acc.gallery) == 3
    np.testing.assert_array_equal(acc.gallery[1].pixels, pixels[1])
    figures = report.write_figures(acc, tmp_path)
    for file in figures.values():
        assert (tmp_path / file).stat().st_size > 1000
    text = report.markdown_report(acc.summary(), figures)
    assert "| accuracy (masked input) |" in text and "| deletion fidelity @ 5% ↓ |" in text
    assert "![gallery](gallery.png)" in text and "| star |" in text
