"""jreg.Guard: an opt-in divergence rule for a loss that explodes while staying finite (issue 28, item 7)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train.divergence import Limits

from .test_train import toy

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)
TRAIN = toy(40, seed=0)
KEY = jax.random.key(7)
# plain SGD on cross-entropy with these learning rates: the running loss explodes but stays finite
# (eta 1000: about 879 in epoch 1, 994 and 1310 after; eta 100: 25.2, then 34.8; eta 0.5 trains)
BLOWN, SHAKY, GOOD = 1000.0, 100.0, 0.5


def run(eta, epochs=3, **kw):
    return jreg.fit(OBJ, optax.sgd(eta), PARAMS, TRAIN, epochs=epochs, batch_size=7, key=KEY, **kw)


def build(hp):
    return OBJ, optax.sgd(hp["eta"])


def same(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_a_finite_blow_up_passes_by_default_and_is_divergence_with_max_loss():
    """The issue's case: the cost explodes and stays finite; only an opt-in rule flags it."""
    history = run(BLOWN).history
    assert np.all(np.isfinite(history.epoch_loss)) and min(history.epoch_loss) > 100
    with pytest.raises(jreg.DivergenceError) as info:
        run(BLOWN, guard=jreg.Guard(max_loss=100))
    error = info.value
    assert error.rule == "max_loss" and error.epoch == 0 and error.step is None
    assert "Guard.max_loss = 100" in error.quantity and "879.0" in error.quantity
    assert "after epoch 1 of 3" in str(error) and error.quantity in str(error)
    same(error.params, PARAMS)  # the last good state: the epoch's input
    assert len(error.history) == 0


def test_the_ratio_rule_compares_with_the_first_epoch_and_keeps_the_last_good_epoch():
    with pytest.raises(jreg.DivergenceError) as info:
        run(SHAKY, epochs=5, guard=jreg.Guard(max_ratio=1.3))
    error = info.value
    assert error.rule == "max_ratio" and error.epoch == 1 and error.step is None
    assert "Guard.max_ratio = 1.3 times the first epoch's 25.24" in error.quantity
    one = run(SHAKY, epochs=1)  # the state the error keeps is epoch 1's
    same(error.params, one.params)
    same(error.opt_state, one.opt_state)
    assert error.history.epoch_loss == one.history.epoch_loss
    # with both rules the lower limit decides, and the message names the rule that was broken
    with pytest.raises(jreg.DivergenceError) as info:
        run(SHAKY, epochs=5, guard=jreg.Guard(max_loss=40, max_ratio=1.3))
    assert info.value.rule == "max_ratio" and info.value.epoch == 1
    with pytest.raises(jreg.DivergenceError) as info:
        run(SHAKY, epochs=5, guard=jreg.Guard(max_loss=20, max_ratio=1.3))
    assert info.value.rule == "max_loss" and info.value.epoch == 0


def test_a_guard_that_never_fires_changes_nothing_and_guard_none_is_the_default():
    plain = run(GOOD)
    for guard in (None, jreg.Guard(), jreg.Guard(max_loss=1e30, max_ratio=1e6)):
        guarded = run(GOOD, guard=guard)
        same(guarded.params, plain.params)
        same(guarded.opt_state, plain.opt_state)
        assert guarded.history.to_dict() == plain.history.to_dict()


def test_the_limits_are_traced_a_new_value_compiles_nothing():
    """The ratio rule's limit is infinite in epoch 1 and finite after: the epoch is traced as often in 1 epoch
    as in 4, and as often for any value."""
    traced = []

    def loss(outputs, targets):
        if isinstance(outputs, jax.core.Tracer):
            traced.append(1)
        return jreg.losses.cross_entropy(outputs, targets)

    obj = jreg.objective(MODEL.apply, loss)
    counts = []
    for epochs, guard in ((1, jreg.Guard(max_ratio=100.0)), (4, jreg.Guard(max_ratio=100.0)), (4, jreg.Guard(50.0))):
        traced.clear()
        jreg.fit(obj, optax.sgd(GOOD), PARAMS, TRAIN, epochs=epochs, batch_size=7, key=KEY, guard=guard)
        counts.append(len(traced))
    assert counts[0] == counts[1] == counts[2]


@pytest.mark.parametrize("vectorize", ["vmap", "map", "wide"])
def test_a_sweep_freezes_and_flags_the_blown_member_and_the_others_equal_their_own_fits(vectorize):
    hp = {"eta": [GOOD, BLOWN, 0.1, SHAKY]}
    guard = jreg.Guard(max_loss=100, max_ratio=1.3)
    swept = jreg.sweep(
        build, PARAMS, TRAIN, hparams=hp, epochs=3, batch_size=7, key=KEY, guard=guard, vectorize=vectorize
    )
    history = swept.history
    assert set(history.diverged) == {1, 3}
    for i, eta in ((1, BLOWN), (3, SHAKY)):
        with pytest.raises(jreg.DivergenceError) as info:
            run(eta, guard=guard)
        record = history.diverged[i]
        assert record["epoch"] == info.value.epoch + 1 and record["step"] is None
        assert f"Guard.{info.value.rule}" in record["quantity"]
        assert np.isnan(history.epoch_loss[i, record["epoch"] - 1 :]).all()
        for leaf, last in zip(jax.tree.leaves(swept.params), jax.tree.leaves(info.value.params)):
            np.testing.assert_allclose(leaf[i], last, rtol=2e-5, atol=2e-6)  # frozen at the last good epoch
    assert history.diverged[1]["epoch"] == 1 and "Guard.max_loss = 100" in history.diverged[1]["quantity"]
    assert history.diverged[3]["epoch"] == 2 and "Guard.max_ratio = 1.3" in history.diverged[3]["quantity"]
    for i in (0, 2):  # the others trained as if alone, under the same guard
        single = run(hp["eta"][i], guard=guard)
        for u, v in zip(jax.tree.leaves(single.params), jax.tree.leaves(swept.params)):
            np.testing.assert_allclose(v[i], u, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(history.epoch_loss[i], single.history.epoch_loss, rtol=2e-5)


def test_the_ratio_reference_survives_a_resume(tmp_path):
    """The first epoch's loss lives in the history, which a Result and a checkpoint carry."""
    guard = jreg.Guard(max_ratio=1.3)
    with pytest.raises(jreg.DivergenceError) as straight:
        run(SHAKY, epochs=5, guard=guard)
    first = run(SHAKY, epochs=1, guard=guard, checkpoint=jreg.Checkpointing(tmp_path / "ck"))
    with pytest.raises(jreg.DivergenceError) as from_result:
        run(SHAKY, epochs=5, guard=guard, resume=first)
    with pytest.raises(jreg.DivergenceError) as from_folder:
        run(SHAKY, epochs=5, guard=guard, resume=tmp_path / "ck", checkpoint=jreg.Checkpointing(tmp_path / "ck"))
    for resumed in (from_result.value, from_folder.value):
        assert (resumed.epoch, resumed.rule, resumed.quantity) == (1, "max_ratio", straight.value.quantity)
        same(resumed.params, straight.value.params)


def test_a_sweep_with_a_guard_resumes_bit_for_bit_with_its_records(tmp_path):
    hp = {"eta": [GOOD, SHAKY]}
    kw = dict(hparams=hp, batch_size=7, key=KEY, guard=jreg.Guard(max_ratio=1.3), vectorize="map")
    straight = jreg.sweep(build, PARAMS, TRAIN, epochs=4, **kw)
    ck = jreg.Checkpointing(tmp_path / "ck")
    jreg.sweep(build, PARAMS, TRAIN, epochs=1, checkpoint=ck, **kw)  # the first epoch: the reference
    resumed = jreg.sweep(build, PARAMS, TRAIN, epochs=4, checkpoint=ck, resume=tmp_path / "ck", **kw)
    assert dict(resumed.history.diverged) == dict(straight.history.diverged) and set(resumed.history.diverged) == {1}
    same(resumed.params, straight.params)
    np.testing.assert_array_equal(resumed.history.epoch_loss, straight.history.epoch_loss)


def test_the_ratio_rule_skips_a_non_positive_reference():
    history = jreg.History(models=3)
    limits = Limits(jreg.Guard(max_ratio=2.0), 3)
    np.testing.assert_array_equal(limits.next(history)["limit"], np.full(3, np.inf, np.float32))
    history.append({"epoch_loss": np.array([-1.0, 0.0, 2.0], np.float32)})
    np.testing.assert_array_equal(limits.next(history)["limit"], np.array([np.inf, np.inf, 4.0], np.float32))
    assert limits.broken({"epoch_loss": np.array([5.0, 5.0, 5.0])}, 2)[0] == "max_ratio"
    assert limits.broken({"epoch_loss": np.array([5.0, 5.0, 3.0])}, 2) is None
    assert limits.broken({"epoch_loss": np.array([np.nan, 5.0, np.inf])}, 2) is None  # non-finite: not the rule's
    huge = Limits(jreg.Guard(max_loss=1e300), None).next(jreg.History())["limit"]
    assert huge.dtype == np.float32 and np.isinf(huge)  # beyond float32: no limit (no overflow warning)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"max_loss": 0}, jreg.JregError, "max_loss must be a positive finite number, got 0.0"),
        ({"max_loss": -1.0}, jreg.JregError, "positive finite"),
        ({"max_loss": float("nan")}, jreg.JregError, "positive finite"),
        ({"max_loss": float("inf")}, jreg.JregError, "positive finite"),
        ({"max_loss": 2**2000}, jreg.JregError, "positive finite"),
        ({"max_loss": True}, jreg.JregTypeError, "got True"),
        ({"max_loss": "100"}, jreg.JregTypeError, "got '100'"),
        ({"max_loss": [100]}, jreg.JregTypeError, "got [100]"),
        ({"max_loss": jnp.ones(2)}, jreg.JregTypeError, "max_loss"),
        ({"max_ratio": 0.5}, jreg.JregError, "max_ratio must be a finite number of at least 1, got 0.5"),
        ({"max_ratio": float("nan")}, jreg.JregError, "at least 1"),
        ({"max_ratio": None, "max_los": 3}, jreg.JregTypeError, "max_loss"),
    ],
)
def test_bad_guard_fields_are_clear_errors(kwargs, error, words):
    with pytest.raises(error) as info:
        jreg.Guard(**kwargs)
    assert words in str(info.value)


def test_a_guard_is_checked_before_any_work():
    assert jreg.Guard(max_loss=np.float32(3), max_ratio=jnp.asarray(2)).max_loss == 3.0  # scalars of any kind
    with pytest.raises(jreg.JregTypeError, match="guard must be a jreg.Guard"):
        run(GOOD, guard=100.0)
    with pytest.raises(jreg.JregTypeError, match="guard must be a jreg.Guard"):
        jreg.sweep(build, PARAMS, TRAIN, hparams={"eta": [0.1]}, epochs=1, batch_size=7, key=KEY, guard={"a": 1})
    with pytest.raises(jreg.JregError, match="add 'epoch_loss' to monitor"):
        run(GOOD, guard=jreg.Guard(max_loss=10), monitor=())
    with pytest.raises(jreg.JregError, match="add 'epoch_loss' to monitor"):
        jreg.sweep(
            build, PARAMS, TRAIN, hparams={"eta": [0.1]}, epochs=1, batch_size=7, key=KEY, monitor=(),
            guard=jreg.Guard(max_loss=10),
        )  # fmt: skip
    run(GOOD, guard=jreg.Guard(), monitor=())  # Guard() sets no rule: as no guard


def batches(epoch):
    """The training data as a stream: five batches of 8, in an order of their own each epoch."""
    order = np.random.default_rng(epoch).permutation(40)
    return [(TRAIN[0][order[i : i + 8]], TRAIN[1][order[i : i + 8]]) for i in range(0, 40, 8)]


def streamed(eta, epochs=3, **kw):
    stream = jreg.Stream(batches, chunk=2)
    return jreg.fit(OBJ, optax.sgd(eta), PARAMS, stream, epochs=epochs, batch_size=8, key=KEY, **kw)


def test_a_stream_is_guarded_as_in_memory_data():
    """The rule is read at the streamed epoch's end; the state kept is the epoch's input, as in memory."""
    with pytest.raises(jreg.DivergenceError) as info:
        streamed(BLOWN, guard=jreg.Guard(max_loss=100))
    assert info.value.rule == "max_loss" and info.value.epoch == 0 and info.value.step is None
    same(info.value.params, PARAMS)
    with pytest.raises(jreg.DivergenceError) as info:
        streamed(SHAKY, epochs=5, guard=jreg.Guard(max_ratio=1.05))
    error = info.value
    assert error.rule == "max_ratio" and error.epoch >= 1
    same(error.params, streamed(SHAKY, epochs=error.epoch).params)  # the last epoch within the limit
    same(streamed(GOOD, guard=jreg.Guard(max_loss=100)).params, streamed(GOOD).params)  # never broken: as without


def test_a_streamed_sweep_freezes_only_the_member_that_broke_the_rule():
    stream = jreg.Stream(batches, chunk=2)
    common = dict(hparams={"eta": [GOOD, BLOWN]}, epochs=3, batch_size=8, key=KEY)
    guarded = jreg.sweep(build, PARAMS, stream, guard=jreg.Guard(max_loss=100), **common)
    plain = jreg.sweep(build, PARAMS, jreg.Stream(batches, chunk=2), **common)
    record = guarded.history.diverged[1]
    assert record["epoch"] == 1 and record["step"] is None and "Guard.max_loss = 100" in record["quantity"]
    assert 0 not in guarded.history.diverged
    same(guarded.select(0).params, plain.select(0).params)  # the other member trains as without a guard
    same(guarded.select(1).params, PARAMS)  # frozen at its epoch's input
    assert np.isnan(guarded.history.epoch_loss[1]).all()
