"""Monitoring defaults: the same series in memory and streamed, metrics that add to the default ones, the
series EarlyStopping() watches by default, and hints that name the real fix."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import jreg
from jreg import EarlyStopping

N, B = 32, 8
KEY = jax.random.key(3)
MODEL = jreg.mlp([5, 7, 3])
OBJ = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))
P0 = MODEL.init(jax.random.key(0))
_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, 5)).astype(np.float32)
Y = _rng.integers(0, 3, N).astype(np.int32)
BATCHES = [(X[i : i + B], Y[i : i + B]) for i in range(0, N, B)]
HELD_OUT = (X[:12], Y[:12])
REGRESSION = jreg.objective(jreg.mlp([5, 4, 2]).apply, jreg.losses.quadratic)
R0 = jreg.mlp([5, 4, 2]).init(jax.random.key(0))
RY = _rng.normal(size=(N, 2)).astype(np.float32)


def top2(outputs, targets):
    """Per example: whether the label is among the two highest outputs."""
    return (jax.lax.top_k(outputs, 2)[1] == targets[..., None]).any(axis=-1).astype(np.float32)


def fit(train=(X, Y), objective=OBJ, params=P0, **kw):
    kw = dict(epochs=2, batch_size=B, key=KEY) | kw
    return jreg.fit(objective, optax.sgd(0.1), params, train, **kw)


def sweep(train=(X, Y), **kw):
    build = lambda hp: (OBJ, optax.sgd(hp["eta"]))  # noqa: E731
    return jreg.sweep(build, P0, train, hparams={"eta": [0.1, 0.2]}, epochs=2, batch_size=B, key=KEY, **kw)


def keys(history) -> set[str]:
    return set(history.keys())


@pytest.mark.parametrize("evaluation", [None, HELD_OUT])
def test_the_same_series_in_memory_and_streamed(evaluation):
    for run in (fit, sweep):
        memory = keys(run((X, Y), evaluation=evaluation)[-1])
        streamed = keys(run(BATCHES, evaluation=evaluation)[-1])
        assert memory == streamed, run.__name__
        expected = {"epoch_loss"} | ({"evaluation_cost", "evaluation_accuracy"} if evaluation is not None else set())
        assert memory == expected


def test_training_set_series_only_when_asked_and_the_same_request_gives_the_same_names():
    asked = ("epoch_loss", "evaluation_accuracy")
    assert keys(fit(evaluation=HELD_OUT, monitor=asked)[-1]) == keys(
        fit(BATCHES, evaluation=HELD_OUT, monitor=asked)[-1]
    )
    history = fit(evaluation=HELD_OUT, monitor=jreg.train.NETWORK2)[-1]
    assert {"training_cost", "training_data", "training_penalty", "training_l2", "training_accuracy"} <= keys(history)
    assert "epoch_loss" not in history
    with pytest.raises(jreg.JregError, match="a stream does not hold"):
        fit(BATCHES, evaluation=HELD_OUT, monitor=jreg.train.NETWORK2)
    assert keys(fit(monitor=())[-1]) == set()


def test_a_metric_adds_to_accuracy_and_replacing_it_is_explicit():
    added = fit(evaluation=jreg.Evaluation(HELD_OUT, metrics={"top2": top2}))[-1]
    assert keys(added) == {"epoch_loss", "evaluation_cost", "evaluation_accuracy", "evaluation_top2"}
    replaced = fit(evaluation=jreg.Evaluation(HELD_OUT, metrics={"top2": top2}, default_metrics=False))[-1]
    assert keys(replaced) == {"epoch_loss", "evaluation_cost", "evaluation_top2"}
    bare = fit(evaluation=jreg.Evaluation(HELD_OUT, default_metrics=False))[-1]
    assert keys(bare) == {"epoch_loss", "evaluation_cost"}
    # metrics without evaluation data: the default would measure none of them, so it says how to
    with pytest.raises(jreg.JregError, match=r"no evaluation data.*monitor=\['epoch_loss', 'training_top2'\]"):
        fit(evaluation=jreg.Evaluation(metrics={"top2": top2}))
    asked = fit(evaluation=jreg.Evaluation(metrics={"top2": top2}), monitor=("training_top2", "training_accuracy"))
    assert keys(asked[-1]) == {"training_top2", "training_accuracy"}
    with pytest.raises(jreg.JregTypeError, match="default_metrics"):
        jreg.Evaluation(HELD_OUT, default_metrics=None)
    with pytest.raises(jreg.JregError, match=r"default_metrics=False\) dropped the default accuracy"):
        fit(evaluation=jreg.Evaluation(HELD_OUT, default_metrics=False), monitor=("evaluation_accuracy",))


def test_early_stopping_watches_evaluation_accuracy_by_default():
    history = fit(evaluation=HELD_OUT, early_stopping=EarlyStopping(patience=1, min_delta=10.0), epochs=5)[-1]
    assert history.stopped["monitor"] == "evaluation_accuracy" and len(history) == 2
    history = sweep(evaluation=HELD_OUT, early_stopping=EarlyStopping.nielsen(1, min_delta=10.0))[-1]
    assert {r["monitor"] for r in history.stopped.values()} <= {"evaluation_accuracy"}


def test_early_stopping_watches_evaluation_cost_without_accuracy():
    rule = EarlyStopping(patience=1, min_delta=1e9)  # nothing beats the first: stops after the second epoch
    regression = fit((X, RY), REGRESSION, R0, evaluation=(X[:12], RY[:12]), early_stopping=rule, epochs=5)[-1]
    assert regression.stopped["monitor"] == "evaluation_cost" and len(regression) == 2
    # the case: evaluation data given, accuracy replaced by a metric of the user's
    replaced = jreg.Evaluation(HELD_OUT, metrics={"top2": top2}, default_metrics=False)
    history = fit(evaluation=replaced, early_stopping=rule, epochs=5)[-1]
    assert history.stopped["monitor"] == "evaluation_cost"


def test_early_stopping_without_evaluation_data_is_a_clear_error():
    with pytest.raises(jreg.JregError, match=r"evaluation data is needed: pass held-out data.*'epoch_loss'"):
        fit(early_stopping=EarlyStopping())
    with pytest.raises(jreg.JregError, match="evaluation data is needed"):
        sweep(early_stopping=EarlyStopping())
    history = fit(early_stopping=EarlyStopping(patience=1, monitor="epoch_loss", mode="max"), epochs=5)[-1]
    assert history.stopped["monitor"] == "epoch_loss"  # named, the training loss works


def test_hints_name_the_real_fix():
    def message(**kw) -> str:
        with pytest.raises(jreg.JregError) as info:
            fit(**kw)
        return str(info.value)

    # evaluation data given, the metrics replaced: not "pass evaluation data"
    text = message(
        evaluation=jreg.Evaluation(HELD_OUT, metrics={"top2": top2}, default_metrics=False),
        early_stopping=EarlyStopping(monitor="evaluation_accuracy"),
    )
    assert "default_metrics=False" in text and "pass held-out data" not in text
    # evaluation data given, the series left out of monitor=: ask for it
    text = message(evaluation=HELD_OUT, monitor=("epoch_loss",), early_stopping=EarlyStopping())
    assert "monitor= leaves it out" in text and "'evaluation_accuracy'" in text and "pass held-out" not in text
    # a training-set series: ask for it in memory, refused for a stream
    text = message(evaluation=HELD_OUT, early_stopping=EarlyStopping(monitor="training_cost"))
    assert "monitor=['epoch_loss', 'evaluation_accuracy', 'evaluation_cost', 'training_cost']" in text
    text = message(train=BATCHES, early_stopping=EarlyStopping(monitor="training_cost"))
    assert "a stream does not hold" in text
    # a regression: accuracy is not measured, and the hint says why and what to give
    with pytest.raises(jreg.JregError, match="the targets are not classes"):
        fit(
            (X, RY),
            REGRESSION,
            R0,
            evaluation=(X[:12], RY[:12]),
            early_stopping=EarlyStopping(monitor="evaluation_accuracy"),
        )
    # no evaluation data
    assert "evaluation data is needed" in message(early_stopping=EarlyStopping(monitor="evaluation_cost"))


def test_a_bare_rule_names_its_series_before_use():
    with pytest.raises(jreg.JregError, match="name the series"):
        EarlyStopping().update(EarlyStopping().initial_state(), 0, 1.0)
    assert EarlyStopping().watching("evaluation_cost").maximize is False


def test_pbt_ranks_by_the_training_loss_without_evaluation_data():
    build = lambda hp: (OBJ, optax.sgd(hp["eta"]))  # noqa: E731
    hparams, explore = {"eta": [0.1, 0.2, 0.3, 0.4]}, {"eta": (0.8, 1.25)}
    result = jreg.pbt(build, P0, (X, Y), hparams=hparams, explore=explore, every=1, epochs=2, batch_size=B, key=KEY)
    assert result.rank_by == "epoch_loss"
