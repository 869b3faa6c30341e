"""Penalty coefficients as schedules of the global step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg import losses as L
from jreg import penalties as P

from .conftest import VARIANTS

MODEL = jreg.mlp([5, 8, 2])
PARAMS = MODEL.init(jax.random.key(0))
RAMP = optax.linear_schedule(0.0, 0.2, 10)


def weights_sq(params):
    return sum(float(np.sum(np.asarray(p["w"], np.float64) ** 2)) for p in params)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("step", [0, 3, 10, 25])
def test_a_scheduled_penalty_equals_the_constant_one_at_that_step(variant, step):
    value = variant(lambda p, s: P.l2(RAMP)(p, step=s))(PARAMS, step)
    c = 0.2 * min(step, 10) / 10
    np.testing.assert_allclose(value, 0.5 * c * weights_sq(PARAMS), rtol=1e-6)
    np.testing.assert_allclose(value, P.l2(c)(PARAMS), rtol=1e-6)


def test_schedules_work_in_every_term_and_in_the_prox():
    pen = P.elastic_net(RAMP, 0.1) + P.group_lasso(lambda s: 0.01 * s)
    np.testing.assert_allclose(pen(PARAMS, step=5), (P.elastic_net(0.1, 0.1) + P.group_lasso(0.05))(PARAMS), rtol=1e-6)
    proxed = P.l1(RAMP).prox(PARAMS, 0.5, step=4)
    expected = P.l1(0.08).prox(PARAMS, 0.5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), proxed, expected)


def test_a_schedule_without_a_step_is_an_error_not_a_guess():
    with pytest.raises(jreg.JregError, match="schedule.*step="):
        P.l2(RAMP)(PARAMS)
    obj = jreg.objective(MODEL.apply, L.cross_entropy, P.l2(RAMP))
    with pytest.raises(jreg.JregError, match="step="):
        obj(PARAMS, (jnp.ones((2, 5)), jnp.array([0, 1])))
    with pytest.raises(jreg.JregError, match="schedule 0"):
        P.l2(lambda s: -1.0)(PARAMS, step=0)  # a schedule's values are checked like constants
    with pytest.raises(jreg.JregError, match="scalar"):
        P.l2(lambda s: jnp.ones(3))(PARAMS, step=0)


def test_describe_shows_a_schedule():
    assert "schedule(step)" in str(jreg.describe(P.l2(RAMP), PARAMS))


def _data(n=44):
    x = jax.random.normal(jax.random.key(1), (n, 5))
    return x, (x[:, 0] > 0).astype(jnp.int32)


def test_fit_feeds_the_global_step_across_epochs_and_partial_batches():
    """The schedule sees 0, 1, 2... over the whole run: compare with a manual loop over make_step."""
    x, y = train = _data()
    obj = jreg.objective(MODEL.apply, L.cross_entropy, P.l2(RAMP))
    key = jax.random.key(3)
    fitted, hist = jreg.fit(
        obj, optax.sgd(0.3), PARAMS, train, epochs=3, batch_size=16, key=key, monitor=("training_cost",)
    )
    step = jreg.make_step(obj, optax.sgd(0.3))
    p, s, t = PARAMS, optax.sgd(0.3).init(PARAMS), 0
    for e in range(3):
        full, rest = jreg.data.batch_indices(44, 16, jax.random.fold_in(key, e))
        for idx in list(full) + [rest]:
            p, s, _ = step(p, s, (x[idx], y[idx]), step=t)
            t += 1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), fitted, p)
    # the monitored cost uses the coefficient at the step count reached after the epoch (3 epochs x 3 steps)
    np.testing.assert_allclose(hist.training_l2[-1], float(P.l2(RAMP)(fitted, step=9)), rtol=1e-6)


def test_make_epoch_takes_the_first_step_of_the_epoch():
    x, y = train = _data(32)
    obj = jreg.objective(MODEL.apply, L.cross_entropy, P.l2(lambda s: jnp.where(s >= 6, 1.0, 0.0)))
    epoch = jreg.make_epoch(obj, optax.sgd(0.1), 8)
    const = jreg.make_epoch(jreg.objective(MODEL.apply, L.cross_entropy, P.l2(1.0)), optax.sgd(0.1), 8)
    opt = optax.sgd(0.1).init(PARAMS)
    key = jax.random.key(0)
    # steps 6..9: the schedule is 1.0 throughout, so this is the constant-l2 epoch
    a, _, _ = epoch(PARAMS, opt, train, key, 6)
    b, _, _ = const(PARAMS, opt, train, key)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    with pytest.raises(jreg.JregError, match="step="):
        epoch(PARAMS, opt, train, key)


def test_proximal_with_a_scheduled_l1_thresholds_at_its_own_count():
    opt = optax.chain(optax.sgd(0.1), jreg.proximal(P.l1(lambda s: 0.5 * s), 0.1))
    state = opt.init(PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    u0, state = opt.update(zeros, state, PARAMS)  # count 0: threshold 0, nothing moves
    jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0), u0)
    u1, _ = opt.update(zeros, state, PARAMS)  # count 1: soft-threshold at 0.1 * 0.5
    expected = P.l1(0.05).prox(PARAMS, 1.0)
    jax.tree.map(lambda u, w, e: np.testing.assert_allclose(w + u, e, rtol=1e-6, atol=1e-7), u1, PARAMS, expected)


def test_sweep_with_a_schedule():
    train = _data(32)

    def build(hp):
        return jreg.objective(MODEL.apply, L.cross_entropy, P.l2(lambda s: hp["c"] * s / 10)), optax.sgd(0.2)

    swept, _ = jreg.sweep(
        build, PARAMS, train, hparams={"c": [0.0, 0.5]}, epochs=2, batch_size=8, key=jax.random.key(0)
    )
    for i, c in enumerate([0.0, 0.5]):
        obj, opt = build({"c": c})
        alone, _ = jreg.fit(obj, opt, PARAMS, train, epochs=2, batch_size=8, key=jax.random.key(0))
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), swept, alone)
