"""jreg.plotting: by default it draws what the histories have, for one model and for K (one line per member)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest

import jreg
from jreg import plotting

matplotlib.use("Agg")

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.01))


def toy(n, seed):
    x = jax.random.uniform(jax.random.key(seed), (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


TRAIN, TEST = toy(40, 0), toy(30, 1)
KW = dict(epochs=3, batch_size=8, key=jax.random.key(1), evaluation=TEST)


def png(path):
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    return data


def build(hp):
    return jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(0.5)


def test_a_default_fit_history_plots_with_no_series_named(tmp_path):
    history = jreg.fit(OBJ, optax.sgd(0.5), PARAMS, TRAIN, **KW).history
    assert "training_cost" not in history  # default monitoring: the running loss and the evaluation series
    assert plotting.default_series({"a": history}) == ("evaluation_accuracy", "evaluation_cost", "epoch_loss")
    png(plotting.plot_histories({"sgd": history, "json": history.to_dict()}, tmp_path / "fit.png", title="fit"))
    png(plotting.plot_histories(history, tmp_path / "alone.png"))  # one History, unlabelled
    with pytest.raises(jreg.JregError, match=r"'training_cost' is in none of the runs.*monitor=jreg.train.NETWORK2"):
        plotting.plot_histories({"sgd": history}, tmp_path / "no.png", series=("evaluation_accuracy", "training_cost"))
    assert not (tmp_path / "no.png").exists()


def test_a_default_sweep_history_plots_one_line_per_member(tmp_path):
    result = jreg.sweep(build, PARAMS, TRAIN, hparams={"lmbda": [0.0, 0.01, 0.1]}, **KW)
    history = result.history
    assert history.models == 3
    png(plotting.plot_histories({"λ sweep": history}, tmp_path / "sweep.png"))
    # the same figure from the K lists of to_dict(), and for a history with the training-set series
    assert plotting.render_histories({"λ": history.to_dict()}) == plotting.render_histories({"λ": history})
    full = jreg.sweep(build, PARAMS, TRAIN, hparams={"lmbda": [0.0, 0.1]}, monitor=jreg.train.NETWORK2, **KW)
    assert plotting.default_series({"a": full.history}) == (
        "evaluation_accuracy", "training_accuracy", "evaluation_cost", "training_cost",
    )  # fmt: skip
    png(plotting.plot_histories(full.history, tmp_path / "network2.png"))


def test_default_series_and_member_lines_without_training():
    runs = {"reg": {"evaluation_cost": [1.0, 0.5], "evaluation_mae": [0.4, 0.3], "epoch_loss": [2.0, 1.0]}}
    assert plotting.default_series(runs) == ("evaluation_cost", "evaluation_mae", "epoch_loss")
    assert plotting.default_series({"x": {"epoch_loss": [1.0], "training_data": [0.5]}}) == ("epoch_loss",)
    many = {"sweep": {"evaluation_accuracy": np.random.default_rng(0).uniform(size=(20, 4)).tolist()}}
    assert plotting.render_histories(many)[:4] == b"\x89PNG"  # 20 members: a note instead of a legend
    with pytest.raises(jreg.JregError, match="none of the runs has a series to draw"):
        plotting.render_histories({"x": {"training_data": [0.5]}})
    with pytest.raises(jreg.JregError, match="non-empty"):
        plotting.render_histories({})


def test_the_evaluation_panels_name_the_held_out_data_they_were_measured_on(tmp_path, monkeypatch):
    """``evaluation_data="validation"``: "Accuracy on the validation data" (experiment 4 plots a validation set);
    the default keeps "test", and the training-set panels and other series are not renamed."""
    assert plotting.histories.panel_title("evaluation_accuracy") == "Accuracy on the test data"
    assert plotting.histories.panel_title("evaluation_cost", "validation") == "Cost on the validation data"
    assert plotting.histories.panel_title("training_cost", "validation") == "Cost on the training data"
    assert plotting.histories.panel_title("my_metric", "validation") == "my metric"
    titles = []
    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, t, *a, **k: titles.append(t) or real(ax, t))
    history = {"evaluation_accuracy": [0.5, 0.6], "training_cost": [1.0, 0.5]}
    png(plotting.plot_histories({"a": history}, tmp_path / "v.png", evaluation_data="validation"))
    assert titles == ["Accuracy on the validation data", "Cost on the training data"]
    for bad in ("", "  ", None, 3):
        with pytest.raises(jreg.JregError, match="evaluation_data must name the held-out data"):
            plotting.plot_histories({"a": history}, tmp_path / "bad.png", evaluation_data=bad)
    assert not (tmp_path / "bad.png").exists()
