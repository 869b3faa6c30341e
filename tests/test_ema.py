"""EMA of weights (jreg.EMA): the recurrence, monitoring, the returned model, resume, sweep, hostile values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train import guard
from jreg.train.state import TrainState
from jreg.train.step import make_update

from .conftest import VARIANTS

N, BATCH, ETA, LAM = 40, 10, 0.5, 0.01


def toy(n=N, seed=0):
    kx, kp = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(kp, (6, 3)), axis=1)


MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(1))
OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(LAM))
DATA = toy()
KEY = jax.random.key(2)


def hand_ema(decay, epochs, eta=ETA, key=KEY):
    """Hand-written reference: plain SGD steps over fit's shuffles (fold_in(key, e)), then the EMA recurrence
    ema_t = d*ema_{t-1} + (1-d)*params_t in float32 NumPy, from ema_0 = params_0."""
    grad = jax.jit(jax.grad(lambda p, b: OBJ(p, b)[0]))
    x, y = DATA
    p = jax.tree.map(np.asarray, PARAMS)
    ema = jax.tree.map(np.copy, p)
    d = np.float32(decay)
    for e in range(epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, e), N))
        for i in range(N // BATCH):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            g = grad(p, (x[idx], y[idx]))
            p = jax.tree.map(lambda a, b: np.asarray(a - np.float32(eta) * np.asarray(b), np.float32), p, g)
            ema = jax.tree.map(lambda m, a: (d * m + (np.float32(1) - d) * a).astype(np.float32), ema, p)
    return p, ema


def close(a, b, rtol=2e-5, atol=1e-6):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def equal(a, b):
    return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("variant", VARIANTS)
def test_update_steps_equal_sgd_then_the_ema_recurrence(variant):
    opt = optax.sgd(ETA)
    decay = 0.8
    update = variant(make_update(OBJ, opt, ema_decay=decay))
    state = TrainState.create(opt, PARAMS, ema=True)
    x, y = DATA
    p, ema = jax.tree.map(np.asarray, PARAMS), jax.tree.map(np.asarray, PARAMS)
    grad = jax.grad(lambda q, b: OBJ(q, b)[0])
    for i in range(4):
        batch = (x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH])
        state, _ = update(state, batch, None)
        g = grad(p, batch)
        p = jax.tree.map(lambda a, b: a - np.float32(ETA) * np.asarray(b), p, g)
        ema = jax.tree.map(lambda m, a: np.float32(decay) * m + (np.float32(1) - np.float32(decay)) * a, ema, p)
    close(state.params, p)
    close(state.ema, ema)
    assert not equal(state.ema, state.params)


def test_fit_returns_the_ema_of_its_sgd_steps():
    ref_params, ref_ema = hand_ema(0.9, epochs=2)
    got, history = jreg.fit(
        OBJ, optax.sgd(ETA), PARAMS, DATA, epochs=2, batch_size=BATCH, key=KEY, monitor=(), ema=jreg.EMA(0.9)
    )
    close(got, ref_ema)
    live, _ = jreg.fit(
        OBJ,
        optax.sgd(ETA),
        PARAMS,
        DATA,
        epochs=2,
        batch_size=BATCH,
        key=KEY,
        monitor=(),
        ema=jreg.EMA(0.9, returned=False),
    )
    close(live, ref_params)
    plain, _ = jreg.fit(OBJ, optax.sgd(ETA), PARAMS, DATA, epochs=2, batch_size=BATCH, key=KEY, monitor=())
    assert equal(live, plain)  # keeping an EMA changes nothing in training
    assert history.ema == {"decay": 0.9, "evaluate": True, "returned": True}


def test_monitored_figures_are_the_ema_params_figures():
    x, y = DATA
    held = toy(20, seed=3)
    kwargs = dict(epochs=2, batch_size=BATCH, key=KEY, evaluation=held, monitor=jreg.train.NETWORK2)
    ema_params, history = jreg.fit(OBJ, optax.sgd(ETA), PARAMS, DATA, ema=jreg.EMA(0.7), **kwargs)
    assert history.ema["evaluate"] is True
    np.testing.assert_allclose(history["evaluation_accuracy"][-1], jreg.accuracy(MODEL.apply, ema_params, held))
    np.testing.assert_allclose(history["training_accuracy"][-1], jreg.accuracy(MODEL.apply, ema_params, DATA))
    np.testing.assert_allclose(history["training_cost"][-1], OBJ(ema_params, DATA)[0], rtol=1e-5)
    live, unaveraged = jreg.fit(OBJ, optax.sgd(ETA), PARAMS, DATA, ema=jreg.EMA(0.7, evaluate=False), **kwargs)
    plain, plain_history = jreg.fit(OBJ, optax.sgd(ETA), PARAMS, DATA, **kwargs)
    assert unaveraged.series == plain_history.series  # evaluate=False: the live params' figures
    np.testing.assert_allclose(history["training_cost"][-1], OBJ(ema_params, DATA)[0], rtol=1e-5)
    assert not math.isclose(history["training_cost"][-1], plain_history["training_cost"][-1], rel_tol=1e-7)


def test_resume_continues_the_ema_bit_for_bit(tmp_path):
    kwargs = dict(batch_size=BATCH, key=KEY, evaluation=toy(20, seed=3), ema=jreg.EMA(0.8))
    whole, whole_history = jreg.fit(OBJ, optax.adam(1e-2), PARAMS, DATA, epochs=4, **kwargs)
    ck = jreg.Checkpointing(tmp_path / "run")
    jreg.fit(OBJ, optax.adam(1e-2), PARAMS, DATA, epochs=2, checkpoint=ck, **kwargs)
    resumed, history = jreg.fit(
        OBJ, optax.adam(1e-2), PARAMS, DATA, epochs=4, checkpoint=ck, resume=tmp_path / "run", **kwargs
    )
    assert equal(resumed, whole)
    assert history.series == whole_history.series and history.ema == whole_history.ema
    # a resume with another EMA setting is refused: the EMA could not continue
    others = dict(kwargs, ema=None)
    with pytest.raises(jreg.JregError, match="kept an EMA"):
        jreg.fit(OBJ, optax.adam(1e-2), PARAMS, DATA, epochs=4, resume=tmp_path / "run", **others)
    others = dict(kwargs, ema=jreg.EMA(0.8, evaluate=False))
    with pytest.raises(jreg.JregError, match="evaluate"):
        jreg.fit(OBJ, optax.adam(1e-2), PARAMS, DATA, epochs=4, resume=tmp_path / "run", **others)
    plain = jreg.Checkpointing(tmp_path / "plain")
    jreg.fit(OBJ, optax.adam(1e-2), PARAMS, DATA, epochs=1, batch_size=BATCH, key=KEY, checkpoint=plain)
    with pytest.raises(jreg.JregError, match="kept no EMA"):
        jreg.fit(OBJ, optax.adam(1e-2), PARAMS, DATA, epochs=2, resume=tmp_path / "plain", **kwargs)


def test_sweep_over_decays_equals_one_fit_per_decay():
    decays = [0.0, 0.5, 0.9]
    kwargs = dict(epochs=2, batch_size=BATCH, key=KEY, monitor=("training_cost",))
    fits = [jreg.fit(OBJ, optax.sgd(ETA), PARAMS, DATA, ema=jreg.EMA(d), **kwargs) for d in decays]
    for vectorize in ("vmap", "map"):
        stacked, history = jreg.sweep(
            lambda hp: (OBJ, optax.sgd(ETA)),
            PARAMS,
            DATA,
            hparams={"d": decays},
            ema=jreg.EMA("d"),
            vectorize=vectorize,
            **kwargs,
        )
        assert history.ema == {"decay": "d", "evaluate": True, "returned": True}
        for i, (one, one_history) in enumerate(fits):
            close(jax.tree.map(lambda a, i=i: a[i], stacked), one)
            np.testing.assert_allclose(history["training_cost"][i], one_history["training_cost"], rtol=1e-5)
    _, ref = hand_ema(0.0, epochs=2)
    close(jax.tree.map(lambda a: a[0], stacked), ref)  # decay 0: the EMA is the live params
    # a shared decay, the models differing in their learning rate
    shared, _ = jreg.sweep(
        lambda hp: (OBJ, optax.sgd(hp["eta"])), PARAMS, DATA, hparams={"eta": [0.1, ETA]}, ema=jreg.EMA(0.9), **kwargs
    )
    close(jax.tree.map(lambda a: a[1], shared), fits[2][0])


def test_decay_is_traced_through_vmap():
    opt = optax.sgd(ETA)
    batch = (DATA[0][:BATCH], DATA[1][:BATCH])

    def three_steps(decay):
        update = make_update(OBJ, opt, ema_decay=decay)
        state = TrainState.create(opt, PARAMS, ema=True)
        for _ in range(3):
            state, _ = update(state, batch, None)
        return state.ema

    decays = jnp.array([0.0, 0.3, 0.99])
    batched = jax.jit(jax.vmap(three_steps))(decays)
    for i, d in enumerate(decays.tolist()):
        close(jax.tree.map(lambda a, i=i: a[i], batched), three_steps(jnp.float32(d)), rtol=1e-6)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_decays_are_refused_at_once(bad):
    with pytest.raises(jreg.JregError, match="EMA.decay"):
        jreg.EMA(decay=bad)


def test_numpy_decays_become_floats():
    assert jreg.EMA(np.float32(0.5)).decay == 0.5 and type(jreg.EMA(np.float32(0.5)).decay) is float
    assert jreg.EMA(jnp.asarray(0.25)).decay == 0.25
    assert jreg.EMA(0).meta() == {"decay": 0.0, "evaluate": True, "returned": True}


@pytest.mark.parametrize("bad", [True, None, "", [0.9], jnp.array([0.9, 0.8])])
def test_decays_that_are_no_number_are_refused(bad):
    with pytest.raises((jreg.JregError, jreg.JregTypeError), match="EMA.decay"):
        jreg.EMA(decay=bad)


def test_bad_ema_arguments_are_refused_before_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(jreg.train.engine, "program", no_work)
    run = dict(epochs=1, batch_size=BATCH, key=KEY)
    with pytest.raises(jreg.JregTypeError, match="ema must be a jreg.EMA"):
        jreg.fit(OBJ, optax.sgd(ETA), PARAMS, DATA, ema=0.9, **run)
    with pytest.raises(jreg.JregError, match="only jreg.sweep"):
        jreg.fit(OBJ, optax.sgd(ETA), PARAMS, DATA, ema=jreg.EMA("d"), **run)
    with pytest.raises(jreg.JregTypeError, match="EMA.evaluate"):
        jreg.EMA(0.9, evaluate=1)
    build = lambda hp: (OBJ, optax.sgd(ETA))  # noqa: E731
    with pytest.raises(jreg.JregError, match=r"hparams\['d'\]\[1\]"):
        jreg.sweep(build, PARAMS, DATA, hparams={"d": [0.5, 1.0]}, ema=jreg.EMA("d"), **run)
    with pytest.raises(jreg.JregError, match="names no hparams entry"):
        jreg.sweep(build, PARAMS, DATA, hparams={"d": [0.5, 0.6]}, ema=jreg.EMA("decay"), **run)


def test_the_divergence_guard_covers_the_ema():
    opt = optax.sgd(ETA)
    old = TrainState.create(opt, PARAMS, ema=True)
    bad_ema = jax.tree.map(lambda a: a.at[0].set(jnp.nan), old.ema)
    new = old._replace(params=jax.tree.map(lambda a: a + 1, old.params), ema=bad_ema)
    state, ok, _ = guard.check(old, new, [])
    assert not bool(ok)
    assert equal(state, old)
    state, ok, _ = guard.check(old, new._replace(ema=old.ema), [])
    assert bool(ok) and equal(state.params, new.params)


def test_a_diverging_fit_keeps_the_ema_finite_to_the_last_step():
    with pytest.raises(guard.DivergenceError) as caught:
        jreg.fit(OBJ, optax.sgd(1e30), PARAMS, DATA, epochs=2, batch_size=BATCH, key=KEY, ema=jreg.EMA(0.9))
    assert caught.value.step is not None
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(caught.value.params))


def test_restore_best_keeps_the_best_epochs_ema():
    held = toy(20, seed=3)
    rule = jreg.EarlyStopping(patience=10, monitor="evaluation_cost", restore_best=True)
    best, history = jreg.fit(
        OBJ,
        optax.sgd(3.0),
        PARAMS,
        DATA,
        epochs=4,
        batch_size=BATCH,
        key=KEY,
        evaluation=held,
        monitor=("evaluation_cost",),
        early_stopping=rule,
        ema=jreg.EMA(0.6),
    )
    costs = history["evaluation_cost"]
    # the returned params are the EMA of the best epoch: the cost measured on it is that epoch's figure
    np.testing.assert_allclose(OBJ(best, held)[0], min(costs), rtol=1e-5)


# --------------------------------------------------------------------------- issue 15's review
# Cases an independent review of issue 15's regularizers found: each gave a raw exception, a silent wrong
# result, or accepted a resume it should refuse.

MLP_4_5_3 = jreg.mlp([4, 5, 3])
PARAMS_4_5_3 = MLP_4_5_3.init(jax.random.key(0))
X16 = jax.random.normal(jax.random.key(1), (16, 4))
Y16 = jnp.arange(16) % 3


def test_resuming_with_another_ema_decay_is_refused(tmp_path):
    obj = jreg.objective(MLP_4_5_3.apply, jreg.losses.softmax_cross_entropy)
    kw = dict(batch_size=8, key=KEY, evaluation=(X16, Y16))
    jreg.fit(
        obj,
        optax.sgd(0.1),
        PARAMS_4_5_3,
        (X16, Y16),
        epochs=1,
        checkpoint=jreg.Checkpointing(tmp_path),
        ema=jreg.EMA(0.9),
        **kw,
    )
    with pytest.raises(jreg.JregError, match=r"EMA.decay=0.9, this run with 0.1"):
        jreg.fit(obj, optax.sgd(0.1), PARAMS_4_5_3, (X16, Y16), epochs=2, resume=tmp_path, ema=jreg.EMA(0.1), **kw)
    jreg.fit(obj, optax.sgd(0.1), PARAMS_4_5_3, (X16, Y16), epochs=2, resume=tmp_path, ema=jreg.EMA(0.9), **kw)
