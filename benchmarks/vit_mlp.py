"""A ViT block's LayerNorm + MLP + residual: XLA's kernels against the fused Pallas kernel.

    python benchmarks/vit_mlp.py [--tokens 12608,63040 --width 192 --hidden 768]

Times `x + fc2(gelu(fc1(layer_norm(x))))` forward, bfloat16 activations and weights, at the
token counts the paper's runs see with ViT-Ti/16 at 224² (64 x 197 = 12,608 in a training
step; 5 x 64 x 197 = 63,040 in the budget search's chunk of five budgets): as the ViT's XLA
path computes it (flax LayerNorm and Linear layers, exact GELU) and as
`grouped_select.pallas_mlp.fused_mlp_block` with several work divisions (`KernelConfig`).
Also reports each one's largest difference from the XLA path and the bytes that reading x and
the weights and writing the output take (the fused kernel's whole memory traffic). A
configuration that fails (e.g. too much shared memory) is recorded with its error. GPU only.
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
from grouped_select.backbones.vit import EncoderBlock, ViTVariant  # noqa: E402
from grouped_select.pallas_mlp import KernelConfig, MlpWeights, fused_mlp_block  # noqa: E402

# (block_tokens, block_hidden, num_warps, num_stages): each compiled for an H200 (deviceless,
# jax 0.10.2, 2026-11-28); Triton's default 3 stages at 64 x 128 asked for 451 KB of shared
# memory.
CONFIGS = (
    KernelConfig(64, 64, 4, 2),
    KernelConfig(64, 128, 4, 1),
    KernelConfig(128, 64, 4, 2),
    KernelConfig(128, 64, 8, 2),
    KernelConfig(32, 128, 4, 2),
    KernelConfig(64, 32, 4, 3),
)


def bench_tokens(args, tokens: int) -> dict:
    variant = ViTVariant(args.width, 1, 3, args.hidden)
    block = EncoderBlock(variant, layer_norm_eps=1e-12, rngs=nnx.Rngs(0))
    weights = MlpWeights(
        block.norm2.scale[...],
        block.norm2.bias[...],
        block.mlp.fc1.kernel[...],
        block.mlp.fc1.bias[...],
        block.mlp.fc2.kernel[...],
        block.mlp.fc2.bias[...],
    )
    weights = jax.tree.map(lambda w: w.astype(jnp.bfloat16), weights)
    graphdef, params = nnx.split(block)
    params = jax.tree.map(lambda w: w.astype(jnp.bfloat16), params)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(tokens, args.width)), jnp.bfloat16)

    @jax.jit
    def xla(params, x):
        module = nnx.merge(graphdef, params)
        return x + module.mlp(module.norm2(x))

    reference = np.asarray(xla(params, x), np.float32)
    timing = time_fn(xla, params, x, repeats=args.repeats, inner=20)
    out = {"xla": {**timing, "median_us": 1e6 * timing["median_s"]}}
    for config in CONFIGS:
        name = "pallas_{}x{}_w{}_s{}".format(*config)
        try:
            fused = jax.jit(lambda x, w, c=config: fused_mlp_block(x, w, 1e-12, False, c))
            got = np.asarray(fused(x, weights), np.float32)
            timing = time_fn(fused, x, weights, repeats=args.repeats, inner=20)
            out[name] = {
                **timing,
                "median_us": 1e6 * timing["median_s"],
                "max_abs_diff_vs_xla": float(np.abs(got - reference).max()),
                "speedup_vs_xla": out["xla"]["median_s"] / timing["median_s"],
            }
        except Exception as error:  # noqa: BLE001 - recorded, the others still run
            out[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        print(tokens, name, {k: v for k, v in out[name].items() if not k.endswith("_s")})
    weight_bytes = sum(w.size * 2 for w in weights)
    out["bytes_read_and_written_once"] = 2 * x.size * 2 + weight_bytes
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="12608,63040", help="token counts, comma-separated")
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
    write_json(result, args.out, "vit_mlp.json")


if __name__ == "__main__":
    main()
