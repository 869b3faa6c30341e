"""SAM (Foret et al. 2021) as an objective transformation, against a hand-written two-gradient reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

from .conftest import VARIANTS

MODEL = jreg.mlp([5, 4, 3])
PARAMS = MODEL.init(jax.random.key(0))
X = np.asarray(jax.random.normal(jax.random.key(1), (12, 5)), np.float32)
Y = np.asarray(jax.random.randint(jax.random.key(2), (12,), 0, 3), np.int32)
PENALTY = jreg.penalties.l2(0.05) + jreg.penalties.l1(0.01)
OBJ = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, PENALTY)
KEY = jax.random.key(3)
ETA = 0.5


def norm(tree):
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree)))


def reference_steps(obj, rho, steps, *, penalty_in_ascent=True, key=KEY, eps=1e-12):
    """g = grad f(w); e = rho g / ||g||; g_sam = grad f(w + e); one optax SGD step; repeated."""
    total = lambda p: obj(p, (X, Y), key=key)[0]  # noqa: E731
    data = lambda p: obj(p, (X, Y), key=key)[1]["data"]  # noqa: E731
    ascent = total if penalty_in_ascent else data
    opt = optax.sgd(ETA)
    params, state = PARAMS, opt.init(PARAMS)
    for _ in range(steps):
        g = jax.grad(ascent)(params)
        n = norm(g)
        e = jax.tree.map(lambda leaf, n=n: rho * leaf / (n + eps), g)
        w_adv = jax.tree.map(jnp.add, params, e)
        if penalty_in_ascent:
            g_sam = jax.grad(total)(w_adv)
        else:  # grad L(w + e) + grad R(w), R = J - L
            g_r = jax.tree.map(jnp.subtract, jax.grad(total)(params), jax.grad(data)(params))
            g_sam = jax.tree.map(jnp.add, jax.grad(data)(w_adv), g_r)
        updates, state = opt.update(g_sam, state, params)
        params = optax.apply_updates(params, updates)
    return params


def sam_steps(obj, steps, variant, key=KEY):
    opt = optax.sgd(ETA)

    @variant
    def step(params, state):
        g = jax.grad(lambda p: obj(p, (X, Y), key=key)[0])(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, opt.init(PARAMS)
    for _ in range(steps):
        params, state = step(params, state)
    return params


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("penalty_in_ascent", [True, False])
def test_sam_steps_match_the_two_gradient_reference(variant, penalty_in_ascent):
    rho = 0.2
    obj = jreg.sam(OBJ, rho, penalty_in_ascent=penalty_in_ascent)
    got = sam_steps(obj, 4, variant)
    want = reference_steps(OBJ, rho, 4, penalty_in_ascent=penalty_in_ascent)
    assert_trees_close(got, want)
    plain = reference_steps(OBJ, 0.0, 4)
    assert not all(jax.tree.leaves(jax.tree.map(lambda u, v: np.allclose(u, v, atol=1e-4), got, plain)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_value_and_parts_are_the_plain_objective_at_w(variant):
    obj = jreg.sam(OBJ, 0.3)
    total, parts = variant(lambda p: obj(p, (X, Y), key=KEY))(PARAMS)
    want_total, want_parts = OBJ(PARAMS, (X, Y), key=KEY)
    np.testing.assert_allclose(total, want_total, rtol=1e-6)
    assert parts.keys() == want_parts.keys()
    for name in parts:
        np.testing.assert_allclose(parts[name], want_parts[name], rtol=1e-6)
    # without a key (evaluation): the plain objective, value and gradient
    g = variant(jax.grad(lambda p: obj(p, (X, Y))[0]))(PARAMS)
    assert_trees_close(g, jax.grad(lambda p: OBJ(p, (X, Y))[0])(PARAMS), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rho_zero_is_plain_training(variant):
    got = sam_steps(jreg.sam(OBJ, 0.0), 3, variant)
    assert_trees_close(got, sam_steps(OBJ, 3, variant), rtol=1e-6, atol=1e-7)


def test_rho_traced_through_vmap():
    rhos = jnp.array([0.0, 0.05, 0.5])

    def grad_for(rho):
        return jax.grad(lambda p: jreg.sam(OBJ, rho)(p, (X, Y), key=KEY)[0])(PARAMS)

    swept = jax.jit(jax.vmap(grad_for))(rhos)
    for i, rho in enumerate(rhos):
        g = jax.grad(lambda p: OBJ(p, (X, Y), key=KEY)[0])(PARAMS)
        e = jax.tree.map(lambda leaf, g=g, rho=rho: rho * leaf / norm(g), g)
        want = jax.grad(lambda p: OBJ(p, (X, Y), key=KEY)[0])(jax.tree.map(jnp.add, PARAMS, e))
        assert_trees_close(jax.tree.map(lambda s, i=i: s[i], swept), want)


def test_dropout_gets_the_same_key_in_both_passes():
    model = jreg.mlp([5, 8, 3], drop_rate=0.5)
    params = model.init(jax.random.key(0))
    obj = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))
    f = lambda p: obj(p, (X, Y), key=KEY)[0]  # noqa: E731
    g = jax.grad(f)(params)
    e = jax.tree.map(lambda leaf: 0.1 * leaf / norm(g), g)
    want = jax.grad(f)(jax.tree.map(jnp.add, params, e))
    got = jax.jit(jax.grad(lambda p: jreg.sam(obj, 0.1)(p, (X, Y), key=KEY)[0]))(params)
    assert_trees_close(got, want)


def stateful_apply(params, x, *, state, train=False):
    """A linear model that counts its training calls and keeps a running mean of its outputs."""
    z = x @ params["w"] + params["b"]
    if not train:
        return z, state
    return z, {"count": state["count"] + 1, "mean": 0.9 * state["mean"] + 0.1 * jnp.mean(z, axis=0)}


def test_stateful_model_both_passes_start_from_the_same_state():
    params = {"w": jax.random.normal(jax.random.key(4), (5, 3)) * 0.3, "b": jnp.zeros(3)}
    state = {"count": jnp.zeros((), jnp.int32), "mean": jnp.zeros(3)}
    obj = jreg.objective(stateful_apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.1))
    sam = jreg.sam(obj, 0.2)
    assert sam.stateful
    f = lambda p: obj(p, (X, Y), key=KEY, state=state)[0]  # noqa: E731
    g = jax.grad(f)(params)
    e = jax.tree.map(lambda leaf: 0.2 * leaf / norm(g), g)
    want_grad = jax.grad(f)(jax.tree.map(jnp.add, params, e))
    (total, (parts, new_state)), grad = jax.jit(
        jax.value_and_grad(lambda p: (lambda o: (o[0], o[1:]))(sam(p, (X, Y), key=KEY, state=state)), has_aux=True)
    )(params)
    assert_trees_close(grad, want_grad)
    _, want_parts, want_state = obj(params, (X, Y), key=KEY, state=state)  # the first pass's state, at w
    assert_trees_close(new_state, want_state, rtol=1e-6, atol=1e-7)
    assert int(new_state["count"]) == 1
    np.testing.assert_allclose(total, want_parts["data"] + want_parts["penalty"], rtol=1e-6)
    # fit trains it with its state
    out = jreg.fit(sam, optax.sgd(0.1), params, (X, Y), epochs=1, batch_size=6, key=KEY, model_state=state)
    assert int(out[1]["count"]) == 2


def test_fit_and_sweep_over_rho():
    """fit with SAM equals the reference (full batch: one step an epoch); a sweep over rho with rho = 0 is plain fit."""
    run = dict(epochs=3, batch_size=12, key=jax.random.key(5))
    trained, history = jreg.fit(
        jreg.sam(OBJ, 0.2), optax.sgd(ETA), PARAMS, (X, Y), monitor=("training_accuracy",), **run
    )
    assert_trees_close(trained, reference_steps(OBJ, 0.2, 3), rtol=1e-4, atol=1e-5)
    assert "training_accuracy" in history.series
    plain, _ = jreg.fit(OBJ, optax.sgd(ETA), PARAMS, (X, Y), **run)
    swept, _ = jreg.sweep(
        lambda hp: (jreg.sam(OBJ, hp["rho"]), optax.sgd(ETA)),
        PARAMS,
        (X, Y),
        hparams={"rho": [0.0, 0.2]},
        **run,
    )
    assert_trees_close(jax.tree.map(lambda s: s[0], swept), plain, rtol=1e-5, atol=1e-6)
    assert_trees_close(jax.tree.map(lambda s: s[1], swept), trained, rtol=1e-4, atol=1e-5)


def test_composes_with_mixup_and_any_optax_optimizer():
    """SAM over a mixup objective: both passes see the same mixed batch; Adam takes the SAM gradient as it is."""
    mixed = jreg.with_mixup(OBJ, 0.4)
    obj = jreg.sam(mixed, 0.1)
    f = lambda p: mixed(p, (X, Y), key=KEY)[0]  # noqa: E731
    g = jax.grad(f)(PARAMS)
    e = jax.tree.map(lambda leaf: 0.1 * leaf / norm(g), g)
    want = jax.grad(f)(jax.tree.map(jnp.add, PARAMS, e))
    got = jax.grad(lambda p: obj(p, (X, Y), key=KEY)[0])(PARAMS)
    assert_trees_close(got, want)
    opt = optax.adam(0.01)
    updates, _ = opt.update(got, opt.init(PARAMS), PARAMS)
    want_updates, _ = opt.update(want, opt.init(PARAMS), PARAMS)
    assert_trees_close(updates, want_updates)


@pytest.mark.parametrize("rho", [-0.1, float("nan"), float("inf"), np.ones(2), "0.1"])
def test_hostile_rho(rho):
    with pytest.raises(jreg.JregError, match="rho"):
        jreg.sam(OBJ, rho)


def test_hostile_arguments():
    with pytest.raises(jreg.JregTypeError, match="jreg.objective"):
        jreg.sam(lambda p, b: (0.0, {}), 0.1)
    with pytest.raises(jreg.JregTypeError, match="penalty_in_ascent"):
        jreg.sam(OBJ, 0.1, penalty_in_ascent="no")
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(jreg.JregError, match="eps"):
            jreg.sam(OBJ, 0.1, eps=eps)
