"""Mixed-precision helpers: `cast_floating` and `materialized`."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select.precision import cast_floating, materialized


def _barriers(function, *args) -> int:
    """How many optimization barriers the jitted function's lowered program has."""
    return jax.jit(function).lower(*args).as_text().count("stablehlo.optimization_barrier")


def test_cast_floating_casts_only_floating_leaves():
    tree = {"w": jnp.ones(3, jnp.float32), "step": jnp.arange(2), "flag": True}
    cast = cast_floating(tree, jnp.bfloat16)
    assert cast["w"].dtype == jnp.bfloat16
    assert cast["step"].dtype == tree["step"].dtype and cast["flag"] is True


@pytest.mark.parametrize("gradient", [True, False])
def test_materialized_keeps_values_and_gradients(gradient):
    x = jax.random.normal(jax.random.key(0), (4, 5), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (4, 5), jnp.float32)

    def loss(x, keep):
        low = x.astype(jnp.bfloat16)
        low = materialized(low, gradient=gradient) if keep else low
        return jnp.sum(w * jnp.sin(low.astype(jnp.float32)))

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    chex.assert_trees_all_equal(value_and_grad(x, True), value_and_grad(x, False))


@pytest.mark.parametrize("gradient, backward_barriers", [(True, 2), (False, 1)])
def test_materialized_puts_a_barrier_on_low_precision_values(gradient, backward_barriers):
    """One barrier on the bfloat16 value, and with `gradient` one on its cotangent."""
    x = jnp.linspace(-1, 1, 6, dtype=jnp.bfloat16)

    def loss(x):
        return jnp.sum(jnp.square(materialized(x, gradient=gradient).astype(jnp.float32)))

    assert _barriers(loss, x) == 1
    assert _barriers(jax.grad(loss), x) == backward_barriers
    np.testing.assert_array_equal(jax.jit(jax.grad(loss))(x), 2 * x)


@pytest.mark.parametrize("gradient", [True, False])
def test_materialized_has_forward_mode_derivatives(gradient):
    x = jnp.linspace(-1, 1, 6, dtype=jnp.bfloat16)
    tangent = jnp.full_like(x, 0.5)
    primal, out_tangent = jax.jit(
        lambda x, t: jax.jvp(lambda v: materialized(v, gradient=gradient), (x,), (t,))
    )(x, tangent)
    np.testing.assert_array_equal(primal, x)
    np.testing.assert_array_equal(out_tangent, tangent)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32])
def test_materialized_leaves_wide_and_integer_arrays_alone(dtype):
    x = jnp.arange(6, dtype=dtype)
    assert materialized(x) is x
    assert _barriers(materialized, x) == 0
