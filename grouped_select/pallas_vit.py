"""A ViT block's LayerNorm-then-matmul pieces as Pallas (Triton) GPU kernels.

A pre-LN block is x + attention(LN1(x)), then x + fc2(gelu(fc1(LN2(x)))). XLA runs each
LayerNorm, each bias add, the exact GELU and the residual add as kernels of their own between
the matrix products, so activations go to memory and back between them. In the evaluation's
budget search (20 ViT-Ti passes per batch, 63,040 tokens per chunk of 5 budgets) the MLP's
[tokens, 4 D] hidden tensor alone makes ~400 of the ~1,100 MB each block moves. Two kernels
take a tile of tokens through a whole piece, reading x and the weights and writing only the
outputs:

- `fused_mlp_block`: x + fc2(gelu(fc1(layer_norm(x)))), the hidden units `block_hidden` at a
  time in registers, multiplied straight into the output accumulator.
- `fused_layer_norm_qkv`: layer_norm(x) times the query, key and value projections, biases
  added: the three [tokens, D] inputs of attention.

Numerics: LayerNorm statistics, the GELU and the matrix products accumulate in float32; the
normalised input and the GELU output are rounded to the input dtype before their products,
as XLA's bfloat16 path rounds them (float32 inputs stay float32 throughout, IEEE products).
Triton has no erf: the kernel's comes from exp (Abramowitz & Stegun 7.1.26: within 1.5e-7,
5e-7 after float32 rounding). Triton takes only power-of-2 array sizes: a width like ViT-Ti's
192 is handled as 128 + 64.

Gradients are autodiff's of the same computations written with `jax.numpy`
(`mlp_block_reference`, `layer_norm_qkv_reference`), recomputing the forward pass: the
kernels keep no activations.

GPU only; `interpret=True` runs a kernel in Pallas' interpreter anywhere (the tests). Sharded
over devices along the batch, each device runs the kernels on its own tokens
(`partitioning.batch_partitioned`). Not yet timed on a GPU (written on 2026-11-28 without
one; `config.model.block_kernels = "pallas"`, `--block-kernels pallas` in the benchmarks,
`benchmarks/vit_kernels.py` alone).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from grouped_select.backbones.activations import exact_gelu
from grouped_select.partitioning import batch_partitioned


class MlpWeights(NamedTuple):
    """The parameters the kernel reads (D: model width, H: hidden width).

    Attributes:
      ln_scale, ln_bias: [D] LayerNorm affine parameters.
      w1: [D, H], b1: [H]: fc1.
      w2: [H, D], b2: [D]: fc2.
    """

    ln_scale: jax.Array
    ln_bias: jax.Array
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array


class QkvWeights(NamedTuple):
    """LN1 and the attention's input projections (D: model width).

    Attributes:
      ln_scale, ln_bias: [D] LayerNorm affine parameters.
      wq, wk, wv: [D, D]; bq, bk, bv: [D]: the query, key and value projections.
    """

    ln_scale: jax.Array
    ln_bias: jax.Array
    wq: jax.Array
    bq: jax.Array
    wk: jax.Array
    bk: jax.Array
    wv: jax.Array
    bv: jax.Array


class KernelConfig(NamedTuple):
    """How a kernel divides the work (results do not depend on it beyond rounding order).

    Attributes:
      block_tokens: tokens per program (power of 2).
      block_hidden: `fused_mlp_block` only: hidden units per inner step (power of 2 dividing
        H).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages of the hidden loop (None: Triton's).
    """

    block_tokens: int = 64
    block_hidden: int = 64
    num_warps: int = 4
    num_stages: int | None = 2  # Triton's default (3) asked for 451 KB of shared memory


DEFAULT_CONFIG = KernelConfig()


# Abramowitz & Stegun, Handbook of Mathematical Functions, formula 7.1.26: |error| <= 1.5e-7
# (float32 rounding of 1 - poly * exp adds up to ~3e-7).
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf_in_kernel(x: jax.Array) -> jax.Array:
    """float32 erf from exp (Pallas' Triton lowering has no erf): A&S 7.1.26, odd extension."""
    magnitude = jnp.abs(x)
    t = 1.0 / (1.0 + _AS_P * magnitude)
    poly = 0.0
    for a in reversed(_AS_A):
        poly = (poly + a) * t
    value = 1.0 - poly * jnp.exp(-magnitude * magnitude)
    return jnp.where(x < 0, -value, value)


def _gelu_in_kernel(h: jax.Array) -> jax.Array:
    return 0.5 * h * (1.0 + _erf_in_kernel(h * 0.7071067811865476))


def _precision(dtype):
    return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _layer_norm_reference(x, scale, bias, eps) -> tuple[jax.Array, jax.Array]:
    """(x in float32, layer_norm(x) rounded to x's dtype): the references' LayerNorm, with
    the kernels' statistics (float32, two-pass) and rounding point."""
    xf = x.astype(jnp.float32)
    centred = xf - xf.mean(-1, keepdims=True)
    var = (centred * centred).mean(-1, keepdims=True)
    normed = centred * lax.rsqrt(var + eps) * scale.astype(jnp.float32)
    return xf, (normed + bias.astype(jnp.float32)).astype(x.dtype)


def mlp_block_reference(x: jax.Array, weights: MlpWeights, eps: float) -> jax.Array:
    """x + fc2(gelu(fc1(layer_norm(x)))) in `jax.numpy`, with the kernel's rounding points.

    Args:
      x: [..., D].
      weights: `MlpWeights`, in x's dtype or float32.
      eps: LayerNorm epsilon.

    Returns:
      [..., D] in x's dtype.
    """
    dtype = x.dtype
    acc = jnp.float32
    precision = _precision(dtype)
    xf, normed = _layer_norm_reference(x, weights.ln_scale, weights.ln_bias, eps)
    hidden = jnp.matmul(
        normed, weights.w1.astype(dtype), precision=precision, preferred_element_type=acc
    )
    hidden = exact_gelu(hidden + weights.b1.astype(acc)).astype(dtype)
    out = jnp.matmul(
        hidden, weights.w2.astype(dtype), precision=precision, preferred_element_type=acc
    )
    return (xf + out + weights.b2.astype(acc)).astype(dtype)


def _power_of_two_parts(size: int) -> tuple[tuple[int, int], ...]:
    """(offset, width) pieces of [0, size), widest first, each a power of 2 (192: 128 + 64).

    Triton takes only arrays whose sizes are powers of 2, so the kernel handles a width like
    ViT-Ti's 192 piece by piece.
    """
    parts, offset = [], 0
    for bit in reversed(range(size.bit_length())):
        if size & (1 << bit):
            parts.append((offset, 1 << bit))
            offset += 1 << bit
    return tuple(parts)


def _row(ref, part) -> jax.Array:
    """A [1, width] float32 row of a [D] parameter ref."""
    return ref[part].astype(jnp.float32)[None, :]


def _matmul(a, b, precision) -> jax.Array:
    return lax.dot_general(
        a, b, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
    )


def _layer_norm_tile(x_ref, scale_ref, shift_ref, eps, parts, dtype):
    """The tile's tokens in float32 and layer-normalised in `dtype`, piece by piece."""
    dim = x_ref.shape[1]
    xs = [x_ref[:, part].astype(jnp.float32) for part in parts]
    mean = sum(jnp.sum(x, axis=1, keepdims=True) for x in xs) / dim
    centred = [x - mean for x in xs]
    var = sum(jnp.sum(c * c, axis=1, keepdims=True) for c in centred) / dim
    inv = lax.rsqrt(var + eps)
    normed = [
        (c * inv * _row(scale_ref, part) + _row(shift_ref, part)).astype(dtype)
        for c, part in zip(centred, parts, strict=True)
    ]
    return xs, normed


def _pieces(size: int) -> list:
    return [pl.ds(offset, width) for offset, width in _power_of_two_parts(size)]


def _mlp_kernel(
    x_ref, scale_ref, shift_ref, w1_ref, b1_ref, w2_ref, b2_ref, out_ref, *, eps, block_hidden
):
    """One program: a [block_tokens, D] tile of tokens through the whole MLP half-block."""
    dtype = x_ref.dtype
    precision = _precision(dtype)
    parts = _pieces(x_ref.shape[1])
    xs, normed = _layer_norm_tile(x_ref, scale_ref, shift_ref, eps, parts, dtype)

    def step(j, acc):
        units = pl.ds(pl.multiple_of(j * block_hidden, block_hidden), block_hidden)
        hidden = sum(
            _matmul(n, w1_ref[part, units].astype(dtype), precision)
            for n, part in zip(normed, parts, strict=True)
        )
        hidden = _gelu_in_kernel(hidden + b1_ref[units].astype(jnp.float32)[None, :]).astype(dtype)
        return tuple(
            a + _matmul(hidden, w2_ref[units, part].astype(dtype), precision)
            for a, part in zip(acc, parts, strict=True)
        )

    steps = w1_ref.shape[1] // block_hidden
    acc = lax.fori_loop(0, steps, step, tuple(jnp.zeros(x.shape, jnp.float32) for x in xs))
    for x, a, part in zip(xs, acc, parts, strict=True):
        out_ref[:, part] = (x + a + _row(b2_ref, part)).astype(out_ref.dtype)


def _qkv_kernel(
    x_ref, scale_ref, shift_ref, wq_ref, bq_ref, wk_ref, bk_ref, wv_ref, bv_ref,
    q_ref, k_ref, v_ref, *, eps,
):  # fmt: skip
    """One program: a [block_tokens, D] tile's normalised tokens times Wq, Wk and Wv."""
    dtype = x_ref.dtype
    precision = _precision(dtype)
    parts = _pieces(x_ref.shape[1])
    _, normed = _layer_norm_tile(x_ref, scale_ref, shift_ref, eps, parts, dtype)
    for w_ref, b_ref, out_ref in ((wq_ref, bq_ref, q_ref), (wk_ref, bk_ref, k_ref),
                                  (wv_ref, bv_ref, v_ref)):  # fmt: skip
        for out_part in parts:
            acc = sum(
                _matmul(n, w_ref[in_part, out_part].astype(dtype), precision)
                for n, in_part in zip(normed, parts, strict=True)
            )
            out_ref[:, out_part] = (acc + _row(b_ref, out_part)).astype(out_ref.dtype)


def _check_backend(interpret: bool) -> None:
    if not interpret and jax.default_backend() != "gpu":
        raise ValueError(
            "the fused ViT block kernels ('pallas', config.model.block_kernels) are GPU "
            f"(Triton) kernels; this backend is {jax.default_backend()!r}: use "
            "block_kernels='xla'."
        )


def _token_tiles(x: jax.Array, block: int) -> tuple[jax.Array, int]:
    """[..., D] -> ([T, D] padded to a multiple of `block` rows, the real row count)."""
    tokens = x.reshape(-1, x.shape[-1])
    count = tokens.shape[0]
    padded = -(-count // block) * block
    if padded != count:  # zero rows normalise to the bias: finite, and cropped afterwards
        tokens = jnp.pad(tokens, ((0, padded - count), (0, 0)))
    return tokens, count


def _compiler_params(config: "KernelConfig"):
    # Triton, named: recent JAX lowers GPU kernels with Mosaic GPU otherwise.
    return pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)


def _mlp_forward(x, weights, eps, interpret, config):
    _check_backend(interpret)
    dim = x.shape[-1]
    hidden = weights.w1.shape[1]
    if weights.w1.shape != (dim, hidden) or weights.w2.shape != (hidden, dim):
        raise ValueError(
            f"fused MLP: w1 {weights.w1.shape} and w2 {weights.w2.shape} do not fit x's width "
            f"{dim} (want [D, H] and [H, D])."
        )
    if hidden % config.block_hidden:
        raise ValueError(
            f"fused MLP: hidden width {hidden} is not a multiple of block_hidden "
            f"{config.block_hidden} (KernelConfig)."
        )
    block = config.block_tokens
    tokens, count = _token_tiles(x, block)
    out = pl.pallas_call(
        functools.partial(_mlp_kernel, eps=eps, block_hidden=config.block_hidden),
        out_shape=jax.ShapeDtypeStruct(tokens.shape, x.dtype),
        grid=(tokens.shape[0] // block,),
        in_specs=[
            pl.BlockSpec((block, dim), lambda i: (i, 0)),
            pl.BlockSpec((dim,), lambda i: (0,)),
            pl.BlockSpec((dim,), lambda i: (0,)),
            pl.BlockSpec((dim, hidden), lambda i: (0, 0)),
            pl.BlockSpec((hidden,), lambda i: (0,)),
            pl.BlockSpec((hidden, dim), lambda i: (0, 0)),
            pl.BlockSpec((dim,), lambda i: (0,)),
        ],
        out_specs=pl.BlockSpec((block, dim), lambda i: (i, 0)),
        compiler_params=_compiler_params(config),
        interpret=interpret,
    )(tokens, *weights)
    return out[:count].reshape(x.shape)


@functools.cache
def _partitioned(forward, rank: int):
    """`forward(x, weights, eps, interpret, config)` on [B, ..., D] tokens, split over devices
    along the batch when x is sharded so (`partitioning.batch_partitioned`; the weights
    replicated): each token needs only its own row."""
    if rank < 2:
        return forward
    tokens = " ".join(["b", *(f"t{i}" for i in range(rank - 2))])
    if forward is _mlp_forward:  # LN scale, LN bias, w1 [D, H], b1, w2 [H, D], b2
        rule, width = f"{tokens} d, d, d, d h, h, h d, d -> {tokens} d", "h"
    else:  # LN scale, LN bias, then w [D, E] and b [E] for the query, the key and the value
        outputs = ", ".join([f"{tokens} e"] * 3)
        rule, width = f"{tokens} d, d, d, d e, e, d e, e, d e, e -> {outputs}", "e"
    return batch_partitioned(
        forward,
        num_arrays=2,
        num_static=3,
        sharding_rule=rule,
        replicated=(*tokens.split()[1:], "d", width),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def fused_mlp_block(
    x: jax.Array,
    weights: MlpWeights,
    eps: float,
    interpret: bool = False,
    config: KernelConfig = DEFAULT_CONFIG,
) -> jax.Array:
    """x + fc2(gelu(fc1(layer_norm(x)))) in one kernel: a pre-LN transformer block's MLP half.

    Args:
      x: [..., D] tokens (bfloat16 or float32).
      weights: `MlpWeights` (cast to x's dtype inside; LayerNorm and biases used in float32).
      eps: LayerNorm epsilon.
      interpret: run in Pallas' interpreter (any backend; for tests).
      config: `KernelConfig`.

    Returns:
      [..., D] in x's dtype; equal to `mlp_block_reference` up to summation order.
    """
    return _partitioned(_mlp_forward, x.ndim)(x, weights, eps, interpret, config)


def _forward(x, weights, eps, interpret, config):
    return _partitioned(_mlp_forward, x.ndim)(x, weights, eps, interpret, config), (x, weights)


def _backward(eps, interpret, config, residuals, cotangent):
    del interpret, config
    x, weights = residuals
    _, vjp = jax.vjp(functools.partial(mlp_block_reference, eps=eps), x, weights)
    return vjp(cotangent)


fused_mlp_block.defvjp(_forward, _backward)


def layer_norm_qkv_reference(
    x: jax.Array, weights: QkvWeights, eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(q, k, v) = layer_norm(x) @ (Wq, Wk, Wv) + biases in `jax.numpy`, the kernel's rounding.

    Args:
      x: [..., D].
      weights: `QkvWeights`.
      eps: LayerNorm epsilon.

    Returns:
      q, k, v: [..., D] each, in x's dtype.
    """
    dtype = x.dtype
    precision = _precision(dtype)
    _, normed = _layer_norm_reference(x, weights.ln_scale, weights.ln_bias, eps)

    def project(w, b):
        y = jnp.matmul(
            normed, w.astype(dtype), precision=precision, preferred_element_type=jnp.float32
        )
        return (y + b.astype(jnp.float32)).astype(dtype)

    return (
        project(weights.wq, weights.bq),
        project(weights.wk, weights.bk),
        project(weights.wv, weights.bv),
    )


def _qkv_forward(x, weights, eps, interpret, config):
    _check_backend(interpret)
    dim = x.shape[-1]
    for name in ("wq", "wk", "wv"):
        if getattr(weights, name).shape != (dim, dim):
            raise ValueError(
                f"fused QKV: {name} {getattr(weights, name).shape} does not fit x's width {dim} "
                "(want [D, D])."
            )
    block = config.block_tokens
    tokens, count = _token_tiles(x, block)
    row = pl.BlockSpec((block, dim), lambda i: (i, 0))
    vector = pl.BlockSpec((dim,), lambda i: (0,))
    matrix = pl.BlockSpec((dim, dim), lambda i: (0, 0))
    out = jax.ShapeDtypeStruct(tokens.shape, x.dtype)
    q, k, v = pl.pallas_call(
        functools.partial(_qkv_kernel, eps=eps),
        out_shape=(out, out, out),
        grid=(tokens.shape[0] // block,),
        in_specs=[row, vector, vector, matrix, vector, matrix, vector, matrix, vector],
        out_specs=(row, row, row),
        compiler_params=_compiler_params(config),
        interpret=interpret,
    )(tokens, *weights)
    return tuple(a[:count].reshape(x.shape) for a in (q, k, v))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def fused_layer_norm_qkv(
    x: jax.Array,
    weights: QkvWeights,
    eps: float,
    interpret: bool = False,
    config: KernelConfig = DEFAULT_CONFIG,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """layer_norm(x) times the query, key and value projections, in one kernel.

    Args:
      x: [..., D] tokens (bfloat16 or float32).
      weights: `QkvWeights` (cast to x's dtype inside; LayerNorm and biases in float32).
      eps: LayerNorm epsilon.
      interpret: run in Pallas' interpreter (any backend; for tests).
      config: `KernelConfig` (its block_hidden is not used).

    Returns:
      q, k, v: [..., D] each in x's dtype; equal to `layer_norm_qkv_reference` up to
      summation order.
    """
    return _partitioned(_qkv_forward, x.ndim)(x, weights, eps, interpret, config)


def _qkv_vjp_forward(x, weights, eps, interpret, config):
    qkv = _partitioned(_qkv_forward, x.ndim)(x, weights, eps, interpret, config)
    return qkv, (x, weights)


def _qkv_vjp_backward(eps, interpret, config, residuals, cotangents):
    del interpret, config
    _, vjp = jax.vjp(functools.partial(layer_norm_qkv_reference, eps=eps), *residuals)
    return vjp(cotangents)


fused_layer_norm_qkv.defvjp(_qkv_vjp_forward, _qkv_vjp_backward)
