"""The "wide" sweep's weight gradients: jreg's dense layers take ``d(a @ w)/dw`` as ``aᵀ · g`` there.

Inside ``jreg.nn.left_product_weight_gradients()`` (entered by ``sweep(vectorize="wide")`` while it traces
each model's gradient) ``jreg.mlp`` computes its matmuls through a custom VJP whose weight cotangent is
``aᵀ · g``. Checked here: the rule against finite differences (first and second order, under jit and not,
for a batch and for one example); against JAX's own rule on jreg's MLP; the context's scope; and the wide
sweep against ``"vmap"`` where the rule cannot apply (forward-mode autodiff through the model, a mixed
precision policy) or must compose (an input-gradient penalty, a gradient of a gradient).
"""

from __future__ import annotations

import threading

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


# --------------------------------------------------------------------------- an independent review's cases
# What the rule must keep: the custom VJP gives JAX's gradients (values, dtypes, shapes) for mixed dtypes
# without a policy, one example, a batch of one or none, in the wide sweep's ``(n_in, K, n_out)`` layout and
# to second order (forward over reverse included); the switch is per thread and no trace made with it (through
# ``lax.scan``, ``lax.cond``, ``jax.checkpoint``, a user's ``custom_jvp``) is reused without it, nor the other
# way round; a wide sweep traces its training gradients with the rule and nothing else (evaluation, fit,
# "vmap") with it; the fallback (a loss that runs ``jax.jvp`` through the model) trains bit for bit what JAX's
# rule trains; a genuine error still reaches the user, and the switch is off after.

MODEL = jreg.mlp([6, 8, 3], activation=jnp.tanh)
PARAMS = MODEL.init(jax.random.key(0))
TRAIN = toy(21, seed=0)  # 3 batches of 7
SWEEP = dict(hparams={"lmbda": [0.0, 0.3]}, epochs=1, batch_size=7, key=jax.random.key(7), monitor=())


def _grads(f, *args, argnums=(0, 1), inside: bool):
    g = jax.jit(jax.grad(f, argnums=argnums))
    if not inside:
        return g(*args)
    with nn.left_product_weight_gradients():
        return g(*args)


def _assert_like_jax(got, expected, rtol):
    for u, v in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        assert (v.dtype, v.shape) == (u.dtype, u.shape)
        np.testing.assert_allclose(np.asarray(v, np.float32), np.asarray(u, np.float32), rtol=rtol, atol=rtol)


@pytest.mark.parametrize(
    "x_dtype, w_dtype",
    [("float16", "float32"), ("bfloat16", "float32"), ("float32", "bfloat16"), ("float32", "float16")],
)
@pytest.mark.parametrize("shape", [(5, 4), (4,), (1, 4), (0, 4)], ids=["batch", "one example", "batch of 1", "empty"])
def test_the_rule_gives_jaxs_gradient_dtypes_and_values_for_mixed_dtypes_and_any_batch(x_dtype, w_dtype, shape):
    a = jax.random.normal(jax.random.key(0), shape).astype(x_dtype)
    w = jax.random.normal(jax.random.key(1), (4, 3)).astype(w_dtype)

    def f(a, w):  # a @ w promotes to float32 here; its cotangents go back to each input's own dtype
        return jnp.sum(jnp.sin(nn._dense(a, w).astype(jnp.float32)) ** 2)

    _assert_like_jax(_grads(f, a, w, inside=True), _grads(f, a, w, inside=False), rtol=2e-2)


def test_the_rule_in_the_wide_layout_gives_jaxs_gradients():
    """What the engine does: each model's gradient vmapped over the model axis second, (n_in, K, n_out)."""
    k = 4
    stacked = [
        {"w": jnp.stack([(i + 1.0) * p["w"] for i in range(k)], 1), "b": jnp.stack([p["b"]] * k)} for p in PARAMS
    ]
    axes = [{"w": 1, "b": 0}] * len(PARAMS)
    x, y = TRAIN

    def loss(p, x):
        return jnp.mean(jreg.losses.cross_entropy(MODEL.apply(p, x), y)) + jnp.sum(MODEL.apply(p, x) ** 2)

    grad = jax.jit(jax.vmap(jax.grad(loss), in_axes=(axes, None), out_axes=axes))
    expected = grad(stacked, x)
    with nn.left_product_weight_gradients():
        got = grad(stacked, x)
        assert "custom_vjp" in str(jax.make_jaxpr(jax.vmap(loss, in_axes=(axes, None)))(stacked, x))
    _assert_like_jax(got, expected, rtol=1e-5)


def test_forward_over_reverse_works_inside_the_context_and_plain_forward_mode_raises():
    """jacfwd(jacrev) (a Hessian) and a gradient of an input gradient go through the rule; jax.jvp alone cannot:
    that TypeError is what the wide sweep's fallback catches."""
    x = TRAIN[0][:2]

    def hessian_trace(p):
        h = jax.vmap(jax.hessian(lambda xi: jnp.sum(MODEL.apply(p, xi) ** 2)))(x)
        return jnp.sum(jnp.trace(h, axis1=1, axis2=2))

    def input_gradient_norm(p):
        return jnp.sum(jax.grad(lambda xx: jnp.sum(jnp.sin(MODEL.apply(p, xx))))(x) ** 2)

    for f in (hessian_trace, input_gradient_norm):
        _assert_like_jax(_grads(f, PARAMS, argnums=0, inside=True), _grads(f, PARAMS, argnums=0, inside=False), 1e-5)
    with nn.left_product_weight_gradients(), pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda q: MODEL.apply(q, x), (PARAMS,), (PARAMS,))


def _wrapped():
    x = TRAIN[0][:3]

    @jax.custom_jvp
    def user_custom_jvp(p):
        return MODEL.apply(p, x)

    user_custom_jvp.defjvp(lambda primals, tangents: jax.jvp(lambda q: MODEL.apply(q, x), primals, tangents))
    return {
        "scan": lambda p: jax.lax.scan(lambda c, xi: (c, MODEL.apply(p, xi)), 0.0, x)[1],
        "cond": lambda p: jax.lax.cond(True, lambda: MODEL.apply(p, x), lambda: -MODEL.apply(p, x)),
        "checkpoint": jax.checkpoint(lambda p: MODEL.apply(p, x)),
        "custom_jvp": user_custom_jvp,
        "jit": jax.jit(lambda p: MODEL.apply(p, x)),
    }


@pytest.mark.parametrize("name", ["scan", "cond", "checkpoint", "custom_jvp", "jit"])
def test_no_trace_made_with_the_rule_is_reused_without_it_nor_the_other_way_round(name):
    f = _wrapped()[name]  # one function object, traced in both orders
    jaxpr = lambda: str(jax.make_jaxpr(f)(PARAMS))  # noqa: E731
    with nn.left_product_weight_gradients():
        jax.grad(lambda p: jnp.sum(f(p)))(PARAMS)
        assert "custom_vjp" in jaxpr()
    assert "custom_vjp" not in jaxpr()
    jax.jvp(f, (PARAMS,), (PARAMS,))  # forward mode still works outside: nothing of the rule was reused
    with nn.left_product_weight_gradients():
        assert "custom_vjp" in jaxpr()


def test_the_switch_is_per_thread():
    inside, done, seen = threading.Event(), threading.Event(), {}

    def holder():
        with nn.left_product_weight_gradients():
            inside.set()
            done.wait(30)
            seen["holder"] = nn._left_products_on()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(30)
        seen["other"] = nn._left_products_on()
        seen["other_jaxpr"] = "custom_vjp" in str(jax.make_jaxpr(lambda p: MODEL.apply(p, TRAIN[0]))(PARAMS))
    finally:
        done.set()
        thread.join(30)
    assert seen == {"holder": True, "other": False, "other_jaxpr": False}


def _recording_build(seen, *, forward_mode=False):
    def apply(p, x, *, key=None, intermediates=False):
        seen.append((x.shape[0], nn._left_products_on()))
        if forward_mode:  # a jvp through the model: the rule cannot take it, the sweep falls back
            out, tangent = jax.jvp(lambda q: MODEL.apply(q, x, key=key), (p,), (p,))
            return out + 0.0 * tangent
        return MODEL.apply(p, x, key=key, intermediates=intermediates)

    def build(hp):
        return jreg.objective(apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(0.2)

    return build


def test_a_wide_sweep_traces_its_training_gradients_with_the_rule_and_nothing_else():
    seen = []
    build = _recording_build(seen)
    jreg.sweep(
        build, PARAMS, TRAIN, **{**SWEEP, "monitor": ("evaluation_cost",)}, evaluation=toy(9, 1), vectorize="wide"
    )
    assert (7, True) in seen  # the gradients of the training steps: with the rule (else the change did nothing)
    assert all(not on for size, on in seen if size in (9, 21))  # evaluations: without
    assert not nn._left_products_on()
    seen.clear()
    jreg.sweep(build, PARAMS, TRAIN, **SWEEP, vectorize="vmap")
    assert seen and not any(on for _, on in seen)


def test_the_fallback_trains_bit_for_bit_what_jaxs_rule_trains(monkeypatch):
    """A loss that runs jax.jvp through the model: the first trace fails and the step is traced again without
    the rule. Nothing of the failed trace may remain: the result is the very program JAX's rule gives."""
    fell_back, seen = [], []
    (params, _) = jreg.sweep(_recording_build(seen, forward_mode=True), PARAMS, TRAIN, **SWEEP, vectorize="wide")
    assert (7, True) in seen and (7, False) in seen  # it tried the rule, then went without
    monkeypatch.setattr(nn, "_LEFT_PRODUCTS", None)  # a JAX without the config API: never the rule
    (without, _) = jreg.sweep(_recording_build(fell_back, forward_mode=True), PARAMS, TRAIN, **SWEEP, vectorize="wide")
    assert not any(on for _, on in fell_back)
    for u, v in zip(jax.tree.leaves(without), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(u))


class _UserError(Exception):
    pass


def test_a_genuine_error_in_a_wide_sweep_reaches_the_user_and_leaves_the_switch_off():
    def build(hp):
        def apply(p, x, *, key=None, intermediates=False):
            if isinstance(hp["lmbda"], jax.core.Tracer):  # only inside the compiled sweep, past the checks up front
                raise _UserError("the user's own bug")
            return MODEL.apply(p, x, key=key)

        return jreg.objective(apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(0.2)

    with pytest.raises(_UserError, match="the user's own bug"):
        jreg.sweep(build, PARAMS, TRAIN, **SWEEP, vectorize="wide")
    assert not nn._left_products_on()
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda p: MODEL.apply(p, TRAIN[0]))(PARAMS))
