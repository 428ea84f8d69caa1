"""A ViT block's fused kernels against XLA's: LN2 + MLP + residual, and LN1 + q/k/v.

    python benchmarks/vit_kernels.py [--tokens 12608,63040 --width 192 --hidden 768]

Times, forward, bfloat16 activations and weights, at the token counts the paper's runs see
with ViT-Ti/16 at 224² and cuDNN attention (197 tokens + 1 padding: 64 x 198 = 12,672 in a
training step; 5 x 64 x 198 = 63,360 in the budget search's chunk of five budgets):
- `x + fc2(gelu(fc1(layer_norm(x))))` as the ViT's XLA path computes it (flax LayerNorm and
  Linear layers, exact GELU) and as `grouped_select.pallas_vit.fused_mlp_block`;
- the attention's inputs `layer_norm(x) @ (Wq, Wk, Wv) + biases`, likewise, against
  `fused_layer_norm_qkv`;
each kernel at several work divisions (`KernelConfig`), with its largest difference from the
XLA path and its speed-up. A configuration that fails (e.g. too much shared memory) is
recorded with its error. GPU only (elsewhere every kernel records the backend error).
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import device_info, time_fn, write_json  # noqa: E402
from grouped_select import pallas_vit  # noqa: E402
from grouped_select.backbones.vit import EncoderBlock, ViTVariant  # noqa: E402

# (block_tokens, block_hidden, num_warps, num_stages), each compiled for an H200 here
# (deviceless, jax 0.10.2, 2026-11-28); Triton's default 3 stages at 64 x 128 asked the MLP
# kernel for 451 KB of shared memory.
MLP_CONFIGS = (
    pallas_vit.KernelConfig(64, 64, 4, 2),
    pallas_vit.KernelConfig(64, 128, 4, 1),
    pallas_vit.KernelConfig(128, 64, 4, 2),
    pallas_vit.KernelConfig(128, 64, 8, 2),
    pallas_vit.KernelConfig(32, 128, 4, 2),
    pallas_vit.KernelConfig(64, 32, 4, 3),
)
QKV_CONFIGS = (
    pallas_vit.KernelConfig(64, 64, 4, 2),
    pallas_vit.KernelConfig(128, 64, 4, 2),
    pallas_vit.KernelConfig(128, 64, 8, 2),
    pallas_vit.KernelConfig(32, 64, 4, 2),
)


def _as_bfloat16(tree):
    return jax.tree.map(lambda w: w.astype(jnp.bfloat16), tree)


def _time_variants(args, name, xla, reference_inputs, fused, fused_inputs, configs) -> dict:
    """XLA's version and the fused kernel at each configuration, checked against XLA's."""

    def as_array(out):
        return np.concatenate([np.asarray(a, np.float32).ravel() for a in jax.tree.leaves(out)])

    reference = as_array(xla(*reference_inputs))
    timing = time_fn(xla, *reference_inputs, repeats=args.repeats, inner=20)
    out = {"xla": {**timing, "median_us": 1e6 * timing["median_s"]}}
    for config in configs:
        label = "pallas_{}x{}_w{}_s{}".format(*config)
        try:
            run = jax.jit(lambda *a, c=config: fused(*a, c))
            got = as_array(run(*fused_inputs))
            timing = time_fn(run, *fused_inputs, repeats=args.repeats, inner=20)
            out[label] = {
                **timing,
                "median_us": 1e6 * timing["median_s"],
                "max_abs_diff_vs_xla": float(np.abs(got - reference).max()),
                "speedup_vs_xla": out["xla"]["median_s"] / timing["median_s"],
            }
        except Exception as error:  # noqa: BLE001 - recorded, the others still run
            out[label] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        print(name, label, {k: v for k, v in out[label].items() if not k.endswith("_s")})
    return out


def bench_tokens(args, tokens: int) -> dict:
    variant = ViTVariant(args.width, 1, 3, args.hidden)
    block = EncoderBlock(variant, layer_norm_eps=1e-12, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(block)
    params = _as_bfloat16(params)
    norm1, norm2, attn, mlp = block.norm1, block.norm2, block.attn, block.mlp
    mlp_weights = _as_bfloat16(
        pallas_vit.MlpWeights(
            norm2.scale[...], norm2.bias[...], mlp.fc1.kernel[...], mlp.fc1.bias[...],
            mlp.fc2.kernel[...], mlp.fc2.bias[...],
        )
    )  # fmt: skip
    qkv_weights = _as_bfloat16(
        pallas_vit.QkvWeights(
            norm1.scale[...], norm1.bias[...],
            *(p for layer in (attn.query, attn.key, attn.value)
              for p in (layer.kernel[...], layer.bias[...])),
        )
    )  # fmt: skip
    x = jnp.asarray(np.random.default_rng(0).normal(size=(tokens, args.width)), jnp.bfloat16)

    @jax.jit
    def xla_mlp(params, x):
        module = nnx.merge(graphdef, params)
        return x + module.mlp(module.norm2(x))

    @jax.jit
    def xla_qkv(params, x):
        module = nnx.merge(graphdef, params)
        normed = module.norm1(x)
        return module.attn.query(normed), module.attn.key(normed), module.attn.value(normed)

    weight_bytes = sum(w.size * 2 for w in jax.tree.leaves(mlp_weights))
    return {
        "mlp": _time_variants(
            args, "mlp", xla_mlp, (params, x),
            lambda x, w, c: pallas_vit.fused_mlp_block(x, w, 1e-12, False, c),
            (x, mlp_weights), MLP_CONFIGS,
        ),
        "qkv": _time_variants(
            args, "qkv", xla_qkv, (params, x),
            lambda x, w, c: pallas_vit.fused_layer_norm_qkv(x, w, 1e-12, False, c),
            (x, qkv_weights), QKV_CONFIGS,
        ),
        "mlp_bytes_read_and_written_once": 2 * x.size * 2 + weight_bytes,
    }  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="12672,63360", help="token counts, comma-separated")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = {
        "device": device_info(),
        "width": args.width,
        "hidden": args.hidden,
        "dtype": "bfloat16",
        "results": {int(t): bench_tokens(args, int(t)) for t in args.tokens.split(",")},
    }
    write_json(result, args.out, "vit_kernels.json")


if __name__ == "__main__":
    main()
