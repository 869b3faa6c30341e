"""The seed question, answered by tests: where does L2 enter backprop?

1. dJ/d(outputs) — logits and hidden activations — is the same with and without the penalty;
2. grad_w J = grad_w C0 + (lambda/n) w for every weight matrix; bias gradients are unchanged;
3. one make_step with optax.sgd(eta) and l2(lambda/n) is network2.py's update (NumPy, float64, ~1e-12);
4. sgd + l2(c) in the objective == chain(add_decayed_weights(c, mask), sgd) for any number of steps;
5. with Adam they differ (Adam+L2 is not AdamW), and how.

Each check is a function returning a discrepancy, so that the same check is
also run against a deliberately broken penalty or objective ("mutant") and
must catch it: the tests can fail.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jreg
from jreg.penalties import term

from .conftest import VARIANTS
from .helpers import network2_update

SIZES = [6, 5, 3]


def data(seed, n=8, sizes=SIZES, dtype=jnp.float32):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, sizes[0]), dtype)
    y = jax.random.randint(ky, (n,), 0, sizes[-1])
    return x, y


@functools.cache
def mlp(dtype=jnp.float32, output_activation=None):
    """One model per configuration for the whole module (each new mlp compiles its init once)."""
    return jreg.mlp(SIZES, output_activation=output_activation, dtype=dtype)


def model_params(seed, dtype=jnp.float32):
    model = mlp(dtype)
    return model, model.init(jax.random.key(seed + 100))


# ----------------------------------------------------------------- mutants


def broken_l2_no_half(c):
    """c * sum w^2: the gradient is 2cw, not cw."""
    return term(lambda w, c: c * jnp.sum(w**2), c, name="l2")


def broken_l2_with_biases(c):
    """l2 that also decays the biases."""
    return jreg.penalties.l2(c, mask=lambda path, leaf: True)


class MultiplicativeObjective(jreg.Objective):
    """A broken objective: data * (1 + penalty), so the penalty leaks into dJ/da."""

    def __call__(self, params, batch):
        data = self.data_cost(params, batch)
        pen = self.penalty_parts(params)["penalty"]
        return data * (1 + pen), {"data": data, "penalty": pen}


# ----------------------------------------------------------------- identity 1


def perturbed_apply(eps):
    """The MLP's apply with perturbations added to every z and every hidden activation a."""

    def apply(params, x):
        a = x
        for layer, p in enumerate(params):
            z = a @ p["w"] + p["b"] + eps["z"][layer]
            a = jax.nn.sigmoid(z) + eps["a"][layer] if layer < len(params) - 1 else z
        return a

    return apply


@functools.cache
def output_gradient_fn(make_objective, penalty_fn, variant):
    """dJ/d(perturbations) as a function of (eps, params, batch, lam): one function per configuration, so that under
    jit every example of the property reuses one compiled program (lam is an argument, not a baked constant)."""

    def j_of_eps(eps, params, batch, lam):
        penalty = None if penalty_fn is None else penalty_fn(lam)
        obj = make_objective(perturbed_apply(eps), jreg.losses.cross_entropy, penalty)
        return obj(params, batch)[0]

    return variant(jax.grad(j_of_eps))


def output_gradients(make_objective, penalty_fn, lam, params, batch, variant):
    x, _ = batch
    eps = {
        "z": [jnp.zeros((x.shape[0], p["w"].shape[1])) for p in params],
        "a": [jnp.zeros((x.shape[0], p["w"].shape[1])) for p in params[:-1]],
    }
    return output_gradient_fn(make_objective, penalty_fn, variant)(eps, params, batch, lam)


def identity1_gap(make_objective, lam, seed, variant):
    model, params = model_params(seed)
    batch = data(seed)
    g0 = output_gradients(make_objective, None, lam, params, batch, variant)
    g1 = output_gradients(make_objective, jreg.penalties.l2, lam, params, batch, variant)
    return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))


@pytest.mark.parametrize("variant", VARIANTS)
@given(lam=st.floats(0.0, 100.0), seed=st.integers(0, 2**16))
def test_identity1_output_gradient_unchanged_by_penalty(variant, lam, seed):
    assert identity1_gap(jreg.objective, lam, seed, variant) == 0.0


def test_identity1_catches_a_penalty_leaking_into_outputs():
    assert identity1_gap(MultiplicativeObjective, 1.0, 0, jax.jit) > 1e-3


# ----------------------------------------------------------------- identity 2


@functools.cache
def weight_gradient_fns(penalty_fn, variant):
    """(grad_params J(params, batch, c), grad_params C0(params, batch)): one pair per configuration, c an argument."""
    model = mlp()

    def grad_j(params, batch, c):
        j = jreg.objective(model.apply, jreg.losses.cross_entropy, penalty_fn(c))
        return jax.grad(lambda p: j(p, batch)[0])(params)

    def grad_c0(params, batch):
        c0 = jreg.objective(model.apply, jreg.losses.cross_entropy)
        return jax.grad(lambda p: c0(p, batch)[0])(params)

    return variant(grad_j), variant(grad_c0)


def identity2_gaps(penalty_fn, lam, n, seed, variant):
    """(max |grad_w J - grad_w C0 - (lam/n) w|, max |grad_b J - grad_b C0|) over all layers."""
    model, params = model_params(seed)
    batch = data(seed)
    grad_j, grad_c0 = weight_gradient_fns(penalty_fn, variant)
    gj, gc = grad_j(params, batch, lam / n), grad_c0(params, batch)
    w_gap = max(float(jnp.max(jnp.abs(a["w"] - b["w"] - (lam / n) * p["w"]))) for a, b, p in zip(gj, gc, params))
    b_gap = max(float(jnp.max(jnp.abs(a["b"] - b["b"]))) for a, b in zip(gj, gc))
    return w_gap, b_gap


@pytest.mark.parametrize("variant", VARIANTS)
@given(lam=st.floats(0.0, 50.0), n=st.integers(1, 60_000), seed=st.integers(0, 2**16))
def test_identity2_weight_gradient_gains_lambda_over_n_w(variant, lam, n, seed):
    w_gap, b_gap = identity2_gaps(jreg.penalties.l2, lam, n, seed, variant)
    assert w_gap <= 1e-5
    assert b_gap == 0.0


@pytest.mark.parametrize("mutant", [broken_l2_no_half, broken_l2_with_biases])
def test_identity2_catches_broken_penalties(mutant):
    w_gap, b_gap = identity2_gaps(mutant, 5.0, 10, 0, jax.jit)
    assert w_gap > 1e-2 or b_gap > 1e-2


# ----------------------------------------------------------------- identity 3


def identity3_model(cost):
    """(model, loss) of network2's cost in float64 (call under ``jax.enable_x64``)."""
    if cost == "cross_entropy":
        return mlp(jnp.float64), jreg.losses.cross_entropy
    return mlp(jnp.float64, jax.nn.sigmoid), jreg.losses.quadratic


@functools.cache
def traced_sgd_step(penalty_fn, cost):
    """One jreg.make_step with optax.sgd(eta) and penalty_fn(c), eta and c arguments of one jitted program: the
    property's examples then compile once per batch size instead of once each."""

    @jax.jit
    def step(params, x, y, eta, c):
        model, loss = identity3_model(cost)
        obj = jreg.objective(model.apply, loss, penalty_fn(c))
        opt = optax.sgd(eta)
        return jreg.make_step(obj, opt)(params, opt.init(params), (x, y))[0]

    return step


def identity3_gap(penalty_fn, cost, eta, lam, n, m, seed, variant, traced=False):
    """max |jreg step - network2 update| in float64, over all weights and biases.

    ``traced``: eta and lam/n are arguments of one jitted program (:func:`traced_sgd_step`); otherwise Python
    numbers given to a fresh make_step, run under ``variant`` (jit, or everything under ``jax.disable_jit``).
    """
    with jax.enable_x64(True):
        model, loss = identity3_model(cost)
        params = model.init(jax.random.key(seed))
        x, y = data(seed, n=m, dtype=jnp.float64)
        if traced:
            new = traced_sgd_step(penalty_fn, cost)(params, x, y, eta, lam / n)
        else:
            obj = jreg.objective(model.apply, loss, penalty_fn(lam / n))
            opt = optax.sgd(eta)
            step = jreg.make_step(obj, opt)
            with contextlib.nullcontext() if variant is jax.jit else jax.disable_jit():
                new, _, _ = step(params, opt.init(params), (x, y))
        ws = [np.asarray(p["w"]).T for p in params]  # network2 stores (n_out, n_in)
        bs = [np.asarray(p["b"]) for p in params]
        onehot = np.eye(SIZES[-1])[np.asarray(y)]
        ref_w, ref_b = network2_update(ws, bs, np.asarray(x), onehot, eta, lam, n, cost)
        gaps = [np.max(np.abs(np.asarray(p["w"]).T - rw)) for p, rw in zip(new, ref_w)]
        gaps += [np.max(np.abs(np.asarray(p["b"]) - rb)) for p, rb in zip(new, ref_b)]
        return float(max(gaps))


# The property runs under jit with eta and lam traced (one program per cost and batch size). Python numbers in a
# fresh make_step, with and without jit (everything under jax.disable_jit: the op-by-op trajectory), are checked on
# fixed examples below: the "nojit" variant of the whole property ran network2's update op by op for every example.
@pytest.mark.parametrize("cost", ["cross_entropy", "quadratic"])
@given(
    eta=st.floats(0.01, 3.0),
    lam=st.floats(0.0, 10.0),
    n=st.integers(10, 50_000),
    m=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_identity3_sgd_step_is_network2_update(cost, eta, lam, n, m, seed):
    assert identity3_gap(jreg.penalties.l2, cost, eta, lam, n, m, seed, jax.jit, traced=True) <= 1e-12


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cost", ["cross_entropy", "quadratic"])
@pytest.mark.parametrize(("eta", "lam", "n", "m", "seed"), [(0.5, 5.0, 1000, 10, 0), (3.0, 0.0, 10, 1, 7)])
def test_identity3_sgd_step_with_python_hyperparameters_is_network2_update(variant, cost, eta, lam, n, m, seed):
    assert identity3_gap(jreg.penalties.l2, cost, eta, lam, n, m, seed, variant) <= 1e-12


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("mutant", [broken_l2_no_half, broken_l2_with_biases])
def test_identity3_catches_broken_penalties(mutant, traced):
    assert identity3_gap(mutant, "cross_entropy", 0.5, 5.0, 10, 10, 0, jax.jit, traced=traced) > 1e-3


# ----------------------------------------------------------------- identity 4


def decay_optimizers(eta, c):
    return optax.sgd(eta), optax.chain(optax.add_decayed_weights(c, mask=jreg.penalties.mask_tree), optax.sgd(eta))


@functools.cache
def decay_steps(penalty_fn):
    """One step of each side (sgd + penalty_fn(c) in the objective; add_decayed_weights(c) then sgd), eta and c
    arguments of one jitted program, so that every example and step reuses it."""
    model = mlp()

    @jax.jit
    def steps(pc, sc, pd, sd, batch, eta, c):
        coupled = jreg.objective(model.apply, jreg.losses.cross_entropy, penalty_fn(c))
        plain = jreg.objective(model.apply, jreg.losses.cross_entropy)
        opt_c, opt_d = decay_optimizers(eta, c)
        pc, sc, _ = jreg.make_step(coupled, opt_c)(pc, sc, batch)
        pd, sd, _ = jreg.make_step(plain, opt_d)(pd, sd, batch)
        return pc, sc, pd, sd

    return steps


def identity4_gap(penalty_fn, eta, c, steps, seed, traced=True):
    """max |params(sgd + penalty in objective) - params(add_decayed_weights then sgd)| after `steps` steps.

    ``traced``: eta and c are arguments of one jitted program (:func:`decay_steps`); otherwise Python numbers given
    to two fresh make_steps."""
    model, params = model_params(seed)
    opt_c, opt_d = decay_optimizers(eta, c)
    pc, sc = params, opt_c.init(params)
    pd, sd = params, opt_d.init(params)
    if traced:
        step = decay_steps(penalty_fn)
    else:
        coupled = jreg.objective(model.apply, jreg.losses.cross_entropy, penalty_fn(c))
        plain = jreg.objective(model.apply, jreg.losses.cross_entropy)
        step_c, step_d = jreg.make_step(coupled, opt_c), jreg.make_step(plain, opt_d)

        def step(pc, sc, pd, sd, batch, eta, c):
            return *step_c(pc, sc, batch)[:2], *step_d(pd, sd, batch)[:2]

    for s in range(steps):
        pc, sc, pd, sd = step(pc, sc, pd, sd, data(seed * 1000 + s), eta, c)
    return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(pc), jax.tree.leaves(pd)))


@given(eta=st.floats(0.01, 1.0), c=st.floats(0.0, 0.5), steps=st.integers(1, 20), seed=st.integers(0, 999))
def test_identity4_coupled_l2_equals_decoupled_weight_decay_under_sgd(eta, c, steps, seed):
    assert identity4_gap(jreg.penalties.l2, eta, c, steps, seed) <= 1e-5


def test_identity4_with_python_hyperparameters():
    assert identity4_gap(jreg.penalties.l2, 0.5, 0.3, 7, 3, traced=False) <= 1e-5


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("mutant", [broken_l2_no_half, broken_l2_with_biases])
def test_identity4_catches_broken_penalties(mutant, traced):
    assert identity4_gap(mutant, 0.5, 0.1, 5, 0, traced=traced) > 1e-3


# ----------------------------------------------------------------- identity 5


def adam_comparison(penalty_fn, eta=1e-2, c=1e-2, steps=3):
    """Adam + l2(c) in the objective vs AdamW(weight_decay=c) (optax.adamw: decay scaled by eta).

    Input feature 0 is always zero, so the weights w[0, :] of the first layer
    get no data gradient: only the regularizer moves them.
    """
    model, params = model_params(0)
    x, y = data(0, n=16)
    x = x.at[:, 0].set(0.0)
    coupled = jreg.objective(model.apply, jreg.losses.cross_entropy, penalty_fn(c))
    plain = jreg.objective(model.apply, jreg.losses.cross_entropy)
    adam = optax.adam(eta)
    adamw = optax.adamw(eta, weight_decay=c, mask=jreg.penalties.mask_tree)
    p_l2, s_l2 = params, adam.init(params)
    p_w, s_w = params, adamw.init(params)
    step_l2, step_w = jreg.make_step(coupled, adam), jreg.make_step(plain, adamw)  # each compiles once
    for _ in range(steps):
        p_l2, s_l2, _ = step_l2(p_l2, s_l2, (x, y))
        p_w, s_w, _ = step_w(p_w, s_w, (x, y))
    return params, p_l2, p_w


def test_identity5_adam_l2_is_not_adamw():
    eta, c, steps = 1e-2, 1e-2, 3
    params, p_l2, p_w = adam_comparison(jreg.penalties.l2, eta, c, steps)
    w0 = params[0]["w"][0]
    # The two optimizers end in different places.
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p_l2), jax.tree.leaves(p_w)))
    assert gap > 1e-3
    # How: Adam normalizes the L2 gradient c*w by its own RMS, so a weight with no data gradient
    # moves by ~eta*sign(w) per step whatever c and |w| are ...
    np.testing.assert_allclose(p_l2[0]["w"][0] - w0, -steps * eta * jnp.sign(w0), rtol=2e-2)
    # ... while AdamW shrinks it multiplicatively by (1 - eta*c) per step, proportional to w.
    np.testing.assert_allclose(p_w[0]["w"][0], w0 * (1 - eta * c) ** steps, rtol=1e-5)


def test_identity5_catches_a_penalty_that_does_nothing():
    zero = lambda c: jreg.penalties.l2(0.0 * c)  # noqa: E731 - a broken penalty: never decays
    params, p_l2, _ = adam_comparison(zero)
    w0 = params[0]["w"][0]
    assert not np.allclose(p_l2[0]["w"][0] - w0, -3 * 1e-2 * jnp.sign(w0), rtol=2e-2)
