"""jreg.sweep with early stopping: each model stops, cuts its learning rate and keeps its best params as fit would."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

import jreg

from .test_train import toy

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
TRAIN, TEST = toy(40, seed=0), toy(30, seed=1)
KEY = jax.random.key(7)
# models that stop at different epochs (checked below, so the tests cannot pass on equal stops); under "patience"
# model 1 diverges (eta * c far beyond 2)
HP = {
    "patience": {"lmbda": [0.0, 0.01, 0.01], "eta": [0.5, 5e6, 0.05]},
    "schedule": {"lmbda": [0.0, 0.01, 0.3], "eta": [0.5, 0.05, 2.0]},
}
RULES = {
    "patience": jreg.EarlyStopping(patience=2, monitor="evaluation_cost", restore_best=True),
    # Nielsen's schedule (EarlyStopping.nielsen), stopping after 3 halvings rather than 7 to keep the test short
    "schedule": jreg.EarlyStopping(
        patience=1, monitor="evaluation_cost", lr_factor=0.5, min_lr_scale=1 / 8, restore_best=True
    ),
}
EPOCHS = 25


def build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(hp["eta"])


@functools.cache
def swept(rule: str):
    return jreg.sweep(
        build,
        PARAMS,
        TRAIN,
        hparams=HP[rule],
        epochs=EPOCHS,
        batch_size=7,
        key=KEY,
        evaluation=TEST,
        early_stopping=RULES[rule],
    )


@functools.cache
def single(rule: str, i: int):
    obj, opt = build({k: v[i] for k, v in HP[rule].items()})
    return jreg.fit(
        obj, opt, PARAMS, TRAIN, epochs=EPOCHS, batch_size=7, key=KEY, evaluation=TEST, early_stopping=RULES[rule]
    )


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_model_equals_fit_with_the_same_early_stopping(rule):
    params, hist = swept(rule)
    diverging = {1} if rule == "patience" else set()
    assert set(hist.diverged) == diverging and set(hist.stopped) == {0, 1, 2} - diverging  # told apart
    stops = set()
    for i in sorted(hist.stopped):
        p1, h1 = single(rule, i)
        got, want = hist.stopped[i], h1.stopped
        stops.add(want["epochs"])
        assert {k: v for k, v in got.items() if k != "best"} == {k: v for k, v in want.items() if k != "best"}
        assert got["best"] == pytest.approx(want["best"], rel=1e-5)
        mine = hist.run(i)
        assert mine.stopped == got and sorted(mine.keys()) == sorted(h1.keys())
        for name in h1.keys():  # the same series, the same epochs (learning-rate cuts included), until the stop
            assert mine.epochs(name) == h1.epochs(name), name
            np.testing.assert_allclose(mine[name], h1[name], rtol=2e-5, atol=2e-6, err_msg=name)
        for u, v in zip(jax.tree.leaves(p1), jax.tree.leaves(params)):  # restore_best: the best epoch's params
            np.testing.assert_allclose(v[i], u, rtol=2e-5, atol=2e-6)
        # after its stop a model's figures are NaN, while the others go on
        assert np.isnan(hist["evaluation_cost"][i, want["epochs"] :]).all()
    assert len(stops) == len(hist.stopped), stops  # the models stopped at different epochs
    assert len(hist) == max(stops) < EPOCHS  # the sweep ended when the last one was done
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
    for i in diverging:
        assert "diverged" in hist.run(i).stopped["reason"] and i not in hist.stopped
    if rule == "schedule":
        scales = hist["learning_rate_scale"]
        assert scales.shape == (3, max(stops)) and (scales[:, 0] == 1.0).all()
        assert np.nanmin(scales) == 0.25  # each model's own cuts (the last cut, to 1/8, stops it)


def test_a_series_that_is_not_measured_is_refused_before_any_work():
    built = []

    def counting(hp):
        built.append(1)
        return build(hp)

    with pytest.raises(jreg.JregError, match=r"early_stopping watches 'evaluation_accuracy', which this sweep does"):
        jreg.sweep(
            counting,
            PARAMS,
            TRAIN,
            hparams=HP["schedule"],
            epochs=2,
            batch_size=7,
            key=KEY,
            # no evaluation data: evaluation_accuracy is not measured
            early_stopping=jreg.EarlyStopping(patience=2, monitor="evaluation_accuracy"),
        )
    with pytest.raises(jreg.JregTypeError, match=r"early_stopping must be a jreg.EarlyStopping"):
        jreg.sweep(build, PARAMS, TRAIN, hparams=HP["schedule"], epochs=2, batch_size=7, key=KEY, early_stopping=3)


def test_a_schedule_too_fine_for_the_table_is_refused():
    from jreg.stopping import MAX_CUTS, schedule
    from jreg.train.early_stopping import SweepStopper

    rule = jreg.EarlyStopping(patience=1, lr_factor=1 - 1e-9, min_lr_scale=0.5, monitor="training_cost")
    with pytest.raises(jreg.JregError, match=f"more than {MAX_CUTS} learning-rate cuts"):
        SweepStopper(rule, 2, 1, False)
    scales, last = schedule(jreg.EarlyStopping.nielsen(3))
    assert scales.tolist() == [2.0**-c for c in range(8)] and last == 7
    table = SweepStopper(jreg.EarlyStopping.nielsen(3, monitor="training_cost"), 2, 1, False).table
    assert table.dtype == np.float32 and table.tolist() == [2.0**-c for c in range(8)]
