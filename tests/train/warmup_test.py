"""The sparsity warm-up: λ₁ = 0 for W epochs, then the paper's schedules over E - W epochs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select import objective
from train import steps

STEPS_PER_EPOCH = 3


def _settings(num_epochs, warmup):
    return steps.StepSettings(
        num_regions=8,
        num_epochs=num_epochs,
        steps_per_epoch=STEPS_PER_EPOCH,
        sparsity_weight=10.0,
        sparsity_warmup_epochs=warmup,
    )


def _per_epoch(settings):
    fn = jax.jit(lambda step: steps.schedules(step, settings))
    values = [fn(jnp.int32(e * STEPS_PER_EPOCH)) for e in range(settings.num_epochs)]
    return np.array([float(t) for t, _ in values]), np.array([float(w) for _, w in values])


def test_no_warmup_is_the_paper_schedule():
    temperature, weight = _per_epoch(_settings(20, 0))
    epochs = jnp.arange(20)
    np.testing.assert_allclose(weight, objective.sparsity_weight_for_epoch(epochs, 20, 10.0))
    np.testing.assert_allclose(temperature, objective.temperature(epochs, 20, 0.5))


def test_warmup_shifts_the_paper_schedule():
    temperature, weight = _per_epoch(_settings(25, 5))
    paper_temperature, paper_weight = _per_epoch(_settings(20, 0))
    np.testing.assert_array_equal(weight[:5], 0.0)
    np.testing.assert_allclose(temperature[:5], 1.0)
    np.testing.assert_allclose(weight[5:], paper_weight)
    np.testing.assert_allclose(temperature[5:], paper_temperature)


def test_warmup_is_capped_for_short_runs():
    temperature, weight = _per_epoch(_settings(3, 10))
    np.testing.assert_array_equal(weight[:2], 0.0)
    assert weight[2] > 0.0
    with pytest.raises(ValueError, match="sparsity_warmup_epochs"):
        steps.schedules(jnp.int32(0), _settings(5, -1))
