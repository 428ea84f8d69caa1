"""Attention with the flash-attention backward equals jax's XLA attention, with gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grouped_select.backbones.attention import CPU_IMAGES_PER_BLOCK, attention


def _value_and_grads(fn, q, k, v, cotangent):
    def loss(q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * cotangent)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _jax_attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


@pytest.mark.parametrize("batch,tokens,keys", [(2, 9, 9), (2, 7, 12), (10, 9, 9)])
def test_float32_values_and_gradients_match_jax(batch, tokens, keys):
    """The output and all three gradients against autodiff of `jax.nn.dot_product_attention`
    (queries and keys of different lengths: the row sums run over the right axis; 10 images:
    on CPU three blocks of `CPU_IMAGES_PER_BLOCK`, the last padded)."""
    rng = jax.random.split(jax.random.key(0), 4)
    q = 3 * jax.random.normal(rng[0], (batch, tokens, 3, 8))  # peaked softmax rows
    k = jax.random.normal(rng[1], (batch, keys, 3, 8))
    v = jax.random.normal(rng[2], (batch, keys, 3, 8))
    cotangent = jax.random.normal(rng[3], (batch, tokens, 3, 8))
    out = jax.jit(attention)(q, k, v)
    chex.assert_shape(out, (batch, tokens, 3, 8))
    blocked = batch > CPU_IMAGES_PER_BLOCK and jax.default_backend() == "cpu"
    assert ("scan[" in str(jax.make_jaxpr(attention)(q, k, v))) == blocked
    np.testing.assert_allclose(out, jax.jit(_jax_attention)(q, k, v), rtol=1e-5, atol=1e-6)
    loss, grads = _value_and_grads(attention, q, k, v, cotangent)
    want_loss, want_grads = _value_and_grads(_jax_attention, q, k, v, cotangent)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-4, atol=1e-5)
    assert all(float(jnp.max(jnp.abs(g))) > 0.1 for g in grads)  # not trivially equal


def test_bfloat16_follows_float32():
    """bfloat16 in, bfloat16 out and gradients, float32 scores and softmax: within bfloat16
    rounding of the float32 computation on the same values."""
    rng = jax.random.split(jax.random.key(1), 4)
    q, k, v = (jax.random.normal(key, (2, 16, 2, 8)).astype(jnp.bfloat16) for key in rng[:3])
    cotangent = jax.random.normal(rng[3], (2, 16, 2, 8))
    _, grads = _value_and_grads(attention, q, k, v, cotangent)
    chex.assert_trees_all_equal_dtypes(grads, (q, k, v))
    as_f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    _, want = _value_and_grads(attention, *as_f32, cotangent)
    for got, expected in zip(grads, want, strict=True):
        np.testing.assert_allclose(got.astype(jnp.float32), expected, rtol=0.05, atol=0.05)


def test_bfloat16_products():
    """matmul_precision="bfloat16": the output is the float32 softmax of scores from rounded
    queries and keys, applied to rounded values; the gradients stay within bfloat16
    rounding of the float32 ones (and are not equal to them)."""
    rng = jax.random.split(jax.random.key(3), 4)
    q, k, v, cotangent = (jax.random.normal(key, (2, 9, 3, 8)) for key in rng)

    def rounded(a):
        return a.astype(jnp.bfloat16).astype(jnp.float32)

    def reference(q, k, v):
        scores = jnp.einsum("bnhd,bmhd->bhnm", rounded(q), rounded(k)) * 8**-0.5
        probs = jax.nn.softmax(scores, axis=-1)
        return jnp.einsum("bhnm,bmhd->bnhd", rounded(probs), rounded(v))

    def bf16(q, k, v):
        return attention(q, k, v, "bfloat16")

    out = jax.jit(bf16)(q, k, v)
    # Equal up to float32 reassociation, except where a probability lies on a bfloat16
    # rounding boundary and the two softmaxes round it apart (one ulp: ~2^-9 of it).
    error = np.abs(np.asarray(out) - np.asarray(reference(q, k, v)))
    assert error.max() < 3e-3 and np.mean(error < 1e-5) > 0.9
    assert float(jnp.max(jnp.abs(out - jax.jit(attention)(q, k, v)))) > 1e-4
    _, grads = _value_and_grads(bf16, q, k, v, cotangent)
    _, want = _value_and_grads(attention, q, k, v, cotangent)
    for got, expected in zip(grads, want, strict=True):
        error = float(jnp.linalg.norm(got - expected) / jnp.linalg.norm(expected))
        assert 1e-5 < error < 2e-2
