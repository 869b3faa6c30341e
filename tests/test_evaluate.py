"""Monitoring in evaluation batches equals full-batch figures; metrics, their reductions, and every-k evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jreg
from jreg import metrics as M
from jreg.train.evaluate import evaluate

from .conftest import VARIANTS
from .test_train import toy

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(1))
FULL_OBJ = jreg.objective(
    MODEL.apply,
    jreg.losses.cross_entropy,
    jreg.penalties.l2(0.01) + jreg.penalties.l1(0.001),
    activity=jreg.penalties.l2(0.1),
    input_penalty=jreg.penalties.input_gradient(0.5),
)
METRICS = {
    "accuracy": M.Metric(M.accuracy),
    "errors": M.Metric(lambda o, t: 1.0 - M.accuracy(o, t), reduction="sum"),
    "mean_logit": M.Metric(lambda o, t: jnp.mean(o)),  # one scalar per batch, a mean: exact when weighted
    "batches": M.Metric(lambda o, t: jnp.ones(()), reduction="sum"),  # counts evaluation batches
}


def full_batch(obj, params, data):
    total, parts = obj(params, data)
    out = MODEL.apply(params, data[0])
    acc = M.accuracy(out, data[1])
    return {"cost": total, **parts, "accuracy": acc.mean(), "errors": (1 - acc).sum(), "mean_logit": jnp.mean(out)}


# The reference compiled as one program: op by op, each new number of examples compiles every primitive of the
# objective (its input gradient included) anew, about three times the time of one program. Compared to a
# tolerance; the bit-for-bit comparison below keeps the reference op by op, as evaluate is called there.
full_batch_jit = jax.jit(full_batch, static_argnums=0)


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=8)  # each example compiles anew (new shapes)
@given(n=st.integers(1, 45), batch_size=st.integers(1, 50))
def test_batched_figures_equal_full_batch_ones(variant, n, batch_size):
    data = toy(n, seed=n)
    got = variant(
        lambda p, d: evaluate(FULL_OBJ, p, None, d, cost=True, parts=True, metrics=METRICS, batch_size=batch_size)
    )(PARAMS, data)
    want = full_batch_jit(FULL_OBJ, PARAMS, data)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=2e-5, atol=1e-6, err_msg=name)
    assert int(got["batches"]) == -(-n // min(batch_size, n))


def test_one_batch_is_bit_identical_to_full_batch():
    data = toy(30)
    got = evaluate(FULL_OBJ, PARAMS, None, data, cost=True, parts=True, metrics={"accuracy": M.accuracy})
    want = full_batch(FULL_OBJ, PARAMS, data)
    for name in ("cost", "data", "penalty", "l2", "l1", "activity_l2", "input_gradient", "accuracy"):
        assert np.asarray(got[name]).tobytes() == np.asarray(want[name]).tobytes(), name


def test_a_plain_objective_is_evaluated_in_batches_too():
    def plain(p, batch):
        return FULL_OBJ(p, batch)

    data = toy(37)
    got = evaluate(plain, PARAMS, None, data, cost=True, parts=True, batch_size=8)
    want = full_batch_jit(FULL_OBJ, PARAMS, data)
    for name in ("cost", "data", "penalty"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, err_msg=name)
    with pytest.raises(jreg.JregError, match="metrics need an objective from jreg.objective"):
        evaluate(plain, PARAMS, None, data, cost=True, metrics={"accuracy": M.accuracy})


def test_total_cost_in_batches_equals_all_at_once():
    data = toy(53)
    np.testing.assert_allclose(
        jreg.total_cost(FULL_OBJ, PARAMS, data, batch_size=10), jreg.total_cost(FULL_OBJ, PARAMS, data), rtol=2e-5
    )


def test_fit_reports_named_metrics_on_both_sets_with_the_documented_reductions():
    train, test = toy(40), toy(25, seed=3)
    ev = jreg.Evaluation(test, metrics=METRICS, batch_size=7)
    every = tuple(f"{p}_{m}" for p in ("training", "evaluation") for m in ("cost", *METRICS))  # both sets, asked
    params, hist = jreg.fit(
        FULL_OBJ, optax.sgd(0.5), PARAMS, train, epochs=2, batch_size=10, key=jax.random.key(0), evaluation=ev,
        monitor=every,
    )  # fmt: skip
    for prefix, data in (("training", train), ("evaluation", test)):
        want = full_batch_jit(FULL_OBJ, params, data)
        for name in ("accuracy", "errors", "mean_logit"):
            np.testing.assert_allclose(hist[f"{prefix}_{name}"][-1], want[name], rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(hist[f"{prefix}_cost"][-1], want["cost"], rtol=2e-5)
    assert hist.training_batches[-1] == 6 and hist.evaluation_batches[-1] == 4


def test_every_k_epochs_measures_at_those_epochs_and_the_last():
    train, test = toy(40), toy(20, seed=2)
    kw = dict(epochs=7, batch_size=10, key=jax.random.key(0))
    p_all, h_all = jreg.fit(FULL_OBJ, optax.sgd(0.5), PARAMS, train, evaluation=test, monitor=None, **kw)
    ev = jreg.Evaluation(test, every=3)
    p_some, h_some = jreg.fit(
        FULL_OBJ,
        optax.sgd(0.5),
        PARAMS,
        train,
        evaluation=ev,
        monitor=("evaluation_accuracy", "evaluation_cost", "epoch_loss"),
        **kw,
    )
    jax.tree.map(np.testing.assert_array_equal, p_all, p_some)  # monitoring never changes training
    assert h_some.epochs("evaluation_accuracy") == [3, 6, 7] and h_some.epochs("epoch_loss") == list(range(1, 8))
    assert len(h_some) == 7
    for i, epoch in enumerate(h_some.epochs("evaluation_cost")):
        assert h_some.evaluation_cost[i] == h_all.evaluation_cost[epoch - 1]


def test_early_stopping_counts_measurements_when_evaluating_every_k_epochs():
    train, test = toy(40), toy(20, seed=2)
    stop = jreg.EarlyStopping(patience=2, monitor="evaluation_cost", min_delta=1e9)  # nothing beats the first
    _, hist = jreg.fit(
        FULL_OBJ,
        optax.sgd(0.5),
        PARAMS,
        train,
        epochs=30,
        batch_size=10,
        key=jax.random.key(0),
        evaluation=jreg.Evaluation(test, every=4),
        early_stopping=stop,
    )
    assert hist.epochs("evaluation_cost") == [4, 8, 12]  # best at 4, then two measurements without improvement
    assert hist.stopped["epochs"] == 12 and hist.stopped["best_epoch"] == 4


def test_monitor_and_metric_errors():
    kw = dict(epochs=1, batch_size=10, key=jax.random.key(0))
    with pytest.raises(jreg.JregError, match=r"monitor must name some of .*'evaluation_mse'"):
        jreg.fit(
            FULL_OBJ,
            optax.sgd(0.1),
            PARAMS,
            toy(),
            monitor=("evaluation_mae",),
            evaluation=jreg.Evaluation(toy(), metrics={"mse": M.mse}),
            **kw,
        )
    with pytest.raises(jreg.JregError, match="the targets are not classes"):
        x, _ = toy()
        regression = jreg.objective(MODEL.apply, jreg.losses.quadratic)
        jreg.fit(regression, optax.sgd(0.1), PARAMS, (x, jnp.zeros((40, 3))), monitor=("training_accuracy",), **kw)
    with pytest.raises(jreg.JregError, match=r"^train: metric 'bad' must return one value per example, shape \(40,\)"):
        jreg.fit(
            FULL_OBJ,
            optax.sgd(0.1),
            PARAMS,
            toy(),
            evaluation=jreg.Evaluation(metrics={"bad": lambda o, t: o}, batch_size=10),
            monitor=("training_bad",),
            **kw,
        )
    with pytest.raises(jreg.JregError, match="names must be identifiers"):
        jreg.Evaluation(metrics={"not a name": M.mse})
    with pytest.raises(jreg.JregError, match="'cost' is the objective's own series"):
        jreg.Evaluation(metrics={"cost": M.mse})
    with pytest.raises(jreg.JregTypeError, match="must be a mapping from names to metric functions"):
        jreg.Evaluation(metrics=[M.mse])
    with pytest.raises(jreg.JregError, match="reduction must be one of"):
        M.Metric(M.mse, reduction="median")
    with pytest.raises(jreg.JregError, match="Evaluation.batch_size must be a positive integer"):
        jreg.Evaluation(batch_size=0)
    with pytest.raises(jreg.JregError, match="Evaluation.every must be a positive integer"):
        jreg.Evaluation(every=-1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_builtin_metrics(variant):
    out = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 5.0, 0.0]])
    labels = jnp.array([0, 1, 1])
    np.testing.assert_array_equal(variant(M.accuracy)(out, labels), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(variant(M.accuracy)(out, jax.nn.one_hot(labels, 3)), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(variant(M.top_k_accuracy(2))(out, labels), [1.0, 1.0, 1.0])
    y = jnp.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    np.testing.assert_allclose(variant(M.mse)(out, y), np.mean((np.asarray(out) - np.asarray(y)) ** 2, axis=1))
    np.testing.assert_allclose(variant(M.mae)(out, y), np.mean(np.abs(np.asarray(out) - np.asarray(y)), axis=1))
    np.testing.assert_allclose(variant(M.mse)(out[:, :1], y[:, 0]), (np.asarray(out[:, 0]) - np.asarray(y[:, 0])) ** 2)
    with pytest.raises(jreg.JregError, match="at least 2 classes"):
        M.accuracy(out[:, :1], labels)
    with pytest.raises(jreg.JregError, match="k must be at most the number of classes 3"):
        M.top_k_accuracy(4)(out, labels)
