"""jreg.cross_validate: every (setting, fold) member equals an independent fit on its split, a hand-written
k-fold loop is reproduced exactly, stratified folds, the choices (best, one SE), refit, and bad input refused
before any work."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jreg
from jreg.train.cross_validate import FOLD_SALT, _folds
from jreg.train.cv_result import choices

from .test_train import toy

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
TRAIN = toy(43, seed=0)  # 43 = 4 * 10 + 3: folds of two sizes, members grouped by size
KEY = jax.random.key(3)
LMBDAS = [0.0, 0.01, 0.1]


def build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(0.5)


def take(data, idx):
    return tuple(a[np.asarray(idx)] for a in data)


def never(*args):
    raise AssertionError("an epoch ran: the error must come before any work")


def _close(actual, desired, err_msg=""):
    np.testing.assert_allclose(actual, desired, rtol=2e-5, atol=2e-6, err_msg=err_msg)


# --------------------------------------------------------------------------- members against fit


def test_each_member_equals_an_independent_fit_on_its_fold_split():
    cv = jreg.cross_validate(build, PARAMS, TRAIN, hparams={"lmbda": LMBDAS}, folds=4, epochs=2, batch_size=5,
                             key=KEY, vectorize="vmap")  # fmt: skip
    assert cv.models == 12 and cv.n_settings == 3 and cv.n_folds == 4
    assert sorted(len(f) for f in cv.folds) == [10, 11, 11, 11]
    np.testing.assert_array_equal(np.sort(np.concatenate(cv.folds)), np.arange(43))  # a partition
    for s, lmbda in enumerate(LMBDAS):
        for f in range(4):
            single = jreg.fit(*build({"lmbda": lmbda}), PARAMS, take(TRAIN, cv.train_indices(f)), epochs=2,
                              batch_size=5, key=KEY, evaluation=take(TRAIN, cv.folds[f]))  # fmt: skip
            m = cv.member(s, f)
            assert m == s * 4 + f and cv.hparams["lmbda"][m] == np.float32(lmbda)
            for u, v in zip(jax.tree.leaves(single.params), jax.tree.leaves(cv.params)):
                _close(np.asarray(v[m]), np.asarray(u))
            for name in single.history.keys():
                _close(cv.history[name][m], single.history[name], err_msg=name)


@pytest.mark.parametrize("vectorize", ["wide", "auto"])
def test_each_folds_settings_train_as_one_wide_sweep(vectorize):
    """The settings of one fold share its training set and order, so they share every mini-batch: with "wide" (what
    "auto" picks on a CPU for a dense model) each fold trains as one wide sweep of its settings; the members equal
    the vmapped ones up to the order of float sums, and "auto" is exactly "wide" on a CPU."""
    kw = dict(hparams={"lmbda": [*LMBDAS, 1.0]}, folds=4, epochs=2, batch_size=5, key=KEY)  # 4 settings a fold
    want = jreg.cross_validate(build, PARAMS, TRAIN, vectorize="vmap", **kw)
    got = jreg.cross_validate(build, PARAMS, TRAIN, vectorize=vectorize, **kw)
    for u, v in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params)):
        _close(np.asarray(v), np.asarray(u))
    for name in want.history.keys():
        _close(got.history[name], want.history[name], err_msg=name)
    _close(got.mean, want.mean)
    _close(got.se, want.se)
    if vectorize == "auto" and jax.default_backend() == "cpu":
        wide = jreg.cross_validate(build, PARAMS, TRAIN, vectorize="wide", **kw)
        for u, v in zip(jax.tree.leaves(wide.params), jax.tree.leaves(got.params)):
            np.testing.assert_array_equal(np.asarray(v), np.asarray(u))


def test_the_shared_sets_are_the_folds_settings():
    from jreg.train import members as per_member

    sets = [np.setdiff1d(np.arange(43), f) for f in _folds(4, 43, KEY, None, "auto")]
    train_sets = [sets[f] for _ in LMBDAS for f in range(4)]  # member s * 4 + f trains without fold f
    made = per_member.make_members(key=KEY, models=12, n=43, batch_size=5, partial_batch="include",
                                   data_order="shared", resample=None, train_sets=train_sets, evaluation_sets=None,
                                   out_of_bag_evaluation=False, kind="folds")  # fmt: skip
    shared = made.shared_sets()
    assert sorted(sorted(ids.tolist()) for _, ids, _ in shared) == [[f, 4 + f, 8 + f] for f in range(4)]
    assert made.wide()
    for g, ids, row in shared:
        np.testing.assert_array_equal(made.groups[g].index[row], sets[ids[0] % 4])


def test_explicit_folds_reproduce_a_hand_written_k_fold_loop_exactly():
    """vectorize='map' runs each member's own computation, its training and its measurements: params and running
    loss bit for bit on a CPU; the fold's figures (fit's arithmetic on each fold, whose gather XLA may fuse
    into the evaluation's reductions) to float rounding."""
    rng = np.random.default_rng(0)
    order = rng.permutation(43)
    folds = [order[:15], order[15:29], order[29:]]
    cv = jreg.cross_validate(build, PARAMS, TRAIN, hparams={"lmbda": LMBDAS[:2]}, folds=folds, epochs=3,
                             batch_size=6, key=KEY, vectorize="map")  # fmt: skip
    exact = np.testing.assert_array_equal if jax.default_backend() == "cpu" else _close
    for s, lmbda in enumerate(LMBDAS[:2]):  # the hand-written loop
        for f, held_out in enumerate(folds):
            rest = np.setdiff1d(np.arange(43), held_out)
            single = jreg.fit(*build({"lmbda": lmbda}), PARAMS, take(TRAIN, rest), epochs=3, batch_size=6, key=KEY,
                              evaluation=take(TRAIN, held_out))  # fmt: skip
            m = s * 3 + f
            for u, v in zip(jax.tree.leaves(single.params), jax.tree.leaves(cv.params)):
                exact(np.asarray(v[m]), np.asarray(u))
            assert sorted(cv.history.keys()) == sorted(single.history.keys())
            exact(cv.history["epoch_loss"][m], single.history["epoch_loss"])
            for name in ("evaluation_cost", "evaluation_accuracy"):
                np.testing.assert_allclose(cv.history[name][m], single.history[name], rtol=3e-7, err_msg=name)
    for f, held_out in enumerate(folds):
        np.testing.assert_array_equal(cv.folds[f], np.sort(held_out))


def test_mean_and_se_over_the_folds_and_the_choices():
    cv = jreg.cross_validate(build, PARAMS, TRAIN, hparams={"lmbda": LMBDAS}, folds=3, epochs=2, batch_size=5,
                             key=KEY, monitor="evaluation_accuracy")  # fmt: skip
    values = cv.history["evaluation_accuracy"].reshape(3, 3, -1)  # (settings, folds, measurements)
    np.testing.assert_allclose(cv.mean, values.mean(axis=1))
    np.testing.assert_allclose(cv.se, values.std(axis=1, ddof=1) / np.sqrt(3))
    np.testing.assert_allclose(cv.mean_at_stop, cv.mean[:, -1])
    np.testing.assert_allclose(cv.se_at_stop, cv.se[:, -1])
    assert cv.measured_epochs.tolist() == [1, 2] and cv.maximize and cv.regularize == "lmbda"
    best, one_se = choices(cv.mean_at_stop, cv.se_at_stop, np.asarray(LMBDAS), True)
    assert (cv.best_index, cv.one_se_index) == (best, one_se)
    assert cv.best == {"lmbda": pytest.approx(LMBDAS[best])} and cv.one_se == {"lmbda": pytest.approx(LMBDAS[one_se])}
    table = cv.table()
    assert "3-fold cross-validation of 3 settings (evaluation_accuracy)" in table and "max" in table and "1se" in table
    assert len(table.splitlines()) == 5
    assert repr(cv).startswith("CVResult(settings=3, folds=3, monitor='evaluation_accuracy', best={'lmbda': ")
    assert cv.settings["lmbda"].tolist() == pytest.approx(LMBDAS) and cv.refit is None
    assert isinstance(cv, jreg.Result) and cv.select(4).history.models is None


# --------------------------------------------------------------------------- the one-SE rule


def test_the_one_se_rule_on_a_constructed_mean_and_se():
    strength = np.asarray([0.0, 0.1, 1.0, 3.0, 10.0])
    mean = np.asarray([0.30, 0.25, 0.27, 0.29, 0.40])
    se = np.asarray([0.01, 0.03, 0.01, 0.01, 0.01])
    assert choices(mean, se, strength, maximize=False) == (1, 2)  # 0.27 <= 0.25 + 0.03 < 0.29
    assert choices(mean, se, strength, maximize=False, stronger="smaller") == (1, 1)  # 0.30 > 0.28: not 0
    se_wide = se.copy()
    se_wide[1] = 0.05
    assert choices(mean, se_wide, strength, maximize=False) == (1, 3)  # 0.29 <= 0.30
    assert choices(mean, se_wide, strength, maximize=False, stronger="smaller") == (1, 0)
    accuracy = 1 - mean
    assert choices(accuracy, se, strength, maximize=True) == (1, 2)
    nan = mean.copy()
    nan[1] = np.nan  # a setting with a diverged fold never counts
    assert choices(nan, se, strength, maximize=False) == (2, 2)  # 0.29 > 0.27 + 0.01
    assert choices(np.full(3, np.nan), se[:3], strength[:3], maximize=False) == (None, None)
    # ties of strength (a second hparam): the best mean among the strongest within one SE
    assert choices(np.asarray([0.2, 0.21, 0.205]), np.full(3, 0.02), np.asarray([0.0, 1.0, 1.0]), False) == (0, 2)


# --------------------------------------------------------------------------- folds


def test_int_folds_are_deterministic_shuffled_and_stratified():
    _, labels = toy(60, seed=4)
    folds = _folds(5, 60, KEY, np.asarray(labels), "auto")
    again = _folds(5, 60, KEY, np.asarray(labels), "auto")
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    other = _folds(5, 60, jax.random.key(4), np.asarray(labels), "auto")
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other))
    counts = np.bincount(np.asarray(labels))
    for fold in folds:
        per_class = np.bincount(np.asarray(labels)[fold], minlength=len(counts))
        assert np.all(np.abs(per_class - counts / 5) < 1)  # each class's share within one example
    assert sorted(len(f) for f in folds) == [12] * 5
    plain = _folds(5, 60, KEY, None, False)
    order = np.asarray(jax.random.permutation(jax.random.fold_in(KEY, FOLD_SALT), 60))
    assert np.array_equal(plain[0], np.sort(order[0::5]))  # the documented split


def test_one_hot_targets_are_stratified_too():
    x, labels = toy(30, seed=2)
    one_hot = jax.nn.one_hot(labels, 3)
    cv = jreg.cross_validate(build, PARAMS, (x, one_hot), hparams={"lmbda": [0.0, 0.1]}, folds=3, epochs=1,
                             batch_size=5, key=KEY)  # fmt: skip
    counts = np.bincount(np.asarray(labels), minlength=3)
    for fold in cv.folds:
        assert np.all(np.abs(np.bincount(np.asarray(labels)[fold], minlength=3) - counts / 3) < 1)


# --------------------------------------------------------------------------- refit, early stopping, resume


def test_refit_trains_the_chosen_setting_on_all_the_data():
    cv = jreg.cross_validate(build, PARAMS, TRAIN, hparams={"lmbda": LMBDAS}, folds=3, epochs=2, batch_size=5,
                             key=KEY, refit="best")  # fmt: skip
    assert type(cv.refit) is jreg.Result and cv.refit.models is None
    single = jreg.fit(*build(cv.best), PARAMS, TRAIN, epochs=2, batch_size=5, key=KEY)
    for u, v in zip(jax.tree.leaves(single.params), jax.tree.leaves(cv.refit.params)):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(u))
    assert "refit=Result(...)" in repr(cv)


def test_with_early_stopping_the_figures_at_stop_are_the_restored_epochs():
    rule = jreg.EarlyStopping(patience=1, monitor="evaluation_cost", restore_best=True)

    def build_fast(hp):
        obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(6.0)

    cv = jreg.cross_validate(build_fast, PARAMS, TRAIN, hparams={"lmbda": [0.0, 0.05]}, folds=3, epochs=8,
                             batch_size=5, key=KEY, early_stopping=rule, refit=True)  # fmt: skip
    best = cv.history.best("evaluation_cost")
    for s in range(2):
        for f in range(3):
            m = cv.member(s, f)
            assert cv.stop_epochs[s, f] == best.epoch[m]
    np.testing.assert_allclose(cv.mean_at_stop, best.value.reshape(2, 3).mean(axis=1))
    assert cv.refit.history.epochs("epoch_loss")[-1] == max(1, round(float(np.mean(cv.stop_epochs[cv.one_se_index]))))


class Interrupted(Exception):
    pass


def test_a_cross_validation_resumes_bit_for_bit_and_refuses_other_folds(tmp_path):
    kw = dict(hparams={"lmbda": LMBDAS[:2]}, folds=3, epochs=3, batch_size=5, key=KEY)
    want = jreg.cross_validate(build, PARAMS, TRAIN, **kw)

    def interrupt(e, metrics):
        if e == 1:
            raise Interrupted

    folder = tmp_path / "ck"
    with pytest.raises(Interrupted):
        jreg.cross_validate(build, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(folder), callback=interrupt, **kw)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    got = jreg.cross_validate(build, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(copy), resume=copy, **kw)
    for u, v in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    np.testing.assert_array_equal(got.mean, want.mean)
    other = [np.arange(0, 43, 3), np.arange(1, 43, 3), np.arange(2, 43, 3)]
    with pytest.raises(jreg.JregError, match="other index sets"):
        jreg.cross_validate(build, PARAMS, TRAIN, resume=folder, **{**kw, "folds": other})


# --------------------------------------------------------------------------- bad input, before any work


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(folds=1), r"folds must be at least 2 and at most the number of training examples \(43\), got 1"),
        (dict(folds=44), r"folds must be at least 2 and at most .*got 44"),
        (dict(folds=[np.arange(5)]), r"at least 2 held-out index arrays, got 1"),
        (dict(folds=[np.arange(5), np.arange(4, 9)]), r"folds\[1\] and folds\[0\] overlap"),
        (dict(folds=[np.arange(5), np.asarray([5, 43])]), r"folds\[1\] holds indices outside \[0, 43\)"),
        (dict(folds=[np.arange(5), np.asarray([], np.int32)]), r"folds\[1\] is empty"),
        (dict(folds=[np.arange(5), np.asarray([1.5])]), r"folds\[1\] must be a 1-D array of integer"),
        (dict(folds=[np.arange(5), np.asarray([6, 6])]), r"folds\[1\] names an example twice"),
        (dict(folds=[np.arange(43), np.arange(0)]), r"folds\[1\] is empty"),
        (dict(folds="5"), r"folds must be an int or a sequence"),
        (dict(monitor="evaluation_top5"), r"monitor='evaluation_top5' is not measured"),
        (dict(monitor="training_cost"), None),  # measurable: asked of the sweep (no error)
        (dict(monitor=["evaluation_cost"]), r"monitor must name one series"),
        (dict(regularize="eta"), r"regularize must name an hparams entry, one of \['lmbda'\]; got 'eta'"),
        (dict(stronger="bigger"), r"stronger must be one of"),
        (dict(refit="worst"), r"refit must be one of"),
        (dict(stratify="yes"), r"stratify must be one of"),
        (dict(evaluation=toy(10, seed=5)), r"each member measures its own held-out examples"),
        (dict(resample="bootstrap"), r"cannot be combined with folds"),
        (
            dict(vectorize="wide", hparams={"lmbda": [0.1]}),
            r"vectorize='wide' needs mini-batches shared by the members",
        ),
        (dict(batch_size=40), r"batch_size must be at most the smallest member's number of training examples"),
        (dict(epochz=3), r"did you mean 'epochs'"),
    ],
)
def test_bad_input_is_refused_before_any_work(change, match):
    kw = dict(hparams={"lmbda": LMBDAS}, folds=3, epochs=1, batch_size=5, key=KEY, callback=never)
    if match is None:
        kw["callback"] = None
        cv = jreg.cross_validate(build, PARAMS, TRAIN, **{**kw, **change})
        assert "training_cost" in cv.history.keys() and cv.mean.shape == (3, 1)
        return
    with pytest.raises((jreg.JregError, jreg.JregTypeError), match=match):
        jreg.cross_validate(build, PARAMS, TRAIN, **{**kw, **change})


def test_a_class_missing_from_a_fold_when_stratifying_is_refused():
    x, y = toy(20, seed=0)
    y = np.asarray(y).copy()
    y[:] = 0
    y[[3, 7]] = 1  # two examples of class 1: three folds cannot all hold one
    y[[1, 2, 4, 5, 6]] = 2
    with pytest.raises(jreg.JregError, match=r"class 1 has only 2 examples, so some fold would hold none of it"):
        jreg.cross_validate(build, PARAMS, (x, y), hparams={"lmbda": LMBDAS}, folds=3, epochs=1, batch_size=2,
                            key=KEY, callback=never)  # fmt: skip
    folds = [np.arange(0, 10), np.arange(10, 20)]  # classes 1 and 2 all in the first fold
    with pytest.raises(jreg.JregError, match=r"folds\[1\] holds no example of class\(es\) \[1, 2\]"):
        jreg.cross_validate(build, PARAMS, (x, y), hparams={"lmbda": LMBDAS}, folds=folds, epochs=1, batch_size=2,
                            key=KEY, stratify=True, callback=never)  # fmt: skip
    with pytest.raises(jreg.JregError, match="stratify=True needs class targets"):
        jreg.cross_validate(build, PARAMS, (x, np.asarray(x[:, :3])), hparams={"lmbda": LMBDAS}, folds=3, epochs=1,
                            batch_size=2, key=KEY, stratify=True, callback=never)  # fmt: skip


def test_several_hparams_need_a_regularize_name():
    def build2(hp):
        return build(hp)[0], optax.sgd(hp["eta"])

    with pytest.raises(jreg.JregError, match=r"several entries \['eta', 'width'\] and no 'lmbda'"):
        jreg.cross_validate(build2, PARAMS, TRAIN, hparams={"eta": [0.1, 0.2], "width": [1.0, 2.0]}, folds=3,
                            epochs=1, batch_size=5, key=KEY, callback=never)  # fmt: skip


def test_refit_with_nothing_chosen_is_refused():
    def diverging(hp):
        obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(5e6)

    with pytest.raises(jreg.JregError, match=r"refit=True: no setting can be chosen"):
        jreg.cross_validate(diverging, PARAMS, TRAIN, hparams={"lmbda": [0.3, 0.5]}, folds=2, epochs=1, batch_size=5,
                            key=KEY, refit=True)  # fmt: skip


@given(
    st.lists(st.tuples(st.floats(0, 10), st.floats(0, 1), st.floats(0, 100)), min_size=1, max_size=8),
    st.booleans(),
    st.sampled_from(["larger", "smaller"]),
)
def test_the_one_se_choice_is_within_one_se_and_at_least_as_regularized(rows, maximize, stronger):
    mean, se, strength = (np.asarray(c) for c in zip(*rows))
    best, one_se = choices(mean, se, strength, maximize, stronger)
    assert mean[best] == (mean.max() if maximize else mean.min())
    gap = mean[best] - mean[one_se] if maximize else mean[one_se] - mean[best]
    assert gap <= se[best]
    assert strength[one_se] >= strength[best] if stronger == "larger" else strength[one_se] <= strength[best]
    within = (mean >= mean[best] - se[best]) if maximize else (mean <= mean[best] + se[best])
    assert strength[one_se] == (strength[within].max() if stronger == "larger" else strength[within].min())
