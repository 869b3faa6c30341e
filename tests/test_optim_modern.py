"""Decoupled decay modes (independent, AdamC, cautious), unit-norm projection and Shrink & Perturb.

Each is checked against a hand-written NumPy (float64) or JAX reference over several steps, under jit
and not, with its coefficients traced through ``jax.vmap`` where it has any.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

from .conftest import VARIANTS

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
