"""A ViT block's second half, x + fc2(gelu(fc1(layer_norm(x)))), as one Pallas (Triton) kernel.

XLA runs it as five kernels on a GPU: the LayerNorm, fc1 (cuBLAS or a Triton GEMM), the exact
GELU, fc2 and the residual add, so the [tokens, 4 D] hidden activation goes to memory and back
three times. In the evaluation's budget search (20 ViT-Ti passes per batch, 63,040 tokens per
chunk of 5 budgets) that round trip is about 400 of the ~1,100 MB each block moves. Here each
program takes a tile of tokens through all of it: the hidden units are computed
`block_hidden` at a time in registers and multiplied straight into the output accumulator, so
a block reads x and the weights and writes its output, nothing else.

Numerics: LayerNorm statistics, the GELU and both matrix products accumulate in float32; the
normalised input and the GELU output are rounded to the input dtype before their products,
as XLA's bfloat16 path rounds them (float32 inputs stay float32 throughout, IEEE products).
Triton has no erf: the kernel's comes from exp (Abramowitz & Stegun 7.1.26: within 1.5e-7,
5e-7 after float32 rounding).

The gradient is autodiff's of the same computation written with `jax.numpy`
(`mlp_block_reference`), recomputing the forward pass: the kernel keeps no activations.

GPU only; `interpret=True` runs the kernel in Pallas' interpreter anywhere (the tests).
Not yet timed on a GPU (written on 2026-11-28 without one; `benchmarks/train_step.py` and
`eval_search.py` take `--mlp-kernel pallas`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton


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


class KernelConfig(NamedTuple):
    """How the kernel divides the work (results do not depend on it beyond rounding order).

    Attributes:
      block_tokens: tokens per program (power of 2).
      block_hidden: hidden units per inner step (power of 2 dividing H).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages of the hidden loop (None: Triton's).
    """

    block_tokens: int = 64
    block_hidden: int = 64
    num_warps: int = 4
    num_stages: int | None = 2  # Triton's default (3) asked for 451 KB of shared memory


DEFAULT_CONFIG = KernelConfig()


def _gelu(h: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as `jax.nn.gelu(approximate=False)` and torch's default."""
    return 0.5 * h * (1.0 + lax.erf(h * (1.0 / jnp.sqrt(2.0).astype(h.dtype))))


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
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None
    xf = x.astype(acc)
    mean = xf.mean(-1, keepdims=True)
    centred = xf - mean
    var = (centred * centred).mean(-1, keepdims=True)
    normed = centred * lax.rsqrt(var + eps) * weights.ln_scale.astype(acc)
    normed = (normed + weights.ln_bias.astype(acc)).astype(dtype)
    hidden = jnp.matmul(
        normed, weights.w1.astype(dtype), precision=precision, preferred_element_type=acc
    )
    hidden = _gelu(hidden + weights.b1.astype(acc)).astype(dtype)
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


def _kernel(
    x_ref, scale_ref, shift_ref, w1_ref, b1_ref, w2_ref, b2_ref, out_ref, *, eps, block_hidden
):
    """One program: a [block_tokens, D] tile of tokens through the whole half-block."""
    dtype = x_ref.dtype
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None
    dim = x_ref.shape[1]
    parts = [pl.ds(offset, width) for offset, width in _power_of_two_parts(dim)]

    def row(ref, part):  # a [1, width] float32 row of a [D] parameter
        return ref[part].astype(jnp.float32)[None, :]

    def matmul(a, b):
        return lax.dot_general(
            a, b, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
        )

    xs = [x_ref[:, part].astype(jnp.float32) for part in parts]
    mean = sum(jnp.sum(x, axis=1, keepdims=True) for x in xs) / dim
    centred = [x - mean for x in xs]
    var = sum(jnp.sum(c * c, axis=1, keepdims=True) for c in centred) / dim
    inv = lax.rsqrt(var + eps)
    normed = [
        (c * inv * row(scale_ref, part) + row(shift_ref, part)).astype(dtype)
        for c, part in zip(centred, parts, strict=True)
    ]

    def step(j, acc):
        units = pl.ds(pl.multiple_of(j * block_hidden, block_hidden), block_hidden)
        hidden = sum(
            matmul(n, w1_ref[part, units].astype(dtype))
            for n, part in zip(normed, parts, strict=True)
        )
        hidden = _gelu_in_kernel(hidden + b1_ref[units].astype(jnp.float32)[None, :]).astype(dtype)
        return tuple(
            a + matmul(hidden, w2_ref[units, part].astype(dtype))
            for a, part in zip(acc, parts, strict=True)
        )

    steps = w1_ref.shape[1] // block_hidden
    acc = lax.fori_loop(0, steps, step, tuple(jnp.zeros(x.shape, jnp.float32) for x in xs))
    for x, a, part in zip(xs, acc, parts, strict=True):
        out_ref[:, part] = (x + a + row(b2_ref, part)).astype(out_ref.dtype)


def _pallas_forward(x, weights, eps, interpret, config):
    if not interpret and jax.default_backend() != "gpu":
        raise ValueError(
            "the fused MLP kernel ('pallas', config.model.mlp_kernel) is a GPU (Triton) "
            f"kernel; this backend is {jax.default_backend()!r}: use mlp_kernel='xla'."
        )
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
    tokens = x.reshape(-1, dim)
    count = tokens.shape[0]
    block = config.block_tokens
    padded = -(-count // block) * block
    if padded != count:  # zero rows normalise to the bias: finite, and cropped below
        tokens = jnp.pad(tokens, ((0, padded - count), (0, 0)))
    out = pl.pallas_call(
        functools.partial(_kernel, eps=eps, block_hidden=config.block_hidden),
        out_shape=jax.ShapeDtypeStruct(tokens.shape, x.dtype),
        grid=(padded // block,),
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
        # Triton, named: recent JAX lowers GPU kernels with Mosaic GPU otherwise.
        compiler_params=pltriton.CompilerParams(
            num_warps=config.num_warps, num_stages=config.num_stages
        ),
        interpret=interpret,
    )(tokens, *weights)
    return out[:count].reshape(x.shape)


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
    return _pallas_forward(x, weights, eps, interpret, config)


def _forward(x, weights, eps, interpret, config):
    return _pallas_forward(x, weights, eps, interpret, config), (x, weights)


def _backward(eps, interpret, config, residuals, cotangent):
    del interpret, config
    x, weights = residuals
    _, vjp = jax.vjp(functools.partial(mlp_block_reference, eps=eps), x, weights)
    return vjp(cotangent)


fused_mlp_block.defvjp(_forward, _backward)
