"""bfloat16-operand products: the values and gradients of float32 sums of rounded operands."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select.backbones import matmul
from grouped_select.backbones.mobilenet_v3 import LRASPPMobileNetV3
from grouped_select.backbones.vit import ViT


def _rounded(a) -> np.ndarray:
    """a rounded to bfloat16, as float64."""
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("k, n", [(64, 24), (24, 64)])  # the CPU transposes the narrower
def test_bfloat16_matmul_values_and_gradients(k, n):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 5, k))
    w = jax.random.normal(keys[1], (k, n))
    grad = jax.random.normal(keys[2], (2, 5, n))

    @jax.jit
    def forward_and_grads(x, w, grad):
        y, vjp = jax.vjp(matmul.bfloat16_matmul, x, w)
        return y, vjp(grad)

    y, (d_x, d_w) = forward_and_grads(x, w, grad)
    chex.assert_trees_all_equal_dtypes((y, d_x, d_w), (x, x, w))
    xr, wr, gr = _rounded(x), _rounded(w), _rounded(grad)
    np.testing.assert_allclose(y, xr @ wr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_x, gr @ wr.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_w, xr.reshape(-1, k).T @ gr.reshape(-1, n), rtol=1e-5, atol=1e-5)
    # The operands were rounded: exact float32 products differ by bfloat16's 2^-9 relative.
    assert np.abs(np.asarray(y) - np.asarray(x, np.float64) @ np.asarray(w)).max() > 1e-3


@pytest.mark.parametrize("k, n", [(64, 24), (24, 64)])
def test_bfloat16_products_all_run_as_ynnpack_kernels_on_cpu(k, n):
    """On XLA's CPU backend the three products (output, input and weight gradients) stay
    bfloat16 products in YNNPACK fusions: a product XLA folded a transpose into runs as its
    own dot, in float32 or not at all (`_cpu_weight_gradient`)."""
    if jax.default_backend() != "cpu":
        pytest.skip("YNNPACK fusions are XLA's CPU backend's")
    x, w = jnp.zeros((2, 5, k)), jnp.zeros((k, n))

    def forward_and_grads(x, w):
        y, vjp = jax.vjp(matmul.bfloat16_matmul, x, w)
        return y, vjp(jnp.tanh(y))

    text = jax.jit(forward_and_grads).lower(x, w).compile().as_text()
    computations = re.split(r"\n(?=\S)", text)  # one block per computation
    with_dots = [c.split(" ", 1)[0] for c in computations if re.search(r" dot\(", c)]
    ynn_called = set(re.findall(r"calls=(%[\w.-]+).*__ynn_fusion", text))
    assert len(with_dots) == 3 and set(with_dots) <= ynn_called, (with_dots, ynn_called)


def test_bfloat16_matmul_keeps_the_input_dtypes():
    x = jax.random.normal(jax.random.key(1), (3, 16)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(2), (16, 8))
    y, vjp = jax.vjp(jax.jit(matmul.bfloat16_matmul), x, w)
    d_x, d_w = vjp(jnp.ones_like(y))
    chex.assert_trees_all_equal_dtypes((y, d_x, d_w), (w, x, w))  # y: promoted, float32


def test_scan_over_layers_stacks_the_residuals_as_integers():
    """A scan's residual stacks are uint16 bit patterns, not bfloat16 arrays (XLA's CPU
    backend would rewrite a whole stacked bfloat16 array at every step), and the gradients
    are unchanged by the round trip."""
    rng = np.random.default_rng(2)
    weights = jnp.asarray(rng.normal(size=(3, 16, 16)) / 4, jnp.float32)
    x = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)

    def loss(weights, x, product):
        def layer(h, w):
            return jnp.tanh(product(h, w)), None

        return jnp.sum(jax.lax.scan(layer, x, weights)[0])

    grad = jax.grad(loss, argnums=(0, 1))
    jaxpr = str(jax.make_jaxpr(grad, static_argnums=2)(weights, x, matmul.bfloat16_matmul))
    assert "u16[3,8,16]" in jaxpr and "u16[3,16,16]" in jaxpr  # x and w, per layer
    assert "bf16[3," not in jaxpr

    def rounded(h, w):  # the same arithmetic by autodiff of a plain product
        bf16 = (h.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
        return jnp.matmul(*bf16, preferred_element_type=jnp.float32)

    got = jax.jit(grad, static_argnums=2)(weights, x, matmul.bfloat16_matmul)
    want = jax.jit(jax.grad(loss, argnums=0), static_argnums=2)(weights, x, rounded)
    np.testing.assert_allclose(got[0], want, rtol=2e-2, atol=2e-2)
    assert float(jnp.abs(got[1]).max()) > 0


def test_default_precision_is_the_plain_product_and_bad_names_fail():
    x = jax.random.normal(jax.random.key(3), (4, 8))
    w = jax.random.normal(jax.random.key(4), (8, 5))
    np.testing.assert_array_equal(jax.jit(matmul.matmul)(x, w), x @ w)
    for bad in (lambda: matmul.matmul(x, w, "tf32"), lambda: matmul.dot_general("fp8")):
        with pytest.raises(ValueError, match="matmul precision"):
            bad()


def test_rows_matmul_values_gradients_and_dtypes_equal_the_plain_product():
    """Over [2, 3, 4, K] inputs: the same output and both gradients as `jnp.matmul`."""
    keys = jax.random.split(jax.random.key(6), 3)
    x = jax.random.normal(keys[0], (2, 3, 4, 16))
    w = jax.random.normal(keys[1], (16, 8))
    grad = jax.random.normal(keys[2], (2, 3, 4, 8))

    def forward_and_grads(product):
        @jax.jit
        def run(x, w):
            y, vjp = jax.vjp(product, x, w)
            return y, vjp(grad)

        return run(x, w)

    got = forward_and_grads(matmul.rows_matmul)
    want = forward_and_grads(jnp.matmul)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-5)
    y = jax.jit(matmul.rows_matmul, static_argnums=3)(x.astype(jnp.bfloat16), w, None, jnp.float32)
    assert y.dtype == jnp.float32


def test_rows_matmul_weight_gradient_has_no_transpose_on_cpu():
    """Why the rows exist: over [..., K] the weight gradient contracts several axes, and XLA's
    CPU backend writes an operand transposed for it; over rows it does not."""
    if jax.default_backend() != "cpu":
        pytest.skip("the transposes are XLA's CPU backend's")
    x = jnp.zeros((4, 14, 14, 16))
    w = jnp.zeros((16, 64))

    def compiled(product) -> str:
        def weight_grad(x, w, grad):
            return jax.vjp(lambda w: jnp.tanh(product(x, w)), w)[1](grad)[0]

        return jax.jit(weight_grad).lower(x, w, jnp.zeros((4, 14, 14, 64))).compile().as_text()

    # An op reads `transpose(%operand)`; op names in the metadata read `transpose(jvp())`.
    assert "transpose(%" in compiled(jnp.matmul)  # the case the rows avoid, still there
    assert "transpose(%" not in compiled(matmul.rows_matmul)


def test_rows_matmul_keeps_the_leading_axes_on_tpu(monkeypatch):
    """A TPU's tiled layouts would copy to merge 197 tokens into rows: one product there."""
    x, w = jnp.zeros((2, 197, 16)), jnp.zeros((16, 8))

    def jaxpr() -> str:  # a new function each time: make_jaxpr caches traces
        return str(jax.make_jaxpr(lambda x, w: matmul.rows_matmul(x, w))(x, w))

    assert "reshape" in jaxpr()
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert "reshape" not in jaxpr() and "dot_general" in jaxpr()


def test_linear_with_the_default_dot_general():
    """nnx.Linear's product goes over rows; other dimension numbers reach `lax.dot_general`
    unchanged."""
    linear = nnx.Linear(16, 8, dot_general=matmul.dot_general("default"), rngs=nnx.Rngs(0))
    nnx.update(linear, {"bias": jnp.arange(8.0)})
    x = jax.random.normal(jax.random.key(7), (2, 3, 16))
    want = jnp.matmul(x, linear.kernel[...]) + jnp.arange(8.0)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(linear, x), want, rtol=1e-6, atol=1e-6)
    assert matmul.dot_general("default") is matmul.dot_general("default")
    batched = (((2,), (2,)), ((0,), (0,)))  # [2, 3, 16] x [2, 5, 16] -> [2, 3, 5]
    y = jax.random.normal(jax.random.key(8), (2, 5, 16))
    np.testing.assert_array_equal(
        jax.jit(lambda a, b: matmul.dot_general("default")(a, b, batched))(x, y),
        jax.jit(lambda a, b: jax.lax.dot_general(a, b, batched))(x, y),
    )


def test_an_explicit_out_sharding_reaches_lax_dot_general_unchanged():
    """An out_sharding names the [..., N] result's sharding, not the rows': no reshape, one
    product with the caller's sharding, under an explicit-axes mesh of this host's devices."""
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    x = jax.random.normal(jax.random.key(9), (2, 3, 16))
    w = jax.random.normal(jax.random.key(10), (16, 8))
    linear_dims = (((2,), (0,)), ((), ()))
    spec = jax.sharding.PartitionSpec("data", None, None)

    def product(a, b):
        return matmul.dot_general("default")(a, b, linear_dims, out_sharding=spec)

    with jax.set_mesh(mesh):
        x = jax.device_put(x, jax.sharding.PartitionSpec("data"))
        jaxpr = str(jax.make_jaxpr(product)(x, w))
        y = jax.jit(product)(x, w)
    assert "reshape" not in jaxpr and jaxpr.count("dot_general") == 1
    assert y.sharding.spec == spec
    np.testing.assert_allclose(y, jnp.matmul(x, w), rtol=1e-6, atol=1e-6)


def test_linear_with_the_bfloat16_dot_general():
    linear = nnx.Linear(16, 8, dot_general=matmul.dot_general("bfloat16"), rngs=nnx.Rngs(0))
    nnx.update(linear, {"bias": jnp.arange(8.0)})  # a nonzero bias is added after the product
    x = jax.random.normal(jax.random.key(5), (2, 3, 16))
    want = matmul.bfloat16_matmul(x, linear.kernel[...]) + jnp.arange(8.0)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(linear, x), want, rtol=1e-6)
    with pytest.raises(ValueError, match="kernel"):
        matmul.dot_general("bfloat16")(x, x, (((1,), (1,)), ((0,), (0,))))


@pytest.mark.parametrize("build", ["vit", "mobilenet"])
def test_models_with_bfloat16_products_stay_close_to_float32(build):
    """Same parameters; outputs and gradients (training mode: batch statistics) within
    bfloat16 rounding of the float32 ones, and not equal to them (the products changed)."""

    def make(precision):
        rngs = nnx.Rngs(0)
        if build == "vit":
            return ViT(3, image_size=32, patch_size=16, matmul_precision=precision, rngs=rngs)
        return LRASPPMobileNetV3(matmul_precision=precision, rngs=rngs)

    x = jax.random.normal(jax.random.key(6), (2, 64, 64, 3))
    if build == "vit":
        x = x[:, :32, :32]

    @nnx.jit
    def outputs_and_grads(model, x):
        def loss(model):
            outputs = jax.tree.leaves(model(x))
            # A fixed linear function of the outputs: its gradient is the network's own.
            weighted = (jnp.mean(o * jnp.cos(jnp.arange(o.size).reshape(o.shape))) for o in outputs)
            return sum(weighted), jnp.concatenate([o.ravel() for o in outputs])

        (_, outputs), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        return outputs, jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])

    default, rounded = make("default"), make("bfloat16")
    chex.assert_trees_all_equal(nnx.state(default, nnx.Param), nnx.state(rounded, nnx.Param))
    want, want_grads = outputs_and_grads(default, x)
    got, got_grads = outputs_and_grads(rounded, x)
    relative = jnp.linalg.norm(got - want) / jnp.linalg.norm(want)
    # bfloat16 keeps 8 significant bits (2^-9 relative); the MobileNet's batch statistics
    # over 2 images of 64² (its last stage 4 x 4 pixels each) amplify that to ~2 %.
    assert 1e-4 < relative < 5e-2
    cosine = (
        jnp.dot(got_grads, want_grads) / jnp.linalg.norm(got_grads) / jnp.linalg.norm(want_grads)
    )
    assert 0.98 < cosine < 1 - 1e-7
