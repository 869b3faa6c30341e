"""Early stopping: the no-improvement-in-n rule and Nielsen's learning-rate halving schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jreg
from jreg import EarlyStopping
from jreg import losses as L
from jreg.train import engine
from jreg.train import epoch as epoch_module


def events(stopper, values):
    state, out = stopper.initial_state(), []
    for e, v in enumerate(values):
        state, ev = stopper.update(state, e, v)
        out.append(ev)
        if ev == "stop":
            break
    return state, out


def test_no_improvement_in_n():
    state, out = events(
        EarlyStopping(patience=3, monitor="evaluation_accuracy"), [0.5, 0.6, 0.6, 0.59, 0.61, 0.6, 0.6, 0.6, 0.7]
    )
    assert out == ["improved", "improved", None, None, "improved", None, None, "stop"]
    assert state["best"] == 0.61 and state["best_epoch"] == 4
    assert "no improvement in evaluation_accuracy for 3 epochs" in state["stopped"]


def test_costs_are_minimized_and_min_delta_counts():
    _, out = events(EarlyStopping(patience=2, monitor="evaluation_cost"), [1.0, 0.9, 0.95, 0.8])
    assert out == ["improved", "improved", None, "improved"]
    _, out = events(EarlyStopping(patience=2, monitor="evaluation_cost", min_delta=0.2), [1.0, 0.9, 0.85])
    assert out == ["improved", None, "stop"]
    _, out = events(EarlyStopping(patience=2, mode="max", monitor="training_cost"), [1.0, 2.0])
    assert out == ["improved", "improved"]


def test_nan_is_never_an_improvement():
    _, out = events(
        EarlyStopping(patience=2, monitor="evaluation_accuracy"), [float("nan"), 0.5, float("nan"), float("nan")]
    )
    assert out == [None, "improved", None, "stop"]


@given(st.integers(1, 12))
def test_nielsen_schedule_halves_seven_times_then_stops(patience):
    """On a plateau after the first epoch: a cut every `patience` epochs, the 7th (eta0/128) ends the run."""
    stopper = EarlyStopping.nielsen(patience, monitor="evaluation_accuracy")
    state, out = events(stopper, [0.9] * 1000)
    assert out.count("lr_cut") == 6 and out[-1] == "stop"
    assert len(out) == 1 + 7 * patience
    assert state["lr_scale"] == 1 / 128
    assert "fell to 1/128 of its starting value" in state["stopped"]


#: one rule for 1 and K models: the sweep's jitted update (K = 3) against EarlyStopping.update for each model
_K_RULES = [
    EarlyStopping(patience=2, monitor="evaluation_accuracy"),
    EarlyStopping(patience=1, monitor="evaluation_cost", lr_factor=0.5, min_lr_scale=1 / 8),
]
_K_STOPPERS = []


@given(
    st.integers(0, len(_K_RULES) - 1),
    st.lists(st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0, float("nan")]), min_size=3, max_size=3), max_size=12),
)
def test_the_sweeps_rule_for_k_models_is_updates_rule_for_each(which, values):
    from jreg.train.early_stopping import SweepStopper

    rule = _K_RULES[which]
    if not _K_STOPPERS:  # built once: each jits its update
        _K_STOPPERS.extend(SweepStopper(r, 3, 1, False) for r in _K_RULES)
    stopper = _K_STOPPERS[which]
    per, alive, states = stopper.initial(), jnp.ones(3, bool), [rule.initial_state() for _ in range(3)]
    for e, row in enumerate(values):
        scales = np.asarray(stopper.lr_scale(per)) if stopper.scaled else np.ones(3)
        per, _, alive, _ = stopper.advance(per, None, None, jnp.asarray(row, jnp.float32), alive, jnp.int32(e))
        for i in range(3):
            assert scales[i] == states[i]["lr_scale"]
            if states[i]["stopped"] is None:
                states[i], _ = rule.update(states[i], e, row[i])
    host = jax.device_get(per)
    for i, state in enumerate(states):
        assert bool(alive[i]) == (state["stopped"] is None)
        got = stopper.record(host, i) if not alive[i] else None
        if got is not None:
            assert got["reason"] == state["stopped"] and got["best"] == state["best"]
            assert got["best_epoch"] == (None if state["best_epoch"] is None else state["best_epoch"] + 1)
        assert int(host.wait[i]) == state["wait"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patience": 0}, "patience"),
        ({"mode": "up"}, "mode"),
        ({"lr_factor": 1.0}, "lr_factor"),
        ({"lr_factor": 0.0}, "lr_factor"),
        ({"min_lr_scale": 2.0}, "min_lr_scale"),
        ({"min_delta": -1.0}, "min_delta"),
        ({"restore_best": 1}, "restore_best"),
        ({"monitor": 3}, "monitor"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(jreg.JregError, match=match):
        EarlyStopping(**kwargs)


MODEL = jreg.mlp([5, 8, 2])
PARAMS = MODEL.init(jax.random.key(0))


def _data(n, seed):
    x = jax.random.normal(jax.random.key(seed), (n, 5))
    return x, (x[:, 0] - x[:, 2] > 0).astype(jnp.int32)


TRAIN, VALID = _data(64, 1), _data(32, 2)
OBJ = jreg.objective(MODEL.apply, L.cross_entropy)
KEY = jax.random.key(0)


def fit(stopper, *, eta=0.5, epochs=60, key=KEY, evaluation=VALID):
    return jreg.fit(
        OBJ,
        optax.sgd(eta),
        PARAMS,
        TRAIN,
        evaluation=evaluation,
        epochs=epochs,
        batch_size=8,
        key=key,
        early_stopping=stopper,
    )


def test_fit_stops_and_records_why():
    params, hist = fit(EarlyStopping(patience=3), epochs=200)
    acc = hist.evaluation_accuracy
    assert len(hist) < 200 and hist.stopped["epochs"] == len(hist)
    best = int(np.argmax(acc))  # the first best: later ties are not improvements
    assert hist.stopped["best_epoch"] == best + 1 and hist.stopped["best"] == acc[best]
    assert len(hist) == best + 1 + 3
    assert max(acc[best + 1 :]) <= acc[best]


def test_the_halving_schedule_is_exactly_a_smaller_learning_rate(monkeypatch):
    """Replay the recorded scales as plain SGD with eta * scale: the same params, bit for bit on CPU.

    The scales are powers of two, so both orders of the products are exact; a GPU compiler may
    still contract ``p + u * scale`` into one fused multiply-add (seen: 1 ulp on an H100, 3 on an
    H200, the epochs' differences adding up; 67 once fit's loop was unrolled and the replay's was
    compiled apart), so off the CPU the params agree to float tolerance."""
    key = jax.random.key(0)
    monkeypatch.setattr(engine, "ONE_AS_VMAP", False)  # fit's plain one-model program, as make_epoch's
    monkeypatch.setattr(epoch_module, "UNROLL", 1)  # and its rolled loop (make_epoch's default unroll=1)
    params, hist = fit(EarlyStopping.nielsen(2), key=key)
    scales = hist.learning_rate_scale
    assert scales[0] == 1.0 and min(scales) < 1.0  # it did cut the learning rate
    assert all(b in (a, a / 2) for a, b in zip(scales, scales[1:]))
    p, epochs = PARAMS, {}  # one compiled epoch per scale (at most eight), not one per epoch
    for e, scale in enumerate(scales):
        if scale not in epochs:
            epochs[scale] = jreg.make_epoch(OBJ, optax.sgd(0.5 * scale), 8)
        p, _, _ = epochs[scale](p, optax.sgd(0.5).init(p), TRAIN, jax.random.fold_in(key, e))
    if jax.default_backend() == "cpu":
        jax.tree.map(np.testing.assert_array_equal, params, p)
    else:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, p)


def test_restore_best_returns_the_best_epochs_params():
    stopper = EarlyStopping(patience=4, monitor="evaluation_cost", restore_best=True)
    params, hist = fit(stopper, eta=2.0, epochs=100)
    best = hist.stopped["best_epoch"] - 1
    assert best == len(hist) - 5  # it stopped, four epochs after the best: the last params are not the best
    np.testing.assert_allclose(float(jreg.total_cost(OBJ, params, VALID)), hist.evaluation_cost[best], rtol=1e-6)
    assert min(hist.evaluation_cost) == hist.evaluation_cost[best]


def test_early_stopping_needs_its_series_monitored():
    with pytest.raises(jreg.JregError, match="does not monitor"):
        fit(EarlyStopping(), epochs=2, evaluation=None)
    with pytest.raises(jreg.JregTypeError, match="early_stopping"):
        fit(10, epochs=2)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("restore_best", [False, True])
def test_resume_continues_the_schedule_bit_for_bit(tmp_path, restore_best):
    stopper = EarlyStopping.nielsen(2, restore_best=restore_best)
    run = dict(evaluation=VALID, epochs=40, batch_size=8, key=jax.random.key(0), early_stopping=stopper)
    straight, h1 = jreg.fit(OBJ, optax.sgd(0.5), PARAMS, TRAIN, **run)

    def crash(epoch, metrics):
        if epoch == 9:
            raise Interrupt

    with pytest.raises(Interrupt):
        jreg.fit(OBJ, optax.sgd(0.5), PARAMS, TRAIN, checkpoint=jreg.Checkpointing(tmp_path), callback=crash, **run)
    ck = jreg.Checkpointing(tmp_path)
    resumed, h2 = jreg.fit(OBJ, optax.sgd(0.5), PARAMS, TRAIN, checkpoint=ck, resume=tmp_path, **run)
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    assert h1.to_dict() == h2.to_dict()
    assert h1.stopped is not None and h1.stopped == h2.stopped
    # a finished run resumed again does nothing more and returns the same
    again, h3 = jreg.fit(OBJ, optax.sgd(0.5), PARAMS, TRAIN, resume=tmp_path, **run)
    jax.tree.map(np.testing.assert_array_equal, straight, again)
    assert h3.stopped == h1.stopped
