"""jreg.Result: one result for fit and sweep; continue in memory (resume=result) or from a folder (resume="auto")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.01))


def toy(n, seed):
    x = jax.random.uniform(jax.random.key(seed), (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


TRAIN, TEST = toy(40, 0), toy(30, 1)
KW = dict(batch_size=8, key=jax.random.key(1), evaluation=TEST)


def same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def same_history(a, b):
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
        assert a.epochs(k) == b.epochs(k)


def test_fit_returns_a_result_with_the_optimizer_state():
    result = jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=2, **KW)
    assert isinstance(result, jreg.Result) and result.model_state is None and result.hparams is None
    assert result.models is None
    count = jax.tree.leaves(result.opt_state)[0]
    assert int(count) == 2 * 5  # Adam's step count: 2 epochs of 5 steps
    assert "evaluation_accuracy" in result.history


def test_unpacking_the_old_tuple_warns_and_shows_the_new_form():
    result = jreg.fit(OBJ, optax.sgd(0.1), PARAMS, TRAIN, epochs=1, **KW)
    with pytest.warns(DeprecationWarning, match=r"result\.params, result\.history"):
        params, history = result
    same(params, result.params)
    assert history is result.history


@pytest.mark.parametrize("optimizer", [optax.adam(0.05), optax.sgd(0.3, momentum=0.9)], ids=["adam", "momentum"])
def test_continuing_a_fit_from_its_result_equals_one_uninterrupted_run(optimizer):
    whole = jreg.fit(OBJ, optimizer, PARAMS, TRAIN, epochs=5, **KW)
    first = jreg.fit(OBJ, optimizer, PARAMS, TRAIN, epochs=2, **KW)
    rest = jreg.fit(OBJ, optimizer, PARAMS, TRAIN, epochs=5, resume=first, **KW)
    same(rest.params, whole.params)
    same(rest.opt_state, whole.opt_state)
    same_history(rest.history, whole.history)
    # the first result is untouched by the continuation (its buffers are not donated)
    same(first.params, jreg.fit(OBJ, optimizer, PARAMS, TRAIN, epochs=2, **KW).params)


def test_continuing_a_stateful_fit_with_early_stopping_and_lr_cuts():
    def init(key):
        return {"w": 0.3 * jax.random.normal(key, (6, 3)), "b": jnp.zeros(3)}, {"mean": jnp.zeros(6)}

    def apply(params, x, *, state, train):
        mean = x.mean(axis=0) if train else state["mean"]
        state = {"mean": 0.8 * state["mean"] + 0.2 * x.mean(axis=0)} if train else state
        return (x - mean) @ params["w"] + params["b"], state

    obj = jreg.objective(apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))
    params, state = init(jax.random.key(4))
    stop = jreg.EarlyStopping(monitor="evaluation_cost", patience=1, lr_factor=0.5, min_lr_scale=0.01)
    kw = dict(model_state=state, early_stopping=stop, **KW)
    whole = jreg.fit(obj, optax.adam(0.2), params, TRAIN, epochs=8, **kw)
    first = jreg.fit(obj, optax.adam(0.2), params, TRAIN, epochs=3, **kw)
    rest = jreg.fit(obj, optax.adam(0.2), params, TRAIN, epochs=8, resume=first, **kw)
    assert first.model_state is not None
    same((rest.params, rest.model_state, rest.opt_state), (whole.params, whole.model_state, whole.opt_state))
    same_history(rest.history, whole.history)
    assert rest.history.stopped == whole.history.stopped


def test_a_sweep_continues_from_its_result_and_refuses_a_fits():
    def build(hp):
        return jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.adam(
            hp["eta"]
        )

    hp = {"lmbda": [0.0, 0.1], "eta": [0.05, 0.1]}
    whole = jreg.sweep(build, PARAMS, TRAIN, hparams=hp, epochs=4, **KW)
    first = jreg.sweep(build, PARAMS, TRAIN, hparams=hp, epochs=1, **KW)
    rest = jreg.sweep(build, PARAMS, TRAIN, hparams=hp, epochs=4, resume=first, **KW)
    same((rest.params, rest.opt_state), (whole.params, whole.opt_state))
    same_history(rest.history, whole.history)
    assert whole.models == 2 and whole.hparams["lmbda"].tolist() == [0.0, pytest.approx(0.1)]
    fitted = jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=1, **KW)
    with pytest.raises(jreg.JregError, match="returned by jreg.fit"):
        jreg.sweep(build, PARAMS, TRAIN, hparams=hp, epochs=4, resume=fitted, **KW)
    with pytest.raises(jreg.JregError, match="returned by jreg.sweep"):
        jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=4, resume=first, **KW)
    with pytest.raises(jreg.JregError, match="holds no run to continue"):
        jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=4, resume=first.select(0), **KW)


def test_resume_auto_starts_fresh_then_continues(tmp_path):
    ckpt = jreg.Checkpointing(tmp_path / "run", every=1)
    whole = jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=4, **KW)

    def interrupt(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a fresh folder: "auto" starts the run
        jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=4, checkpoint=ckpt, resume="auto", callback=interrupt,
                 **KW)  # fmt: skip
    again = jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=4, checkpoint=ckpt, resume="auto", **KW)
    same((again.params, again.opt_state), (whole.params, whole.opt_state))
    same_history(again.history, whole.history)
    with pytest.raises(jreg.JregError, match="checkpoint=jreg.Checkpointing"):
        jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=4, resume="auto", **KW)
    with pytest.raises(jreg.JregError, match="key differs"):  # another run's folder is not silently taken over
        jreg.fit(OBJ, optax.adam(0.05), PARAMS, TRAIN, epochs=4, checkpoint=ckpt, resume="auto",
                 **(KW | {"key": jax.random.key(2)}))  # fmt: skip


def test_stopped_indexes_like_the_series_and_best_and_select_pick_a_member():
    def build(hp):
        return jreg.objective(MODEL.apply, jreg.losses.cross_entropy), optax.sgd(hp["eta"])

    hp = {"eta": [0.01, 3.0, 0.5, 1.0]}
    stop = jreg.EarlyStopping(monitor="evaluation_cost", patience=1)
    result = jreg.sweep(build, PARAMS, TRAIN, hparams=hp, epochs=6, early_stopping=stop, **KW)
    history = result.history
    stopped = history.stopped
    assert stopped[:3] == [stopped[0], stopped[1], stopped[2]] and len(stopped[:]) == 4
    assert stopped[-1] == stopped[3] and stopped[[0, 3]] == [stopped[0], stopped[3]]
    assert stopped.mask().tolist() == [i in stopped for i in range(4)]
    with pytest.raises(IndexError):
        stopped[4]
    best = result.best()
    assert best.monitor == "evaluation_cost" and not best.maximize and best.epoch.shape == (4,)
    costs = history["evaluation_cost"]
    for i in range(4):
        row = costs[i][np.isfinite(costs[i])]
        assert best.value[i] == row.min()
    assert best.member == int(np.nanargmin(best.value))
    member = result.select(best.member)
    same(member.params, jax.tree.map(lambda a: a[best.member], result.params))
    assert member.hparams == {"eta": pytest.approx(hp["eta"][best.member])}
    assert member.history.best().value == best.value[best.member]
    assert len(result.summary().splitlines()) == 5 and "eta" in result.summary()
    print(result.summary(), repr(result), result.select(0).history.summary(), sep="\n")
    assert repr(history).startswith("History(models=4, epochs=") and history.models == result.models == 4
    np.testing.assert_array_equal(np.asarray(history.history["evaluation_cost"]), costs)


def test_history_best_summary_and_keras_dict_for_one_model():
    result = jreg.fit(OBJ, optax.sgd(0.5), PARAMS, TRAIN, epochs=3, **KW)
    best = result.history.best()
    acc = result.history["evaluation_accuracy"]
    assert best.monitor == "evaluation_accuracy" and best.maximize and best.value == max(acc)
    assert best.epoch == acc.index(max(acc)) + 1 and best.member is None
    assert result.history.history == {k: list(result.history[k]) for k in result.history.keys()}
    assert "evaluation_accuracy" in result.history.summary() and repr(result.history).startswith("History(epochs=3")
    with pytest.raises(jreg.JregError, match="was not measured"):
        result.history.best("training_top5")


def test_path_and_pbt_results_are_results_with_their_own_fields():
    def build(hp):
        return jreg.objective(MODEL.apply, jreg.losses.cross_entropy), optax.chain(
            optax.sgd(0.5), jreg.proximal(jreg.penalties.l1(hp["lmbda"]), 0.5)
        )

    path = jreg.regularization_path(build, PARAMS, TRAIN, strengths=[0.01, 0.001], epochs=2, batch_size=8,
                                    key=jax.random.key(1), monitor=())  # fmt: skip
    assert isinstance(path, jreg.Result) and len(path) == 2 and path.models == 2
    assert path.hparams["lmbda"].tolist() == pytest.approx([0.01, 0.001])
    assert jax.tree.leaves(path.opt_state) == [] or jax.tree.leaves(path.opt_state)[0].shape[0] == 2
    same(path.select(1).params, jax.tree.map(lambda a: a[1], path.params))
    with pytest.raises(TypeError):
        params, history = path

    def pbt_build(hp):
        return jreg.objective(MODEL.apply, jreg.losses.cross_entropy), optax.sgd(hp["eta"], momentum=0.9)

    result = jreg.pbt(pbt_build, PARAMS, TRAIN, hparams={"eta": [0.1, 0.3, 1.0, 3.0]}, explore={"eta": (0.8, 1.25)},
                      every=1, epochs=2, batch_size=8, key=jax.random.key(2), evaluation=TEST,
                      monitor=("evaluation_accuracy",))  # fmt: skip
    assert isinstance(result, jreg.Result) and len(result) == 4 and isinstance(result.best, int)
    assert jax.tree.leaves(result.opt_state)[0].shape[0] == 4  # momentum traces, one per member
    same(result.select(result.best).params, jax.tree.map(lambda a: a[result.best], result.params))
    with pytest.raises(jreg.JregError, match="holds no run to continue"):
        jreg.sweep(pbt_build, PARAMS, TRAIN, hparams={"eta": [0.1, 0.3, 1.0, 3.0]}, epochs=3, batch_size=8,
                   key=jax.random.key(2), resume=result)  # fmt: skip
