"""The fused ViT block kernels (in Pallas' interpreter) equal the blocks' XLA computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

from grouped_select import pallas_vit
from grouped_select.backbones.vit import ViT, ViTVariant
from grouped_select.pallas_vit import (
    KernelConfig,
    MlpWeights,
    QkvWeights,
    fused_layer_norm_qkv,
    fused_mlp_block,
    layer_norm_qkv_reference,
    mlp_block_reference,
)


def _weights(dim, hidden, seed=0):
    keys = jax.random.split(jax.random.key(seed), 6)
    return MlpWeights(
        1.0 + 0.1 * jax.random.normal(keys[0], (dim,)),
        0.1 * jax.random.normal(keys[1], (dim,)),
        0.1 * jax.random.normal(keys[2], (dim, hidden)),
        0.1 * jax.random.normal(keys[3], (hidden,)),
        0.1 * jax.random.normal(keys[4], (hidden, dim)),
        0.1 * jax.random.normal(keys[5], (dim,)),
    )


def _flax_block_half(x, weights, eps):
    """x + Mlp(LayerNorm(x)) as the ViT's XLA path computes it, in float32."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    normed = (x - mean) / jnp.sqrt(var + eps) * weights.ln_scale + weights.ln_bias
    hidden = jax.nn.gelu(normed @ weights.w1 + weights.b1, approximate=False)
    return x + hidden @ weights.w2 + weights.b2


def test_power_of_two_parts_cover_the_width():
    assert pallas_vit._power_of_two_parts(192) == ((0, 128), (128, 64))
    assert pallas_vit._power_of_two_parts(768) == ((0, 512), (512, 256))
    assert pallas_vit._power_of_two_parts(64) == ((0, 64),)


def test_kernel_erf_within_the_formula_bound():
    """A&S 7.1.26 is within 1.5e-7; float32 rounding (1 - poly * exp) adds a few 1e-8.
    GELU multiplies the error by h / 2: relative to GELU's value, ~5e-7."""
    x = jnp.linspace(-6.0, 6.0, 4001)
    error = jnp.abs(pallas_vit._erf_in_kernel(x) - jax.scipy.special.erf(x))
    assert float(error.max()) < 5e-7


# 192 = 128 + 64 (ViT-Ti's width, two pieces); 37 tokens: a ragged last tile.
@pytest.mark.parametrize("dim,hidden,tokens", [(192, 256, 37), (64, 128, 16)])
def test_float32_equals_the_blocks_computation(dim, hidden, tokens):
    weights = _weights(dim, hidden)
    x = jax.random.normal(jax.random.key(7), (2, tokens, dim))
    got = jax.jit(lambda x, w: fused_mlp_block(x, w, 1e-6, True))(x, weights)
    want = jax.jit(_flax_block_half, static_argnums=2)(x, weights, 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_bfloat16_within_rounding_of_the_reference():
    weights = jax.tree.map(lambda w: w.astype(jnp.bfloat16), _weights(192, 256))
    x = jax.random.normal(jax.random.key(7), (2, 37, 192)).astype(jnp.bfloat16)
    got = jax.jit(lambda x, w: fused_mlp_block(x, w, 1e-6, True))(x, weights)
    want = jax.jit(mlp_block_reference, static_argnums=2)(x, weights, 1e-6)
    assert got.dtype == jnp.bfloat16
    # Summation order differs: at most one bfloat16 step (2^-7 relative) apart.
    np.testing.assert_allclose(
        got.astype(np.float32), want.astype(np.float32), rtol=2**-7, atol=2**-7
    )


def test_gradients_are_the_reference_gradients():
    weights = _weights(192, 256)
    x = jax.random.normal(jax.random.key(7), (2, 9, 192))
    cotangent = jax.random.normal(jax.random.key(8), x.shape)

    def loss(block):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(block(x, w) * cotangent), (0, 1)))

    got = loss(lambda x, w: fused_mlp_block(x, w, 1e-6, True))(x, weights)
    want = loss(lambda x, w: _flax_block_half(x, w, 1e-6))(x, weights)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", [KernelConfig(16, 32, 2, 1), KernelConfig(128, 128, 8, 3)])
def test_work_division_does_not_change_the_result(config):
    weights = _weights(192, 256)
    x = jax.random.normal(jax.random.key(7), (3, 21, 192))
    got = jax.jit(lambda x: fused_mlp_block(x, weights, 1e-6, True, config))(x)
    np.testing.assert_allclose(got, _flax_block_half(x, weights, 1e-6), rtol=1e-5, atol=2e-5)


def test_bad_shapes_and_cpu_use_are_explained():
    weights = _weights(192, 256)
    with pytest.raises(ValueError, match="do not fit x's width"):
        fused_mlp_block(jnp.zeros((2, 3, 64)), weights, 1e-6, True)
    with pytest.raises(ValueError, match="not a multiple of block_hidden"):
        fused_mlp_block(jnp.zeros((2, 3, 192)), weights, 1e-6, True, KernelConfig(block_hidden=96))
    with pytest.raises(ValueError, match="block_kernels='xla'"):
        fused_mlp_block(jnp.zeros((2, 3, 192)), weights, 1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_lowers_to_triton_for_cuda(dtype, monkeypatch):
    """CI has no GPU: lowering for CUDA (jax.export) checks that every op of the kernel has a
    Triton lowering rule (erf has none: hence the kernel's own) at ViT-Ti's shapes. The kernel
    refuses to run on a CPU backend, so the test says it is on a GPU."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    weights = MlpWeights(
        *(jax.ShapeDtypeStruct(s, dtype) for s in [(192,), (192,), (192, 768), (768,)]),
        jax.ShapeDtypeStruct((768, 192), dtype),
        jax.ShapeDtypeStruct((192,), dtype),
    )
    exported = export.export(
        jax.jit(lambda x, w: fused_mlp_block(x, w, 1e-12)),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(jax.ShapeDtypeStruct((320, 197, 192), dtype), weights)
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()


def _qkv_weights(dim, seed=0):
    keys = jax.random.split(jax.random.key(seed), 8)
    return QkvWeights(
        1.0 + 0.1 * jax.random.normal(keys[0], (dim,)),
        0.1 * jax.random.normal(keys[1], (dim,)),
        *(
            0.1 * jax.random.normal(key, shape)
            for key, shape in zip(keys[2:], [(dim, dim), (dim,)] * 3, strict=True)
        ),
    )


def _flax_qkv(x, w, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    normed = (x - mean) / jnp.sqrt(var + eps) * w.ln_scale + w.ln_bias
    return normed @ w.wq + w.bq, normed @ w.wk + w.bk, normed @ w.wv + w.bv


@pytest.mark.parametrize("dim,tokens", [(192, 37), (64, 16)])
def test_qkv_float32_equals_layer_norm_then_projections(dim, tokens):
    weights = _qkv_weights(dim)
    x = jax.random.normal(jax.random.key(7), (2, tokens, dim))
    got = jax.jit(lambda x, w: fused_layer_norm_qkv(x, w, 1e-6, True))(x, weights)
    want = jax.jit(_flax_qkv, static_argnums=2)(x, weights, 1e-6)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=2e-5)


def test_qkv_bfloat16_within_rounding_and_gradients_are_the_references():
    weights = jax.tree.map(lambda w: w.astype(jnp.bfloat16), _qkv_weights(192))
    x = jax.random.normal(jax.random.key(7), (2, 37, 192)).astype(jnp.bfloat16)
    got = jax.jit(lambda x, w: fused_layer_norm_qkv(x, w, 1e-6, True))(x, weights)
    want = jax.jit(layer_norm_qkv_reference, static_argnums=2)(x, weights, 1e-6)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            g.astype(np.float32), w.astype(np.float32), rtol=2**-7, atol=2**-7
        )
    weights, x = _qkv_weights(192), jax.random.normal(jax.random.key(7), (2, 9, 192))
    cotangents = [jax.random.normal(jax.random.key(i), x.shape) for i in (8, 9, 10)]

    def grads(qkv):
        def loss(x, w):
            return sum(jnp.sum(a * c) for a, c in zip(qkv(x, w), cotangents, strict=True))

        return jax.jit(jax.grad(loss, (0, 1)))(x, weights)

    chex.assert_trees_all_close(
        grads(lambda x, w: fused_layer_norm_qkv(x, w, 1e-6, True)),
        grads(lambda x, w: _flax_qkv(x, w, 1e-6)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_qkv_rejects_mismatched_projections():
    weights = _qkv_weights(64)._replace(wk=jnp.zeros((64, 32)))
    with pytest.raises(ValueError, match="wk"):
        fused_layer_norm_qkv(jnp.zeros((2, 3, 64)), weights, 1e-6, True)


def test_qkv_kernel_lowers_to_triton_for_cuda(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    weights = QkvWeights(
        *(
            jax.ShapeDtypeStruct(s, jnp.bfloat16)
            for s in [(192,), (192,)] + [(192, 192), (192,)] * 3
        )
    )
    exported = export.export(
        jax.jit(lambda x, w: fused_layer_norm_qkv(x, w, 1e-12)),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(jax.ShapeDtypeStruct((320, 197, 192), jnp.bfloat16), weights)
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()


def _interpreted(kernel, reference):
    """`kernel` in Pallas' interpreter, with its gradient (the reference's), for the ViT."""
    wrapped = jax.custom_vjp(lambda x, w, eps: kernel(x, w, eps, True), nondiff_argnums=(2,))
    wrapped.defvjp(
        lambda x, w, eps: (kernel(x, w, eps, True), (x, w)),
        lambda eps, res, g: jax.vjp(lambda x, w: reference(x, w, eps), *res)[1](g),
    )
    return wrapped


def test_vit_with_the_fused_kernels_equals_the_xla_blocks(monkeypatch):
    """Same parameters, same logits and gradients, scanned blocks and vmapped (the budget
    search's chunked grid); the kernels run in the interpreter here."""
    monkeypatch.setattr(
        pallas_vit, "fused_mlp_block", _interpreted(fused_mlp_block, mlp_block_reference)
    )
    monkeypatch.setattr(
        pallas_vit,
        "fused_layer_norm_qkv",
        _interpreted(fused_layer_norm_qkv, layer_norm_qkv_reference),
    )
    variant = ViTVariant(hidden_size=64, num_layers=2, num_heads=2, mlp_dim=128)

    def build(kernels):
        return ViT(5, variant=variant, image_size=32, block_kernels=kernels, rngs=nnx.Rngs(0))

    x = jax.random.normal(jax.random.key(1), (3, 2, 32, 32, 3))

    def run(model):
        graphdef, params = nnx.split(model)

        def loss(params, x):
            logits = jax.vmap(nnx.merge(graphdef, params))(x)
            return jnp.sum(logits**2), logits

        return jax.jit(jax.grad(loss, has_aux=True))(params, x)

    grads, logits = run(build("pallas"))
    want_grads, want_logits = run(build("xla"))
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="not one of"):
        ViT(5, variant=variant, image_size=32, block_kernels="triton", rngs=nnx.Rngs(0))


def test_sharded_tokens_run_on_their_own_devices():
    """Over 8 devices along the batch, both kernels run on each device's tokens: the same
    values, sharded like the batch, nothing gathered."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x = jax.device_put(jax.random.normal(jax.random.key(3), (16, 5, 64)), batch)
    mlp_weights, qkv_weights = _weights(64, 128), _qkv_weights(64)

    def both(x, mlp_weights, qkv_weights):
        return fused_mlp_block(x, mlp_weights, 1e-6, True), fused_layer_norm_qkv(
            x, qkv_weights, 1e-6, True
        )

    run = jax.jit(both)
    (mlp, qkv) = run(x, mlp_weights, qkv_weights)
    for out in (mlp, *qkv):
        assert out.sharding.is_equivalent_to(batch, out.ndim)
    chex.assert_trees_all_close(mlp, mlp_block_reference(x, mlp_weights, 1e-6), atol=2e-5)
    chex.assert_trees_all_close(
        qkv, layer_norm_qkv_reference(x, qkv_weights, 1e-6), rtol=1e-5, atol=2e-5
    )
    assert "all-gather" not in run.lower(x, mlp_weights, qkv_weights).compile().as_text()
