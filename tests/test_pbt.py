"""jreg.pbt: exploit copies the chosen members' whole state, explore stays in bounds, one key one run, no recompiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train.pbt import _exploit_explore

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
CALLS = {"build": 0}


def toy(n, seed):
    kx, _ = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


TRAIN, TEST = toy(40, 0), toy(30, 1)
HP = {"lmbda": [0.0, 0.01, 0.1, 1.0], "eta": [0.05, 0.3, 1.0, 3.0]}
EXPLORE = {"lmbda": (0.8, 1.25), "eta": (0.5, 2.0)}
BOUNDS = {"eta": (0.1, 2.5)}


def build(hp):
    CALLS["build"] += 1
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(hp["eta"], momentum=0.9)  # momentum: an optimizer state to copy


def run(epochs=4, key=3, **kw):
    kw = dict(hparams=HP, explore=EXPLORE, bounds=BOUNDS, every=1, epochs=epochs, batch_size=8,
              key=jax.random.key(key), evaluation=TEST, monitor=("evaluation_accuracy",)) | kw  # fmt: skip
    return jreg.pbt(build, PARAMS, TRAIN, **kw)


def test_exploit_copies_exactly_the_chosen_members_and_explore_stays_in_its_factors_and_bounds():
    step = _exploit_explore(4, 2, {k: jnp.asarray(v, jnp.float32) for k, v in EXPLORE.items()}, BOUNDS, True)
    stacked = jnp.arange(4.0)[:, None] * jnp.ones((4, 3))
    state = jreg.TrainState(stacked, (stacked + 10, {"m": stacked * 2}), stacked - 1, jnp.arange(4, dtype=jnp.int32))
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in HP.items()}
    score = jnp.asarray([0.9, 0.1, jnp.nan, 0.5])  # member 2 diverged: worst; then member 1
    alive = jnp.asarray([True, True, False, True])
    new, new_alive, new_hp, losers, donors = step(state, alive, hp, score, jax.random.key(0))
    assert sorted(np.asarray(losers).tolist()) == [1, 2] and set(np.asarray(donors).tolist()) <= {0, 3}
    sources = np.arange(4)
    sources[np.asarray(losers)] = np.asarray(donors)
    for got, before in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
        np.testing.assert_array_equal(got, np.asarray(before)[sources])  # params, opt state, model state, step
    assert np.asarray(new_alive).tolist() == [True] * 4
    for name, factors in EXPLORE.items():
        old, got = np.asarray(hp[name])[sources], np.asarray(new_hp[name])
        for i in range(4):
            if i in (1, 2):
                allowed = [np.float32(old[i] * np.float32(f)) for f in factors]
                if name in BOUNDS:
                    allowed = [np.clip(a, *BOUNDS[name]) for a in allowed]
                assert any(np.isclose(got[i], a, rtol=1e-6, atol=0) for a in allowed), (name, i, got[i], allowed)
            else:
                assert got[i] == old[i]


def test_pbt_lineage_and_hparams_agree_the_same_key_gives_the_same_run_and_exploits_recompile_nothing():
    monitor = ("evaluation_accuracy", "training_cost")
    CALLS["build"] = 0
    first = run(monitor=monitor)
    calls = CALLS["build"]  # build is traced once per compilation: as many calls for 3 exploits as for 6
    again = run(epochs=7, monitor=monitor)
    assert CALLS["build"] == 2 * calls
    assert len(first.lineage) == 3 * 1  # n = floor(0.25 * 4) = 1, 3 exploits
    # the same key, the same run: the longer run's first 4 epochs are the shorter run, bit for bit
    assert len(again.lineage) == 6 and again.lineage[:3] == first.lineage
    for k in HP:
        np.testing.assert_array_equal(again.hparams[k][:, :4], first.hparams[k])
        assert first.hparams[k].shape == (4, 4)
    for k in monitor:
        np.testing.assert_array_equal(again.history[k][:, :4], first.history[k])
    for entry in first.lineage:  # after epoch e, member i trains with j's values, perturbed, from epoch e + 1
        e, i, j = entry["epoch"], entry["member"], entry["from"]
        donor = first.hparams["eta"][j, e - 1]
        allowed = np.clip(donor * np.asarray(EXPLORE["eta"], np.float32), *BOUNDS["eta"])
        assert np.min(np.abs(first.hparams["eta"][i, e] - allowed)) <= 1e-6 * donor
        assert np.all(first.hparams["eta"] >= 0.05)
        # the loser was the worst by evaluation accuracy after epoch e
        acc = first.history["evaluation_accuracy"][:, e - 1]
        assert acc[i] == np.min(acc) and acc[j] == np.max(acc)
    assert first.rank_by == "evaluation_accuracy" and first.maximize
    best = first.history["evaluation_accuracy"][:, -1]
    assert best[first.best] == np.max(best)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 0.0}, "fraction must be a number in"),
        ({"fraction": 0.75}, "fraction must be a number in"),
        ({"fraction": True}, "fraction must be a number in"),
        ({"every": 0}, "every"),
        ({"explore": {"mu": (0.8, 1.25)}}, "names \\['mu'\\], which are not hyperparameters"),
        ({"explore": {"eta": (0.8, -1.0)}}, "finite factors > 0"),
        ({"explore": {}}, "explore must be a non-empty mapping"),
        ({"bounds": {"eta": (2.0, 1.0)}}, "low <= high"),
        ({"bounds": {"lmbda": (0.0, 1.0), "mu": (0, 1)}}, "bounds"),
        ({"rank_by": "training_cost"}, "not a monitored series"),
        ({"evaluation": jreg.Evaluation(TEST, every=2)}, "not measured after epoch"),
        ({"explre": {}}, "unexpected keyword"),
        ({"hparams": {"lmbda": [0.1], "eta": [0.5]}}, "at least 2 members"),
        ({"maximize": "no"}, "maximize must be True, False or None"),
        ({"ema": object(), "callback": print}, "does not support callback=, ema="),
    ],
)
def test_bad_input_is_a_jreg_error(kwargs, match):
    with pytest.raises((jreg.JregError, jreg.JregTypeError), match=match):
        run(epochs=3, **kwargs)


def test_an_exploited_member_continues_as_an_exact_copy_of_its_donor():
    """Explore by a factor of 1: the loser takes the donor's params, optimizer state (momentum), step and
    hyperparameters, and sees the same data, so from then on it is the donor."""
    result = run(epochs=2, explore={"eta": (1.0,)}, bounds=None)
    assert len(result.lineage) == 1 and result.lineage[0]["epoch"] == 1
    i, j = result.lineage[0]["member"], result.lineage[0]["from"]
    assert i != j and result.history["evaluation_accuracy"][i, 0] < result.history["evaluation_accuracy"][j, 0]
    for leaf in jax.tree.leaves(result.params):
        np.testing.assert_allclose(leaf[i], leaf[j], rtol=1e-6, atol=1e-7)
    other = next(m for m in range(4) if m not in (i, j))  # the check can fail: the other members differ
    assert not np.allclose(result.params[0]["w"][other], result.params[0]["w"][j], rtol=1e-3)
    for k in HP:
        assert result.hparams[k][i, 1] == result.hparams[k][j, 1] == result.hparams[k][j, 0] != result.hparams[k][i, 0]


def test_a_diverged_member_is_recorded_as_a_sweep_records_it_and_its_replacement_revives_it():
    """Member 2's learning rate of 1e30 makes its loss non-finite in epoch 1: it is frozen, recorded with the
    step fit's guard names for the same training, ranks last, and the exploit after epoch 1 replaces it."""
    eta = [0.05, 0.3, 1e30, 3.0]
    result = run(epochs=2, hparams={"lmbda": HP["lmbda"], "eta": eta}, explore={"eta": (1.0,)}, bounds=None)
    with pytest.raises(jreg.DivergenceError) as alone:  # the same member trained alone, on the same data order
        jreg.fit(*build({"lmbda": HP["lmbda"][2], "eta": eta[2]}), PARAMS, TRAIN, epochs=1, batch_size=8,
                 key=jax.random.key(3))  # fmt: skip
    assert alone.value.epoch == 0 and alone.value.step is not None
    record = result.history.diverged
    assert list(record) == [2]
    assert record[2] == {"epoch": 1, "step": alone.value.step + 1, "quantity": alone.value.quantity, "revived": 1}
    assert result.lineage == [{"epoch": 1, "member": 2, "from": result.lineage[0]["from"]}]
    accuracy = result.history["evaluation_accuracy"]
    assert (
        np.isnan(accuracy[2, 0]) and np.all(np.isfinite(accuracy[2, 1:])) and np.all(np.isfinite(accuracy[[0, 1, 3]]))
    )
    assert len(result.history.run(2).evaluation_accuracy) == 2  # revived: the slot's whole row, NaN while frozen
    assert np.all(np.isfinite(jax.tree.leaves(result.params)[0]))


def test_a_stream_is_refused_before_any_work():
    def stream(epoch):
        yield TRAIN

    with pytest.raises(jreg.JregTypeError, match="not a stream of batches"):
        jreg.pbt(build, PARAMS, stream, hparams=HP, explore=EXPLORE, every=1, epochs=2, batch_size=8,
                 key=jax.random.key(0))  # fmt: skip
    with pytest.raises(jreg.JregTypeError, match="not a stream of batches"):
        jreg.regularization_path(build, PARAMS, stream, strengths=[0.1, 0.01], hparams={"eta": 0.5}, epochs=1,
                                 batch_size=8, key=jax.random.key(0))  # fmt: skip
