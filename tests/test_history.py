"""jreg.History: one class for one model's series (lists) and K models' ((K, measurements) arrays); SweepHistory,
jreg 0.2's K-model class, a deprecated name for one release."""

from __future__ import annotations

import pickle
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train.history import History, Records

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))


def toy(n, seed):
    x = jax.random.uniform(jax.random.key(seed), (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


TRAIN, TEST = toy(40, 0), toy(30, 1)


def one_model() -> History:
    history = History()
    for loss, acc in [(2.0, 0.3), (1.5, 0.5), (1.2, 0.4)]:
        history.append({"epoch_loss": loss, "evaluation_accuracy": acc})
    return history


def k_models() -> History:
    history = History(models=3)
    rows = {"epoch_loss": [[2.0, 1.0, 0.5], [3.0, 2.0, np.nan], [2.5, 2.4, 2.3]],
            "evaluation_accuracy": [[0.3, 0.6, 0.5], [0.2, 0.4, np.nan], [np.nan, np.nan, np.nan]]}  # fmt: skip
    for j, epoch in enumerate([1, 2, 3]):
        history.append({k: np.asarray(v)[:, j] for k, v in rows.items()}, epoch)
    history.stopped = {1: {"epochs": 2, "reason": "patience", "best_epoch": 2, "best": 0.4, "monitor": None}}
    history.diverged = {2: {"epoch": 1, "step": 3, "quantity": "loss"}}
    return history


def test_one_model_series_are_lists_and_k_models_are_arrays_of_one_class():
    one, k = one_model(), k_models()
    assert type(one) is type(k) is History and one.models is None and k.models == 3
    assert one["epoch_loss"] == [2.0, 1.5, 1.2] and isinstance(one.evaluation_accuracy, list)
    assert isinstance(k["epoch_loss"], np.ndarray) and k["epoch_loss"].shape == (3, 3)
    assert len(one) == len(k) == 3 and one.epochs("epoch_loss") == k.epochs("epoch_loss") == [1, 2, 3]
    assert one.stopped is None and one.diverged is None  # fit raises DivergenceError: no records
    assert isinstance(k.stopped, Records) and isinstance(k.diverged, Records)
    assert k.stopped[1]["epochs"] == 2 and k.stopped[0] is None and k.diverged[-1]["step"] == 3
    assert k.stopped.mask().tolist() == [False, True, False]
    assert one.history == one.to_dict() == {"epoch_loss": [2.0, 1.5, 1.2], "evaluation_accuracy": [0.3, 0.5, 0.4]}
    np.testing.assert_array_equal(np.asarray(k.history["epoch_loss"]), k["epoch_loss"])
    assert len(k.to_dict()["evaluation_accuracy"]) == 3  # K lists
    assert one.checkpoint_meta() == {"history": one.to_dict(), "history_epochs": one.epochs_dict()}
    assert k.checkpoint_meta() == {}  # a sweep checkpoint keeps its series as arrays
    assert History({"x": []}, models=2)["x"].shape == (2, 0)
    pickle.loads(pickle.dumps(one))  # one model's history pickles as before


def test_best_for_one_model_and_for_k():
    one, k = one_model(), k_models()
    best = one.best()
    assert best == (2, 0.5, "evaluation_accuracy", True, None)
    assert one.best("epoch_loss")[:2] == (3, 1.2)
    best = k.best()
    assert best.monitor == "evaluation_accuracy" and best.member == 0
    assert best.epoch.tolist() == [2, 2, 0] and best.value[:2].tolist() == [0.6, 0.4] and np.isnan(best.value[2])
    empty = History({"epoch_loss": [float("nan")]})
    assert empty.best().epoch is None and np.isnan(empty.best().value)
    with pytest.raises(jreg.JregError, match="was not measured"):
        k.best("training_cost")


def test_summary_repr_and_run():
    one, k = one_model(), k_models()
    assert one.summary().splitlines()[0].split() == ["series", "last", "best", "at", "epoch"]
    assert repr(one) == "History(epochs=3, series=['epoch_loss', 'evaluation_accuracy'])"
    assert repr(k) == "History(models=3, epochs=3, series=['epoch_loss', 'evaluation_accuracy'], stopped=1, diverged=1)"
    lines = k.summary({"lmbda": np.asarray([0.0, 0.1, 1.0])}).splitlines()
    assert len(lines) == 4 and "lmbda" in lines[0] and lines[2].endswith("stopped") and lines[3].endswith("diverged")
    with pytest.raises(jreg.JregError, match="holds one model"):
        one.summary({"lmbda": 0.1})
    member = k.run(1)
    assert member.models is None and member["epoch_loss"] == [3.0, 2.0] and member.stopped["epochs"] == 2
    assert k.run(-1).stopped["reason"].startswith("diverged in epoch 1") and len(k.run(2)) == 0
    with pytest.raises(IndexError):
        k.run(3)
    with pytest.raises(jreg.JregError, match="holds one model"):
        one.run(0)
    with pytest.raises(jreg.JregError, match="models must be"):
        History(models=-1)
    with pytest.raises(jreg.JregError, match="K models"):
        History(diverged={0: {}})


def test_sweep_history_is_a_deprecated_name_for_a_k_model_history():
    k = k_models()
    for where, get in [
        ("jreg.", lambda: jreg.SweepHistory),
        ("jreg.train.", lambda: jreg.train.SweepHistory),
        ("jreg.train.history.", lambda: jreg.train.history.SweepHistory),
    ]:
        with pytest.warns(DeprecationWarning, match="jreg.History") as caught:
            SweepHistory = get()
        assert str(caught[0].message).startswith(f"{where}SweepHistory is deprecated")
        assert caught[0].filename == __file__  # attributed to the line that used the name
        assert isinstance(k, SweepHistory) and not isinstance(one_model(), SweepHistory)
        assert issubclass(SweepHistory, History)
        made = SweepHistory(cost_convention="network2", size=4)
        assert type(made) is History and made.models == 4 and made.cost_convention == "network2"
        assert SweepHistory({"epoch_loss": [np.zeros(5)]}).models == 5  # no size: K read from the series
    with pytest.warns(DeprecationWarning, match="history.models"):
        assert k.size == 3
    assert "SweepHistory" not in jreg.__all__ and "SweepHistory" not in jreg.train.__all__


def test_the_front_ends_never_use_the_deprecated_name():
    def build(hp):
        return jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(0.5)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = jreg.sweep(build, PARAMS, TRAIN, hparams={"lmbda": [0.0, 0.01]}, epochs=2, batch_size=8,
                            key=jax.random.key(1), evaluation=TEST)  # fmt: skip
        history = result.history
        text = [history.summary(), result.summary(), repr(result), result.select(1).history.summary()]
        history.best(), history.run(0), history.to_dict()
    assert not [w for w in caught if "SweepHistory" in str(w.message) or ".size" in str(w.message)], text
    assert type(history) is History and history.models == result.models == 2
    assert history["evaluation_accuracy"].shape == (2, 2) and result.select(1).history.models is None
