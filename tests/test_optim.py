"""Proximal maps, jreg.proximal, decoupled weight decay, lambda_max and the L2 convention converter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jreg
from jreg import penalties as P
from jreg.conventions import CONVENTIONS, convert_l2

from .conftest import VARIANTS

MODEL = jreg.mlp([6, 5, 3])
PARAMS = MODEL.init(jax.random.key(0))
DATA_OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)


def batch(seed=0, n=12):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(kx, (n, 6)), jax.random.randint(ky, (n,), 0, 3)


# --------------------------------------------------------------------------- proximal maps

vectors = hnp.arrays(np.float64, (7,), elements=st.floats(-5, 5))


@given(w=vectors, t=st.floats(0, 3), c1=st.floats(0, 2), c2=st.floats(0, 2))
def test_prox_is_the_argmin(w, t, c1, c2):
    """prox_{tR}(w) minimizes t R(v) + 1/2 ||v - w||^2: no nearby point does better."""
    with jax.enable_x64(True):
        for penalty in (P.l1(c1, mask=True), P.l2(c2, mask=True), P.elastic_net(c1, c2, mask=True)):
            v = np.asarray(penalty.prox({"w": jnp.asarray(w)}, t)["w"])

            def f(u, penalty=penalty):
                return t * float(penalty({"w": jnp.asarray(u)})) + 0.5 * np.sum((u - w) ** 2)

            best = f(v)
            rng = np.random.default_rng(0)
            for _ in range(20):
                assert best <= f(v + 1e-3 * rng.normal(size=v.shape)) + 1e-12


@pytest.mark.parametrize("variant", VARIANTS)
def test_prox_values_exact_zeros_and_untouched_biases(variant):
    w = jnp.array([[-2.0, -0.3, 0.0], [0.2, 0.5, 3.0]])
    params = {"w": w, "b": jnp.array([0.1, -0.1, 5.0])}
    out = variant(lambda p: P.l1(1.0).prox(p, 0.4))(params)
    np.testing.assert_allclose(out["w"], [[-1.6, 0.0, 0.0], [0.0, 0.1, 2.6]], atol=1e-6)
    assert int(jnp.sum(out["w"] == 0)) == 3  # exact zeros
    np.testing.assert_array_equal(out["b"], params["b"])
    np.testing.assert_allclose(variant(lambda p: P.l2(2.0).prox(p, 0.25))(params)["w"], w / 1.5, rtol=1e-6)
    np.testing.assert_allclose(
        variant(lambda p: P.elastic_net(1.0, 2.0).prox(p, 0.4))(params)["w"], out["w"] / 1.8, rtol=1e-6
    )
    # the scale enters the step: prox of t * (3 R) is prox of (3t) * R
    np.testing.assert_allclose((3 * P.l1(1.0)).prox(params, 0.1)["w"], P.l1(1.0).prox(params, 0.3)["w"], atol=1e-6)


def test_prox_refusals():
    with pytest.raises(jreg.JregError, match="both touch leaf '0/w'"):
        (P.l1(0.1) + P.l2(0.1)).prox(PARAMS, 0.1)
    no_prox = P.term(lambda w, c: c * jnp.sum(w**4), 0.1, name="l4")
    with pytest.raises(jreg.JregError, match="'l4' has no proximal map"):
        no_prox.prox(PARAMS, 0.1)
    with pytest.raises(jreg.JregError, match="'l4' has no proximal map"):
        jreg.proximal(no_prox, 0.1)
    with pytest.raises(jreg.JregTypeError, match="penalty must be a jreg Penalty"):
        jreg.proximal(lambda p: 0.0, 0.1)
    with pytest.raises(jreg.JregError, match="learning_rate must be >= 0"):
        jreg.proximal(P.l1(0.1), -1.0)


# --------------------------------------------------------------------------- proximal SGD


def test_proximal_sgd_is_ista():
    eta, lam = 0.5, 0.05
    opt = optax.chain(optax.sgd(eta), jreg.proximal(P.l1(lam), eta))
    step = jreg.make_step(DATA_OBJ, opt)
    p, s = PARAMS, opt.init(PARAMS)
    ref = PARAMS
    for k in range(5):
        b = batch(k)
        p, s, _ = step(p, s, b)
        g = jax.grad(lambda q, b=b: DATA_OBJ(q, b)[0])(ref)
        ref = [
            {"w": P.soft_threshold(r["w"] - eta * gr["w"], eta * lam), "b": r["b"] - eta * gr["b"]}
            for r, gr in zip(ref, g)
        ]
    for u, v in zip(jax.tree.leaves(p), jax.tree.leaves(ref)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_proximal_leaves_exact_zeros_where_subgradient_l1_leaves_none():
    (x, y), _ = jreg.data.load_mnist_small()
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    data_obj = jreg.objective(model.apply, jreg.losses.cross_entropy)
    lam, eta = 1e-3, 0.5
    prox_opt = optax.chain(optax.sgd(eta), jreg.proximal(P.l1(lam), eta))
    prox_params, _ = jreg.fit(
        data_obj, prox_opt, params, (x, y), epochs=3, batch_size=10, key=jax.random.key(1), monitor=()
    )
    sub_obj = jreg.objective(model.apply, jreg.losses.cross_entropy, P.l1(lam))
    sub_params, _ = jreg.fit(
        sub_obj, optax.sgd(eta), params, (x, y), epochs=3, batch_size=10, key=jax.random.key(1), monitor=()
    )
    zeros = lambda ps: int(sum(jnp.sum(p["w"] == 0) for p in ps))  # noqa: E731
    assert zeros(prox_params) > 0.3 * 784 * 30  # border pixels' weights and more: exact zeros
    assert zeros(sub_params) == 0


def test_proximal_with_a_schedule_uses_the_step_count():
    sched = optax.exponential_decay(1.0, transition_steps=1, decay_rate=0.5)
    t = jreg.proximal(P.l1(1.0), sched)
    w = {"w": jnp.full((2, 2), 10.0)}
    state = t.init(w)
    zero = jax.tree.map(jnp.zeros_like, w)
    for expected in (9.0, 9.5, 9.75):  # thresholds 1, 0.5, 0.25 applied to w = 10 each time
        u, state = t.update(zero, state, w)
        np.testing.assert_allclose(optax.apply_updates(w, u)["w"], expected)


def test_proximal_after_adam_zeroes_what_adam_leaves_within_the_threshold():
    eta, lam = 1e-2, 0.5
    adam = optax.adam(eta)
    opt = optax.chain(adam, jreg.proximal(P.l1(lam), eta))
    b = batch(3)
    g = jax.grad(lambda q: DATA_OBJ(q, b)[0])(PARAMS)
    adam_step, _ = adam.update(g, adam.init(PARAMS), PARAMS)
    moved = optax.apply_updates(PARAMS, adam_step)
    new, _, _ = jreg.make_step(DATA_OBJ, opt)(PARAMS, opt.init(PARAMS), b)
    for m, n in zip(moved, new):
        np.testing.assert_array_equal(n["w"] == 0, jnp.abs(m["w"]) <= eta * lam)  # one threshold eta*lam for all


# --------------------------------------------------------------------------- decoupled weight decay


def test_decoupled_decay_with_sgd_is_coupled_l2():
    eta, c = 0.3, 0.2
    coupled = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, P.l2(c))
    opt_c, opt_d = optax.sgd(eta), jreg.decoupled_weight_decay(optax.sgd(eta), c, eta)
    pc, sc, pd, sd = PARAMS, opt_c.init(PARAMS), PARAMS, opt_d.init(PARAMS)
    for k in range(6):
        pc, sc, _ = jreg.make_step(coupled, opt_c)(pc, sc, batch(k))
        pd, sd, _ = jreg.make_step(DATA_OBJ, opt_d)(pd, sd, batch(k))
    for u, v in zip(jax.tree.leaves(pc), jax.tree.leaves(pd)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_decoupled_decay_with_adam_is_optax_adamw():
    eta, c = 1e-2, 0.1
    mine = jreg.decoupled_weight_decay(optax.adam(eta), c, eta)
    theirs = optax.adamw(eta, weight_decay=c, mask=P.mask_tree)
    pm, sm, pt, st_ = PARAMS, mine.init(PARAMS), PARAMS, theirs.init(PARAMS)
    for k in range(6):
        pm, sm, _ = jreg.make_step(DATA_OBJ, mine)(pm, sm, batch(k))
        pt, st_, _ = jreg.make_step(DATA_OBJ, theirs)(pt, st_, batch(k))
    for u, v in zip(jax.tree.leaves(pm), jax.tree.leaves(pt)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_the_wrong_chain_order_grows_weights_and_the_helper_cannot():
    w = [{"w": jnp.ones((2, 2)), "b": jnp.ones(2)}]
    zero = jax.tree.map(jnp.zeros_like, w)
    eta, c = 0.1, 0.5
    wrong = optax.chain(optax.sgd(eta), optax.add_decayed_weights(c))  # adds +c*w after the step
    u, _ = wrong.update(zero, wrong.init(w), w)
    assert float(optax.apply_updates(w, u)[0]["w"][0, 0]) == pytest.approx(1.5)  # grew
    helper = jreg.decoupled_weight_decay(optax.sgd(eta), c, eta)
    u, _ = helper.update(zero, helper.init(w), w)
    out = optax.apply_updates(w, u)
    assert float(out[0]["w"][0, 0]) == pytest.approx(1 - eta * c)  # shrank by (1 - eta c)
    assert float(out[0]["b"][0]) == 1.0  # biases not decayed by default


# --------------------------------------------------------------------------- lambda_max


def test_lambda_max_is_where_zero_stops_being_stationary():
    b = batch(5, n=40)
    lmax = float(jreg.lambda_max(DATA_OBJ, PARAMS, b))
    zeroed = [{"w": jnp.zeros_like(p["w"]), "b": p["b"]} for p in PARAMS]
    eta = 0.1

    def prox_step(lam):
        opt = optax.chain(optax.sgd(eta), jreg.proximal(P.l1(lam), eta))
        new, _, _ = jreg.make_step(DATA_OBJ, opt)(zeroed, opt.init(zeroed), b)
        return sum(int(jnp.sum(p["w"] != 0)) for p in new)

    assert lmax > 0
    assert prox_step(lmax * 1.001) == 0  # above lambda_max every weight stays at zero
    assert prox_step(lmax * 0.9) > 0  # below it, some leave zero


# --------------------------------------------------------------------------- conventions


def one_sgd_step_in_convention(convention, value, w, g, eta, n=None, batch_size=None):
    """Each convention's own documented update for one plain-SGD step (data gradient g)."""
    if convention == "coupled":
        return w - eta * (g + value * w)
    if convention == "nielsen":
        return (1 - eta * value / n) * w - eta * g
    if convention == "decoupled_lr":
        return w - eta * g - eta * value * w
    if convention == "decoupled_schedule":  # AdamW paper, schedule multiplier 1, base learning rate lr = eta
        return w - eta * g - 1.0 * value * w
    if convention == "keras":
        return w - eta * (g + 2 * value * w)
    if convention == "sklearn":
        return w - eta * (g + value * w / batch_size)
    raise AssertionError(convention)


@pytest.mark.parametrize("convention", CONVENTIONS)
@given(value=st.floats(0, 10), w=st.floats(-3, 3), g=st.floats(-3, 3))
def test_every_convention_gives_the_same_sgd_step_as_jreg_l2(convention, value, w, g):
    eta, n, bs = 0.1, 1000, 20
    c = convert_l2(value, source=convention, n=n, learning_rate=eta, batch_size=bs)
    theirs = one_sgd_step_in_convention(convention, value, w, g, eta, n=n, batch_size=bs)
    ours = w - eta * (g + c * w)  # jreg: l2(c) adds c*w to the gradient; one plain SGD step
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    back = convert_l2(c, source="coupled", target=convention, n=n, learning_rate=eta, batch_size=bs)
    assert back == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_coupled_matches_optax_add_decayed_weights_then_sgd():
    c = convert_l2(5.0, source="nielsen", n=50_000)
    assert c == pytest.approx(1e-4)
    coupled = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, P.l2(c))
    opt = optax.chain(optax.add_decayed_weights(c, mask=P.mask_tree), optax.sgd(0.5))
    a, _, _ = jreg.make_step(coupled, optax.sgd(0.5))(PARAMS, optax.sgd(0.5).init(PARAMS), batch())
    b, _, _ = jreg.make_step(DATA_OBJ, opt)(PARAMS, opt.init(PARAMS), batch())
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(value=1.0, source="nielsen"), r"'nielsen' convention needs n="),
        (dict(value=1.0, source="sklearn"), r"needs batch_size="),
        (dict(value=1.0, source="decoupled_schedule"), r"needs learning_rate="),
        (dict(value=1.0, source="pytorch"), r"source must be one of"),
        (dict(value=-1.0, source="coupled"), r"value must be >= 0"),
        (dict(value=1.0, source="coupled", target="keras2"), r"target must be one of"),
    ],
)
def test_convert_l2_bad_arguments(kwargs, match):
    with pytest.raises(jreg.JregError, match=match):
        convert_l2(**kwargs)
