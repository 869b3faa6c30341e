"""Proximal maps, jreg.proximal, decoupled weight decay, lambda_max and the L2 convention converter."""

from __future__ import annotations

import math

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


# =========================================================================== decay modes, unit norm, shrink & perturb
# Decoupled decay modes (independent, AdamC, cautious), unit-norm projection and Shrink & Perturb, each
# checked against a hand-written NumPy (float64) or JAX reference over several steps, under jit and not,
# with its coefficients traced through ``jax.vmap`` where it has any.

STEPS = 6
PEAK, ALPHA, DECAY_STEPS = 0.1, 0.1, 4  # the cosine schedule reaches its floor inside the run
SCHEDULE = optax.cosine_decay_schedule(PEAK, DECAY_STEPS, alpha=ALPHA)

_rng = np.random.default_rng(0)
W0 = {"b": _rng.normal(size=4).astype(np.float32), "w": _rng.normal(size=(3, 4)).astype(np.float32)}
GRADS = [{k: _rng.normal(size=v.shape).astype(np.float32) for k, v in W0.items()} for _ in range(STEPS)]


def eta(t):
    """optax.cosine_decay_schedule(PEAK, DECAY_STEPS, alpha=ALPHA) written out."""
    cosine = 0.5 * (1 + math.cos(math.pi * min(t, DECAY_STEPS) / DECAY_STEPS))
    return PEAK * ((1 - ALPHA) * cosine + ALPHA)


def reference(opt, mode, c, *, rate=eta, peak=PEAK):
    """The documented update of each mode, in float64 NumPy: SGD or Adam (optax's defaults), decay on "w" only."""
    w = {k: v.astype(np.float64) for k, v in W0.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    b1, b2, e = 0.9, 0.999, 1e-8
    for t, g in enumerate(GRADS):
        lr = rate(t)
        new = {}
        for k in w:
            if opt == "sgd":
                u = -lr * g[k]
            else:
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
                mhat, vhat = m[k] / (1 - b1 ** (t + 1)), v2[k] / (1 - b2 ** (t + 1))
                u = -lr * mhat / (np.sqrt(vhat) + e)
            if k == "w":  # the default mask: weight matrices, not biases
                scale = {"lr": lr, "independent": lr / peak, "corrected": lr**2 / peak, "cautious": lr}[mode]
                gate = (u * w[k] <= 0) if mode == "cautious" else 1.0
                u = u - scale * c * gate * w[k]
            new[k] = w[k] + u
        w = new
    return w


def run(opt, mode, c, *, learning_rate=SCHEDULE, peak=PEAK):
    base = optax.sgd(learning_rate) if opt == "sgd" else optax.adam(learning_rate)
    kwargs = {} if mode in ("lr", "cautious") else {"peak": peak}
    tx = jreg.decoupled_weight_decay(base, c, learning_rate, mode=mode, **kwargs)
    params = jax.tree.map(jnp.asarray, W0)
    state = tx.init(params)
    for g in GRADS:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    return params


MODES = ["lr", "independent", "corrected", "cautious"]


def close(got, want, tol=2e-5):
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=tol, atol=tol)


# --------------------------------------------------------------------------- decay modes


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("mode", MODES)
def test_decay_mode_matches_the_hand_written_update_under_a_schedule(variant, opt, mode):
    c = 0.7
    got = variant(lambda c: run(opt, mode, c))(jnp.float32(c))  # c traced under jit
    close(got, reference(opt, mode, c))
    # the modes differ from one another on this run (the schedule moves η_t away from η_max)
    if mode != "lr":
        assert not np.allclose(reference(opt, mode, c)["w"], reference(opt, "lr", c)["w"], atol=1e-4)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("mode", MODES)
def test_decay_mode_with_c_traced_through_vmap(opt, mode):
    cs = jnp.array([0.0, 0.3, 2.0], jnp.float32)
    got = jax.vmap(lambda c: run(opt, mode, c))(cs)
    for i, c in enumerate([0.0, 0.3, 2.0]):
        close({k: v[i] for k, v in got.items()}, reference(opt, mode, c))


def test_peak_traced_through_vmap():
    peaks = jnp.array([0.1, 0.2], jnp.float32)
    got = jax.vmap(lambda p: run("adam", "corrected", 0.5, peak=p))(peaks)
    for i, p in enumerate([0.1, 0.2]):
        close({k: v[i] for k, v in got.items()}, reference("adam", "corrected", 0.5, peak=p))


@pytest.mark.parametrize("variant", VARIANTS)
def test_independent_with_a_constant_rate_takes_the_rate_as_peak(variant):
    lr = 0.05
    got = variant(lambda c: run("sgd", "independent", c, learning_rate=lr, peak=None))(jnp.float32(0.2))
    want = reference("sgd", "independent", 0.2, rate=lambda t: lr, peak=lr)
    close(got, want)
    # that is w <- (1 - c) w - η g: the decay does not scale with η
    w = W0["w"].astype(np.float64)
    for g in GRADS:
        w = (1 - 0.2) * w - lr * g["w"]
    np.testing.assert_allclose(np.asarray(got["w"]), w, rtol=2e-5, atol=2e-6)


def test_explicit_lr_mode_is_the_default_bit_for_bit():
    a = run("adam", "lr", 0.3)
    tx = jreg.decoupled_weight_decay(optax.adam(SCHEDULE), 0.3, SCHEDULE)
    params = jax.tree.map(jnp.asarray, W0)
    state = tx.init(params)
    for g in GRADS:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(params[k]))


def test_cautious_decays_only_where_the_update_points_toward_zero():
    w = {"w": jnp.array([[1.0, 1.0, -1.0, -1.0, 2.0]])}
    g = {"w": jnp.array([[1.0, -1.0, 1.0, -1.0, 0.0]])}  # SGD update -η g: toward zero at 0 and 3, none at 4
    tx = jreg.decoupled_weight_decay(optax.sgd(0.1), 0.5, 0.1, mode="cautious")
    u, _ = tx.update(g, tx.init(w), w)
    np.testing.assert_allclose(u["w"], [[-0.1 - 0.05, 0.1, -0.1, 0.1 + 0.05, -0.1]], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="adamc"), r"mode must be one of 'lr', 'independent', 'corrected', 'cautious', got 'adamc'"),
        (dict(mode=None), r"mode must be one of"),
        (dict(mode="independent"), r"mode='independent' with a learning-rate schedule needs peak="),
        (dict(mode="corrected"), r"mode='corrected' with a learning-rate schedule needs peak="),
        (dict(mode="lr", peak=0.1), r"peak= is used only by mode='independent' or mode='corrected'"),
        (dict(mode="cautious", peak=0.1), r"peak= is used only by"),
        (dict(mode="independent", peak=0.0), r"peak must be > 0"),
        (dict(mode="independent", peak=-1.0), r"peak must be > 0"),
        (dict(mode="corrected", peak=float("nan")), r"peak must be finite"),
        (dict(mode="corrected", peak="big"), r"peak must be a real number"),
        (dict(mode="corrected", peak=jnp.ones(2)), r"peak must be a scalar"),
    ],
)
def test_decay_mode_hostile_arguments(kwargs, match):
    with pytest.raises((jreg.JregError, jreg.JregTypeError), match=match):
        jreg.decoupled_weight_decay(optax.adam(SCHEDULE), 0.1, SCHEDULE, **kwargs)


def test_decay_mode_hostile_constant_rate_and_coefficient():
    with pytest.raises(jreg.JregError, match=r"peak \(the constant learning_rate, taken as η_max\) must be > 0"):
        jreg.decoupled_weight_decay(optax.sgd(0.0), 0.1, 0.0, mode="independent")
    with pytest.raises(jreg.JregError, match="c must be >= 0"):
        jreg.decoupled_weight_decay(optax.sgd(0.1), -0.1, 0.1, mode="cautious")
    with pytest.raises(jreg.JregError, match="c must be finite"):
        jreg.decoupled_weight_decay(optax.sgd(0.1), float("inf"), 0.1, mode="corrected")


# --------------------------------------------------------------------------- unit_norm

KERNELS = {
    "dense": {"w": _rng.normal(size=(5, 3)).astype(np.float32), "b": _rng.normal(size=3).astype(np.float32)},
    "conv": {"kernel": _rng.normal(size=(3, 3, 2, 4)).astype(np.float32), "bias": np.ones(4, np.float32)},
}


def hand_project(v, groups):
    """Each unit (a column: last axis; a row: second-to-last) divided by its L2 norm, in float64."""
    v = v.astype(np.float64)
    axis = v.ndim - 1 if groups == "columns" else v.ndim - 2
    others = tuple(a for a in range(v.ndim) if a != axis)
    return v / np.sqrt(np.sum(v**2, axis=others, keepdims=True))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("groups", ["columns", "rows"])
@pytest.mark.parametrize("which", ["dense", "conv"])
def test_unit_norm_after_a_step_is_the_hand_written_projection(variant, groups, which):
    params = jax.tree.map(jnp.asarray, KERNELS[which])
    grads = jax.tree.map(lambda x: jnp.asarray(_rng.normal(size=x.shape), jnp.float32), params)

    def stepper(tx):
        @variant
        def step(params, grads):
            u, _ = tx.update(grads, tx.init(params), params)
            return optax.apply_updates(params, u)

        return step

    new = stepper(optax.chain(optax.sgd(0.3), jreg.unit_norm(groups)))(params, grads)
    plain = stepper(optax.sgd(0.3))(params, grads)
    for name in params:
        stepped = np.asarray(params[name], np.float64) - 0.3 * np.asarray(grads[name], np.float64)
        if params[name].ndim >= 2:
            np.testing.assert_allclose(new[name], hand_project(stepped, groups), rtol=1e-5, atol=1e-6)
            v = np.asarray(new[name], np.float64)
            axis = v.ndim - 1 if groups == "columns" else v.ndim - 2
            norms = np.sqrt(np.sum(v**2, axis=tuple(a for a in range(v.ndim) if a != axis)))
            np.testing.assert_allclose(norms, 1.0, atol=1e-6)
        else:  # unselected: the optimizer's step, untouched
            np.testing.assert_array_equal(new[name], plain[name])


def test_unit_norm_keeps_a_zero_unit_zero_and_follows_the_mask():
    params = {"a": jnp.array([[3.0, 0.0], [4.0, 0.0]]), "z": jnp.array([[3.0, 1.0], [4.0, 1.0]])}
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = jreg.unit_norm("columns", mask=lambda path, leaf: path == "a")
    u, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, u)
    np.testing.assert_allclose(new["a"], [[0.6, 0.0], [0.8, 0.0]], rtol=1e-6)  # the zero column stays zero
    np.testing.assert_array_equal(new["z"], params["z"])


def test_unit_norm_under_vmap_over_params():
    batch = jnp.asarray(_rng.normal(size=(3, 4, 2)), jnp.float32)
    tx = jreg.unit_norm("rows")

    def step(w):
        p = {"w": w}
        u, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
        return optax.apply_updates(p, u)["w"]

    out = jax.vmap(step)(batch)
    for i in range(3):
        np.testing.assert_allclose(out[i], hand_project(np.asarray(batch[i]), "rows"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("cols",), {}, r"groups must be 'columns' .* or 'rows' .*, got 'cols'"),
        ((None,), {}, r"groups must be 'columns'"),
        ((["rows"],), {}, r"groups must be 'columns'"),
        ((), dict(eps=0.0), r"eps must be > 0"),
        ((), dict(eps=-1e-3), r"eps must be > 0"),
        ((), dict(eps=float("nan")), r"eps must be finite"),
    ],
)
def test_unit_norm_hostile_arguments(args, kwargs, match):
    with pytest.raises(jreg.JregError, match=match):
        jreg.unit_norm(*args, **kwargs)


def test_unit_norm_refuses_a_selected_vector_and_missing_params():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx = jreg.unit_norm(mask=True)
    with pytest.raises(jreg.JregError, match=r"unit_norm: leaf 'b' of shape \(2,\) is selected but has no rows"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(jreg.JregError, match="unit_norm needs params"):
        tx.update(params, tx.init(params))


# --------------------------------------------------------------------------- shrink_perturb

KEY = jax.random.key(42)


def sp_run(shrink, noise, every, key=KEY, steps=STEPS):
    tx = optax.chain(optax.sgd(0.1), jreg.shrink_perturb(shrink, noise, every, key))
    params = jax.tree.map(jnp.asarray, W0)
    state = tx.init(params)
    out = []
    for g in GRADS[:steps]:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(params)
    return out


def sp_reference(shrink, noise, every, key=KEY):
    """SGD, then at steps t with (t + 1) % every == 0: w <- λ w + σ N(0,1) from fold_in(fold_in(key, t+1), i)."""
    params = jax.tree.map(jnp.asarray, W0)
    out = []
    for t, g in enumerate(GRADS):
        params = {k: params[k] - jnp.float32(0.1) * g[k] for k in params}
        if (t + 1) % every == 0:
            at = jax.random.fold_in(key, t + 1)
            i = 1  # "w" is leaf 1 in flattening order ("b", "w"); "b" is not selected
            eps = jax.random.normal(jax.random.fold_in(at, i), params["w"].shape)
            params = {"b": params["b"], "w": shrink * params["w"] + noise * eps}
        out.append(params)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_shrink_perturb_matches_the_formula_at_multiples_and_passes_elsewhere(variant):
    got = variant(lambda s, n: sp_run(s, n, 3))(jnp.float32(0.4), jnp.float32(0.01))
    want = sp_reference(0.4, 0.01, 3)
    plain = sp_run(1.0, 0.0, 10)  # never fires in 6 steps: plain SGD
    for t in range(STEPS):
        for k in ("b", "w"):
            np.testing.assert_allclose(got[t][k], want[t][k], rtol=1e-6, atol=1e-7)
        if t < 2:  # before the first reset the run is plain SGD, exactly
            for k in ("b", "w"):
                np.testing.assert_array_equal(got[t][k], plain[t][k])
    np.testing.assert_array_equal(got[-1]["b"], plain[-1]["b"])  # unselected leaf: never shrunk
    assert not np.allclose(got[2]["w"], plain[2]["w"])  # fired at step 3


def test_shrink_perturb_non_multiples_change_nothing_in_the_update():
    tx = jreg.shrink_perturb(0.5, 1.0, 4, KEY)
    params = jax.tree.map(jnp.asarray, W0)
    state = tx.init(params)
    for t, g in enumerate(GRADS):
        u, state = tx.update(g, state, params)
        if (t + 1) % 4:
            for k in g:
                np.testing.assert_array_equal(u[k], g[k])
        else:
            np.testing.assert_array_equal(u["b"], g["b"])
            assert not np.allclose(u["w"], g["w"])


def test_shrink_perturb_is_deterministic_and_keyed():
    a, b = sp_run(0.5, 0.1, 2), sp_run(0.5, 0.1, 2)
    c = sp_run(0.5, 0.1, 2, key=jax.random.key(7))
    np.testing.assert_array_equal(a[-1]["w"], b[-1]["w"])
    assert not np.allclose(a[-1]["w"], c[-1]["w"])
    raw = sp_run(0.5, 0.1, 2, key=jax.random.PRNGKey(42))  # a raw key works too
    assert np.all(np.isfinite(raw[-1]["w"]))


def test_shrink_perturb_coefficients_traced_through_vmap():
    shrinks = jnp.array([0.2, 0.9, 1.0], jnp.float32)
    noises = jnp.array([0.0, 0.05, 0.5], jnp.float32)
    got = jax.vmap(lambda s, n: sp_run(s, n, 2)[-1])(shrinks, noises)
    for i, (s, n) in enumerate(zip([0.2, 0.9, 1.0], [0.0, 0.05, 0.5])):
        want = sp_reference(s, n, 2)[-1]
        for k in ("b", "w"):
            np.testing.assert_allclose(got[k][i], want[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, match",
    [
        ((-0.1, 0.1, 2, KEY), r"shrink must be >= 0"),
        ((float("nan"), 0.1, 2, KEY), r"shrink must be finite"),
        ((0.5, -1.0, 2, KEY), r"noise must be >= 0"),
        ((0.5, float("inf"), 2, KEY), r"noise must be finite"),
        ((0.5, 0.1, 0, KEY), r"every must be a positive integer"),
        ((0.5, 0.1, 2.5, KEY), r"every must be a positive integer"),
        ((0.5, 0.1, True, KEY), r"every must be a positive integer"),
        ((0.5, 0.1, 2, 0), r"key must be a single JAX PRNG key"),
        ((0.5, 0.1, 2, jax.random.split(KEY)), r"key must be a single JAX PRNG key"),
    ],
)
def test_shrink_perturb_hostile_arguments(args, match):
    with pytest.raises((jreg.JregError, jreg.JregTypeError), match=match):
        jreg.shrink_perturb(*args)


def test_shrink_perturb_needs_params():
    tx = jreg.shrink_perturb(0.5, 0.1, 2, KEY)
    with pytest.raises(jreg.JregError, match="shrink_perturb needs params"):
        tx.update(W0, tx.init(W0))


# --------------------------------------------------------------------------- issue 15's review
# Cases an independent review of issue 15's regularizers found: each gave a raw exception, a silent wrong
# result, or accepted a resume it should refuse.


@pytest.mark.parametrize("call", ["peak", "eps"])
def test_strictly_positive_arguments_say_greater_than_zero(call):
    with pytest.raises(jreg.JregError, match=r"> 0") as info:
        if call == "peak":
            jreg.decoupled_weight_decay(
                optax.sgd(0.1), 1e-3, optax.linear_schedule(0.1, 0.0, 10), mode="independent", peak=-1.0
            )
        else:
            jreg.optim.unit_norm(eps=-1.0)
    assert ">= 0" not in str(info.value)
