"""The one-pass budget head: exactly the model at the predicted τ, and it can learn τ."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grouped_select import budget_head
from grouped_select.backbones.small import SmallCNNClassifier, SmallSelectorBackbone
from grouped_select.model import P2P
from grouped_select.selector import Selector

K = 16


def _model():
    rngs = nnx.Rngs(0)
    selector = Selector(SmallSelectorBackbone(low_stride=4, rngs=rngs), rngs=rngs)
    model = P2P(selector, SmallCNNClassifier(3, widths=(8, 16), rngs=rngs))
    model.eval()
    return model


def _inputs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
    tiles = rng.integers(0, K, size=(4, 4, 4))
    ids = jnp.asarray(np.repeat(np.repeat(tiles, 8, 1), 8, 2), jnp.int32)
    return x, ids


def test_one_pass_is_the_model_at_the_predicted_budget():
    model = _model()
    x, ids = _inputs()
    low, high = model.selector.features(x)
    features = budget_head.pooled_features(low, high)
    head = budget_head.BudgetHead(features.shape[1], hidden=8, rngs=nnx.Rngs(1))

    @nnx.jit
    def both(model, head, x, ids):
        outputs, tau = budget_head.one_pass_forward(model, head, x, ids, num_regions=K)
        reference = model.eval_forward(x, ids, num_regions=K, budget=tau)
        return outputs, tau, reference

    outputs, tau, reference = both(model, head, x, ids)
    assert tau.shape == (4,) and bool(jnp.all((tau > 0) & (tau < 1)))
    np.testing.assert_allclose(tau, head(features), rtol=1e-6)
    np.testing.assert_allclose(outputs.log_probs, reference.log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outputs.selected, reference.selected)


def test_the_head_reads_features_through_a_stop_gradient():
    model = _model()
    x, _ = _inputs()

    def loss(selector):
        return budget_head.pooled_features(*selector.features(x)).sum()

    grads = nnx.grad(loss)(model.selector)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_fit_learns_a_budget_that_depends_on_the_features():
    from train.one_pass import fit_head

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 6)).astype(np.float32) * [1, 10, 0.1, 1, 1, 1]
    target = (0.5 + 0.3 * np.tanh(features[:, 0] + features[:, 1] / 10)).astype(np.float32)
    head = fit_head(features, target, hidden=32, epochs=60, learning_rate=3e-3, seed=0)
    error = np.abs(np.asarray(head(jnp.asarray(features))) - target).mean()
    constant = np.abs(np.median(target) - target).mean()
    assert error < 0.2 * constant, (error, constant)


def test_pinball_loss_learns_the_asked_quantile():
    from train.one_pass import fit_head

    rng = np.random.default_rng(1)
    features = rng.normal(size=(3000, 4)).astype(np.float32)
    target = (0.4 + 0.2 * rng.uniform(size=3000)).astype(np.float32)  # independent of x
    for quantile in (0.2, 0.9):
        head = fit_head(
            features, target, hidden=8, epochs=40, learning_rate=3e-3, seed=0, quantile=quantile
        )
        predicted = float(np.median(head(jnp.asarray(features))))
        assert abs(predicted - (0.4 + 0.2 * quantile)) < 0.03, (quantile, predicted)
