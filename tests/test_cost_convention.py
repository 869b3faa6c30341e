"""The monitored costs under network2.py's convention: ``λ/len(data)`` for the set being measured.

network2's ``total_cost(data, lmbda)`` is ``Σ_x C/len(data) + 0.5·(λ/len(data))·Σw²``:
the penalty is scaled by the size of the set it measures. jreg's objective holds
``l2(λ/n)`` with n the training set's size, so by default (``cost_convention="jreg"``)
every set's cost carries the training set's penalty. ``cost_convention="network2"``
rescales the penalty on the params by ``n_train / len(data)``. These tests compare
both with an independent NumPy transcription of network2's ``total_cost``
(``tests/helpers.py``), in float64.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

import jreg
from jreg.train.evaluate import evaluate

from .conftest import VARIANTS
from .helpers import network2_total_cost

SIZES = [6, 5, 3]
N_TRAIN, N_EVAL = 40, 25  # the evaluation set is a different size from the training set
LMBDA = 5.0  # large enough that the penalty is a sizeable part of the cost
LOSSES = {"cross_entropy": jreg.losses.cross_entropy, "quadratic": jreg.losses.quadratic}


def data(seed: int, n: int):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(kx, (n, SIZES[0])), jax.random.randint(ky, (n,), 0, SIZES[-1])


TRAIN, EVAL = data(0, N_TRAIN), data(1, N_EVAL)


@functools.cache
def model(cost: str) -> jreg.Model:
    """network2's network: sigmoid everywhere (cross-entropy takes logits and applies the sigmoid itself)."""
    return jreg.mlp(SIZES, init="large", output_activation=None if cost == "cross_entropy" else jax.nn.sigmoid)


def objective(cost: str, lmbda=LMBDA) -> jreg.Objective:
    return jreg.objective(model(cost).apply, LOSSES[cost], jreg.penalties.l2(lmbda / N_TRAIN))


def params(cost: str):
    return model(cost).init(jax.random.key(7))


def network2(params, batch, lmbda, cost) -> float:
    """network2.total_cost(batch, lmbda) on jreg's params (network2 stores w as (n_out, n_in))."""
    ws = [np.asarray(p["w"], np.float64).T for p in params]
    bs = [np.asarray(p["b"], np.float64) for p in params]
    x, y = batch
    return network2_total_cost(ws, bs, np.asarray(x, np.float64), np.eye(SIZES[-1])[np.asarray(y)], lmbda, cost)


def penalty(params, lmbda=LMBDA) -> float:
    """jreg's penalty l2(λ/n_train) = λ/(2 n_train) Σw², in float64."""
    return 0.5 * lmbda / N_TRAIN * sum(float(np.sum(np.asarray(p["w"], np.float64) ** 2)) for p in params)


def train(cost, convention=None, *, batch_size=None, epochs=2, **kw):
    ev = jreg.Evaluation(EVAL, batch_size=batch_size, **({} if convention is None else {"cost_convention": convention}))
    return jreg.fit(
        objective(cost), optax.sgd(0.5), params(cost), TRAIN, epochs=epochs, batch_size=10,
        key=jax.random.key(3), evaluation=ev, **{"monitor": jreg.train.NETWORK2, **kw},
    )  # fmt: skip


@pytest.mark.parametrize("cost", ["cross_entropy", "quadratic"])
@pytest.mark.parametrize("batch_size", [None, 7])  # one evaluation batch, and batches with a partial last one
def test_fit_monitors_network2s_total_cost_on_both_sets(cost, batch_size):
    trained, hist = train(cost, "network2", batch_size=batch_size)
    assert hist.cost_convention == "network2"
    for name, batch in (("training_cost", TRAIN), ("evaluation_cost", EVAL)):
        np.testing.assert_allclose(hist[name][-1], network2(trained, batch, LMBDA, cost), rtol=1e-5, err_msg=name)
    # the penalty is a sizeable part of the evaluation cost: the check can tell the conventions apart
    gap = penalty(trained) * (N_TRAIN / N_EVAL - 1)
    assert gap > 0.05 * hist.evaluation_cost[-1]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cost", ["cross_entropy", "quadratic"])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_total_cost_with_network2s_convention(variant, cost, batch_size):
    obj, p = objective(cost), params(cost)
    for batch in (TRAIN, EVAL):
        got = variant(
            lambda p, d: jreg.total_cost(obj, p, d, cost_convention="network2", n_train=N_TRAIN, batch_size=batch_size)
        )(p, batch)
        np.testing.assert_allclose(got, network2(p, batch, LMBDA, cost), rtol=1e-5)
    # jreg's convention: the same on the training set, the training set's penalty on the other
    jreg_eval = variant(lambda p, d: jreg.total_cost(obj, p, d, batch_size=batch_size))(p, EVAL)
    want = network2(p, EVAL, LMBDA, cost) + penalty(p) * (1 - N_TRAIN / N_EVAL)
    np.testing.assert_allclose(jreg_eval, want, rtol=1e-5)


def test_the_default_is_unchanged_and_training_is_not_affected():
    cost = "cross_entropy"
    trained, hist = train(cost)
    assert hist.cost_convention == "jreg"
    # the default evaluation cost: mean cost on the set plus the training set's penalty l2(λ/n_train)
    np.testing.assert_allclose(hist.evaluation_cost[-1], jreg.total_cost(objective(cost), trained, EVAL), rtol=1e-6)
    ref = network2(trained, EVAL, LMBDA, cost)
    np.testing.assert_allclose(hist.evaluation_cost[-1] - ref, penalty(trained) * (1 - N_TRAIN / N_EVAL), rtol=1e-4)
    assert abs(hist.evaluation_cost[-1] - ref) > 0.05 * ref  # which is not network2's figure
    # explicitly "jreg" is the default; "network2" changes the evaluation cost only
    same, explicit = train(cost, "jreg")
    other, n2 = train(cost, "network2")
    for a, b in ((trained, same), (trained, other)):
        assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert explicit.to_dict() == hist.to_dict()
    for name in hist.keys():
        if name != "evaluation_cost":
            assert n2[name] == hist[name], name  # bit for bit: training cost and parts, accuracies
    assert n2.evaluation_cost != hist.evaluation_cost


def test_sweep_agrees_with_fit():
    cost, lmbdas = "cross_entropy", [0.1, 5.0]
    ev = jreg.Evaluation(EVAL, cost_convention="network2")

    def build(hp):
        obj = jreg.objective(model(cost).apply, LOSSES[cost], jreg.penalties.l2(hp["lmbda"] / N_TRAIN))
        return obj, optax.sgd(0.5)

    kw = dict(epochs=2, batch_size=10, key=jax.random.key(3), evaluation=ev, monitor=jreg.train.NETWORK2)
    trained, hist = jreg.sweep(build, params(cost), TRAIN, hparams={"lmbda": lmbdas}, **kw)
    assert hist.cost_convention == "network2" and hist.run(1).cost_convention == "network2"
    for i, lmbda in enumerate(lmbdas):
        p = jax.tree.map(lambda a, i=i: a[i], trained)
        np.testing.assert_allclose(hist.evaluation_cost[i, -1], network2(p, EVAL, lmbda, cost), rtol=1e-5)
        np.testing.assert_allclose(hist.training_cost[i, -1], network2(p, TRAIN, lmbda, cost), rtol=1e-5)
        _, alone = jreg.fit(*build({"lmbda": lmbda}), params(cost), TRAIN, **kw)
        np.testing.assert_allclose(hist.evaluation_cost[i], alone.evaluation_cost, rtol=1e-5)


def test_bad_values_are_refused_before_any_work():
    for bad in ("nielsen", "Network2", None, 2):
        with pytest.raises(jreg.JregError, match="cost_convention"):
            jreg.Evaluation(EVAL, cost_convention=bad)
    called = []

    def plain(p, batch):  # a plain objective: its penalty cannot be told from its data cost
        return objective("cross_entropy")(p, batch)

    with pytest.raises(jreg.JregError, match="cost_convention"):
        jreg.fit(
            plain, optax.sgd(0.5), params("cross_entropy"), TRAIN, epochs=1, batch_size=10, key=jax.random.key(0),
            evaluation=jreg.Evaluation(EVAL, cost_convention="network2"), callback=lambda e, m: called.append(e),
        )  # fmt: skip
    with pytest.raises(jreg.JregError, match="cost_convention"):
        jreg.sweep(
            lambda hp: (plain, optax.sgd(hp["eta"])), params("cross_entropy"), TRAIN, hparams={"eta": [0.1]},
            epochs=1, batch_size=10, key=jax.random.key(0), evaluation=jreg.Evaluation(cost_convention="network2"),
            callback=lambda e, m: called.append(e),
        )  # fmt: skip
    assert not called
    obj, p = objective("cross_entropy"), params("cross_entropy")
    with pytest.raises(jreg.JregError, match="cost_convention"):
        jreg.total_cost(obj, p, EVAL, cost_convention="per_set")
    with pytest.raises(jreg.JregError, match="n_train"):
        jreg.total_cost(obj, p, EVAL, cost_convention="network2")
    with pytest.raises(jreg.JregError, match="n_train"):
        jreg.total_cost(obj, p, EVAL, cost_convention="network2", n_train=0)
    with pytest.raises(jreg.JregError, match="n_train"):
        jreg.total_cost(obj, p, EVAL, n_train=N_TRAIN)  # meaningless under jreg's convention
    with pytest.raises(jreg.JregError, match="cost_convention"):
        jreg.total_cost(plain, p, EVAL, cost_convention="network2", n_train=N_TRAIN)


def test_activity_and_input_penalties_are_per_example_means_and_not_rescaled():
    """network2 has none; jreg's are means over the set's examples already, so only the params' penalty moves."""
    m = jreg.mlp(SIZES)
    obj = jreg.objective(m.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.3), activity=jreg.penalties.l1(0.01))
    p = m.init(jax.random.key(0))
    default = evaluate(obj, p, None, EVAL, cost=True, parts=True)
    got = jreg.total_cost(obj, p, EVAL, cost_convention="network2", n_train=N_TRAIN)
    l2 = float(jreg.penalties.l2(0.3)(p))
    np.testing.assert_allclose(got, default["cost"] + l2 * (N_TRAIN / N_EVAL - 1), rtol=1e-5)
    assert float(default["activity_l1"]) > 0
