"""Per-member data in the sweep engine (jreg/train/members.py): each member's own data order, bootstrap
resamples with out-of-bag evaluation, index sets of unequal sizes; every sweep feature still working."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train.evaluate import evaluate, evaluate_view
from jreg.train.members import BOOTSTRAP_SALT, make_members, out_of_bag

from .conftest import VARIANTS
from .test_train import toy

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
TRAIN, TEST = toy(40, seed=0), toy(30, seed=1)
KEY = jax.random.key(7)
HP = {"lmbda": [0.0, 0.01, 0.3, 0.1], "eta": [0.5, 0.1, 1.0, 0.3]}


def build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(hp["eta"])


def member(i):
    return {k: v[i] for k, v in HP.items()}


def take(data, idx):
    return tuple(a[np.asarray(idx)] for a in data)


def assert_member(result, i, single, exact=False):
    check = np.testing.assert_array_equal if exact else _close
    for u, v in zip(jax.tree.leaves(single.params), jax.tree.leaves(result.params)):
        check(np.asarray(v[i]), np.asarray(u))
    for name in single.history.keys():
        _close(result.history[name][i], single.history[name], err_msg=name)


def _close(actual, desired, err_msg=""):
    np.testing.assert_allclose(actual, desired, rtol=2e-5, atol=2e-6, err_msg=err_msg)


# --------------------------------------------------------------------------- the key rules


def test_member_keys_are_the_split_of_the_key():
    keys = jreg.member_keys(KEY, 4)
    np.testing.assert_array_equal(jax.random.key_data(keys), jax.random.key_data(jax.random.split(KEY, 4)))
    raw = jreg.member_keys(jax.random.PRNGKey(3), 2)  # a raw uint32 key too
    np.testing.assert_array_equal(raw, jax.random.split(jax.random.PRNGKey(3), 2))


def test_bootstrap_indices_are_reproducible_from_the_member_key():
    key = jreg.member_keys(KEY, 3)[1]
    idx = jreg.bootstrap_indices(key, 50)
    want = jax.random.randint(jax.random.fold_in(key, BOOTSTRAP_SALT), (50,), 0, 50, dtype=jnp.int32)
    np.testing.assert_array_equal(idx, np.asarray(want))
    np.testing.assert_array_equal(idx, jreg.bootstrap_indices(key, 50))  # the same key, the same sample
    assert len(np.unique(idx)) < 50  # drawn with replacement
    assert not np.array_equal(idx, jreg.bootstrap_indices(jreg.member_keys(KEY, 3)[2], 50))
    oob = out_of_bag(idx, 50)
    assert set(oob.tolist()) == set(range(50)) - set(idx.tolist()) and np.all(np.diff(oob) > 0)


def test_members_are_grouped_by_training_set_size():
    sets = [np.arange(10), np.arange(11), np.arange(1, 11), np.arange(12)]
    made = make_members(
        key=KEY, models=4, n=12, batch_size=3, partial_batch="include", train_sets=sets, evaluation_sets=sets
    )
    assert [g.members.tolist() for g in made.groups] == [[0, 2], [1], [3]]
    assert [g.plan.n for g in made.groups] == [10, 11, 12] and made.sizes.tolist() == [10, 11, 10, 12]
    assert made.evaluation.index.shape == (4, 12) and made.evaluation.counts.tolist() == [10, 11, 10, 12]
    assert not made.single
    assert make_members(key=KEY, models=4, n=12, batch_size=3, partial_batch="include") is None  # the plain sweep


@pytest.mark.parametrize(
    ("sizes", "held_out", "splits"),
    [
        ([10, 10, 10, 10], [2, 2, 2, 2], 3),  # one training group, one view group: every array split
        ([10, 10, 10, 10], [2, 3, 2, 3], 1),  # one training group (split), two view groups (replicated)
        ([10, 11, 10, 11], [2, 1, 2, 1], 0),  # k-fold with n % k != 0: two groups of each, all replicated
        ([10, 11, 10, 12], [2, 1, 3, 4], 5),  # many sizes: 3 groups replicated, the 5 padded view arrays split
    ],
)
def test_the_index_sets_are_placed_split_only_when_they_hold_every_member_in_order(sizes, held_out, splits):
    """``Members.arrays(put)``: ``put(array, split)`` gets the arrays the default placement holds, ``split`` True
    exactly when the array's leading axis is every member in order (what a model mesh may split as the state)."""
    made = make_members(
        key=KEY, models=4, n=12, batch_size=3, partial_batch="include",
        train_sets=[np.arange(s) for s in sizes], evaluation_sets=[np.arange(12 - h, 12) for h in held_out],
    )  # fmt: skip
    seen = []
    placed = made.arrays(lambda a, split: seen.append((a.shape, split)) or jnp.asarray(a))
    plain = made.arrays()
    for u, v in zip(jax.tree.leaves(placed), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert len(seen) == len(jax.tree.leaves(plain))
    assert [split for _, split in seen] == [shape[0] == 4 for shape, _ in seen]  # groups hold members in order
    assert sum(split for _, split in seen) == splits


# --------------------------------------------------------------------------- members equal fit


@pytest.mark.parametrize("vectorize", ["vmap", "map"])
def test_a_per_member_order_equals_fit_with_the_member_key(vectorize):
    result = jreg.sweep(build, PARAMS, TRAIN, hparams=HP, epochs=3, batch_size=7, key=KEY, evaluation=TEST,
                        vectorize=vectorize, data_order="per_member")  # fmt: skip
    keys = jreg.member_keys(KEY, 4)
    shared = jreg.sweep(build, PARAMS, TRAIN, hparams=HP, epochs=3, batch_size=7, key=KEY, evaluation=TEST,
                        vectorize=vectorize)  # fmt: skip
    for i in range(4):
        single = jreg.fit(*build(member(i)), PARAMS, TRAIN, epochs=3, batch_size=7, key=keys[i], evaluation=TEST)
        # lax.map runs fit's own computation per member: bit for bit on a CPU
        assert_member(result, i, single, exact=vectorize == "map" and jax.default_backend() == "cpu")
    assert not np.allclose(result.history["epoch_loss"], shared.history["epoch_loss"])  # other orders


def test_a_bootstrap_member_equals_fit_on_its_sample_measured_out_of_bag():
    result = jreg.sweep(build, PARAMS, TRAIN, hparams=HP, epochs=2, batch_size=7, key=KEY, resample="bootstrap",
                        evaluation="out_of_bag", data_order="per_member")  # fmt: skip
    keys = jreg.member_keys(KEY, 4)
    sizes = set()
    for i in range(4):
        idx = jreg.bootstrap_indices(keys[i], 40)
        oob = out_of_bag(idx, 40)
        sizes.add(len(oob))
        single = jreg.fit(*build(member(i)), PARAMS, take(TRAIN, idx), epochs=2, batch_size=7, key=keys[i],
                          evaluation=take(TRAIN, oob))  # fmt: skip
        assert_member(result, i, single)
    assert len(sizes) > 1  # out-of-bag sets of unequal sizes, padded: the means are still exact
    assert sorted(result.history.keys()) == ["epoch_loss", "evaluation_accuracy", "evaluation_cost"]


def test_bootstrap_with_a_shared_order_and_the_network2_cost_on_each_members_sizes():
    """The shuffle from the run's key (data_order='shared'); the penalty of network2.py's cost scaled by the
    member's own sizes (its sample's n over its out-of-bag set's), and the training-set series on its sample."""
    evaluation = jreg.Evaluation("out_of_bag", cost_convention="network2")
    monitor = ("epoch_loss", "training_cost", "evaluation_cost")

    def build_n(hp):
        obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / 40))
        return obj, optax.sgd(hp["eta"])

    result = jreg.sweep(build_n, PARAMS, TRAIN, hparams=HP, epochs=2, batch_size=7, key=KEY, resample="bootstrap",
                        evaluation=evaluation, monitor=monitor, vectorize="map")  # fmt: skip
    for i in (0, 2):
        idx = jreg.bootstrap_indices(jreg.member_keys(KEY, 4)[i], 40)
        held = jreg.Evaluation(take(TRAIN, out_of_bag(idx, 40)), cost_convention="network2")
        single = jreg.fit(*build_n(member(i)), PARAMS, take(TRAIN, idx), epochs=2, batch_size=7, key=KEY,
                          evaluation=held, monitor=monitor)  # fmt: skip
        assert_member(result, i, single)


# --------------------------------------------------------------------------- the rest of the sweep


def test_a_diverged_member_is_located_in_its_own_data():
    hp = {"lmbda": [0.3, 0.3], "eta": [0.5, 5e6]}
    result = jreg.sweep(build, PARAMS, TRAIN, hparams=hp, epochs=2, batch_size=7, key=KEY, resample="bootstrap",
                        data_order="per_member")  # fmt: skip
    assert set(result.history.diverged) == {1}
    key1 = jreg.member_keys(KEY, 2)[1]
    sample = take(TRAIN, jreg.bootstrap_indices(key1, 40))
    with pytest.raises(jreg.DivergenceError) as caught:
        jreg.fit(*build({"lmbda": 0.3, "eta": 5e6}), PARAMS, sample, epochs=2, batch_size=7, key=key1)
    record = result.history.diverged[1]
    assert record["epoch"] == caught.value.epoch + 1 and record["step"] == caught.value.step + 1
    assert np.all(np.isfinite(result.history["epoch_loss"][0]))


def test_early_stopping_per_member_equals_fit():
    rule = jreg.EarlyStopping(patience=1, monitor="evaluation_cost", restore_best=True)
    hp = {"lmbda": [0.0, 0.3], "eta": [4.0, 0.5]}
    result = jreg.sweep(build, PARAMS, TRAIN, hparams=hp, epochs=8, batch_size=7, key=KEY, resample="bootstrap",
                        evaluation="out_of_bag", early_stopping=rule, vectorize="map")  # fmt: skip
    assert result.history.stopped, "the test needs a member that stops"
    for i in range(2):
        idx = jreg.bootstrap_indices(jreg.member_keys(KEY, 2)[i], 40)
        values = {k: v[i] for k, v in hp.items()}
        single = jreg.fit(*build(values), PARAMS, take(TRAIN, idx), epochs=8, batch_size=7, key=KEY,
                          evaluation=take(TRAIN, out_of_bag(idx, 40)), early_stopping=rule)  # fmt: skip
        assert (i in result.history.stopped) == (single.history.stopped is not None)
        if i in result.history.stopped:
            assert result.history.stopped[i]["epochs"] == single.history.stopped["epochs"]
        for u, v in zip(jax.tree.leaves(single.params), jax.tree.leaves(result.params)):
            _close(np.asarray(v[i]), np.asarray(u))


class Interrupted(Exception):
    pass


def interrupt_after(epoch):
    def callback(e, metrics):
        if e + 1 == epoch:
            raise Interrupted

    return callback


def test_a_bootstrap_sweep_resumes_bit_for_bit_and_refuses_other_data(tmp_path):
    kw = dict(hparams=HP, epochs=4, batch_size=7, key=KEY, resample="bootstrap", evaluation="out_of_bag",
              data_order="per_member")  # fmt: skip
    want = jreg.sweep(build, PARAMS, TRAIN, **kw)
    folder = tmp_path / "ck"
    with pytest.raises(Interrupted):
        jreg.sweep(build, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(folder), callback=interrupt_after(3), **kw)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    got = jreg.sweep(build, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(copy), resume=copy, **kw)
    for u, v in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    for name in want.history.keys():
        np.testing.assert_array_equal(got.history[name], want.history[name], err_msg=name)
    with pytest.raises(jreg.JregError, match=r"data_order='per_member'.*this sweep with data_order='shared'"):
        jreg.sweep(build, PARAMS, TRAIN, resume=folder, **{**kw, "data_order": "shared"})
    with pytest.raises(jreg.JregError, match=r"resample='bootstrap'.*this sweep with.*resample=None"):
        jreg.sweep(build, PARAMS, TRAIN, resume=folder, **{**kw, "resample": None, "evaluation": TEST})


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(data_order="mine"), r"data_order must be one of \('shared', 'per_member'\), got 'mine'"),
        (dict(resample="jackknife"), r"resample must be None or 'bootstrap', got 'jackknife'"),
        (dict(evaluation="out_of_bag"), r"evaluation='out_of_bag' .* needs resample='bootstrap'"),
        (dict(evaluation="oob", resample="bootstrap"), r"evaluation must be held-out data, a jreg.Evaluation or"),
        (dict(data_order="per_member", vectorize="wide"), r"vectorize='wide' needs mini-batches shared by the members"),
        (
            dict(resample="bootstrap", evaluation="out_of_bag", vectorize="wide"),
            r"data_order='shared', resample='bootstrap' gives each member its own",
        ),
        (
            dict(resample="bootstrap", evaluation=jreg.Evaluation("out_of_bag"), batch_size=41),
            r"batch_size must be at most",
        ),
        (  # the members split across devices (tests/test_member_sharding.py) run batched: "vmap" (or "auto")
            dict(
                data_order="per_member",
                vectorize="map",
                parallel=jreg.ModelParallel(jax.make_mesh((1,), ("models",)), "models"),
            ),
            r"vectorize='map' runs the models one after another, which cannot split the models across devices",
        ),
    ],
)
def test_bad_per_member_settings_are_refused_before_any_work(change, match):
    def never(*args):
        raise AssertionError("trained")

    kw = dict(hparams=HP, epochs=2, batch_size=7, key=KEY, callback=never)
    with pytest.raises(jreg.JregError, match=match):
        jreg.sweep(build, PARAMS, TRAIN, **{**kw, **change})


@pytest.mark.parametrize("kind", ["per_member", "bootstrap"])
def test_per_member_data_on_a_model_mesh_of_one_device_equals_no_mesh(kind):
    """The placement of the members' index sets and keys on a ModelParallel mesh, in this process (several devices:
    tests/test_member_sharding.py)."""
    mesh = jax.make_mesh((1,), ("model",))
    extra = dict(data_order="per_member", evaluation=TEST) if kind == "per_member" else dict(
        resample="bootstrap", evaluation="out_of_bag")  # fmt: skip
    kw = dict(hparams=HP, epochs=2, batch_size=8, key=KEY, vectorize="vmap", **extra)
    want = jreg.sweep(build, PARAMS, TRAIN, **kw)
    got = jreg.sweep(build, PARAMS, TRAIN, parallel=jreg.ModelParallel(mesh), **kw)
    for u, v in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        _close(np.asarray(u), np.asarray(v))
    for name in want.history.keys():
        _close(got.history[name], want.history[name], err_msg=name)


def test_a_stream_is_refused_with_per_member_data():
    batches = [take(TRAIN, np.arange(i, i + 10)) for i in range(0, 40, 10)]
    with pytest.raises(jreg.JregError, match="needs in-memory training data"):
        jreg.sweep(build, PARAMS, jreg.Stream(batches), hparams=HP, epochs=1, batch_size=10, key=KEY,
                   data_order="per_member")  # fmt: skip


# --------------------------------------------------------------------------- the padded evaluation


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_padded_weighted_evaluation_equals_the_evaluation_of_the_subset(variant):
    obj, _ = build(member(2))
    metrics = {"accuracy": jreg.metrics.accuracy}
    idx = np.asarray([3, 17, 5, 22, 9, 30, 0], np.int32)
    padded = np.concatenate([idx, np.zeros(5, np.int32)])
    weight = np.concatenate([np.ones(7, np.float32), np.zeros(5, np.float32)])

    def figures(p):
        return evaluate_view(obj, p, None, TRAIN, padded, weight, cost=True, parts=True, metrics=metrics,
                             batch_size=4)  # fmt: skip

    got = variant(figures)(PARAMS)
    want = evaluate(obj, PARAMS, None, take(TRAIN, idx), cost=True, parts=True, metrics=metrics)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_a_guard_and_an_ema_work_on_per_member_data():
    guard = jreg.Guard(max_loss=1e-3)  # every running loss is above it: each member stopped by the rule
    result = jreg.sweep(build, PARAMS, TRAIN, hparams=HP, epochs=2, batch_size=7, key=KEY, resample="bootstrap",
                        guard=guard)  # fmt: skip
    assert sorted(result.history.diverged) == [0, 1, 2, 3]
    assert all("Guard.max_loss" in v["quantity"] and v["step"] is None for v in result.history.diverged.values())
    ema = jreg.EMA(0.9, returned=True)
    swept = jreg.sweep(build, PARAMS, TRAIN, hparams=HP, epochs=2, batch_size=7, key=KEY, evaluation=TEST, ema=ema,
                       data_order="per_member")  # fmt: skip
    key2 = jreg.member_keys(KEY, 4)[2]
    single = jreg.fit(*build(member(2)), PARAMS, TRAIN, epochs=2, batch_size=7, key=key2, evaluation=TEST, ema=ema)
    assert_member(swept, 2, single)
