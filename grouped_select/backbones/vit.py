"""Vision Transformer classifier in the Hugging Face `ViTForImageClassification` layout.

Patch-16 conv embedding, a class token, learned position embeddings, pre-LayerNorm encoder
blocks (attention and an MLP with exact erf GELU, each added residually), a final LayerNorm
and a linear classifier on the class token. LayerNorm eps defaults to HF's 1e-12. There is no
dropout: HF's ViT configs use 0.0.

`VIT_VARIANTS` holds ViT-Ti/16, ViT-S/16 and ViT-B/16. The image size is a constructor
argument; weights trained at another resolution need their position embeddings resized with
`resize_position_embeddings` (`grouped_select.convert.load_vit_weights` does it when loading).
"""

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from grouped_select import pallas_vit
from grouped_select.backbones import matmul
from grouped_select.backbones.activations import exact_gelu
from grouped_select.backbones.attention import attention
from grouped_select.backbones.layer_norm import LayerNorm

# HF initialises every linear / conv kernel and both embeddings with trunc_normal(std=0.02).
_INIT = nnx.initializers.truncated_normal(stddev=0.02)


class ViTVariant(NamedTuple):
    """Width and depth of a ViT."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int


VIT_VARIANTS = {
    "ti": ViTVariant(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "s": ViTVariant(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "b": ViTVariant(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
}


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _linear(
    d_in: int, d_out: int, rngs: nnx.Rngs, matmul_precision: matmul.MatmulPrecision = "default"
) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=_INIT,
        dot_general=matmul.dot_general(matmul_precision),
        rngs=rngs,
    )


def _layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> LayerNorm:
    # Two-pass variance, as torch computes it (the fast E[x²] - E[x]² loses digits); a
    # gradient that keeps the input alone (`layer_norm`).
    return LayerNorm(dim, epsilon=eps, rngs=rngs)


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
BLOCK_KERNELS = ("xla", "pallas")


class Attention(nnx.Module):
    """Multi-head self-attention with separate query / key / value / output projections.

    Attributes:
      query, key, value, out: `nnx.Linear` [D, D] with bias.
      implementation: `jax.nn.dot_product_attention`'s: "xla" (any backend and dtype) or
        "cudnn" (cuDNN's fused attention: NVIDIA GPUs, bfloat16 / float16 only). On an H200
        (2026-11-28) "cudnn" took the ViT-Ti/16 evaluation from 47.8 to 36.9 ms, but its gradient
        refused 197 tokens ("Unsupported sequence length"). `ViT` therefore runs its encoder
        on one masked padding token more (`ViT.pad_tokens`); called on an odd count directly,
        this module runs the kernel as is forward and differentiates through
        `padded_attention` (`odd_length_attention`). Neither yet run on a GPU.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        implementation: str = "xla",
        matmul_precision: matmul.MatmulPrecision = "default",
        rngs: nnx.Rngs,
    ):
        """Builds the projections; `dim` must be divisible by `num_heads`; `matmul_precision`:
        the projections' and the "xla" attention's products (`grouped_select.backbones.matmul`,
        `attention.attention`)."""
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads.")
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention implementation {implementation!r} is not one of "
                f"{ATTENTION_IMPLEMENTATIONS}."
            )
        self.num_heads = num_heads
        self.implementation = implementation
        self.query = _linear(dim, dim, rngs, matmul_precision)
        self.key = _linear(dim, dim, rngs, matmul_precision)
        self.value = _linear(dim, dim, rngs, matmul_precision)
        self.out = _linear(dim, dim, rngs, matmul_precision)
        self.matmul_precision = matmul_precision

    def __call__(self, x: jax.Array, valid_tokens: int | None = None) -> jax.Array:
        """[B, N, D] -> [B, N, D] (`valid_tokens`: see `attend`)."""
        return self.attend(*self.project(x), valid_tokens)

    def project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The query, key and value projections of x [B, N, D]: three [B, N, D].

        With cuDNN attention they come from one [D, 3 D] product (the three kernels and
        biases concatenated at call time; the parameters keep the published layout): one
        matrix product, bias add and bias gradient instead of three each. The H200 training
        step compiled here (`benchmarks/compile_census.py`, cuDNN attention + remat,
        2026-12-06): 2,281 -> 2,173 kernels, 15.2 -> 14.8 ms estimated. Not with XLA's
        attention, whose products then read q, k and v through transposing copies (defaults:
        23.2 -> 23.7 ms training, 36.2 -> 38.6 ms evaluation).
        """
        layers = (self.query, self.key, self.value)
        if self.implementation != "cudnn":
            return self.shared_input(x, layers)
        kernel = jnp.concatenate([layer.kernel[...] for layer in layers], axis=1)
        bias = jnp.concatenate([layer.bias[...] for layer in layers])
        qkv = matmul.matmul(x, kernel, self.matmul_precision) + bias
        return tuple(jnp.split(qkv, 3, axis=-1))

    @staticmethod
    def shared_input(x: jax.Array, layers: Sequence[nnx.Linear]) -> tuple[jax.Array, ...]:
        """Each of `layers` applied to x [B, N, D]: one [B, N, D_out] per layer.

        x is flattened into rows once for all of them (`matmul.flatten_rows`), so that
        autodiff keeps one copy of it for their weight gradients, not one per layer.
        """
        rows = matmul.flatten_rows(x)
        return tuple(layer(rows).reshape(*x.shape[:-1], -1) for layer in layers)

    def attend(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        valid_tokens: int | None = None,
        implementation: str | None = None,
    ) -> jax.Array:
        """Attention from projected queries, keys and values, then the output projection.

        Args:
          q: [B, N, D] queries (heads side by side, as the projections give them).
          k, v: [B, M, D] keys and values; M = N but for `EncoderBlock.class_token` (with
            "xla" attention).
          valid_tokens: only the first this many tokens are keys (the rest are padding, see
            `ViT`); None: all M.
          implementation: overrides the module's ("xla" for `EncoderBlock.class_token`).

        Returns:
          [B, N, D].
        """
        implementation = implementation or self.implementation
        batch, tokens, dim = q.shape
        head_dim = dim // self.num_heads
        q, k, v = (t.reshape(*t.shape[:2], self.num_heads, head_dim) for t in (q, k, v))
        if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(
                f"cuDNN attention needs bfloat16 or float16 inputs, got {q.dtype}: compute in "
                "bfloat16 (config.compute_dtype) or use the 'xla' attention."
            )
        if valid_tokens is not None and valid_tokens < tokens:
            y = _masked_attention(q, k, v, valid_tokens, implementation)
        elif implementation == "cudnn" and tokens % 2:
            y = odd_length_attention(q, k, v, "cudnn")
        elif implementation == "xla":
            # XLA's attention, with a cheaper backward pass
            y = attention(q, k, v, self.matmul_precision)
        else:
            y = jax.nn.dot_product_attention(q, k, v, implementation=implementation)
        return self.out(y.reshape(batch, tokens, dim))


def _masked_attention(q, k, v, valid_tokens: int, implementation: str | None) -> jax.Array:
    """Attention over [B, N, heads, head_dim] whose tokens from `valid_tokens` on are padding
    (no keys; their query rows are left to the kernel)."""
    # The lengths are computed from q (a select whose two branches are equal) so that under
    # `jax.vmap` they are batched wherever q is: cuDNN attention's batching rule folds every
    # operand's vmapped axis into its batch axis, and an unbatched [B] array fails there
    # ("cannot reshape (64,) into (320,)": the budget search's vmap over 5 budgets).
    first = q[:, 0, 0, 0]
    lengths = jnp.where(jnp.isnan(first), valid_tokens, valid_tokens).astype(jnp.int32)
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )


def padded_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str | None = None
) -> jax.Array:
    """Attention over an odd number of tokens as over one more, masked out.

    cuDNN's fused attention refused to differentiate 197 tokens (ViT-Ti/16 at 224²) on an
    H200 ("Unsupported sequence length Q 197, KV 197", 2026-11-28) and allows even lengths
    with padding masks; the padded token is no key (masked by the sequence lengths) and its
    query row is dropped, so the result is attention over the real tokens.

    Args:
      q, k, v: [B, N, heads, head_dim].
      implementation: `jax.nn.dot_product_attention`'s.

    Returns:
      [B, N, heads, head_dim].
    """
    tokens = q.shape[1]
    pad = ((0, 0), (0, 1), (0, 0), (0, 0))
    padded = (jnp.pad(a, pad) for a in (q, k, v))
    return _masked_attention(*padded, tokens, implementation)[:, :tokens]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def odd_length_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, implementation: str | None = None
) -> jax.Array:
    """Attention over an odd number of tokens whose gradient goes through `padded_attention`.

    cuDNN's fused attention computes 197 tokens forward but not backward. `Attention` uses
    this on odd counts (the `ViT` pads its whole encoder instead): forward-only callers pay
    no padding copies, and only the gradient recomputes the attention padded.

    Args:
      q, k, v: [B, N, heads, head_dim].
      implementation: `jax.nn.dot_product_attention`'s.

    Returns:
      [B, N, heads, head_dim].
    """
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


def _odd_length_attention_forward(q, k, v, implementation):
    return odd_length_attention(q, k, v, implementation), (q, k, v)


def _odd_length_attention_backward(implementation, residuals, grad):
    _, vjp = jax.vjp(functools.partial(padded_attention, implementation=implementation), *residuals)
    return vjp(grad)


odd_length_attention.defvjp(_odd_length_attention_forward, _odd_length_attention_backward)


class Mlp(nnx.Module):
    """fc1 -> exact GELU -> fc2.

    Attributes:
      fc1: `nnx.Linear` [D, mlp_dim].
      fc2: `nnx.Linear` [mlp_dim, D].
    """

    def __init__(
        self,
        dim: int,
        mlp_dim: int,
        *,
        matmul_precision: matmul.MatmulPrecision = "default",
        rngs: nnx.Rngs,
    ):
        """Builds the two layers (`matmul_precision`: `grouped_select.backbones.matmul`)."""
        self.fc1 = _linear(dim, mlp_dim, rngs, matmul_precision)
        self.fc2 = _linear(mlp_dim, dim, rngs, matmul_precision)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, N, D] -> [B, N, D]."""
        # fc2's weight gradient reads GELU's output and GELU's derivative its input. Keeping
        # the input alone and recomputing the output in the backward pass (one erf per
        # hidden unit) keeps one [B, N, mlp_dim] tensor per block instead of two
        # (`benchmarks/RESULTS.md`, ninth session of 2026-12-07).
        return jax.checkpoint(lambda hidden: self.fc2(exact_gelu(hidden)))(self.fc1(x))


class EncoderBlock(nnx.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then + mlp(norm2(·)).

    Attributes:
      norm1: HF `layernorm_before`.
      attn: `Attention`.
      norm2: HF `layernorm_after`.
      mlp: `Mlp`.
      block_kernels: "xla" (each LayerNorm, bias add, GELU and residual add as XLA compiles
        them) or "pallas" (`grouped_select.pallas_vit`: LN1 + the query / key / value
        projections in one GPU kernel, LN2 + MLP + residual in another; same parameters).
    """

    def __init__(
        self,
        variant: ViTVariant,
        *,
        layer_norm_eps: float,
        attention: str = "xla",
        block_kernels: str = "xla",
        matmul_precision: matmul.MatmulPrecision = "default",
        rngs: nnx.Rngs,
    ):
        """Builds one block of `variant`'s width (`attention`: see `Attention`;
        `matmul_precision`: its linear layers' and attention's, `Attention`)."""
        if block_kernels not in BLOCK_KERNELS:
            raise ValueError(f"block_kernels {block_kernels!r} is not one of {BLOCK_KERNELS}.")
        dim = variant.hidden_size
        self.norm1 = _layer_norm(dim, layer_norm_eps, rngs)
        self.attn = Attention(
            dim,
            variant.num_heads,
            implementation=attention,
            matmul_precision=matmul_precision,
            rngs=rngs,
        )
        self.norm2 = _layer_norm(dim, layer_norm_eps, rngs)
        self.mlp = Mlp(dim, variant.mlp_dim, matmul_precision=matmul_precision, rngs=rngs)
        self.block_kernels = block_kernels

    def __call__(self, x: jax.Array, valid_tokens: int | None = None) -> jax.Array:
        """[B, N, D] -> [B, N, D]; tokens from `valid_tokens` on are padding (`ViT`)."""
        if self.block_kernels == "pallas":
            attn, norm1 = self.attn, self.norm1
            qkv = pallas_vit.QkvWeights(
                norm1.scale[...],
                norm1.bias[...],
                *(p for layer in (attn.query, attn.key, attn.value)
                  for p in (layer.kernel[...], layer.bias[...])),
            )  # fmt: skip
            q, k, v = pallas_vit.fused_layer_norm_qkv(x, qkv, norm1.epsilon)
            x = x + attn.attend(q, k, v, valid_tokens)
            weights = pallas_vit.MlpWeights(
                self.norm2.scale[...],
                self.norm2.bias[...],
                self.mlp.fc1.kernel[...],
                self.mlp.fc1.bias[...],
                self.mlp.fc2.kernel[...],
                self.mlp.fc2.bias[...],
            )
            return pallas_vit.fused_mlp_block(x, weights, self.norm2.epsilon)
        x = x + self.attn(self.norm1(x), valid_tokens)
        return x + self.mlp(self.norm2(x))

    def class_token(self, x: jax.Array, valid_tokens: int | None = None) -> jax.Array:
        """The block's output at the first (class) token alone: [B, N, D] -> [B, 1, D].

        `self(x, valid_tokens)[:, :1]` without the other tokens' queries, attention rows,
        output projection and MLP, which nothing reads after a classifier's last block
        (`ViT.__call__`). Every real token's key and value are still computed; padding tokens
        (from `valid_tokens` on) are dropped. Whatever the block's attention and kernels, the
        one query row goes through XLA's attention and layers: cuDNN's fused attention and
        the fused block kernels are built for whole token sets.
        """
        if valid_tokens is not None:
            x = x[:, :valid_tokens]
        attn, normed = self.attn, self.norm1(x)
        k, v = attn.shared_input(normed, (attn.key, attn.value))
        y = attn.attend(attn.query(normed[:, :1]), k, v, implementation="xla")
        x = x[:, :1] + y
        return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):
    """ViT image classifier (HF `ViTForImageClassification` computation).

    Attributes:
      patch_embed: `nnx.Conv` patch x patch, stride patch, 3 -> D.
      cls_token: `nnx.Param` [1, 1, D].
      pos_embed: `nnx.Param` [1, 1 + gh * gw, D], class token first, then patches row-major.
      layers: `nnx.List` of `EncoderBlock`.
      norm: final LayerNorm.
      head: `nnx.Linear` [D, num_classes] on the class token.
      grid: (gh, gw) patch grid, image size // patch size.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        variant: str | ViTVariant = "ti",
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        layer_norm_eps: float = 1e-12,
        scan_layers: bool = True,
        attention: str = "xla",
        remat_layers: bool = False,
        block_kernels: str = "xla",
        matmul_precision: matmul.MatmulPrecision = "default",
        rngs: nnx.Rngs,
    ):
        """Builds a ViT with random weights (see `grouped_select.convert` to load some).

        Args:
          num_classes: classifier outputs.
          variant: a key of `VIT_VARIANTS` ("ti", "s", "b") or a `ViTVariant`.
          image_size: input height = width, or (height, width); multiples of `patch_size`.
          patch_size: patch side.
          layer_norm_eps: LayerNorm epsilon (HF default 1e-12).
          scan_layers: in training mode, run the encoder blocks as one `lax.scan` over their
            parameters stacked at call time (see `encode`); False runs them as a Python loop.
            Eval mode (`.eval()`) always runs the loop. Same parameters and, up to float
            rounding, the same values either way.
          attention: "xla" or "cudnn" (fused; GPU, bfloat16 / float16), see `Attention`.
          remat_layers: recompute each block's forward pass in the backward pass
            (`jax.checkpoint`) instead of keeping its intermediates: the backward reads one
            [B, N, D] input per block instead of its MLP and attention activations. Same
            values and gradients.
          block_kernels: "xla" or "pallas" (each block's LayerNorms fused with the matrix
            products after them, GPU kernels; see `EncoderBlock`).
          matmul_precision: "default" or "bfloat16": the patch embedding's, the linear
            layers', the "xla" attention's and the head's products from bfloat16-rounded
            operands with float32 sums (`grouped_select.backbones.matmul`; cuDNN attention
            and the "pallas" block kernels are left as they are). Same parameters.
          rngs: initialisation keys.
        """
        if isinstance(variant, str):
            variant = VIT_VARIANTS[variant]
        height, width = _pair(image_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"image size {(height, width)} is not a multiple of {patch_size}.")
        self.grid = (height // patch_size, width // patch_size)
        dim = variant.hidden_size
        self.patch_embed = nnx.Conv(
            3,
            dim,
            (patch_size, patch_size),
            strides=patch_size,
            padding="VALID",
            kernel_init=_INIT,
            rngs=rngs,
        )
        self.cls_token = nnx.Param(_INIT(rngs.params(), (1, 1, dim)))
        num_tokens = 1 + self.grid[0] * self.grid[1]
        self.pos_embed = nnx.Param(_INIT(rngs.params(), (1, num_tokens, dim)))
        self.layers = nnx.List(
            [
                EncoderBlock(
                    variant,
                    layer_norm_eps=layer_norm_eps,
                    attention=attention,
                    block_kernels=block_kernels,
                    matmul_precision=matmul_precision,
                    rngs=rngs,
                )
                for _ in range(variant.num_layers)
            ]
        )
        self.norm = _layer_norm(dim, layer_norm_eps, rngs)
        self.head = _linear(dim, num_classes, rngs, matmul_precision)
        self.matmul_precision = matmul_precision
        self.scan_layers = scan_layers
        self.remat_layers = remat_layers
        # cuDNN's attention gradient takes only even token counts (ViT-Ti/16 at 224²: 197).
        # The encoder then runs on one zero token more, masked out as a key in every block:
        # cheaper than padding inside each block (a copy of q, k, v and of the output per
        # layer and pass), and 64 x 198 rows are a multiple of the matrix units' 128.
        self.pad_tokens = int(attention == "cudnn" and num_tokens % 2)
        # Set by `nnx.Module.eval()` / `.train()` (as for dropout): inference runs the blocks
        # as a Python loop, see `encode`.
        self.deterministic = False

    def features(self, x: jax.Array) -> jax.Array:
        """Encodes images into tokens.

        Args:
          x: [B, H, W, 3] ImageNet-normalised images, (H, W) = the constructor's image size.

        Returns:
          [B, 1 + gh * gw, D] final-LayerNorm tokens, class token first.
        """
        tokens, valid_tokens = self.encoder_input(x)
        return self.norm(self.encode(tokens, valid_tokens)[:, :valid_tokens])

    def encoder_input(self, x: jax.Array) -> tuple[jax.Array, int | None]:
        """`embed(x)` with `pad_tokens` zero tokens appended, and the real token count.

        Returns:
          [B, 1 + gh * gw + pad_tokens, D] tokens; 1 + gh * gw, or None without padding.
        """
        tokens = self.embed(x)
        if not self.pad_tokens:
            return tokens, None
        return jnp.pad(tokens, ((0, 0), (0, self.pad_tokens), (0, 0))), tokens.shape[1]

    def embed(self, x: jax.Array) -> jax.Array:
        """The encoder's input: [B, H, W, 3] images -> [B, 1 + gh * gw, D] tokens (class token
        first, position embeddings added)."""
        patches = self.embed_patches(x)
        batch, gh, gw, dim = patches.shape
        if (gh, gw) != self.grid:
            raise ValueError(
                f"input {x.shape[1:3]} gives a {gh}x{gw} patch grid but the position "
                f"embeddings are for {self.grid[0]}x{self.grid[1]}."
            )
        cls = jnp.broadcast_to(self.cls_token[...].astype(patches.dtype), (batch, 1, dim))
        tokens = jnp.concatenate([cls, patches.reshape(batch, gh * gw, dim)], axis=1)
        return tokens + self.pos_embed[...]

    def embed_patches(self, x: jax.Array) -> jax.Array:
        """`patch_embed` (a p x p conv with stride p, VALID) as patchify + one matmul.

        Same parameters and values as calling the conv. Written as a matmul because the
        gradient with respect to the image, which P2P needs (the classifier's input is the
        masked image), is then a matmul too; XLA's CPU backend ran the conv's input gradient as
        a base-dilated convolution taking ~29 ms of the paper's 416 ms step at batch 4.

        Args:
          x: [B, H, W, 3] images.

        Returns:
          [B, H // p, W // p, D] patch embeddings (rows and columns beyond a multiple of p are
          dropped, as the VALID conv drops them).
        """
        kernel = self.patch_embed.kernel[...]  # [p, p, 3, D]
        bias = self.patch_embed.bias[...]
        patch = kernel.shape[0]
        batch, height, width, channels = x.shape
        gh, gw = height // patch, width // patch
        x = x[:, : gh * patch, : gw * patch].reshape(batch, gh, patch, gw, patch, channels)
        if self.matmul_precision == "default":
            return jnp.einsum("bhpwqc,pqcd->bhwd", x, kernel) + bias
        patches = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, gh, gw, -1)  # (p, q, c) minor
        return (
            matmul.matmul(patches, kernel.reshape(-1, kernel.shape[-1]), self.matmul_precision)
            + bias
        )

    def encode(
        self,
        tokens: jax.Array,
        valid_tokens: int | None = None,
        layers: Sequence[EncoderBlock] | None = None,
    ) -> jax.Array:
        """Runs the encoder blocks: [B, N, D] -> [B, N, D] (tokens from `valid_tokens` on are
        padding: no block attends to them; `layers`: these blocks, default all).

        With `scan_layers` the blocks' parameters are stacked (a copy of ~5.5M floats for
        ViT-Ti; with `remat_layers` each block's as one vector) and one block is scanned over
        them (same parameters, checkpoints and values as unrolled): XLA compiles one block
        instead of `num_layers`, and on CPU the backward pass gets faster because each
        block's residual gradient is computed once; unrolled, XLA's CPU fusion recomputed it
        inside the weight-gradient transposes of every earlier block (work quadratic in
        depth).
        ViT-Ti forward + backward at batch 4, 224², 2-core CPU: 203–208 ms unrolled, 173–187 ms
        scanned (`benchmarks/RESULTS.md`).
        """
        layers = list(self.layers if layers is None else layers)
        if not layers:
            return tokens
        if self.deterministic or not (self.scan_layers or self.remat_layers):
            # Forward only (eval mode), scanning buys nothing and costs copies: stacking every
            # parameter at each call and slicing it out again per block. The H200 budget
            # search compiled here (benchmarks/compile_census.py, cuDNN attention + fused
            # block kernels): 1,438 -> 454 kernels, 12.1 -> 8.8 ms estimated.
            for layer in layers:
                tokens = layer(tokens, valid_tokens)
            return tokens
        graphdef, _ = nnx.split(layers[0])
        states = [nnx.state(layer) for layer in layers]
        remat = jax.checkpoint if self.remat_layers else lambda f: f

        def block(tokens, state):
            return nnx.merge(graphdef, state)(tokens, valid_tokens), None

        if not self.scan_layers:
            for state in states:
                tokens, _ = remat(block)(tokens, state)
            return tokens
        if not self.remat_layers:
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
            tokens, _ = jax.lax.scan(block, tokens, stacked)
            return tokens
        # Rematerialised, each block's parameters go in as one vector, stacked
        # [num_layers, n]: the backward pass keeps that scan input instead of saving every
        # parameter array per block, and slices one vector per block instead of one per array.
        # The H200 training step compiled here (benchmarks/compile_census.py, cuDNN attention
        # + remat): 2,858 -> 2,498 kernels, 17.9 -> 17.1 ms estimated. Not without remat: there
        # it saves 131 of 3,218 kernels on the H200 and the CPU step (unravelling copies) ran
        # 427 / 429 / 421 ms against 395 / 362 / 468 (batch 4, alternating processes).
        flat_states, unravel = zip(*map(jax.flatten_util.ravel_pytree, states), strict=True)

        def flat_block(tokens, flat_state):
            return block(tokens, unravel[0](flat_state))

        tokens, _ = jax.lax.scan(remat(flat_block), tokens, jnp.stack(flat_states))
        return tokens

    def __call__(self, x: jax.Array) -> jax.Array:
        """Classifies images.

        Args:
          x: [B, H, W, 3] ImageNet-normalised images.

        Returns:
          [B, num_classes] logits.
        """
        # The head reads the class token alone, so the last block computes only its row
        # (`EncoderBlock.class_token`): ViT-Ti/16 at 224² does ~0.9 of a block's work less.
        # With cuDNN attention or the fused block kernels too, the H200 programs compiled here
        # (`benchmarks/compile_census.py`, 2026-12-07, estimates) against every token through
        # every block: training with cuDNN attention + remat 14.1 -> 13.9 ms, the search with
        # cuDNN attention 21.4 -> 20.3 ms, with the fused block kernels too 8.5 -> 8.5.
        tokens, valid_tokens = self.encoder_input(x)
        tokens = self.encode(tokens, valid_tokens, layers=list(self.layers)[:-1])
        last = self.layers[-1]
        if self.remat_layers and not self.deterministic:  # recomputed as the other blocks
            graphdef, state = nnx.split(last)
            run = jax.checkpoint(
                lambda state, tokens: nnx.merge(graphdef, state).class_token(tokens, valid_tokens)
            )
            cls = run(state, tokens)
        else:
            cls = last.class_token(tokens, valid_tokens)
        return self.head(self.norm(cls)[:, 0])


def resize_position_embeddings(
    pos_embed: ArrayLike,
    new_grid: tuple[int, int],
    *,
    old_grid: tuple[int, int] | None = None,
    method: str = "bilinear",
) -> np.ndarray:
    """Resizes learned position embeddings to another patch grid (another image size).

    The class token's embedding is kept; the patch embeddings, seen as a [gh, gw, D] image,
    are resized with half-pixel centres and no antialiasing (torch
    `F.interpolate(mode="bilinear", align_corners=False)`). `method="bicubic"` is also
    accepted; note jax's cubic kernel (a = -0.5) differs slightly from torch's (a = -0.75).

    Args:
      pos_embed: [1, 1 + gh * gw, D] embeddings, class token first, patches row-major.
      new_grid: (gh', gw') target patch grid, e.g. (28, 28) for 448 px at patch 16.
      old_grid: (gh, gw) source grid; inferred as square when None.
      method: "bilinear" (default) or "bicubic".

    Returns:
      [1, 1 + gh' * gw', D] float32 numpy array.

    Raises:
      ValueError: the token count does not fit `old_grid` (or a square grid).
    """
    pos_embed = np.asarray(pos_embed, np.float32)
    _, tokens, dim = pos_embed.shape
    if old_grid is None:
        side = math.isqrt(tokens - 1)
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != tokens - 1:
        raise ValueError(
            f"{tokens - 1} patch embeddings do not form a {old_grid[0]}x{old_grid[1]} grid."
        )
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    grid = pos_embed[0, 1:].reshape(*old_grid, dim)
    resized = jax.image.resize(grid, (*new_grid, dim), method, antialias=False)
    resized = np.asarray(resized, np.float32).reshape(1, new_grid[0] * new_grid[1], dim)
    return np.concatenate([pos_embed[:, :1], resized], axis=1)
