"""The "wide" sweep's weight gradients: jreg's dense layers take ``d(a @ w)/dw`` as ``aᵀ · g`` there.

Inside ``jreg.nn.left_product_weight_gradients()`` (entered by ``sweep(vectorize="wide")`` while it traces
each model's gradient) ``jreg.mlp`` computes its matmuls through a custom VJP whose weight cotangent is
``aᵀ · g``. Checked here: the rule against finite differences (first and second order, under jit and not,
for a batch and for one example); against JAX's own rule on jreg's MLP; the context's scope; and the wide
sweep against ``"vmap"`` where the rule cannot apply (forward-mode autodiff through the model, a mixed
precision policy) or must compose (an input-gradient penalty, a gradient of a gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jreg
from jreg import nn

from .test_train import toy


def _dense_loss(a, w):
    return jnp.sum(jnp.sin(nn._dense(a, w)) ** 2)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("shape", [(5, 4), (4,)], ids=["batch", "one example"])
def test_the_left_product_rule_matches_finite_differences_to_second_order(jit, shape):
    a = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (4, 3))
    f = jax.jit(_dense_loss) if jit else _dense_loss
    with nn.left_product_weight_gradients():
        check_grads(f, (a, w), order=2, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)
        jaxpr = str(jax.make_jaxpr(_dense_loss)(a, w))
    assert "custom_vjp" in jaxpr


@pytest.mark.parametrize("jit", [False, True])
def test_the_left_product_rule_gives_jaxs_gradients_on_jregs_mlp(jit):
    model = jreg.mlp([6, 8, 3])
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (7, 6))

    def loss(p, x):
        return jnp.sum(jax.nn.log_softmax(model.apply(p, x)) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    grad = jax.jit(grad) if jit else grad
    expected = grad(params, x)
    with nn.left_product_weight_gradients():
        got = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x) if jit else jax.grad(loss, argnums=(0, 1))(params, x)
    for u, v in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6)


def test_the_rule_applies_only_inside_the_context_and_the_context_always_resets():
    a, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    assert "custom_vjp" not in str(jax.make_jaxpr(_dense_loss)(a, w))
    with nn.left_product_weight_gradients():
        assert "custom_vjp" in str(jax.make_jaxpr(_dense_loss)(a, w))
    with pytest.raises(ZeroDivisionError), nn.left_product_weight_gradients():
        _ = 1 / 0
    assert "custom_vjp" not in str(jax.make_jaxpr(_dense_loss)(a, w))
    policy_model = jreg.mlp([3, 4], policy="f16")  # loss scaling's jvp: linearized and transposed under grad
    params = policy_model.init(jax.random.key(0))
    with nn.left_product_weight_gradients():
        jaxpr = jax.make_jaxpr(lambda p: jnp.sum(policy_model.apply(p, a)))(params)
    assert "custom_vjp" in str(jaxpr)


def test_only_the_context_turns_the_rule_on():
    """Neither the config state's environment variable nor ``jax.config.update`` on it turns the rule on
    outside the context (it would change ``fit``'s bits and break forward mode); a reload keeps the rule."""
    import os
    import subprocess
    import sys

    code = (
        "import importlib, jax, jax.numpy as jnp, jreg\n"
        "from jreg import nn\n"
        "m = jreg.mlp([3, 4]); p = m.init(jax.random.key(0))\n"
        "jax.jvp(lambda q: m.apply(q, jnp.ones((2, 3))), (p,), (p,))\n"
        "jax.config.update('jreg_left_product_weight_gradients', True)\n"
        "jax.jvp(lambda q: m.apply(q, jnp.ones((2, 3))), (p,), (p,))\n"
        "jax.config.update('jreg_left_product_weight_gradients', False)\n"
        "assert importlib.reload(nn)._LEFT_PRODUCTS is not None\n"
        "f = lambda a, w: jnp.sum(nn._dense(a, w))\n"
        "with nn.left_product_weight_gradients():\n"
        "    assert 'custom_vjp' in str(jax.make_jaxpr(f)(jnp.ones((2, 3)), jnp.ones((3, 4))))\n"
        "print('ok')\n"
    )
    env = {**os.environ, "JREG_LEFT_PRODUCT_WEIGHT_GRADIENTS": "1", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def _sweep_both(build, params, **kwargs):
    runs = {}
    for vectorize in ("vmap", "wide"):
        runs[vectorize] = jreg.sweep(
            build,
            params,
            toy(40, seed=0),
            hparams={"lmbda": [0.0, 0.01, 0.3], "eta": [0.1, 0.05, 0.2]},
            epochs=2,
            batch_size=7,
            key=jax.random.key(7),
            evaluation=toy(30, seed=1),
            vectorize=vectorize,
            **kwargs,
        )
    (p_vmap, h_vmap), (p_wide, h_wide) = runs["vmap"], runs["wide"]
    return p_vmap, h_vmap, p_wide, h_wide


def _assert_same_training(p_vmap, h_vmap, p_wide, h_wide, rtol=2e-5, atol=2e-6):
    for u, v in zip(jax.tree.leaves(p_vmap), jax.tree.leaves(p_wide)):
        assert u.shape == v.shape
        assert np.all(np.isfinite(np.asarray(v, np.float32)))
        np.testing.assert_allclose(np.asarray(v, np.float32), np.asarray(u, np.float32), rtol=rtol, atol=atol)
    assert h_wide.keys() == h_vmap.keys()
    for name in h_vmap.keys():
        np.testing.assert_allclose(h_wide[name], h_vmap[name], rtol=rtol, atol=atol, err_msg=name)


def test_a_wide_sweep_whose_loss_differentiates_the_model_in_forward_mode_falls_back_to_jaxs_rule():
    model = jreg.mlp([6, 8, 3])

    def apply(p, x, *, key=None, intermediates=False):  # a jvp through the model inside the loss
        out, tangent = jax.jvp(lambda q: model.apply(q, x), (p,), (p,))
        return out + 0.0 * tangent

    def build(hp):
        obj = jreg.objective(apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(hp["eta"])

    _assert_same_training(*_sweep_both(build, model.init(jax.random.key(0))))


def test_a_wide_sweep_with_an_input_gradient_penalty_differentiates_through_the_rule():
    model = jreg.mlp([6, 8, 3])

    def build(hp):
        obj = jreg.objective(
            model.apply,
            jreg.losses.cross_entropy,
            jreg.penalties.l2(hp["lmbda"]),
            input_penalty=jreg.penalties.input_gradient(0.1),
        )
        return obj, optax.sgd(hp["eta"])

    _assert_same_training(*_sweep_both(build, model.init(jax.random.key(0))))


def test_a_wide_sweep_of_a_mixed_precision_mlp_trains_what_vmap_trains():
    model = jreg.mlp([6, 8, 3], policy="f16")  # float16 compute with loss scaling: forward mode inside

    def build(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(hp["eta"])

    _assert_same_training(*_sweep_both(build, model.init(jax.random.key(0))), rtol=1e-3, atol=1e-3)


def test_a_jitted_function_traced_inside_the_context_is_not_reused_outside_it_nor_the_other_way_round():
    a, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    inner = jax.jit(lambda a, w: jnp.sum(nn._dense(a, w)))
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda a, w: inner(a, w))(a, w))
    with nn.left_product_weight_gradients():
        assert "custom_vjp" in str(jax.make_jaxpr(lambda a, w: inner(a, w))(a, w))
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda a, w: inner(a, w))(a, w))


def test_without_jaxs_config_state_api_a_wide_sweep_takes_jaxs_rule(monkeypatch):
    monkeypatch.setattr(nn, "_LEFT_PRODUCTS", None)
    a, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    with nn.left_product_weight_gradients():
        assert "custom_vjp" not in str(jax.make_jaxpr(lambda a, w: jnp.sum(nn._dense(a, w)))(a, w))
    model = jreg.mlp([6, 8, 3])

    def build(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(hp["eta"])

    _assert_same_training(*_sweep_both(build, model.init(jax.random.key(0))))
