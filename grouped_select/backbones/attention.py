"""Softmax attention with the flash-attention backward pass, for XLA's own attention.

`jax.nn.dot_product_attention(implementation="xla")` differentiates its softmax as
p · (dp - Σ_j p·dp): a product and a reduction over the [B, heads, N, N] scores in every
block's backward pass. On the 2-core CPU of `benchmarks/RESULTS.md` that reduction was the
ViT-Ti classifier's largest single kernel outside the matrix products (2.5 ms per block at
batch 4, 197 tokens). The same row sums are Σ_j p_ij dp_ij = dO_i · O_i (dp = dO Vᵀ and
O = P V), a reduction over the head dimension instead (64 against 197 values per row), as
FlashAttention's backward pass computes them.

`attention(q, k, v)` returns what `jax.nn.dot_product_attention(q, k, v,
implementation="xla")` returns (the same products: float32 scores, the probabilities cast
to the inputs' dtype before the product with v); its gradient keeps q, k, v, the output and
the per-row log-sum-exp, recomputes the probabilities from them, and uses dO · O for the
row sums.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from grouped_select.backbones.matmul import MatmulPrecision


def _score_precision(dtype) -> lax.DotAlgorithmPreset | None:
    """As `jax.nn.dot_product_attention`: low-precision products accumulate in float32."""
    if dtype == jnp.bfloat16:
        return lax.DotAlgorithmPreset.BF16_BF16_F32
    if dtype == jnp.float16:
        return lax.DotAlgorithmPreset.F16_F16_F32
    return None


def _product(spec: str, a: jax.Array, b: jax.Array, matmul_precision: MatmulPrecision, **kwargs):
    """`jnp.einsum(spec, a, b, **kwargs)`; "bfloat16": from rounded operands, float32 sums,
    in the dtype the einsum would give (`grouped_select.backbones.matmul`)."""
    if matmul_precision == "default":
        return jnp.einsum(spec, a, b, **kwargs)
    dtype = kwargs.get("preferred_element_type") or jnp.promote_types(a.dtype, b.dtype)
    rounded = (a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    return jnp.einsum(spec, *rounded, preferred_element_type=jnp.float32).astype(dtype)


def _scores(q: jax.Array, k: jax.Array, matmul_precision: MatmulPrecision) -> jax.Array:
    """[B, N, H, D] x [B, M, H, D] -> [B, H, N, M] float32 scaled scores."""
    scores = _product(
        "bnhd,bmhd->bhnm",
        q,
        k,
        matmul_precision,
        precision=_score_precision(q.dtype),
        preferred_element_type=jnp.promote_types(q.dtype, jnp.float32),
    )
    return scores * jnp.asarray(q.shape[-1] ** -0.5, scores.dtype)


def _forward(q, k, v, matmul_precision):
    scores = _scores(q, k, matmul_precision).astype(jnp.float32)
    top = jnp.max(scores, axis=-1, keepdims=True)
    unnormalised = jnp.exp(scores - top)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    probs = (unnormalised / total).astype(k.dtype)
    out = _product("bhnm,bmhd->bnhd", probs, v, matmul_precision)
    return out, top + jnp.log(total)


# On CPU, images' attention runs in blocks of this many: the [B, heads, N, N] scores of more
# images fall out of cache. ViT-Ti's attention forward (197 tokens, 3 heads) per image on the
# 2-core Xeon: 0.45 ms (float32) and 0.26 (bfloat16 products) at B = 4, 1.07 and 0.91 at
# B = 20, 0.51 and 0.36 at B = 20 in blocks.
CPU_IMAGES_PER_BLOCK = 4


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, matmul_precision: MatmulPrecision = "default"
) -> jax.Array:
    """Softmax attention over all keys, scaled by 1/√D.

    Args:
      q: [B, N, heads, D] queries.
      k, v: [B, M, heads, D] keys and values.
      matmul_precision: "default", or "bfloat16": the products (scores, output, and the four
        of the gradient) from bfloat16-rounded operands with float32 sums; the softmax stays
        float32.

    Returns:
      [B, N, heads, D] in the dtype of the inputs. On CPU, more than `CPU_IMAGES_PER_BLOCK`
      images are computed that many at a time (`lax.map`; same values).
    """
    batch = q.shape[0]
    if jax.default_backend() != "cpu" or batch <= CPU_IMAGES_PER_BLOCK:
        return _attention(q, k, v, matmul_precision)
    blocks = -(-batch // CPU_IMAGES_PER_BLOCK)

    def in_blocks(x):  # [B, ...] -> [blocks, CPU_IMAGES_PER_BLOCK, ...], zero images appended
        x = jnp.pad(x, [(0, blocks * CPU_IMAGES_PER_BLOCK - batch)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(blocks, CPU_IMAGES_PER_BLOCK, *x.shape[1:])

    out = lax.map(lambda qkv: _attention(*qkv, matmul_precision), tuple(map(in_blocks, (q, k, v))))
    return out.reshape(-1, *out.shape[2:])[:batch]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, matmul_precision):
    """`attention` on one block of images."""
    return _forward(q, k, v, matmul_precision)[0]


def _attention_forward(q, k, v, matmul_precision):
    out, log_sum_exp = _forward(q, k, v, matmul_precision)
    return out, (q, k, v, out, log_sum_exp)


def _attention_backward(matmul_precision, residuals, d_out):
    q, k, v, out, log_sum_exp = residuals
    scores = _scores(q, k, matmul_precision).astype(jnp.float32)
    probs = jnp.exp(scores - log_sum_exp)  # [B, H, N, M]
    d_v = _product("bhnm,bnhd->bmhd", probs.astype(v.dtype), d_out, matmul_precision)
    d_probs = _product(
        "bnhd,bmhd->bhnm",
        d_out,
        v,
        matmul_precision,
        preferred_element_type=jnp.promote_types(v.dtype, jnp.float32),
    )
    # Σ_m p_nm dp_nm = dO_n · O_n: a sum over D, not over the M keys (module docstring).
    row_sums = jnp.einsum("bnhd,bnhd->bhn", d_out.astype(jnp.float32), out.astype(jnp.float32))
    d_scores = probs * (d_probs.astype(jnp.float32) - row_sums[..., None]) * q.shape[-1] ** -0.5
    d_scores = d_scores.astype(q.dtype)
    d_q = _product("bhnm,bmhd->bnhd", d_scores, k, matmul_precision)
    d_k = _product("bhnm,bnhd->bmhd", d_scores, q, matmul_precision)
    return d_q, d_k, d_v


_attention.defvjp(_attention_forward, _attention_backward)
