"""Dynamic budget search: the reference's semantics, both implementations, jitted."""

import re

import chex
import jax
import numpy as np
import pytest
from flax import nnx
from model_test import BATCH, NUM_CLASSES, NUM_REGIONS, make_batch, make_model

from grouped_select import budget as budget_lib


def test_grid_is_float32_accumulation_with_a_final_one():
    grid = budget_lib.budget_grid()
    chex.assert_shape(grid, (20,))
    assert grid.dtype == np.float32
    assert grid[8] == np.float32(0.45000005)  # what the published code's loop produces
    assert grid[-1] == 1.0 and np.all(grid[:-1] < 1.0) and np.all(np.diff(grid) > 0)


@pytest.fixture(scope="module")
def case():
    model = make_model(seed=1)
    x, ids, _, _ = make_batch(4)

    @nnx.jit
    def max_prob_per_budget(model, x, ids):
        def at(tau):
            out = model.eval_forward(x, ids, num_regions=NUM_REGIONS, budget=tau)
            return jax.nn.softmax(out.log_probs).max(-1)

        return jax.lax.map(at, budget_lib.budget_grid())

    probs = np.asarray(max_prob_per_budget(model, x, ids))  # [G, B], the literal way
    return model, x, ids, probs


def _expected(probs, certainty):
    grid = budget_lib.budget_grid()
    hits = probs[:-1] >= certainty
    first = np.where(hits.any(0), hits.argmax(0), len(grid) - 1)
    return grid[first], hits.any(0)


@pytest.mark.parametrize("method", ["grid", "while_loop"])
def test_search_picks_first_confident_budget(case, method):
    model, x, ids, probs = case
    # Certainties between the observed max-probabilities so images stop at different budgets.
    for certainty in np.quantile(probs, [0.2, 0.5, 0.8, 1.0]) + 1e-7:
        search = nnx.jit(
            lambda m, x, i, c: budget_lib.dynamic_budget_search(
                m, x, i, c, num_regions=NUM_REGIONS, method=method
            )
        )(model, x, ids, certainty)
        expected_budget, expected_confident = _expected(probs, certainty)
        np.testing.assert_array_equal(search.budget, expected_budget)
        np.testing.assert_array_equal(search.confident, expected_confident)
        direct = nnx.jit(
            lambda m, x, i, b: m.eval_forward(x, i, num_regions=NUM_REGIONS, budget=b)
        )(model, x, ids, search.budget)
        np.testing.assert_allclose(search.outputs.log_probs, direct.log_probs, atol=1e-5)
        np.testing.assert_array_equal(search.outputs.selected, direct.selected)
        chex.assert_shape(search.outputs.log_probs, (BATCH, NUM_CLASSES))
    # Non-trivial: at least one certainty splits the batch between budgets.
    assert len(np.unique(_expected(probs, np.quantile(probs, 0.5) + 1e-7)[0])) > 1


def test_grid_chunks_give_the_same_result(case):
    model, x, ids, probs = case
    certainty = float(np.quantile(probs, 0.5)) + 1e-7
    results = [
        nnx.jit(
            lambda m, x, i, chunk=chunk: budget_lib.dynamic_budget_search(
                m, x, i, certainty, num_regions=NUM_REGIONS, grid_chunk=chunk
            )
        )(model, x, ids)
        for chunk in (None, 3)
    ]
    chex.assert_trees_all_close(results[0], results[1], atol=1e-6)
    np.testing.assert_allclose(results[0].max_probs, probs, atol=1e-5)


def test_grid_chunks_are_classifier_batches_of_chunk_times_batch_images(case):
    """grid_chunk=None is one classifier batch of G x B images (`lax.map` without a batch size
    would have been a sequential scan over the budgets); chunks of g budgets are batches of
    g x B images in a loop over the chunks."""
    model, x, ids, _ = case
    graphdef, state = nnx.split(model)
    num_budgets, (batch, height, width, _) = len(budget_lib.budget_grid()), x.shape

    def jaxpr(chunk):
        def search(state):
            m = nnx.merge(graphdef, state)
            return budget_lib.dynamic_budget_search(
                m, x, ids, 0.9, num_regions=NUM_REGIONS, grid_chunk=chunk
            ).budget

        return str(jax.make_jaxpr(search)(state))

    def classifier_batches(text):  # sizes of the masked-image batches
        return {int(n) for n in re.findall(rf"f32\[(\d+),{height},{width},3\]", text)}

    assert num_budgets * batch in classifier_batches(jaxpr(None))
    for chunk, loop in ((1, 20), (3, 6)):
        text = jaxpr(chunk)
        assert num_budgets * batch not in classifier_batches(text)
        assert chunk * batch in classifier_batches(text) and f"length={loop}\n" in text


def test_many_certainties_in_one_sweep_equal_separate_searches(case):
    model, x, ids, probs = case
    certainties = tuple(float(c) for c in np.quantile(probs, [0.3, 0.7]) + 1e-7)
    together = nnx.jit(
        lambda m, x, i: budget_lib.dynamic_budget_searches(
            m, x, i, certainties, num_regions=NUM_REGIONS
        )
    )(model, x, ids)
    assert len(together) == len(certainties)
    for certainty, result in zip(certainties, together, strict=True):
        alone = nnx.jit(
            lambda m, x, i, c=certainty: budget_lib.dynamic_budget_search(
                m, x, i, c, num_regions=NUM_REGIONS
            )
        )(model, x, ids)
        chex.assert_trees_all_close(result, alone, atol=1e-6)
