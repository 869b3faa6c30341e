"""jreg.grid / jreg.sample: crossed and drawn settings for sweep; a seed entry gives each member its own init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jreg

MODEL = jreg.mlp([6, 8, 3])


def toy(n, seed):
    x = jax.random.uniform(jax.random.key(seed), (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


TRAIN, TEST = toy(40, 0), toy(30, 1)


def build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(0.5)


def test_grid_crosses_its_axes_first_slowest():
    hp = jreg.grid(lmbda=[0.1, 1.0], eta=[0.5, 3.0, 4.0])
    assert hp == {"lmbda": [0.1, 0.1, 0.1, 1.0, 1.0, 1.0], "eta": [0.5, 3.0, 4.0, 0.5, 3.0, 4.0]}
    assert hp.shape == (2, 3) and hp.axes == {"lmbda": [0.1, 1.0], "eta": [0.5, 3.0, 4.0]}
    assert jreg.grid(seed=range(3)) == {"seed": [0, 1, 2]}


@given(st.lists(st.lists(st.integers(-5, 5), min_size=1, max_size=4), min_size=1, max_size=3))
def test_grid_holds_every_combination_once(axes):
    hp = jreg.grid(**{f"a{i}": v for i, v in enumerate(axes)})
    k = int(np.prod([len(v) for v in axes]))
    assert all(len(v) == k for v in hp.values())
    rows = list(zip(*hp.values()))
    for i, row in enumerate(rows):  # member i is unravel_index(i, shape)
        idx = np.unravel_index(i, hp.shape)
        assert row == tuple(axes[j][idx[j]] for j in range(len(axes)))


def test_grid_and_sample_refuse_bad_input():
    with pytest.raises(jreg.JregError, match="at least one axis"):
        jreg.grid()
    with pytest.raises(jreg.JregError, match="lmbda= is empty"):
        jreg.grid(lmbda=[])
    with pytest.raises(jreg.JregTypeError, match="lmbda= must be a sequence"):
        jreg.grid(lmbda=0.1)
    with pytest.raises(jreg.JregError, match="positive"):
        jreg.loguniform(0.0, 1.0)
    with pytest.raises(jreg.JregError, match="below high"):
        jreg.uniform(2.0, 1.0)
    with pytest.raises(jreg.JregTypeError, match="lmbda= must be"):
        jreg.sample(jax.random.key(0), 4, lmbda="big")
    with pytest.raises(jreg.JregError, match="n must be a positive integer"):
        jreg.sample(jax.random.key(0), 0, lmbda=jreg.uniform(0, 1))


def test_sample_is_reproducible_and_in_range():
    key = jax.random.key(3)
    hp = jreg.sample(
        key, 64, lmbda=jreg.loguniform(1e-5, 1.0), eta=jreg.uniform(0.1, 2.0), act=jreg.choice([1, 2]), b=7
    )
    assert hp == jreg.sample(key, 64, lmbda=jreg.loguniform(1e-5, 1.0), eta=jreg.uniform(0.1, 2.0),
                             act=jreg.choice([1, 2]), b=7)  # fmt: skip
    lam = np.asarray(hp["lmbda"])
    assert np.all((lam >= 1e-5) & (lam < 1.0)) and np.median(np.log10(lam)) < -1  # log-uniform, not uniform
    assert all(0.1 <= e < 2.0 for e in hp["eta"]) and set(hp["act"]) == {1, 2} and hp["b"] == [7] * 64
    # an entry added at the end changes none of the others
    more = jreg.sample(key, 64, lmbda=jreg.loguniform(1e-5, 1.0), eta=jreg.uniform(0.1, 2.0), act=jreg.choice([1, 2]),
                       b=7, c=jreg.uniform(0, 1))  # fmt: skip
    assert {k: more[k] for k in hp} == hp


def test_seeds_times_strengths_in_one_call_each_member_its_own_fit():
    hp = jreg.grid(lmbda=[0.0, 0.1], seed=[0, 5])
    kw = dict(epochs=2, batch_size=8, key=jax.random.key(1), evaluation=TEST, monitor=("evaluation_cost",))
    result = jreg.sweep(build, MODEL.init, TRAIN, hparams=hp, vectorize="map", **kw)
    assert result.hparams["seed"].tolist() == [0, 5, 0, 5]
    for i, (lam, seed) in enumerate(zip(hp["lmbda"], hp["seed"])):
        alone = jreg.fit(*build({"lmbda": lam}), MODEL.init(jax.random.key(seed)), TRAIN, **kw)
        member = result.select(i)
        for a, b in zip(jax.tree.leaves(member.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    first = jax.tree.leaves(result.params)[0]
    assert not np.array_equal(first[0], first[1])  # two seeds, two initializations
    with pytest.raises(jreg.JregError, match="add a seed to hparams"):
        jreg.sweep(build, MODEL.init, TRAIN, hparams={"lmbda": [0.0, 0.1]}, **kw)
    with pytest.raises(jreg.JregError, match="non-negative integers"):
        jreg.sweep(build, MODEL.init, TRAIN, hparams={"lmbda": [0.0, 0.1], "seed": [0.5, 1.0]}, **kw)


def test_seeds_with_a_shared_model_state_give_each_member_its_own_copy():
    def init(key):
        return {"w": 0.3 * jax.random.normal(key, (6, 3)), "b": jnp.zeros(3)}

    def apply(params, x, *, state, train):
        mean = x.mean(axis=0) if train else state["mean"]
        state = {"mean": 0.8 * state["mean"] + 0.2 * x.mean(axis=0)} if train else state
        return (x - mean) @ params["w"] + params["b"], state

    def stateful_build(hp):
        return jreg.objective(apply, jreg.losses.softmax_cross_entropy), optax.sgd(0.3)

    state = {"mean": jnp.zeros(6)}
    result = jreg.sweep(stateful_build, init, TRAIN, hparams=jreg.grid(seed=[1, 2]), model_state=state, epochs=1,
                        batch_size=8, key=jax.random.key(0), monitor=())  # fmt: skip
    assert result.model_state["mean"].shape == (2, 6)
    alone = jreg.fit(*stateful_build({}), init(jax.random.key(2)), TRAIN, model_state=state, epochs=1, batch_size=8,
                     key=jax.random.key(0), monitor=())  # fmt: skip
    np.testing.assert_allclose(result.select(1).params["w"], alone.params["w"], rtol=2e-5, atol=2e-6)
