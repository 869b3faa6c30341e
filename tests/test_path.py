"""jreg.regularization_path: sequential warm starts (weak to strong) equal fits chained by hand; the population is
their pipeline; no member copies a zeroed layer; the top is the build's penalty's λ_max."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

# the toy's members are near chance on its 30 test points: the path's warning about that is not what these test
pytestmark = pytest.mark.filterwarnings("ignore:every member of the path is useless:jreg.JregWarning")

MODEL = jreg.mlp([6, 8, 3])
DATA_OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)
PARAMS = MODEL.init(jax.random.key(0))


def toy(n, seed):
    kx, kp = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


TRAIN, TEST = toy(40, 0), toy(30, 1)


CALLS = {"build": 0}


def build(hp):  # proximal L1: exact zeros
    CALLS["build"] += 1
    return DATA_OBJ, optax.chain(optax.sgd(hp["eta"]), jreg.proximal(jreg.penalties.l1(hp["lmbda"]), hp["eta"]))


def close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-6)


def member(stacked, i):
    return jax.tree.map(lambda a: a[i], stacked)


def test_sequential_mode_equals_fits_warm_started_by_hand():
    key = jax.random.key(3)
    path = jreg.regularization_path(
        build, PARAMS, TRAIN, strengths=[0.003, 0.03], hparams={"eta": 0.5}, mode="sequential", epochs=2,
        batch_size=8, key=key, evaluation=TEST, monitor=("evaluation_accuracy", "training_cost"),
    )  # fmt: skip
    assert path.strengths.tolist() == pytest.approx([0.03, 0.003]) and path.mode == "sequential"
    params = PARAMS
    for i in reversed(range(2)):  # from the weakest strength (from PARAMS) to the strongest (from the weaker's)
        lam = path.strengths[i]
        params, hist = jreg.fit(
            *build({"lmbda": lam, "eta": 0.5}), params, TRAIN, epochs=2, batch_size=8,
            key=jax.random.fold_in(key, i), evaluation=TEST, monitor=("evaluation_accuracy", "training_cost"),
        )  # fmt: skip
        close(member(path.params, i), params)
        for name in hist.keys():
            np.testing.assert_allclose(path.history[name][i], hist[name], rtol=2e-5, atol=2e-6, err_msg=name)
            np.testing.assert_allclose(path.metrics[name][i], hist[name][-1], rtol=2e-5, atol=2e-6)


@jax.jit
def prox_gd_epoch(params, lam):
    """One full-batch proximal gradient step (an epoch at batch size 40), written out in JAX: the reference."""
    grads = jax.grad(lambda p: DATA_OBJ(p, TRAIN)[0])(params)
    stepped = jax.tree.map(lambda w, g: w - 0.5 * g, params, grads)
    return [{"w": jreg.penalties.soft_threshold(layer["w"], 0.5 * lam), "b": layer["b"]} for layer in stepped]


def test_population_mode_is_the_pipelined_warm_start_chain():
    """Full-batch steps (the data order cannot matter): member i = λ2 (the weakest) for E - (2-i)·M epochs, then
    M at each λ1..λi: from dense to sparse."""
    strengths, epochs, every = [0.05, 0.02, 0.005], 4, 1
    CALLS["build"] = 0
    path = jreg.regularization_path(
        build, PARAMS, TRAIN, strengths=strengths, hparams={"eta": 0.5}, epochs=epochs, warm_every=every,
        batch_size=40, key=jax.random.key(0), monitor=(),
    )  # fmt: skip
    assert path.mode == "population" and path.warm_every == 1 and len(path) == 3
    traced, CALLS["build"] = CALLS["build"], 0
    for i in range(3):
        chain = [strengths[2]] * (epochs - (2 - i) * every) + [
            lam for lam in strengths[i:2][::-1] for _ in range(every)
        ]
        params = PARAMS
        for lam in chain:
            params = prox_gd_epoch(params, lam)
        close(member(path.params, i), params)
    # without restarts (warm_every >= epochs) no member moves to another: every member trained at its own strength
    flat = jreg.regularization_path(
        build, PARAMS, TRAIN, strengths=strengths, hparams={"eta": 0.5}, epochs=2, warm_every=2, batch_size=40,
        key=jax.random.key(0), monitor=(),
    )  # fmt: skip
    for i, lam in enumerate(strengths):
        close(member(flat.params, i), prox_gd_epoch(prox_gd_epoch(PARAMS, lam), lam))
    # build is traced once per compilation: the 3 restarts cost one trace of the restart (its fresh optimizer
    # states), no more: nothing is recompiled per restart
    assert traced == CALLS["build"] + 1


def test_lambda_max_top_zeroes_everything_and_sparsity_falls_along_the_path():
    path = jreg.regularization_path(
        build, PARAMS, TRAIN, hparams={"eta": 0.5}, n_strengths=5, ratio=0.01, epochs=6, batch_size=8,
        key=jax.random.key(1), evaluation=TEST, selectors={"weights": None, "first": "0/w"},
        monitor=("evaluation_accuracy",),
    )  # fmt: skip
    top = float(jreg.lambda_max(DATA_OBJ, PARAMS, TRAIN))
    np.testing.assert_allclose(path.strengths, top * np.geomspace(1, 0.01, 5), rtol=1e-6)
    w = [member(path.params, 0)[k]["w"] for k in range(2)]
    assert all(bool(jnp.all(a == 0)) for a in w)
    assert path.zeros["weights"][0] == path.sizes["weights"] == 6 * 8 + 8 * 3 and path.units["weights"][0] == 0
    assert np.all(np.diff(path.zeros["weights"]) <= 0) and path.zeros["weights"][-1] < path.sizes["weights"]
    assert np.all(np.diff(path.units["first"]) >= 0) and path.unit_counts == {"weights": 11, "first": 8}
    last = member(path.params, 4)
    assert path.zeros["first"][4] == int(jnp.sum(last[0]["w"] == 0))
    assert path.units["first"][4] == int(jnp.sum(jnp.any(last[0]["w"] != 0, axis=0)))
    np.testing.assert_allclose(path.l1["first"][4], float(jnp.sum(jnp.abs(last[0]["w"]))), rtol=1e-5)
    np.testing.assert_allclose(path.l2["first"][4], float(jnp.linalg.norm(last[0]["w"])), rtol=1e-5)
    table = path.table().splitlines()
    assert len(table) == 6 and "weights Df" in table[0] and "evaluation_accuracy" in table[0]
    assert table[1].split()[1] == "0" and "0/11" in table[1]


def test_group_lasso_top_is_the_largest_unit_gradient():
    def group_build(hp):
        units = jreg.penalties.group_lasso(hp["c"], mask="0/w")
        return DATA_OBJ, optax.chain(optax.sgd(0.5), jreg.proximal(units, 0.5))

    path = jreg.regularization_path(
        group_build, PARAMS, TRAIN, strength="c", top="group_lasso", mask="0/w", n_strengths=2, epochs=20,
        batch_size=8, key=jax.random.key(1), selectors={"first": "0/w"}, monitor=(),
    )  # fmt: skip
    zeroed = [{"w": jnp.zeros_like(PARAMS[0]["w"]), "b": PARAMS[0]["b"]}, PARAMS[1]]
    g = jax.grad(lambda p: DATA_OBJ(p, TRAIN)[0])(zeroed)[0]["w"]
    np.testing.assert_allclose(path.strengths[0], float(jnp.max(jnp.linalg.norm(g, axis=0))), rtol=1e-5)
    assert path.units["first"][0] == 0 and path.units["first"][1] > 0


def test_a_top_from_a_stateful_objective_asks_for_a_number():
    def apply(params, x, *, state, train):
        return MODEL.apply(params, x), state

    stateful = jreg.objective(apply, jreg.losses.cross_entropy)
    with pytest.raises(jreg.JregError, match="give top= a number"):
        jreg.regularization_path(lambda hp: (stateful, optax.sgd(0.1)), PARAMS, TRAIN, model_state={"n": jnp.zeros(())},
                                 epochs=1, batch_size=8, key=jax.random.key(0))  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "both"}, "mode must be one of"),
        ({"ratio": 1.5}, "ratio must be a number in"),
        ({"hparams": {"eta": 0.5, "lmbda": 0.1}}, "must not hold 'lmbda'"),
        ({"warm_every": 0}, "warm_every"),
        ({"top": "l3"}, "top must be a number or one of"),
        ({"strengths": [0.1, float("nan")]}, "must be finite"),
        ({"groups": "blocks"}, "groups must be"),
        ({"selectors": {}}, "selectors must be a non-empty mapping"),
        ({"wam_every": 2}, "unexpected keyword"),
        ({"batch_size": 0}, "batch_size"),
        ({"hparams": {"eta": "fast"}}, "one finite number"),
        ({"hparams": {"eta": [0.1, 0.2]}}, "one finite number"),
        ({"top": "l1", "hparams": {"eta": 0.5}, "key": 3}, "key"),
        ({"hparams": None}, "give its other hyperparameters in hparams="),  # build needs eta: not a KeyError
        ({"strength": "c"}, "give its other hyperparameters in hparams="),  # build reads lmbda, not c
        ({"top": True}, "top must be a number"),
        ({"selectors": {"w": "9/w"}}, "select no leaf"),
        ({"mode": "sequential", "warm_every": 2}, "mode='sequential' has none"),
        ({"ema": object()}, "does not support ema="),
        ({"callback": print, "checkpoint": None}, "does not support callback=, checkpoint="),
        ({"folds": 1}, "folds must be at least 2"),
        ({"folds": 3, "mode": "sequential"}, "mode='population'"),
        ({"folds": [np.arange(5), np.arange(3, 9)]}, "overlap"),
        ({"folds": 3, "cv_monitor": ("evaluation_cost",)}, "cv_monitor must be the name of one series"),
        ({"folds": 3, "cv_monitor": "evaluation_kappa"}, "not measured"),
        ({"folds": 3, "stratify": "yes"}, "stratify must be one of"),
    ],
)
def test_bad_input_is_a_jreg_error(kwargs, match):
    kw = dict(hparams={"eta": 0.5}, epochs=1, batch_size=8, key=jax.random.key(0)) | kwargs
    with pytest.raises((jreg.JregError, jreg.JregTypeError), match=match):
        jreg.regularization_path(build, PARAMS, TRAIN, **kw)


def l2_build(hp):  # plain SGD on an L2 penalty: unstable once eta * lmbda > 2
    objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return objective, optax.sgd(hp["eta"])


def l2_path(build, strengths, mode="population", epochs=3):
    return jreg.regularization_path(
        build, PARAMS, TRAIN, strengths=strengths, hparams={"eta": 0.5}, epochs=epochs, mode=mode, batch_size=8,
        warm_every=1 if mode == "population" else None, key=jax.random.key(0), monitor=("training_cost",),
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["population", "sequential"])
def test_a_diverged_strength_is_recorded_as_a_sweep_records_it(mode):
    """λ = 1e6 (the strongest) diverges in its first epoch at the step fit's guard names; weaker members never
    take its state (the path runs weak to strong). In population mode each restart revives it with its weaker
    neighbour's state and it diverges again: its record is the latest, without "revived"."""
    path = l2_path(l2_build, [1e6, 0.1, 0.01], mode)
    cost = path.history["training_cost"]
    assert np.all(np.isnan(cost[0])) and np.all(np.isfinite(cost[1:]))
    assert list(path.history.diverged) == [0]
    record = path.history.diverged[0]
    if mode == "population":
        assert record["epoch"] == 3 and "revived" not in record and isinstance(record["step"], int)
        return
    with pytest.raises(jreg.DivergenceError) as alone:  # its own fit, from the weaker strength's final params
        jreg.fit(*l2_build({"lmbda": 1e6, "eta": 0.5}), member(path.params, 1), TRAIN, epochs=1, batch_size=8,
                 key=jax.random.fold_in(jax.random.key(0), 0))  # fmt: skip
    assert record == {"epoch": 1, "step": alone.value.step + 1, "quantity": alone.value.quantity}


def test_a_frozen_member_handed_up_the_path_is_recorded_as_frozen():
    """The weakest strength trains with a learning rate of 1e30 and diverges in epoch 1; it never restarts, and
    each restart then hands the frozen state to the next stronger member, recorded as frozen from the next epoch."""
    build = lambda hp: l2_build({"lmbda": hp["lmbda"], "eta": jnp.where(hp["lmbda"] < 1e-3, 1e30, 0.5)})  # noqa: E731
    path = l2_path(build, [0.1, 0.01, 1e-4])
    record = path.history.diverged
    assert record[2]["epoch"] == 1 and isinstance(record[2]["step"], int) and "revived" not in record[2]
    assert record[1] == {
        "epoch": 2, "step": None, "quantity": "the state it took after epoch 1 was a frozen (diverged) member's"
    }  # fmt: skip
    assert record[0] == {
        "epoch": 3, "step": None, "quantity": "the state it took after epoch 2 was a frozen (diverged) member's"
    }  # fmt: skip
    cost = path.history["training_cost"]
    assert np.all(np.isnan(cost[2])) and np.isfinite(cost[1, 0]) and np.all(np.isnan(cost[1, 1:]))
    assert np.all(np.isfinite(cost[0, :2])) and np.isnan(cost[0, 2])
    assert path.history.run(1).training_cost == [float(cost[1, 0])]  # cut before its frozen epochs, as in a sweep


def inverse_build(hp):  # the coefficient is 1 / hp: the "weaker" label 0.01 zeroes every weight at once
    return DATA_OBJ, optax.chain(optax.sgd(0.5), jreg.proximal(jreg.penalties.l1(1.0 / hp["lmbda"]), 0.5))


@pytest.mark.parametrize("mode", ["population", "sequential"])
def test_no_member_warm_starts_from_a_neighbour_with_a_zeroed_layer(mode):
    """Member 1 (coefficient 100) is all zero after one step: member 0 never takes its params. In population mode
    it keeps its own state, in sequential mode it starts from PARAMS: either way, 3 epochs from PARAMS."""
    path = jreg.regularization_path(
        inverse_build, PARAMS, TRAIN, strengths=[100.0, 0.01], epochs=3, batch_size=40, mode=mode,
        warm_every=1 if mode == "population" else None, key=jax.random.key(0), monitor=(),
    )  # fmt: skip
    assert all(bool(jnp.all(layer["w"] == 0)) for layer in member(path.params, 1))
    expected = PARAMS
    for _ in range(3):
        expected = prox_gd_epoch(expected, 0.01)
    close(member(path.params, 0), expected)


def l1_units(hp):
    return jreg.penalties.group_lasso(hp["c"])


def test_a_penalty_without_lambda_max_needs_top_before_any_training():
    CALLS["build"] = 0

    def counted(hp):
        CALLS["build"] += 1
        return l2_build(hp)

    with pytest.raises(jreg.JregError, match=r"top: hp\['lmbda'\] scales l2 term 'l2' in the objective.*give top="):
        jreg.regularization_path(counted, PARAMS, TRAIN, hparams={"eta": 0.5}, epochs=1, batch_size=8,
                                 key=jax.random.key(0))  # fmt: skip
    assert CALLS["build"] == 2  # built at strengths 1 and 2 to read it, never trained
    with pytest.raises(jreg.JregError, match="scales no jreg penalty"):
        jreg.regularization_path(lambda hp: (DATA_OBJ, optax.sgd(hp["lmbda"])), PARAMS, TRAIN, epochs=1,
                                 batch_size=8, key=jax.random.key(0))  # fmt: skip
    with pytest.raises(jreg.JregError, match="top='l1', but"):
        group = lambda hp: (DATA_OBJ, optax.chain(optax.sgd(0.5), jreg.proximal(l1_units(hp), 0.5)))  # noqa: E731
        jreg.regularization_path(group, PARAMS, TRAIN, strength="c", top="l1", epochs=1, batch_size=8,
                                 key=jax.random.key(0))  # fmt: skip
    path = jreg.regularization_path(l2_build, PARAMS, TRAIN, hparams={"eta": 0.5}, top=0.1, n_strengths=2, epochs=1,
                                    batch_size=8, key=jax.random.key(0), monitor=())  # fmt: skip
    np.testing.assert_allclose(path.strengths, [0.1, 1e-4])  # a given top works for L2  # the default ratio is 1e-3


def test_the_top_is_read_from_the_build_in_the_strength_s_units():
    top = float(jreg.lambda_max(DATA_OBJ, PARAMS, TRAIN))
    builds = {  # in jreg.proximal, scaled by 1/10; in the objective (a subgradient: no exact zeros, same λ_max)
        10 * top: lambda hp: (DATA_OBJ, optax.chain(optax.sgd(0.5), jreg.proximal(jreg.penalties.l1(hp["lmbda"] / 10), 0.5))),  # noqa: E501
        top: lambda hp: (jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l1(hp["lmbda"])), optax.sgd(0.5)),  # noqa: E501
    }  # fmt: skip
    for expected, b in builds.items():
        path = jreg.regularization_path(b, PARAMS, TRAIN, n_strengths=1, epochs=1, batch_size=8,
                                        key=jax.random.key(0), monitor=())  # fmt: skip
        np.testing.assert_allclose(path.strengths, [expected], rtol=1e-5)


def test_a_strength_in_the_objective_and_in_proximal_warns_once():
    def twice(hp):
        objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l1(hp["lmbda"]))
        return objective, build(hp)[1]

    with pytest.warns(jreg.JregWarning) as caught:
        jreg.regularization_path(twice, PARAMS, TRAIN, hparams={"eta": 0.5}, strengths=[0.01], epochs=1,
                                 batch_size=8, key=jax.random.key(0), monitor=())  # fmt: skip
    said = [str(w.message) for w in caught if "proximal" in str(w.message)]
    assert len(said) == 1 and "hp['lmbda'] is applied both in the objective and in jreg.proximal" in said[0]
    with pytest.warns(jreg.JregWarning, match="l1 term 'l1' on .*is applied by jreg.proximal too"):
        jreg.fit(*twice({"lmbda": 0.01, "eta": 0.5}), PARAMS, TRAIN, epochs=1, batch_size=8, key=jax.random.key(0))
    with warnings.catch_warnings():  # the penalty in one place: no warning
        warnings.simplefilter("error", jreg.JregWarning)
        jreg.fit(*build({"lmbda": 0.01, "eta": 0.5}), PARAMS, TRAIN, epochs=1, batch_size=8, key=jax.random.key(0))
        jreg.fit(*l2_build({"lmbda": 0.01, "eta": 0.5}), PARAMS, TRAIN, epochs=1, batch_size=8, key=jax.random.key(0))


def test_a_path_of_useless_members_warns():
    with pytest.warns(jreg.JregWarning, match="every member of the path is useless: .* 2 with a weight layer all zero"):
        jreg.regularization_path(build, PARAMS, TRAIN, hparams={"eta": 0.5}, strengths=[100.0, 50.0], epochs=1,
                                 batch_size=8, key=jax.random.key(0), monitor=())  # fmt: skip


def test_every_member_is_near_a_cold_fit_at_its_strength_on_embedded_mnist():
    """The issue's trial: an L1 path (proximal SGD, [784, 16, 10], 600 embedded MNIST images, 8 epochs, 6 strengths,
    the default top and ratio). Each member is within 3 points of a cold-started model at its strength (a sweep:
    fits from the init), the weakest within 3 points of the unregularized one, the strongest all zero."""
    (x, y), (xt, yt) = jreg.data.load_mnist_small()
    train, test = (x[:600], y[:600]), (xt[:2000], yt[:2000])
    model = jreg.mlp([784, 16, 10])
    params, objective = model.init(jax.random.key(0)), jreg.objective(model.apply, jreg.losses.cross_entropy)

    def l1_build(hp):
        return objective, optax.chain(optax.sgd(0.5), jreg.proximal(jreg.penalties.l1(hp["lmbda"]), 0.5))

    common = dict(epochs=8, batch_size=10, key=jax.random.key(1), evaluation=test, monitor=("evaluation_accuracy",))
    paths = {mode: jreg.regularization_path(l1_build, params, train, n_strengths=6, mode=mode, **common)
             for mode in ("population", "sequential")}  # fmt: skip
    strengths = paths["population"].strengths
    out = jreg.sweep(l1_build, params, train, hparams={"lmbda": [*strengths, 0.0]}, **common)
    cold = np.asarray((out[1] if isinstance(out, tuple) else out.history)["evaluation_accuracy"])[:, -1]
    assert cold[-2] >= cold[-1] - 0.03 and cold[-1] > 0.75  # the default ratio reaches the unregularized model
    for mode, path in paths.items():
        accuracy = path.metrics["evaluation_accuracy"]
        assert np.all(accuracy >= cold[:-1] - 0.03), (mode, accuracy, cold)
        assert path.zeros["weights"][0] == path.sizes["weights"]  # λ_max: every weight 0


STRENGTHS = [0.05, 0.01, 0.002]


def test_a_cross_validated_path_runs_the_path_on_each_fold_measured_on_the_fold():
    """``folds=``: member ``i * k + f`` of ``path.cv`` is the path on fold ``f``'s training examples, measured on
    the fold, as ``regularization_path`` on that split gives it (up to float reassociation); the mean, standard
    error and the two choices are glmnet's."""
    folds = [np.arange(0, 40, 3), np.arange(1, 40, 3), np.arange(2, 40, 3)]
    kw = dict(strengths=STRENGTHS, hparams={"eta": 0.5}, epochs=3, batch_size=8, warm_every=1, key=jax.random.key(0))
    path = jreg.regularization_path(build, PARAMS, TRAIN, folds=folds, **kw)
    cv = path.cv
    assert isinstance(cv, jreg.CVResult) and cv.n_folds == 3 and cv.n_settings == 3
    np.testing.assert_allclose(cv.settings["lmbda"], STRENGTHS, rtol=1e-6)
    costs = np.asarray(cv.history["evaluation_cost"])
    for f, held in enumerate(folds):
        rest = np.setdiff1d(np.arange(40), held)
        split = (TRAIN[0][rest], TRAIN[1][rest])
        alone = jreg.regularization_path(build, PARAMS, split, evaluation=(TRAIN[0][held], TRAIN[1][held]), **kw)
        close(member(cv.params, slice(f, None, 3)), alone.params)
        np.testing.assert_allclose(costs[f::3], np.asarray(alone.history["evaluation_cost"]), rtol=2e-5)
    last = costs[:, -1].reshape(3, 3)
    np.testing.assert_allclose(cv.mean_at_stop, last.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(cv.se_at_stop, last.std(axis=1, ddof=1) / np.sqrt(3), rtol=1e-6)
    best = int(np.argmin(cv.mean_at_stop))
    assert cv.best == {"lmbda": pytest.approx(STRENGTHS[best]), "eta": 0.5}  # the whole setting
    within = [i for i in range(3) if cv.mean_at_stop[i] <= cv.mean_at_stop[best] + cv.se_at_stop[best]]
    assert cv.one_se["lmbda"] == pytest.approx(STRENGTHS[min(within)])  # the strongest within one SE
    plain = jreg.regularization_path(build, PARAMS, TRAIN, **kw)
    close(path.params, plain.params)  # the path on all of train is the path without folds
    assert plain.cv is None and "lmbda" in cv.table()
