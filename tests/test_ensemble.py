"""jreg.ensemble: a K-model result as one model averaging its members' outputs (probabilities for a
classifier), against a hand-computed average; its accuracy and cost on held-out data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train.ensemble import output_kind

from .test_train import toy

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
TRAIN, TEST = toy(40, seed=0), toy(30, seed=1)
KEY = jax.random.key(7)


def softmax_build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.log_likelihood, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(0.5)


@pytest.fixture(scope="module")
def bagged():
    return jreg.sweep(softmax_build, PARAMS, TRAIN, hparams={"lmbda": [0.0, 0.01, 0.1]}, epochs=2, batch_size=8,
                      key=KEY, resample="bootstrap", data_order="per_member")  # fmt: skip


def test_the_ensemble_averages_the_members_probabilities(bagged):
    ens = jreg.ensemble(bagged, softmax_build)
    x, y = TEST
    logits = [MODEL.apply(jax.tree.map(lambda a, i=i: a[i], bagged.params), x) for i in range(3)]
    want = np.mean([np.asarray(jax.nn.softmax(z, axis=-1)) for z in logits], axis=0)
    np.testing.assert_allclose(ens(x), want, rtol=1e-6, atol=1e-7)
    figures = ens.evaluate(TEST)
    assert figures["accuracy"] == pytest.approx(float(np.mean(np.argmax(want, axis=1) == np.asarray(y))))
    nll = -np.mean(np.log(want[np.arange(len(want)), np.asarray(y)]))
    assert figures["cost"] == pytest.approx(float(nll), rel=1e-5)
    assert ens.evaluate(TEST, batch_size=7) == pytest.approx(figures, rel=1e-6)  # in batches: the same
    assert repr(ens) == "Ensemble(members=3, output='softmax')"


def test_members_can_be_chosen(bagged):
    x, _ = TEST
    two = jreg.ensemble(bagged, softmax_build, members=[0, 2])
    mask = jreg.ensemble(bagged, softmax_build, members=np.asarray([True, False, True]))
    np.testing.assert_array_equal(two(x), mask(x))
    one = jreg.ensemble(bagged, softmax_build, members=[1])
    member = jax.tree.map(lambda a: a[1], bagged.params)
    np.testing.assert_allclose(one(x), jax.nn.softmax(MODEL.apply(member, x), axis=-1), rtol=1e-6)


def test_sigmoid_and_raw_outputs():
    def sigmoid_build(hp):
        obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(0.5)

    result = jreg.sweep(sigmoid_build, PARAMS, TRAIN, hparams={"lmbda": [0.0, 0.1]}, epochs=1, batch_size=8, key=KEY)
    x, y = TEST
    z = [MODEL.apply(jax.tree.map(lambda a, i=i: a[i], result.params), x) for i in range(2)]
    ens = jreg.ensemble(result, sigmoid_build)
    np.testing.assert_allclose(ens(x), np.mean([jax.nn.sigmoid(v) for v in z], axis=0), rtol=1e-6)
    raw = jreg.ensemble(result, sigmoid_build, output="raw")
    np.testing.assert_allclose(raw(x), np.mean(z, axis=0), rtol=1e-6)
    assert set(ens.evaluate(TEST)) == {"accuracy", "cost"}

    def quadratic_build(hp):
        obj = jreg.objective(MODEL.apply, jreg.losses.quadratic, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(0.1)

    assert output_kind(quadratic_build({"lmbda": 0.0})[0]) == "raw"
    weighted = jreg.objective(MODEL.apply, jreg.losses.weighted(jreg.losses.softmax_cross_entropy))
    smoothed = jreg.objective(MODEL.apply, jreg.losses.label_smoothing(jreg.losses.log_likelihood, 0.1))
    assert output_kind(weighted) == "softmax" and output_kind(smoothed) == "softmax"


def test_bad_input_is_refused(bagged):
    single = bagged.select(0)
    with pytest.raises(jreg.JregTypeError, match="must be a K-model jreg.Result"):
        jreg.ensemble(single, softmax_build)
    with pytest.raises(jreg.JregTypeError, match="pass the sweep's build"):
        jreg.ensemble(bagged)
    with pytest.raises(jreg.JregError, match="output must be one of"):
        jreg.ensemble(bagged, softmax_build, output="probabilities")
    with pytest.raises(jreg.JregError, match=r"members must be indices in \[0, 3\)"):
        jreg.ensemble(bagged, softmax_build, members=[3])
    with pytest.raises(jreg.JregError, match="no member to average"):
        jreg.ensemble(bagged, softmax_build, members=[])
    with pytest.raises(jreg.JregTypeError, match="objective must be one from jreg.objective"):
        jreg.ensemble(bagged, objective=lambda p, b: (jnp.zeros(()), {}))
