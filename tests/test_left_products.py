"""jreg.train.left_products: the aᵀ·g weight-gradient rule for any model's dense layers (a jaxpr rewrite).

Checked here: for Flax linen ``Dense``, NNX ``Linear``, Equinox ``nn.Linear`` (vmapped over examples by the
adapter) and Haiku ``Linear`` models, the rewrite takes every dense product (the rewritten jaxpr's
``custom_vjp_call`` count) and gives ``jax.grad``'s gradients, under jit and not, vmapped over models as a
``"wide"`` sweep runs it, and finite differences to second order; hostile products (batch dimensions, the
weight on either side, several contracting axes, an int product, a weight used twice, reshaped, behind a
``jax.jit``) still give JAX's values; ``jreg.mlp``'s own rule is left alone; and a ``"wide"`` sweep of a Flax
and of an Equinox model applies the rule and trains what a ``"vmap"`` sweep trains.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jreg
from jreg import nn
from jreg.train import engine, left_products

from .test_train import toy

X = jax.random.normal(jax.random.key(3), (5, 6))


def _linen():
    linen = pytest.importorskip("flax.linen")

    class MLP(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(3)(jnp.tanh(linen.Dense(4)(x)))

    return jreg.frameworks.from_linen(MLP(), X[:1], key=jax.random.key(0))


def _nnx():
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.a, self.b = nnx.Linear(6, 4, rngs=rngs), nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(x)))

    return jreg.frameworks.from_nnx(MLP(nnx.Rngs(0)))


def _equinox():
    eqx = pytest.importorskip("equinox")
    return jreg.frameworks.from_equinox(eqx.nn.MLP(6, 3, 4, 1, activation=jnp.tanh, key=jax.random.key(0)))


def _haiku():
    hk = pytest.importorskip("haiku")

    def forward(x):
        return hk.Linear(3)(jnp.tanh(hk.Linear(4)(x)))

    return jreg.frameworks.from_haiku(hk.transform(forward), X[:1], key=jax.random.key(0))


MODELS = {"linen": _linen, "nnx": _nnx, "equinox": _equinox, "haiku": _haiku}


def _loss_of(model):
    def loss(params, x):
        return jnp.sum(jnp.sin(model.apply(params, x)) ** 2)

    return loss


def _close(got, expected, rtol=1e-5, atol=1e-6):
    got, expected = jax.tree.leaves(got), jax.tree.leaves(expected)
    assert len(got) == len(expected) and got
    for v, u in zip(got, expected):
        assert v.shape == u.shape and v.dtype == u.dtype
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=rtol, atol=atol)


def _custom_vjps(closed) -> int:
    """``custom_vjp_call`` equations in a jaxpr and its sub-jaxprs."""
    found = 0
    for eqn in closed.jaxpr.eqns if hasattr(closed, "jaxpr") else closed.eqns:
        found += eqn.primitive.name == "custom_vjp_call"
        if eqn.primitive.name != "custom_vjp_call":
            found += sum(_custom_vjps(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
    return found


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_frameworks_dense_layers_get_the_rule_and_jaxs_gradients(name, jit):
    model = MODELS[name]()
    loss = _loss_of(model)
    assert left_products.products(loss, model.params, X) == 2  # both layers' products, nothing else
    rewritten = left_products.rewritten_jaxpr(loss, model.params, X)
    assert _custom_vjps(rewritten) == 2
    assert "custom_vjp_call" not in str(jax.make_jaxpr(loss)(model.params, X))
    grad = jax.grad(left_products.rewrite(loss), argnums=(0, 1))
    expected = jax.grad(loss, argnums=(0, 1))(model.params, X)
    _close((jax.jit(grad) if jit else grad)(model.params, X), expected)
    value = jax.jit(left_products.rewrite(loss)) if jit else left_products.rewrite(loss)
    np.testing.assert_array_equal(value(model.params, X), loss(model.params, X))  # the forward: the same products


@pytest.mark.parametrize("name", list(MODELS))
def test_the_rule_vmapped_over_models_as_a_wide_sweep_runs_it_gives_jaxs_gradients(name):
    """K = 3 models vmapped over their params (the data shared), each leaf of >= 2 dims with the model axis second
    (the wide carry's layout), under jit."""
    model = MODELS[name]()
    loss = _loss_of(model)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 1.1 * a, 0.9 * a - 0.01]), model.params)
    carried = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1) if a.ndim >= 3 else a, stacked)
    axes = jax.tree.map(lambda a: 1 if a.ndim >= 3 else 0, carried)

    def grads(fn):
        return jax.jit(jax.vmap(jax.grad(fn), in_axes=(axes, None), out_axes=axes))(carried, X)

    _close(grads(left_products.rewrite(loss)), grads(loss))


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("name", list(MODELS))
def test_the_rule_matches_finite_differences_to_second_order(name, jit):
    model = MODELS[name]()
    loss = _loss_of(model)
    with jax.enable_x64(True):  # second-order differences need float64 (JAX's own rule fails them in float32 too)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.params)
        x = jnp.asarray(X, jnp.float64)
        f = left_products.rewrite(loss)
        assert left_products.products(loss, params, x) == 2
        check_grads(jax.jit(f) if jit else f, (params, x), order=2, modes=["rev"])


# ------------------------------------------------------------------------------------------------ hostile products

W3 = jax.random.normal(jax.random.key(5), (2, 4, 3))
A3 = jax.random.normal(jax.random.key(6), (2, 5, 4))


def _einsum(spec):
    def loss(w, a):
        return jnp.sum(jnp.cos(jnp.einsum(spec, a, w)))

    return loss


HOSTILE = {
    # batch dims in the product, the weight's batch axis leading: its gradient comes out in its layout
    "batched bij,bjo->bio": (_einsum("bij,bjo->bio"), W3, A3),
    # the weight's batch axis not leading: the gradient is transposed, as JAX's rule does
    "batched bij,jbo->bio": (_einsum("bij,jbo->bio"), jnp.moveaxis(W3, 0, 1), A3),
    # the weight on the left, (out, in) as Equinox keeps it
    "weight left": (lambda w, a: jnp.sum(jnp.cos(w @ a.T)), W3[0].T, A3[0]),
    # two contracting axes, in an order that is not the weight's
    "two contracting axes": (_einsum("bij,jbo->o"), jnp.moveaxis(W3, 0, 1), A3),
    # the weight used twice: two products, their cotangents summed
    "used twice": (lambda w, a: jnp.sum(jnp.sin(a @ w)) + jnp.sum(jnp.cos((2 * a) @ w)), W3[0], A3),
    # slices of one stacked weight, one reshaped and cast
    "sliced, reshaped, cast": (
        lambda w, a: jnp.sum(jnp.tanh(a[0] @ w[0]) @ w[1].astype(jnp.float32).reshape(3, 4)),
        jax.random.normal(jax.random.key(7), (2, 4, 3)),
        A3,
    ),
    # custom JVPs (relu, softplus, logsumexp) and a remat around a product (bound as is: JAX's rule there), a scan
    "custom_jvp, remat, scan": (
        lambda w, a: (
            jnp.sum(jax.checkpoint(lambda a: jax.nn.logsumexp(jax.nn.softplus(jax.nn.relu(a @ w)), -1))(a))
            + jax.lax.scan(lambda c, x: (c + jnp.sum(jnp.tanh(x @ w)), None), 0.0, a)[0]
            + jnp.sum(jax.nn.relu(a[0] @ w))
        ),
        W3[0],
        A3,
    ),
    # a precision and an accumulation type: bfloat16 operands accumulated in float32
    "bfloat16, float32 accumulation": (
        lambda w, a: jnp.sum(
            jnp.sin(
                jax.lax.dot_general(
                    a.astype(jnp.bfloat16),
                    w.astype(jnp.bfloat16),
                    (((2,), (0,)), ((), ())),
                    preferred_element_type=jnp.float32,
                )
            )
        ),
        W3[0],
        A3,
    ),
    "precision highest": (lambda w, a: jnp.sum(jnp.sin(jnp.dot(a, w, precision="highest"))), W3[0], A3),
    # a product behind a jax.jit of the user's (a pjit sub-jaxpr)
    "behind jit": (lambda w, a: jnp.sum(jax.jit(lambda u, v: jnp.sin(v @ u))(w, a)), W3[0], A3[0]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_products_give_jaxs_values(case):
    loss, w, a = HOSTILE[case]
    expected = {"used twice": 2, "sliced, reshaped, cast": 2, "custom_jvp, remat, scan": 1}.get(case, 1)
    assert left_products.products(loss, w, a) == expected  # in custom_jvp, remat, scan: only the plain a[0] @ w
    grad = jax.grad(left_products.rewrite(loss), argnums=(0, 1))
    tol = 2e-2 if "bfloat16" in case else 1e-5  # bfloat16 operands: the sums' order shows in the 8-bit mantissa
    _close(grad(w, a), jax.grad(loss, argnums=(0, 1))(w, a), rtol=tol, atol=tol)
    _close(jax.jit(grad)(w, a), jax.grad(loss, argnums=(0, 1))(w, a), rtol=tol, atol=tol)


def test_an_int_product_is_left_to_jax_and_the_rest_still_gets_the_rule():
    def loss(p, a):
        counts = a.astype(jnp.int32) @ p["index"]  # an int product of an int "weight": not differentiable
        return jnp.sum(jnp.sin(a @ p["w"])) + jnp.sum(counts).astype(jnp.float32)

    params = {"index": jnp.arange(12, dtype=jnp.int32).reshape(4, 3), "w": W3[0]}
    a = 3 * A3[0]
    assert left_products.products(loss, params, a) == 1
    got = jax.grad(left_products.rewrite(loss), allow_int=True)(params, a)
    expected = jax.grad(loss, allow_int=True)(params, a)
    np.testing.assert_allclose(got["w"], expected["w"], rtol=1e-5, atol=1e-6)
    assert got["index"].dtype == expected["index"].dtype


def test_jregs_own_rule_is_left_alone_and_its_loss_runs_as_written():
    model = jreg.mlp([6, 8, 3])
    params = model.init(jax.random.key(0))

    def loss(p, x):
        return jnp.sum(model.apply(p, x) ** 2)

    with nn.left_product_weight_gradients():
        assert left_products.products(loss, params, X) == 0  # its products are custom_vjp calls already
        expected = str(jax.make_jaxpr(loss)(params, X))
        assert str(left_products.rewritten_jaxpr(loss, params, X)) == expected
    assert left_products.products(loss, params, X) == 2  # outside the context: plain matmuls, rewritten


def test_the_switch_turns_the_rewrite_off(monkeypatch):
    loss = _loss_of(_linen())
    params = _linen().params
    monkeypatch.setattr(left_products, "ENABLED", False)
    assert "custom_vjp_call" not in str(left_products.rewritten_jaxpr(loss, params, X))


@given(
    batch=st.integers(1, 4),
    n_in=st.integers(1, 5),
    n_out=st.integers(1, 5),
    left=st.booleans(),
    lead=st.integers(0, 2),
)
def test_the_identity_on_random_shapes(batch, n_in, n_out, left, lead):
    """``x @ w`` (or ``w @ xᵀ``, the weight on the left) with ``lead`` leading example axes: JAX's gradients."""
    shape = (2,) * lead + (batch, n_in)
    a = jax.random.normal(jax.random.key(batch * 31 + n_in), shape)
    w = jax.random.normal(jax.random.key(n_out), (n_out, n_in) if left else (n_in, n_out))

    def loss(w, a):
        y = jnp.einsum("oi,...bi->...ob", w, a) if left else a @ w
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))

    assert left_products.products(loss, w, a) == 1
    _close(jax.grad(left_products.rewrite(loss), (0, 1))(w, a), jax.grad(loss, (0, 1))(w, a), atol=1e-5)


# ------------------------------------------------------------------------------------------------ wide sweeps


@pytest.mark.parametrize("name", list(MODELS))
def test_only_weights_used_as_w_at_x_are_carried_model_axis_first(name):
    """Equinox's ``(n_out, n_in)`` weights (``W @ x``, traced as ``dot_general(W, x_batch)`` contracting W's last
    axis) are carried ``(K, n_out, n_in)`` in a wide sweep; ``x @ W`` weights and biases keep the default."""
    model = MODELS[name]()
    loss = _loss_of(model)
    first = left_products.model_axis_first(loss, model.params, X)
    leaves = jax.tree.leaves(model.params)
    assert len(first) == len(leaves)
    expected = [name == "equinox" and a.ndim == 2 for a in leaves]
    assert first == expected


def test_model_axis_first_needs_every_product_of_the_leaf_to_contract_its_last_axis():
    w, a = W3[0].T, A3[0]  # w (3, 4), a (5, 4): w @ aᵀ contracts w's last axis
    assert left_products.model_axis_first(lambda w, a: jnp.sum(w @ a.T), w, a) == [True]
    assert left_products.model_axis_first(lambda w, a: jnp.sum(w @ a.T) + jnp.sum(a[:, :3] @ w), w, a) == [False]
    assert left_products.model_axis_first(lambda w, a: jnp.sum(a @ w.T), w, a) == [False]  # behind a transpose
    assert left_products.model_axis_first(lambda w, a: jnp.sum(a), w, a) == [False]  # in no product


def _sweep_wide_and_vmap(model, monkeypatch):
    built = []
    real = left_products._product

    def counting(key, side):
        built.append(side)
        return real(key, side)

    monkeypatch.setattr(left_products, "_product", counting)
    layouts = []
    decide = engine._weights_model_axis_first
    monkeypatch.setattr(engine, "_weights_model_axis_first", lambda *a: layouts.append(decide(*a)) or layouts[-1])

    def build(hp):
        objective = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(hp["c"]))
        return objective, optax.sgd(hp["eta"], momentum=0.9)

    runs = {}
    for vectorize in ("vmap", "wide"):
        built.clear()
        runs[vectorize] = jreg.sweep(
            build,
            model.params,
            toy(24, seed=0),
            hparams={"c": [0.0, 1e-3, 1e-2], "eta": [0.1, 0.05, 0.2]},
            epochs=2,
            batch_size=8,
            key=jax.random.key(7),
            vectorize=vectorize,
            model_state=model.model_state,
        )
        runs[vectorize + " products"] = len(built)
    runs["layouts"] = layouts
    return runs


def _linen_batchnorm():
    linen = pytest.importorskip("flax.linen")

    class MLP(linen.Module):
        @linen.compact
        def __call__(self, x, train: bool):
            h = linen.BatchNorm(use_running_average=not train, momentum=0.9)(linen.Dense(4)(x))
            return linen.Dense(3)(jnp.tanh(h))

    return jreg.frameworks.from_linen(MLP(), X[:1], key=jax.random.key(0))


@pytest.mark.parametrize("name", [*MODELS, "linen with BatchNorm"])
def test_a_wide_sweep_of_a_framework_model_takes_the_rule_and_trains_what_vmap_trains(name, monkeypatch):
    model = _linen_batchnorm() if name == "linen with BatchNorm" else MODELS[name]()
    runs = _sweep_wide_and_vmap(model, monkeypatch)
    assert runs["vmap products"] == 0  # "vmap" traces the model exactly as before
    assert runs["wide products"] >= 2  # both dense layers of the training gradient, through the rule
    # Equinox's (n_out, n_in) weights carried (K, n_out, n_in); linen's (n_in, n_out) kernels (n_in, K, n_out)
    assert runs["layouts"] and all(got == ({(4, 6), (3, 4)} if name == "equinox" else set()) for got in runs["layouts"])
    _close(runs["wide"].params, runs["vmap"].params, rtol=2e-5, atol=2e-6)
    if model.model_state is not None:  # the running statistics, trained through the rewritten loss's outputs
        _close(runs["wide"].model_state, runs["vmap"].model_state, rtol=2e-5, atol=2e-6)
    for series in runs["vmap"].history.keys():
        np.testing.assert_allclose(runs["wide"].history[series], runs["vmap"].history[series], rtol=2e-5, atol=2e-6)


def _weight_copies(hlo: str, size: int) -> int:
    """Transposes and copies in optimized HLO whose result holds ``size`` numbers (a first layer's K weights)."""
    found = 0
    for line in hlo.splitlines():
        shape = re.search(r"= f32\[([\d,]+)\]\{[\d,]*\} (transpose|copy)\(", line)
        found += bool(shape) and math.prod(int(d) for d in shape.group(1).split(",")) == size
    return found


@pytest.mark.parametrize("name", ["linen", "equinox"])
def test_the_wide_layout_has_no_transposed_copy_of_the_weight_gradient(name):
    """The wide step as the engine builds it (the model axis second, or first where ``model_axis_first`` says;
    the gradient vmapped into the carry's layout, then an elementwise update), compiled for the CPU: with the
    rewrite no transposed copy of the first layer's (K, 20, 7) weights or gradients is left; JAX's rule in the
    default layout leaves one for linen, and Equinox's weights carried model axis second leave one too."""
    eqx, linen = pytest.importorskip("equinox"), pytest.importorskip("flax.linen")
    if jax.default_backend() != "cpu":
        pytest.skip("the layouts checked are XLA's CPU ones")
    k, x = 3, jax.random.normal(jax.random.key(0), (4, 20))
    if name == "linen":

        class MLP(linen.Module):
            @linen.compact
            def __call__(self, x):
                return linen.Dense(5)(jax.nn.sigmoid(linen.Dense(7)(x)))

        model = jreg.frameworks.from_linen(MLP(), x[:1], key=jax.random.key(0))
    else:
        net = eqx.nn.MLP(20, 5, 7, 1, activation=jax.nn.sigmoid, key=jax.random.key(0))
        model = jreg.frameworks.from_equinox(net)

    def loss(p, x):
        return jnp.sum(jax.nn.log_softmax(model.apply(p, x))[:, 0])

    stacked = jax.tree.map(lambda a: jnp.stack([a] * k), model.params)
    first = jax.tree.unflatten(jax.tree.structure(model.params), left_products.model_axis_first(loss, model.params, x))

    def copies(fn, first):
        axes = jax.tree.map(lambda a, f: 1 if a.ndim >= 3 and not f else 0, stacked, first)
        carried = jax.tree.map(lambda a, axis: jnp.moveaxis(a, 0, axis), stacked, axes)

        def step(p):
            g = jax.vmap(jax.grad(fn), in_axes=(axes, None), out_axes=axes)(p, x)
            return jax.tree.map(lambda a, b: a - 0.1 * b, p, g)

        return _weight_copies(jax.jit(step).lower(carried).compile().as_text(), k * 20 * 7)

    default = jax.tree.map(lambda _: False, first)
    assert copies(left_products.rewrite(loss), first) == 0
    # linen with JAX's rule: the gradient comes out (K·7, 20) and is copied into (20, K, 7); Equinox's weights
    # carried (7, K, 20): the gradient (K, 7, 20) is copied across the model axis
    assert copies(loss, default) >= 1
