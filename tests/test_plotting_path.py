"""jreg.plotting.path (a regularization path or a cross-validation along its strength) and jreg.plotting.sweep (a
2-D grid's heat map): what the axes hold (the lines' data, the error bars, the marked strengths, the cells), the
PNG written, and the errors for what they cannot draw.

The cross-validation branch reads ``jreg.cross_validate``'s result by its attributes; :class:`CV` below is a
stand-in that carries exactly those."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg import plotting
from jreg.train.history import History

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))


def toy(n, seed):
    x = jax.random.uniform(jax.random.key(seed), (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


def png(path):
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG" and len(data) > 5_000
    return data


def by_gid(fig, gid):
    """Every artist of the figure with this gid (the twin axes of the "selected" panel included)."""
    found = [a for ax in fig.axes for a in (*ax.lines, *ax.patches, *ax.collections) if a.get_gid() == gid]
    return found


@dataclasses.dataclass
class CV:
    """The attributes of jreg.cross_validate's result that plotting.path reads."""

    settings: dict[str, np.ndarray]
    n_folds: int
    monitor: str
    maximize: bool
    mean: np.ndarray
    se: np.ndarray
    best_index: int
    one_se_index: int
    regularize: str = "lmbda"
    params: Any = None
    mean_at_stop: np.ndarray | None = None
    se_at_stop: np.ndarray | None = None
    hparams: dict[str, np.ndarray] | None = None
    measured_epochs: Any = None
    best: dict | None = None
    one_se: dict | None = None

    @property
    def n_settings(self) -> int:
        return len(self.settings[self.regularize])


LAMBDAS = np.asarray([1e-3, 1e-2, 1e-1, 1.0])
FOLDS = 3


def fold_params(lambdas, folds, fold_major=False):
    """Members' params scaled by setting and fold (setting-major, or fold-major when asked)."""
    order = [(s, f) for f in range(folds) for s in range(len(lambdas))] if fold_major else [
        (s, f) for s in range(len(lambdas)) for f in range(folds)
    ]  # fmt: skip
    params = jax.tree.map(lambda a: jnp.stack([a * (1 + 0.2 * f) / (1 + lambdas[s]) for s, f in order]), PARAMS)
    return params, np.asarray([s for s, _ in order])


def a_cv(**changes):
    mean = np.stack([[0.60, 0.50, 0.52, 0.70], [0.55, 0.45, 0.48, 0.69]], axis=1)  # (S, 2 measurements)
    se = np.stack([[0.02, 0.02, 0.03, 0.02], [0.02, 0.03, 0.04, 0.02]], axis=1)
    params, _ = fold_params(LAMBDAS, FOLDS)
    cv = CV({"lmbda": LAMBDAS}, FOLDS, "evaluation_cost", False, mean, se, best_index=1, one_se_index=2, params=params)
    return dataclasses.replace(cv, **changes)


def norms_of(params, setting_of, settings):
    """Per setting, each weight layer's sqrt(sum w^2) averaged over its members, computed here by hand."""
    layers = [np.asarray(params[i]["w"]) for i in range(2)]
    per_member = np.stack([np.sqrt(np.sum(w.reshape(len(w), -1) ** 2, axis=1)) for w in layers], axis=1)
    return np.stack([per_member[setting_of == s].mean(axis=0) for s in range(settings)])


# -- plotting.path on a cross-validation ------------------------------------------------------------------


def test_a_cv_draws_mean_and_se_bars_the_two_choices_and_the_one_se_threshold(tmp_path):
    cv = a_cv(mean_at_stop=np.asarray([0.58, 0.47, 0.49, 0.70]), se_at_stop=np.asarray([0.02, 0.03, 0.03, 0.02]))
    fig = plotting.path(cv, tmp_path / "cv.png")
    png(tmp_path / "cv.png")
    metric, norms = fig.axes[:2]
    assert len(fig.axes) == 2  # no selectors: the metric and the norms
    (bars,) = metric.containers  # the mean at each member's stopping epoch, the standard errors as bars
    line, _, (segments,) = bars.lines
    np.testing.assert_allclose(line.get_xdata(), LAMBDAS)
    np.testing.assert_allclose(line.get_ydata(), cv.mean_at_stop)
    low_high = np.asarray([[seg[0][1], seg[1][1]] for seg in segments.get_segments()])
    np.testing.assert_allclose(
        low_high, np.stack([cv.mean_at_stop - cv.se_at_stop, cv.mean_at_stop + cv.se_at_stop], 1)
    )
    (lmin,) = by_gid(fig, "chosen:λ_min")[:1]
    (l1se,) = by_gid(fig, "chosen:λ_1se")[:1]
    assert lmin.get_xdata()[0] == LAMBDAS[1] and l1se.get_xdata()[0] == LAMBDAS[2]
    assert lmin.get_label() == "λ_min = 0.01" and l1se.get_label() == "λ_1se = 0.1"
    assert len(by_gid(fig, "chosen:λ_min")) == 2  # on both panels
    (threshold,) = by_gid(fig, "one-se-threshold")
    assert threshold.get_ydata()[0] == pytest.approx(0.47 + 0.03)  # the best mean plus its standard error
    assert metric.get_xscale() == "log" and metric.get_xlim()[0] > metric.get_xlim()[1]  # strongest on the left
    assert "at each member's stopping epoch" in metric.get_title()
    # the norms panel: each weight layer's norm, the mean over the folds, the folds' range shaded
    expected = norms_of(cv.params, np.repeat(np.arange(4), FOLDS), 4)
    for j, name in enumerate(("0/w", "1/w")):
        (curve,) = by_gid(fig, f"norm:{name}")
        np.testing.assert_allclose(curve.get_ydata(), expected[:, j], rtol=1e-6)
    assert len(norms.collections) == 2


def test_a_cv_without_stopping_figures_uses_the_last_measurement_and_an_accuracy_in_percent():
    mean = np.asarray([[0.80, 0.90], [0.85, 0.93], [0.80, 0.91], [0.50, 0.60]])
    cv = a_cv(monitor="evaluation_accuracy", maximize=True, mean=mean, se=np.full((4, 2), 0.01), best_index=1,
              one_se_index=2, measured_epochs=np.asarray([5, 10]))  # fmt: skip
    fig = plotting.path(cv, panels=("metric",), decreasing=False)
    (ax,) = fig.axes
    line = ax.containers[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), 100 * mean[:, -1])
    (threshold,) = by_gid(fig, "one-se-threshold")
    assert threshold.get_ydata()[0] == pytest.approx(100 * (0.93 - 0.01))  # an accuracy: best minus one SE
    assert threshold.get_label() == "best mean − 1 SE"
    assert ax.get_xlim()[0] < ax.get_xlim()[1] and "(stronger →)" in ax.get_xlabel()
    assert "at epoch 10" in ax.get_title()
    assert plotting.path(cv, panels="metric", percent=False).axes[0].containers[0].lines[0].get_ydata()[1] == 0.93


def test_members_are_matched_to_settings_by_their_hparams():
    params, setting_of = fold_params(LAMBDAS, FOLDS, fold_major=True)  # members fold by fold, not setting-major
    cv = a_cv(params=params, hparams={"lmbda": LAMBDAS[setting_of], "fold": np.arange(12) // 4})
    fig = plotting.path(cv, panels=("norms",))
    (curve,) = by_gid(fig, "norm:0/w")
    np.testing.assert_allclose(curve.get_ydata(), norms_of(params, setting_of, 4)[:, 0], rtol=1e-6)
    # without hparams the members are read setting-major: the same params then give other norms
    plain = plotting.path(dataclasses.replace(cv, hparams=None), panels=("norms",))
    assert not np.allclose(by_gid(plain, "norm:0/w")[0].get_ydata(), curve.get_ydata())


def test_a_cv_with_selectors_draws_exact_zeros_and_units_left():
    params, _ = fold_params(LAMBDAS, FOLDS)
    w = params[0]["w"]
    w = w.at[9:, :, :2].set(0.0)  # the strongest setting's 3 folds: 2 of the 8 first-layer units dead
    w = w.at[9, 0, 2].set(0.0)  # and one more weight in its first fold
    params = [{**params[0], "w": w}, params[1]]
    fig = plotting.path(a_cv(params=params), selectors={"first": "0/w"})
    assert len(fig.axes) == 4  # metric, norms, selected and its twin axis (units)
    (zeros,) = by_gid(fig, "zeros:first")
    np.testing.assert_allclose(zeros.get_ydata(), [0, 0, 0, 100 * (12 + 1 / 3) / 48])
    (units,) = by_gid(fig, "units:first")
    np.testing.assert_allclose(units.get_ydata(), [8, 8, 8, 6])
    assert zeros.get_label() == "first: weights = 0 (of 48)" and units.get_label() == "first: units left (of 8)"
    # glmnet's top axis over the metric: the first selector's non-zero weights at each strength
    row = [t for t in fig.axes[0].texts if t.get_gid() == "nonzero"]
    assert [t.get_text() for t in row] == ["48", "48", "48", "36"]  # 48 - (12 + 1/3), rounded
    assert [t.get_position()[0] for t in row] == list(LAMBDAS)
    assert "non-zero weights of 'first' along the top" in fig.axes[0].get_title()
    rows = plotting.path(a_cv(params=params), panels=("selected",), selectors={"first": "0/w"}, groups="rows")
    np.testing.assert_allclose(by_gid(rows, "units:first")[0].get_ydata(), [6, 6, 6, 6])  # no input row all 0


def test_a_cv_over_a_grid_draws_one_curve_per_setting_of_the_others_and_where_slices_it():
    grid = jreg.grid(lmbda=[0.0, 0.01, 0.1, 1.0], eta=[0.1, 1.0])
    settings = {k: np.asarray(v) for k, v in grid.items()}
    mean = np.asarray([[0.5], [0.6], [0.4], [0.7], [0.45], [0.62], [0.55], [0.8]])
    params, _ = fold_params(settings["lmbda"], 2)
    cv = a_cv(settings=settings, n_folds=2, mean=mean, se=np.full((8, 1), 0.05), best_index=2, one_se_index=4,
              params=params)  # fmt: skip
    fig = plotting.path(cv, panels=("metric",))
    ax = fig.axes[0]
    assert [c.get_label() for c in ax.containers] == ["eta=0.1", "eta=1"]
    np.testing.assert_allclose(ax.containers[0].lines[0].get_ydata(), mean[[0, 2, 4, 6], 0])
    np.testing.assert_allclose(ax.containers[1].lines[0].get_ydata(), mean[[1, 3, 5, 7], 0])
    assert by_gid(fig, "chosen:λ_min")[0].get_label() == "λ_min = 0.01 (eta=0.1)"
    assert ax.get_xscale() == "symlog" and min(ax.get_xlim()) < 0 < 0.01 < 1 < max(ax.get_xlim())  # 0 at the edge
    with pytest.raises(
        jreg.JregError, match=r"also vary in \['eta'\]: pick one slice with where=, e\.g\. where=\{'eta'"
    ):
        plotting.path(cv, panels=("metric", "norms"))
    assert len(plotting.path(cv).axes) == 1  # by default: what it can draw without where=, the metric
    sliced = plotting.path(cv, where={"eta": 1.0})
    np.testing.assert_allclose(sliced.axes[0].containers[0].lines[0].get_xdata(), [0.0, 0.01, 0.1, 1.0])
    np.testing.assert_allclose(sliced.axes[0].containers[0].lines[0].get_ydata(), mean[[1, 3, 5, 7], 0])
    assert by_gid(sliced, "chosen:λ_min") == []  # the chosen settings have eta=0.1, not in this slice
    expected = norms_of(params, np.repeat(np.arange(8), 2), 8)[[1, 3, 5, 7], 0]
    np.testing.assert_allclose(by_gid(sliced, "norm:0/w")[0].get_ydata(), expected, rtol=1e-6)
    with pytest.raises(
        jreg.JregError, match=r"no setting has \{'eta': 0\.5\}; the values are \{'eta': \[0\.1, 1\.0\]\}"
    ):
        plotting.path(cv, where={"eta": 0.5})
    with pytest.raises(jreg.JregError, match=r"where names \['seed'\], not a hyperparameter .* those are \['eta'\]"):
        plotting.path(cv, where={"seed": 0})


def test_what_plotting_path_cannot_draw_is_a_clear_error(tmp_path):
    cv = a_cv()
    with pytest.raises(jreg.JregError, match=r"'selected' panel .* no selectors: pass selectors=\{'weights': None\}"):
        plotting.path(cv, tmp_path / "x.png", panels=("metric", "selected"))
    assert not (tmp_path / "x.png").exists()  # checked before drawing: nothing written
    with pytest.raises(jreg.JregError, match=r"panels \['weights'\] are not among \('metric', 'norms', 'selected'\)"):
        plotting.path(cv, panels=("metric", "weights"))
    with pytest.raises(jreg.JregError, match="lists a panel twice"):
        plotting.path(cv, panels=("metric", "metric"))
    with pytest.raises(
        jreg.JregError, match=r"holds the mean and standard error of its own monitor, 'evaluation_cost'"
    ):
        plotting.path(cv, monitor="evaluation_accuracy")
    with pytest.raises(jreg.JregError, match="'norms' panel reads the result's params .* draw panels=\\('metric',\\)"):
        plotting.path(a_cv(params=None), panels=("metric", "norms"))
    assert len(plotting.path(a_cv(params=None)).axes) == 1  # by default: the metric alone
    with pytest.raises(jreg.JregError, match="norm must be 'l2' or 'l1'"):
        plotting.path(cv, norm="l3")
    with pytest.raises(jreg.JregError, match=r"selectors\['bias'\] selects no leaf"):
        plotting.path(cv, selectors={"bias": "9/*"})
    with pytest.raises(jreg.JregError, match="cannot tell which of the 4 settings each of the 12"):
        plotting.path(a_cv(n_folds=2), panels=("norms",))
    assert len(plotting.path(a_cv(n_folds=2)).axes) == 1  # the metric needs no params
    with pytest.raises(jreg.JregError, match=r"the result's mean has 3 settings, its settings 4"):
        plotting.path(a_cv(mean=np.ones((3, 2))))
    with pytest.raises(jreg.JregTypeError, match=r"the result's settings\['lmbda'\] must hold numbers"):
        plotting.path(a_cv(settings={"lmbda": np.asarray(["weak", "strong", "x", "y"])}))
    with pytest.raises(jreg.JregError, match=r"regularize='eta' is not one of its settings \['lmbda'\]"):
        plotting.path(a_cv(regularize="eta"))
    with pytest.raises(jreg.JregTypeError, match="jreg.regularization_path or jreg.cross_validate returned, got dict"):
        plotting.path({"lmbda": [1.0]})
    sweep_result = jreg.Result(params=PARAMS, history=History(models=2), hparams={"lmbda": np.asarray([0.0, 1.0])})
    with pytest.raises(jreg.JregTypeError, match=r"got Result; for a sweep over a 2-D grid, draw its heat map"):
        plotting.path(sweep_result)
    with pytest.raises(jreg.JregTypeError, match="did you mean 'panels'"):
        plotting.path(cv, panel=("metric",))
    with pytest.raises(jreg.JregTypeError, match="file must be a path"):
        plotting.path(cv, 3)
    with pytest.raises(jreg.JregTypeError, match="panels must be a non-empty sequence"):
        plotting.path(cv, panels=())


# -- plotting.sweep: a 2-D grid's heat map ----------------------------------------------------------------


def a_sweep(hparams, accuracy):
    """A sweep's result with these members' per-epoch accuracies ((K, epochs)) and costs 1 - accuracy."""
    history = History(models=len(accuracy))
    for e in range(accuracy.shape[1]):
        history.append({"evaluation_accuracy": accuracy[:, e], "evaluation_cost": 1 - accuracy[:, e]}, e + 1)
    return jreg.Result(params=PARAMS, history=history, hparams={k: np.asarray(v) for k, v in hparams.items()})


#: plotting.sweep by another name: tests/conftest.py puts a test that names ``sweep`` in the slow tier (it would
#: train), and these draw made-up histories
heat_map = plotting.sweep
GRID = jreg.grid(lmbda=[0.0, 0.1, 1.0, 10.0], eta=[0.1, 0.5, 2.5])
ACCURACY = np.random.default_rng(0).uniform(0.5, 0.9, size=(12, 3))


def test_a_heat_map_holds_each_cells_best_value_and_marks_the_best_cell(tmp_path):
    accuracy = ACCURACY.copy()
    accuracy[5] = np.nan  # a member that diverged at once: a grey NaN cell
    result = a_sweep(GRID, accuracy)
    fig = heat_map(result, x="lmbda", y="eta", file=tmp_path / "grid.png")
    png(tmp_path / "grid.png")
    ax = fig.axes[0]
    best = result.history.best("evaluation_accuracy")
    cells = np.ma.getdata(ax.collections[0].get_array()).reshape(3, 4)  # rows: eta, columns: lmbda
    expected = 100 * best.value.reshape(4, 3).T  # grid order: lmbda slowest
    np.testing.assert_allclose(cells[np.isfinite(expected)], expected[np.isfinite(expected)])
    assert np.ma.getmaskarray(ax.collections[0].get_array()).reshape(3, 4)[2, 1]  # member 5: lmbda 0.1, eta 2.5
    texts = {t.get_text() for t in ax.texts}
    assert "NaN" in texts and f"{100 * np.nanmax(accuracy[0]):.1f}" in texts and len(ax.texts) == 12
    (frame,) = by_gid(fig, "best-cell")
    i, j = best.member // 3, best.member % 3
    lmbda, eta = GRID.axes["lmbda"][i], GRID.axes["eta"][j]
    assert frame.get_x() < lmbda < frame.get_x() + frame.get_width() or (lmbda == 0 and frame.get_x() < 0)
    assert frame.get_y() < eta < frame.get_y() + frame.get_height()
    assert f"best: lmbda = {lmbda:.3g}, eta = {eta:.3g}" in ax.get_title()
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "log"  # 0 among the lmbdas; eta spans 25x
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.1", "1", "10"]


def test_a_cost_heat_map_ranks_low_as_best_and_a_narrow_axis_stays_linear():
    hp = jreg.grid(lmbda=[1.0, 2.0, 4.0], eta=[0.1, 0.2])
    accuracy = ACCURACY[:6]
    fig = heat_map(a_sweep(hp, accuracy), x="eta", y="lmbda", monitor="evaluation_cost")
    ax = fig.axes[0]
    cost = np.min(1 - accuracy, axis=1)
    np.testing.assert_allclose(np.ma.getdata(ax.collections[0].get_array()).reshape(3, 2), cost.reshape(3, 2))
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"  # 2x and 4x spans
    assert ax.collections[0].cmap.name == "viridis_r"  # brighter is better: low cost bright
    assert f"{np.min(cost):.4g}" in ax.get_title()


def test_a_heat_map_does_not_depend_on_the_members_order():
    order = np.random.default_rng(2).permutation(12)
    shuffled = {k: np.asarray(v)[order] for k, v in GRID.items()}
    cells = [np.ma.getdata(heat_map(a_sweep(hp, acc)).axes[0].collections[0].get_array())
             for hp, acc in ((GRID, ACCURACY), (shuffled, ACCURACY[order]))]  # fmt: skip
    np.testing.assert_array_equal(cells[0], cells[1])


def test_a_large_grid_is_drawn_without_values_in_its_cells_and_with_every_kth_label():
    big = jreg.grid(lmbda=np.geomspace(1e-4, 10.0, 21), eta=np.geomspace(0.01, 10.0, 20))  # 420 cells
    fig = heat_map(a_sweep(big, np.random.default_rng(1).uniform(size=(420, 1))))
    ax = fig.axes[0]
    assert len(ax.texts) == 0 and np.ma.getdata(ax.collections[0].get_array()).size == 420
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "0.0001" and labels[1] == "" and labels[-1] == "10" and sum(map(bool, labels)) == 11
    assert tuple(fig.get_size_inches()) == (8.5, 6.6)  # 2.2 + 0.3 x 21 by 1.6 + 0.25 x 20 inches


def test_what_plotting_sweep_cannot_draw_is_a_clear_error(tmp_path):
    result = a_sweep(GRID, ACCURACY)
    single = jreg.Result(params=PARAMS, history=History())
    with pytest.raises(jreg.JregError, match="this result holds one model; the heat map draws a sweep over a 2-D"):
        heat_map(single)
    with pytest.raises(
        jreg.JregError, match=r"y='momentum' is not a hyperparameter of this sweep; it has \['eta', 'lmbda'\]"
    ):
        heat_map(result, y="momentum")
    with pytest.raises(jreg.JregError, match="x and y are both 'eta'"):
        heat_map(result, x="eta", y="eta")
    with pytest.raises(jreg.JregError, match="monitor='training_cost' was not measured"):
        heat_map(result, monitor="training_cost")
    seeds = jreg.grid(lmbda=[0.1, 1.0], eta=[0.5], seed=[0, 1])
    with pytest.raises(
        jreg.JregError, match=r"members 0 and 1 are both in the cell lmbda=0.1, eta=0.5 \(they differ in \['seed'\]\)"
    ):
        heat_map(a_sweep(seeds, ACCURACY[:4]), file=tmp_path / "no.png")
    assert not (tmp_path / "no.png").exists()
    zipped = {"lmbda": [0.1, 1.0, 10.0], "eta": [0.5, 1.0, 2.0]}  # three settings, not a 3 x 3 grid
    with pytest.raises(
        jreg.JregError, match=r"not a full 2-D grid over \(lmbda, eta\): 6 of the 9 cells have no member"
    ):
        heat_map(a_sweep(zipped, ACCURACY[:3]))
    with pytest.raises(jreg.JregTypeError, match="result must be what jreg.sweep returned, got dict"):
        heat_map({"lmbda": [1.0]})
    with pytest.raises(jreg.JregTypeError, match="did you mean 'monitor'"):
        heat_map(result, monitr="evaluation_cost")
    with pytest.raises(jreg.JregTypeError, match="file must be a path"):
        heat_map(result, file=["grid.png"])
    per_epoch = jreg.Result(params=PARAMS, history=result.history, hparams={k: np.stack([v, v], 1) for k, v in
                                                                            result.hparams.items()})  # fmt: skip
    with pytest.raises(jreg.JregError, match=r"hparams\['lmbda'\] holds 24 values for 12 members"):
        heat_map(per_epoch)
    with pytest.raises(jreg.JregTypeError, match=r"a cross-validation's result \(CV\); draw it .*jreg\.plotting\.path"):
        heat_map(a_cv())


# -- on real runs (these train: the slow tier) ------------------------------------------------------------


def test_a_regularization_path_plots_its_own_figures(tmp_path):
    train, test = toy(40, 0), toy(30, 1)
    objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)

    def build(hp):
        return objective, optax.chain(optax.sgd(0.5), jreg.proximal(jreg.penalties.l1(hp["lmbda"]), 0.5))

    with pytest.warns(jreg.JregWarning):  # a toy: every member near chance
        path = jreg.regularization_path(build, PARAMS, train, epochs=2, batch_size=8, key=jax.random.key(1),
                                        evaluation=test, n_strengths=4, selectors={"first": "0/w"},
                                        groups="rows")  # fmt: skip
    fig = plotting.path(path, tmp_path / "path.png")
    png(tmp_path / "path.png")
    (metric,) = by_gid(fig, "metric:")
    np.testing.assert_allclose(metric.get_xdata(), path.strengths[::-1])  # drawn in increasing strength
    np.testing.assert_allclose(metric.get_ydata(), 100 * path.metrics["evaluation_accuracy"][::-1])
    best = int(np.nanargmax(path.metrics["evaluation_accuracy"]))
    assert by_gid(fig, "chosen:best λ")[0].get_xdata()[0] == path.strengths[best]
    w = np.asarray(path.params[0]["w"], np.float64)
    np.testing.assert_allclose(by_gid(fig, "norm:0/w")[0].get_ydata(), np.sqrt((w**2).sum((1, 2)))[::-1], rtol=1e-6)
    zeros = by_gid(fig, "zeros:first")[0].get_ydata()
    np.testing.assert_allclose(zeros, 100 * path.zeros["first"][::-1] / path.sizes["first"])
    np.testing.assert_allclose(by_gid(fig, "units:first")[0].get_ydata(), path.units["first"][::-1])
    row = [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "nonzero"]
    assert row == [str(path.sizes["first"] - z) for z in path.zeros["first"][::-1]]
    # the same zeros and units recomputed from the params by selectors= (groups as the path counted them)
    again = plotting.path(path, panels=("selected",), selectors={"first": "0/w"}, groups="rows")
    np.testing.assert_allclose(by_gid(again, "zeros:first")[0].get_ydata(), zeros)
    np.testing.assert_allclose(by_gid(again, "units:first")[0].get_ydata(), path.units["first"][::-1])
    cost = plotting.path(path, panels=("metric",), monitor="evaluation_cost")
    np.testing.assert_allclose(by_gid(cost, "metric:")[0].get_ydata(), path.metrics["evaluation_cost"][::-1])
    with pytest.raises(jreg.JregError, match=r"monitor='training_cost' was not measured on this path"):
        plotting.path(path, monitor="training_cost")
    with pytest.raises(jreg.JregError, match="a path has one hyperparameter|not a hyperparameter of the settings"):
        plotting.path(path, where={"eta": 0.5})


def test_a_real_grid_sweep_plots_its_heat_map(tmp_path):
    def build(hp):
        obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(hp["eta"])

    hp = jreg.grid(lmbda=[0.0, 0.1], eta=[0.1, 1.0])
    result = jreg.sweep(build, PARAMS, toy(40, 0), hparams=hp, epochs=2, batch_size=8, key=jax.random.key(1),
                        evaluation=toy(30, 1))  # fmt: skip
    fig = heat_map(result, file=tmp_path / "grid.png")
    png(tmp_path / "grid.png")
    best = result.history.best()
    cells = np.ma.getdata(fig.axes[0].collections[0].get_array()).reshape(2, 2)
    np.testing.assert_allclose(cells, 100 * best.value.reshape(2, 2).T)


def test_a_real_cross_validation_and_a_cross_validated_path_plot_their_means_and_choices(tmp_path):
    """``jreg.cross_validate``'s result and ``regularization_path(..., folds=k).cv`` drawn as the stand-in is."""
    train = toy(40, 0)
    objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)

    def build(hp):
        return objective, optax.chain(optax.sgd(0.5), jreg.proximal(jreg.penalties.l1(hp["lmbda"]), 0.5))

    common = dict(epochs=2, batch_size=8, key=jax.random.key(1))
    cv = jreg.cross_validate(build, PARAMS, train, hparams={"lmbda": [0.1, 0.01, 0.001]}, folds=2, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jreg.JregWarning)  # a toy: every member near chance
        path = jreg.regularization_path(build, PARAMS, train, strengths=[0.1, 0.01, 0.001], folds=2, **common)
    for result in (cv, path.cv):
        fig = plotting.path(result, tmp_path / "cv.png")
        png(tmp_path / "cv.png")
        (bars,) = fig.axes[0].containers
        line = bars.lines[0]
        order = np.argsort(result.settings["lmbda"])
        np.testing.assert_allclose(line.get_xdata(), np.asarray(result.settings["lmbda"])[order], rtol=1e-6)
        np.testing.assert_allclose(line.get_ydata(), result.mean_at_stop[order], rtol=1e-6)
        assert by_gid(fig, "chosen:λ_min")[0].get_xdata()[0] == pytest.approx(result.best["lmbda"])
        assert by_gid(fig, "chosen:λ_1se")[0].get_xdata()[0] == pytest.approx(result.one_se["lmbda"])
