"""Matrix products whose operands are rounded to bfloat16 and whose sums stay float32.

`matmul_precision="bfloat16"` is what a TPU does with float32 matrix products at JAX's
default precision (one bfloat16 pass, float32 accumulation), and close to what a GPU's
TF32 tensor cores do (10 mantissa bits where bfloat16 keeps 7). XLA's CPU backend has no such
setting: it multiplies float32 operands exactly, and computes a bfloat16 x bfloat16 ->
bfloat16 product by converting both operands back to float32. Its YNNPACK kernels do take
bfloat16 operands with a float32 result, and on a CPU with AMX (the 2-core Intel Xeon of
`benchmarks/RESULTS.md`) run them at 870-1,500 GFLOP/s against 180-310 in float32.

`bfloat16_matmul` writes the three products of a layer's forward and backward pass that
way (the output, the input gradient and the weight gradient); everything around them (bias,
activations, normalisation, the optimizer) stays in the model's compute dtype. Parameters,
inputs and gradients keep their dtypes; only what enters each product is rounded.

`rows_matmul`, the "default" precision, computes the product at the inputs' own precision
over [rows, K] operands: see its docstring for why the leading axes are flattened.
"""

import functools
from typing import Literal

import jax
import jax.numpy as jnp

MatmulPrecision = Literal["default", "bfloat16"]
MATMUL_PRECISIONS = ("default", "bfloat16")


def matmul(x: jax.Array, w: jax.Array, precision: MatmulPrecision = "default") -> jax.Array:
    """x @ w over x's last axis.

    Args:
      x: [..., K].
      w: [K, N].
      precision: "default" (the product in x's and w's promoted dtype, as `jnp.matmul`) or
        "bfloat16" (`bfloat16_matmul`).

    Returns:
      [..., N] in the promoted dtype of x and w.
    """
    if _checked(precision) == "default":
        return rows_matmul(x, w)
    return bfloat16_matmul(x, w)


def rows_matmul(
    x: jax.Array,
    w: jax.Array,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """x @ w as one [rows, K] x [K, N] product, the leading axes of x flattened into rows.

    The same sums as `jnp.matmul(x, w)`. Over [..., K] inputs, the weight gradient xᵀ·grad
    contracts all the leading axes at once; XLA's CPU backend lowers a product with several
    contracting axes by writing one operand transposed, fused into whatever computes it
    (for MobileNetV3's 16 -> 64 expansion at 112², batch 4, float32: the BatchNorm gradient
    written as [64, 50176], 12.5 ms of a ~410 ms training step). Over rows the gradient has
    one contracting axis and no transpose: that layer's forward + backward 21.5 -> 3.9 ms,
    ViT-Ti's linear layers at batch 4 0.81-0.96x the time, the paper's float32 training step
    0.91x (`benchmarks/RESULTS.md`, eighth session of 2026-12-07). Flattening row-major
    leading axes is free on CPUs and GPUs (the H200 step compiled here: 21.26 -> 20.99 ms
    estimated). A TPU tiles the last two axes of its arrays, so merging a leading axis that
    is not a multiple of the tile (ViT's 197 tokens) would copy, and its compiler takes
    several contracting axes as they are: there the product stays over [..., K].

    Args:
      x: [..., K].
      w: [K, N].
      precision, preferred_element_type: as `jnp.matmul`'s.

    Returns:
      [..., N], the dtype `jnp.matmul` gives.
    """
    product = jnp.matmul(
        flatten_rows(x), w, precision=precision, preferred_element_type=preferred_element_type
    )
    return product.reshape(*x.shape[:-1], w.shape[-1])


def flatten_rows(x: jax.Array) -> jax.Array:
    """x [..., K] as `rows_matmul` multiplies it: [rows, K], or x itself on a TPU.

    Flattening an input once before several products keeps one copy of it for their weight
    gradients: each product flattening its own makes autodiff keep one per product
    (`vit.Attention.shared_input`).
    """
    return x if jax.default_backend() == "tpu" else x.reshape(-1, x.shape[-1])


def _checked(precision: str) -> str:
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul precision must be one of {MATMUL_PRECISIONS}, got {precision!r}.")
    return precision


def bfloat16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w from bfloat16-rounded operands, summed in float32, in both passes.

    Args:
      x: [..., K] floating.
      w: [K, N] floating.

    Returns:
      [..., N] in the promoted dtype of x and w. Its gradients are the input's and the
      weight's dtypes, each computed from bfloat16-rounded operands with float32 sums.
    """
    dtype = jnp.promote_types(x.dtype, w.dtype)
    return _bfloat16_matmul(x, w, jnp.dtype(x.dtype), jnp.dtype(w.dtype)).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _bfloat16_matmul(x, w, x_dtype, w_dtype):
    """[..., K] x [K, N] -> [..., N] float32 (dtypes: x's and w's, for the gradients)."""
    del x_dtype, w_dtype
    return _product(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))


def _product(x, w):
    return jnp.matmul(x, w, preferred_element_type=jnp.float32)


def _forward(x, w, x_dtype, w_dtype):
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    # The residuals are the rounded operands (half the bytes), kept as their uint16 bit
    # patterns: in a scan over layers each step writes its residuals into a stacked array,
    # and XLA's CPU backend updates a bfloat16 array by converting all of it to float32 and
    # back (every step rewrote every layer's residuals: ~30 ms of the paper's step at batch
    # 4). Integers it updates in place; on accelerators the bitcasts are free.
    return _product(x, w), (_to_bits(x), _to_bits(w))


def _to_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.uint16)


def _from_bits(bits: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(bits, jnp.bfloat16)


def _backward(x_dtype, w_dtype, residuals, grad):
    x, w = (_from_bits(r) for r in residuals)
    out = grad.shape[-1]
    grad = grad.astype(jnp.bfloat16)
    d_x = _product(grad, w.T)
    rows_x, rows_grad = x.reshape(-1, x.shape[-1]), grad.reshape(-1, out)
    if jax.default_backend() != "cpu":
        d_w = _product(rows_x.T, rows_grad)
    else:
        d_w = _cpu_weight_gradient(rows_x, rows_grad)
    return d_x.astype(x_dtype), d_w.astype(w_dtype)


def _cpu_weight_gradient(rows_x: jax.Array, rows_grad: jax.Array) -> jax.Array:
    """xᵀ grad for [R, K] x and [R, N] grad (bfloat16) -> [K, N] float32, on XLA's CPU backend.

    d w = xᵀ grad contracts both operands' leading axis. XLA folds a transpose into the
    product's dimension numbers, and its CPU backend, whose YNNPACK kernels take only a
    row-major left operand, then computes it in float32 (both operands converted back), or
    for some forms not at all: ViT-Ti's first MLP layer at batch 4, forward + backward 2.9 ms
    in float32, 1.8 with the rounded operands, 1.0 with an explicit transpose.

    So the transpose is explicit, kept an op of its own by one zero row appended to it (XLA
    does not fold a pad) and sliced off the result; the sums are unchanged. The transposed
    operand is the narrower one: for K > N the product is (gradᵀ x)ᵀ, whose gradᵀ and
    [N, K] result are smaller to copy than xᵀ. Measured at batch 4 (`benchmarks/RESULTS.md`,
    eighth session of 2026-12-07): layers with K > N 0.68-0.95x the time forward + backward
    (ViT-Ti's 768 -> 192 copied x at 0.74 ms a layer); the paper's bfloat16-products step
    0.974-0.988x the time of a zero padded on the contracted axis of both operands, which
    copied the right operand too.
    """
    transposed = rows_x.shape[1] > rows_grad.shape[1]
    if transposed:
        rows_x, rows_grad = rows_grad, rows_x
    left = jnp.pad(rows_x.T, ((0, 1), (0, 0)))
    product = _product(left, rows_grad)[: rows_x.shape[1]]
    return product.T if transposed else product


_bfloat16_matmul.defvjp(_forward, _backward)


def dot_general(precision: MatmulPrecision):
    """A `dot_general` for `nnx.Linear(dot_general=...)` computing with `precision`.

    nnx.Linear calls it as `lax.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)),
    ((), ())), precision=..., ...)`: a product over the inputs' last axis, the only one the
    bfloat16 version computes. The same function object for each precision, so that modules
    built alike have equal graph definitions.
    """
    if _checked(precision) == "default":
        return _rows_dot_general
    return _bfloat16_dot_general


def _rows_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """`lax.dot_general`; nnx.Linear's [..., K] x [K, N] by `rows_matmul`.

    An explicit `out_sharding` (nnx.Linear's argument, None unless a caller sets it) goes to
    `lax.dot_general` as given: it names the sharding of the [..., N] result, not of rows.
    """
    if _is_linear(lhs, rhs, dimension_numbers) and kwargs.get("out_sharding") is None:
        return rows_matmul(lhs, rhs, precision, kwargs.get("preferred_element_type"))
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, **kwargs)


def _is_linear(lhs, rhs, dimension_numbers) -> bool:
    (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = dimension_numbers
    return (
        tuple(lhs_contracting) == (lhs.ndim - 1,)
        and tuple(rhs_contracting) == (0,)
        and not lhs_batch
        and not rhs_batch
        and rhs.ndim == 2
    )


def _bfloat16_dot_general(lhs, rhs, dimension_numbers, precision=None, **unused_kwargs):
    """`lax.dot_general`'s signature; [..., K] x [K, N] by `bfloat16_matmul` only."""
    del precision, unused_kwargs
    if not _is_linear(lhs, rhs, dimension_numbers):
        raise ValueError(
            "the bfloat16 dot_general computes inputs [..., K] x kernel [K, N] only, got "
            f"dimension numbers {dimension_numbers} for {lhs.shape} x {rhs.shape}."
        )
    return bfloat16_matmul(lhs, rhs)
