"""ViT (HF layout): sizes, golden classifier outputs and position-embedding resizing."""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grouped_select import convert
from grouped_select.backbones.vit import (
    Attention,
    EncoderBlock,
    ViT,
    ViTVariant,
    odd_length_attention,
    padded_attention,
    resize_position_embeddings,
)
from grouped_select.precision import cast_floating


@pytest.fixture(scope="module")
def golden_vit(golden):
    """The golden P2P file's classifier: HF ViT-Ti/16, 9 classes, layer_norm_eps 1e-12."""
    return convert.load_vit(
        golden.root / "p2p_vit_tiny_lraspp.safetensors",
        variant="ti",
        prefix=convert.P2P_CLASSIFIER_PREFIX,
    )


def _jit_apply(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    return lambda x: apply(state, x)


@pytest.mark.parametrize(
    "variant, expected",
    # timm / HF parameter counts with a 1000-class head.
    [("ti", 5_717_416), ("s", 22_050_664), ("b", 86_567_656)],
)
def test_parameter_counts(variant, expected):
    model = nnx.eval_shape(lambda: ViT(1000, variant=variant, rngs=nnx.Rngs(0)))
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == expected


@pytest.mark.golden
@pytest.mark.slow
def test_golden_classifier_log_probs(golden, golden_vit):
    data = golden("p2p_eval.npz")
    apply = _jit_apply(golden_vit)
    for tau in ("0.3", "0.7"):
        x = data[f"tau{tau}_masked_x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
        logits = apply(x)
        want = data[f"tau{tau}_log_probs"]
        chex.assert_shape(logits, want.shape)
        # The reference's log-probabilities: log(softmax + 1e-6).
        np.testing.assert_allclose(jnp.log(jax.nn.softmax(logits) + 1e-6), want, atol=1e-4, rtol=0)


def _torch_bilinear(values, out):
    """torch F.interpolate(bilinear, align_corners=False) along axis 0 of a numpy array."""
    src = np.clip((np.arange(out) + 0.5) * values.shape[0] / out - 0.5, 0, None)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, values.shape[0] - 1)
    frac = (src - lo)[:, None, None]
    return values[lo] * (1 - frac) + values[hi] * frac


@pytest.mark.parametrize("new_grid", [(14, 14), (20, 9), (7, 7)])
def test_resize_position_embeddings_matches_torch(new_grid):
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
    got = resize_position_embeddings(pos, new_grid)
    chex.assert_shape(got, (1, 1 + new_grid[0] * new_grid[1], 8))
    np.testing.assert_array_equal(got[:, 0], pos[:, 0])  # class token untouched
    grid = pos[0, 1:].reshape(14, 14, 8)
    want = _torch_bilinear(_torch_bilinear(grid, new_grid[0]).swapaxes(0, 1), new_grid[1])
    np.testing.assert_allclose(got[0, 1:], want.swapaxes(0, 1).reshape(-1, 8), atol=1e-5)


def test_resize_position_embeddings_rejects_bad_grid():
    with pytest.raises(ValueError, match="do not form"):
        resize_position_embeddings(np.zeros((1, 1 + 15, 4)), (4, 4))


@pytest.mark.golden
@pytest.mark.slow
def test_load_at_other_image_size(golden, golden_vit, caplog):
    with caplog.at_level(logging.WARNING, logger="grouped_select.convert"):
        model = convert.load_vit(
            golden.root / "p2p_vit_tiny_lraspp.safetensors",
            prefix=convert.P2P_CLASSIFIER_PREFIX,
            image_size=(128, 96),
        )
    assert "interpolated position embeddings" in caplog.text
    chex.assert_shape(model.pos_embed[...], (1, 1 + 8 * 6, 192))
    np.testing.assert_array_equal(model.pos_embed[...][:, 0], golden_vit.pos_embed[...][:, 0])
    logits = _jit_apply(model)(jnp.zeros((3, 128, 96, 3)))
    chex.assert_shape(logits, (3, 9))
    chex.assert_tree_all_finite(logits)
    with pytest.raises(ValueError, match="patch grid"):
        model(jnp.zeros((1, 224, 224, 3)))


VIT_TINY_TEST = ViTVariant(hidden_size=32, num_layers=3, num_heads=2, mlp_dim=64)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_padded_token_changes_neither_logits_nor_gradients(scan_layers):
    """With cuDNN attention the encoder runs on one zero token more (an even count), masked
    out as a key: same logits and gradients (forced here with XLA's attention, which
    takes the same masks; vmapped, as the budget search calls it)."""
    x = jax.random.normal(jax.random.key(0), (3, 2, 32, 32, 3))  # 1 + 4 x 4 = 17 tokens

    def build(pad):
        model = ViT(5, variant=VIT_TINY_TEST, image_size=32, scan_layers=scan_layers,
                    rngs=nnx.Rngs(0))  # fmt: skip
        assert model.pad_tokens == 0  # XLA attention takes any count
        model.pad_tokens = pad
        return model

    def run(model):
        graphdef, params = nnx.split(model)

        def loss(params):
            logits = jax.vmap(nnx.merge(graphdef, params))(x)
            return jnp.sum(jnp.sin(logits)), logits

        return jax.jit(jax.grad(loss, has_aux=True))(params)

    grads, logits = run(build(1))
    want_grads, want_logits = run(build(0))
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-4, atol=1e-5)
    cudnn = nnx.eval_shape(
        lambda: ViT(5, variant=VIT_TINY_TEST, image_size=32, attention="cudnn", rngs=nnx.Rngs(0))
    )
    assert cudnn.pad_tokens == 1


def test_eval_mode_runs_the_blocks_as_a_loop_with_the_same_logits():
    """Forward only there is nothing for the scan to save: eval mode loops (no parameter
    stacking and slicing); train mode scans. Same logits."""
    model = ViT(5, variant=VIT_TINY_TEST, image_size=32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

    def primitives(jaxpr):  # every primitive, nested jaxprs (jit, scan bodies) included
        names = set()
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    names |= primitives(inner)
        return names

    graphdef, params = nnx.split(model)
    train_logits = jax.jit(lambda p: nnx.merge(graphdef, p)(x))(params)
    train_ops = primitives(jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(x))(params).jaxpr)
    model.eval()
    graphdef, params = nnx.split(model)
    eval_logits = jax.jit(lambda p: nnx.merge(graphdef, p)(x))(params)
    eval_ops = primitives(jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(x))(params).jaxpr)
    assert "scan" in train_ops and "scan" not in eval_ops
    np.testing.assert_allclose(eval_logits, train_logits, rtol=1e-5, atol=1e-5)


def test_scanned_looped_and_rematerialised_blocks_agree_with_gradients():
    """`scan_layers` and `remat_layers` change how the blocks run, not what they compute or
    their parameters."""
    variant = VIT_TINY_TEST
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

    def logits_and_grads(scan_layers, remat_layers=False):
        model = ViT(
            5,
            variant=variant,
            image_size=32,
            scan_layers=scan_layers,
            remat_layers=remat_layers,
            rngs=nnx.Rngs(0),
        )
        graphdef, params = nnx.split(model)

        @jax.jit
        def run(params):
            def loss(params):
                logits = nnx.merge(graphdef, params)(x)
                return jnp.sum(jnp.sin(logits)), logits

            return jax.grad(loss, has_aux=True)(params)

        grads, logits = run(params)
        return logits, grads

    logits_scan, grads_scan = logits_and_grads(True)
    for scan_layers, remat_layers in ((False, False), (True, True), (False, True)):
        logits, grads = logits_and_grads(scan_layers, remat_layers)
        np.testing.assert_allclose(logits, logits_scan, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close(grads, grads_scan, rtol=1e-4, atol=1e-5)
    # Every block gets its own gradient (not, say, the first block's for all).
    first, last = grads_scan["layers"][0], grads_scan["layers"][2]
    assert not np.allclose(first["mlp"]["fc1"]["kernel"], last["mlp"]["fc1"]["kernel"])


@pytest.mark.parametrize(
    "scan_layers, remat_layers, eval_mode",
    [(True, False, False), (False, False, False), (True, True, False), (True, False, True)],
)
def test_last_block_computes_the_class_token_alone_with_the_same_logits_and_gradients(
    scan_layers, remat_layers, eval_mode
):
    """The head reads the class token only, so the last block computes only its row: the
    same logits and gradients as every token through every block, for fewer FLOPs."""
    model = ViT(5, variant=VIT_TINY_TEST, image_size=32, scan_layers=scan_layers,
                remat_layers=remat_layers, rngs=nnx.Rngs(0))  # fmt: skip
    if eval_mode:
        model.eval()
    graphdef, params = nnx.split(model)
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))

    def gradients(classify):
        def loss(params, x):
            logits = classify(nnx.merge(graphdef, params), x)
            return jnp.sum(jnp.sin(logits)), logits

        return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))

    every_token = gradients(lambda m, x: m.head(m.features(x)[:, 0]))
    class_token = gradients(lambda m, x: m(x))
    (want_params, want_x), want_logits = every_token(params, x)
    (got_params, got_x), got_logits = class_token(params, x)
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(got_params, want_params, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-4, atol=1e-6)
    if scan_layers and not eval_mode:
        return  # XLA's cost analysis counts a scanned body once: FLOPs compared unrolled
    # The last block's queries, attention rows, projection and MLP for one token of 5.
    flops = [f.lower(params, x).cost_analysis()["flops"] for f in (every_token, class_token)]
    assert flops[1] < 0.95 * flops[0]


@pytest.mark.parametrize("attention", ["xla", "cudnn"])
def test_class_token_drops_the_padding_and_runs_xla_attention_for_any_block(attention):
    """`class_token` on tokens padded past `valid_tokens` equals the block's first row on
    the real tokens; a block built for cuDNN attention computes that row with XLA's
    (float32 here, which cuDNN's refuses), so the ViT can use it in every configuration."""

    def build(attention):
        return EncoderBlock(VIT_TINY_TEST, layer_norm_eps=1e-12, attention=attention,
                            rngs=nnx.Rngs(0))  # fmt: skip

    graphdef, state = nnx.split(build(attention))
    tokens = jax.random.normal(jax.random.key(2), (3, 17, VIT_TINY_TEST.hidden_size))
    padded = jnp.pad(tokens, ((0, 0), (0, 1), (0, 0))).at[:, -1].set(100.0)

    @jax.jit
    def class_token(state, tokens, padded):
        block = nnx.merge(graphdef, state)
        return block.class_token(tokens), block.class_token(padded, valid_tokens=17)

    got, got_padded = class_token(state, tokens, padded)
    xla_block = nnx.merge(nnx.graphdef(build("xla")), state)
    want = jax.jit(lambda tokens: xla_block(tokens)[:, :1])(tokens)
    assert got.shape == (3, 1, VIT_TINY_TEST.hidden_size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_padded, want, rtol=1e-5, atol=1e-5)


def test_remat_layers_recomputes_instead_of_keeping_the_blocks_activations():
    """The backward pass of a rematerialised scan keeps one [B, N, D] input per block: the
    saved residuals shrink (what `remat_layers` is for)."""

    def residual_bytes(remat_layers):
        model = ViT(5, variant=VIT_TINY_TEST, image_size=32, remat_layers=remat_layers,
                    rngs=nnx.Rngs(0))  # fmt: skip
        graphdef, params = nnx.split(model)

        def loss(params, x):
            return jnp.sum(nnx.merge(graphdef, params)(x))

        # Batch 16: activations, not the (stacked) parameters, dominate the residuals.
        x = jnp.zeros((16, 32, 32, 3))
        _, vjp = jax.vjp(loss, params, x)
        return sum(leaf.nbytes for leaf in jax.tree.leaves(vjp))

    # 696,600 -> 433,024 bytes here (the last block, for the class token alone, keeps less;
    # 852,248 without remat before LayerNorm, the GELU and the projections' input kept less).
    assert residual_bytes(True) < 0.65 * residual_bytes(False)


def test_a_blocks_backward_pass_keeps_each_activation_once():
    """Per token, an encoder block keeps for its backward pass: its input and its input after
    attention (for the LayerNorms' gradients, with two statistics each), the normalised input
    once for the three projections, q, k and v, the attention's output and one log-sum-exp
    per head, the output projection's and fc1's inputs, and fc1's output (GELU is recomputed
    from it): 9 D + mlp_dim + heads + 4 numbers. ViT-Ti kept 4,423 before (2,503 now):
    autodiff through flax's LayerNorm kept three [N, D] tensors each, the projections one
    copy of their input each, and GELU its slope beside its output."""
    block = EncoderBlock(VIT_TINY_TEST, layer_norm_eps=1e-12, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(block)
    x = jax.random.normal(jax.random.key(0), (2, 5, VIT_TINY_TEST.hidden_size))

    @jax.jit
    def kept(params, x):
        return jax.vjp(lambda p, x: nnx.merge(graphdef, p)(x), params, x)[1]

    # Activations lead with the batch (2) or the rows (10); parameters with 32 or 64.
    activations = [leaf for leaf in jax.tree.leaves(kept(params, x)) if leaf.shape[0] in (2, 10)]
    d, mlp_dim, heads = (VIT_TINY_TEST.hidden_size, VIT_TINY_TEST.mlp_dim, VIT_TINY_TEST.num_heads)
    assert sum(leaf.size for leaf in activations) == 10 * (9 * d + mlp_dim + heads + 4)


def test_rematerialised_scan_takes_each_blocks_parameters_as_one_vector():
    """With `remat_layers` the scan's only per-block input is one [num_layers, n] parameter
    array (one slice per block, kept as it is for the backward pass), not one per array."""

    def scanned_inputs(remat_layers):
        model = ViT(5, variant=VIT_TINY_TEST, image_size=32, remat_layers=remat_layers,
                    rngs=nnx.Rngs(0))  # fmt: skip
        jaxpr = jax.make_jaxpr(model)(jnp.zeros((2, 32, 32, 3)))
        (scan,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
        per_block = scan.invars[scan.params["num_consts"] + scan.params["num_carry"] :]
        return [v.aval.shape for v in per_block]

    block = ViT(5, variant=VIT_TINY_TEST, image_size=32, rngs=nnx.Rngs(0)).layers[0]
    size = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(block, nnx.Param)))
    # The last block runs outside the scan, for the class token alone.
    assert scanned_inputs(True) == [(VIT_TINY_TEST.num_layers - 1, size)]
    assert len(scanned_inputs(False)) > 10  # one stacked array per parameter


@pytest.mark.parametrize("size", [(32, 32), (40, 36)])  # (40, 36): rows / columns dropped
def test_patch_embedding_equals_the_conv_with_input_gradients(size):
    model = ViT(5, variant=VIT_TINY_TEST, image_size=32, patch_size=8, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, *size, 3))

    @jax.jit
    def both(x):
        def embed(x, how):
            out = model.embed_patches(x) if how == "matmul" else model.patch_embed(x)
            return jnp.sum(jnp.sin(out)), out

        (_, fast), fast_grad = jax.value_and_grad(embed, has_aux=True)(x, "matmul")
        (_, conv), conv_grad = jax.value_and_grad(embed, has_aux=True)(x, "conv")
        return fast, conv, fast_grad, conv_grad

    fast, conv, fast_grad, conv_grad = both(x)
    chex.assert_equal_shape([fast, conv])
    np.testing.assert_allclose(fast, conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast_grad, conv_grad, rtol=1e-5, atol=1e-5)


def test_attention_implementation_reaches_every_block_and_checks_its_dtype():
    """`attention="cudnn"` is passed to every block's `dot_product_attention`; it needs
    bfloat16 / float16 inputs, and says so for float32 (before cuDNN could fail obscurely)."""
    model = ViT(5, variant="ti", image_size=32, attention="cudnn", rngs=nnx.Rngs(0))
    assert {block.attn.implementation for block in model.layers} == {"cudnn"}
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        model(jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="not one of"):
        ViT(5, variant="ti", image_size=32, attention="flash", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_cudnn_attention_projects_in_one_product_with_the_same_values_and_gradients(
    dtype, tolerance
):
    """With cuDNN attention, q, k and v come from the three kernels concatenated: the same
    projections and parameter gradients as the three layers apart (XLA's attention's path)."""
    x = jax.random.normal(jax.random.key(0), (2, 7, 32)).astype(dtype)
    cotangents = [jax.random.normal(jax.random.key(i), (2, 7, 32)) for i in (1, 2, 3)]

    def projections_and_gradients(implementation):
        graphdef, params = nnx.split(
            Attention(32, 2, implementation=implementation, rngs=nnx.Rngs(0))
        )

        def loss(params, x):
            projections = nnx.merge(graphdef, params).project(x)
            pairs = zip(projections, cotangents, strict=True)
            return sum(jnp.sum(o * c) for o, c in pairs), projections

        return jax.jit(jax.grad(loss, (0, 1), has_aux=True))(cast_floating(params, dtype), x)

    fused_grads, fused = projections_and_gradients("cudnn")
    apart_grads, apart = projections_and_gradients("xla")
    chex.assert_trees_all_equal_dtypes(fused, apart, (x, x, x))
    chex.assert_trees_all_close(
        *(
            jax.tree.map(lambda a: a.astype(jnp.float32), t)
            for t in ((fused, fused_grads), (apart, apart_grads))
        ),
        rtol=tolerance,
        atol=tolerance,
    )


@pytest.mark.parametrize(
    "attention",
    [padded_attention, lambda q, k, v: odd_length_attention(q, k, v, "xla")],
    ids=["padded", "odd_length"],
)
def test_odd_token_counts_attend_as_plain_attention(attention):
    """One masked token more (how cuDNN gets an even length), and the plain forward with the
    padded gradient: same values and gradients as plain attention."""
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 7, 3, 8)) for i in range(3))
    cotangent = jax.random.normal(jax.random.key(3), (2, 7, 3, 8))

    def run(attention):
        def loss(q, k, v):
            y = attention(q, k, v)
            return jnp.sum(y * cotangent), y

        return jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(q, k, v)

    grads, y = run(attention)
    want_grads, want_y = run(jax.nn.dot_product_attention)
    chex.assert_trees_all_close((y, grads), (want_y, want_grads), rtol=1e-5, atol=1e-6)


def test_padded_attention_sequence_lengths_are_batched_under_vmap(monkeypatch):
    """cuDNN attention's batching rule folds every operand's vmapped axis into its batch, so
    the sequence lengths must be batched wherever q is (the budget search vmaps over budgets;
    unbatched lengths failed: "cannot reshape (64,) into (320,)")."""
    real = jax.nn.dot_product_attention
    seen = []

    def plain(q, k, v, lengths):
        return real(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths)

    attend = jax.custom_batching.custom_vmap(plain)

    @attend.def_vmap
    def _(axis_size, in_batched, q, k, v, lengths):
        seen.append(tuple(in_batched))
        in_axes = [0 if batched else None for batched in in_batched]
        return jax.vmap(plain, in_axes=in_axes)(q, k, v, lengths), True

    def fake(q, k, v, *, query_seq_lengths, key_value_seq_lengths, implementation):
        assert query_seq_lengths is key_value_seq_lengths
        return attend(q, k, v, query_seq_lengths)

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    q = jax.random.normal(jax.random.key(0), (5, 2, 7, 3, 8))
    y = jax.jit(jax.vmap(lambda q: padded_attention(q, q, q)))(q)
    monkeypatch.undo()
    assert seen == [(True, True, True, True)]
    want = jax.vmap(lambda q: jax.nn.dot_product_attention(q, q, q))(q)
    chex.assert_trees_all_close(y, want, rtol=1e-5, atol=1e-6)
