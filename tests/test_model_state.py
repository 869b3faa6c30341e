"""Stateful models: state goes into apply, comes back updated in training, is read-only in evaluation,
and travels through objective, make_step, make_epoch, fit, sweep and checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

from .conftest import VARIANTS
from .test_train import toy

MOMENTUM = 0.8


def init(key, d=6, classes=3):
    params = {"w": 0.3 * jax.random.normal(key, (d, classes)), "b": jnp.zeros(classes)}
    return params, {"mean": jnp.zeros(d), "count": jnp.zeros((), jnp.int32)}


def apply(params, x, *, state, train, key=None):
    """A BatchNorm-like model in pure JAX: centre x with the batch mean (training) or the running mean (evaluation)."""
    if train:
        mean = x.mean(axis=0)
        state = {"mean": MOMENTUM * state["mean"] + (1 - MOMENTUM) * mean, "count": state["count"] + 1}
    else:
        mean = state["mean"]
    return (x - mean) @ params["w"] + params["b"], state


def objective(lam=0.01):
    return jreg.objective(apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(lam))


def leaves_close(a, b, rtol=1e-6, atol=1e-7):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.mark.parametrize("variant", VARIANTS)
def test_objective_returns_the_new_state_in_training_and_the_same_in_evaluation(variant):
    params, state = init(jax.random.key(0))
    x, y = toy(8)
    obj = objective()
    total, parts, trained = variant(lambda p, s: obj(p, (x, y), state=s, train=True))(params, state)
    np.testing.assert_allclose(trained["mean"], (1 - MOMENTUM) * x.mean(0), rtol=1e-6)
    assert int(trained["count"]) == 1
    total_eval, _, same = variant(lambda p, s: obj(p, (x, y), state=s, train=False))(params, trained)
    jax.tree.map(np.testing.assert_array_equal, same, trained)
    assert float(total_eval) != float(total)  # running mean vs batch mean
    np.testing.assert_allclose(total, parts["data"] + parts["penalty"], rtol=1e-6)


def test_objective_state_errors():
    params, state = init(jax.random.key(0))
    with pytest.raises(jreg.JregError, match="the model carries state"):
        objective()(params, toy(4))
    model = jreg.mlp([6, 3])
    plain = jreg.objective(model.apply, jreg.losses.cross_entropy)
    with pytest.raises(jreg.JregError, match="the model's apply has no state parameter"):
        plain(model.init(jax.random.key(0)), toy(4), state=state)
    bad = jreg.objective(lambda p, x, *, state, train: x @ p["w"], jreg.losses.cross_entropy)
    with pytest.raises(jreg.JregError, match=r"must return \(outputs, new_state\)"):
        bad(params, toy(4), state=state)


def test_make_step_threads_the_state_and_matches_a_hand_written_step():
    params, state = init(jax.random.key(0))
    opt = optax.sgd(0.3)
    x, y = toy(10)
    obj = objective()
    p1, s1, m1, metrics = jreg.make_step(obj, opt)(params, opt.init(params), (x, y), model_state=state)

    def loss(p):
        total, _, new = obj(p, (x, y), state=state, train=True)
        return total, new

    (value, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
    leaves_close(p1, jax.tree.map(lambda w, g: w - 0.3 * g, params, grads))
    leaves_close(m1, new_state)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
    with pytest.raises(jreg.JregError, match="pass model_state="):
        jreg.make_step(obj, opt)(params, opt.init(params), (x, y))


@pytest.mark.parametrize("n, partial", [(40, "include"), (25, "include"), (25, "drop")])
def test_make_epoch_equals_a_loop_of_steps_carrying_the_state(n, partial):
    params, state = init(jax.random.key(1))
    opt = optax.adam(1e-2)
    x, y = toy(n)
    key = jax.random.key(3)
    obj = objective()
    p_e, _, s_e, _ = jreg.make_epoch(obj, opt, 10, partial_batch=partial)(
        params, opt.init(params), (x, y), key, model_state=state
    )
    full, rest = jreg.data.batch_indices(n, 10, key)
    order = list(full) + ([rest] if rest.shape[0] and partial == "include" else [])
    step = jreg.make_step(obj, opt)
    p, o, s = params, opt.init(params), state
    for idx in order:
        p, o, s, _ = step(p, o, (x[idx], y[idx]), model_state=s)
    leaves_close(p_e, p, rtol=1e-5, atol=1e-6)
    leaves_close(s_e, s, rtol=1e-5, atol=1e-6)
    assert int(s_e["count"]) == len(order)


def test_fit_updates_the_state_evaluates_with_it_and_is_deterministic():
    params, state = init(jax.random.key(0))
    train, test = toy(60, seed=0), toy(30, seed=1)
    kw = dict(epochs=3, batch_size=10, key=jax.random.key(2), evaluation=test, model_state=state)
    p, s, hist = jreg.fit(objective(), optax.sgd(0.5), params, train, **kw)
    p2, s2, hist2 = jreg.fit(objective(), optax.sgd(0.5), params, train, **kw)
    jax.tree.map(np.testing.assert_array_equal, (p, s), (p2, s2))
    assert hist.to_dict() == hist2.to_dict()
    assert int(s["count"]) == 18  # 3 epochs x 6 steps: training mode only, never in evaluation
    assert float(jnp.abs(s["mean"]).sum()) > 0
    # the monitored figures use the final running statistics (evaluation mode)
    total, _, _ = objective()(p, test, state=s, train=False)
    np.testing.assert_allclose(hist.evaluation_cost[-1], total, rtol=1e-5)
    acc = jreg.metrics.accuracy(apply(p, test[0], state=s, train=False)[0], test[1]).mean()
    np.testing.assert_allclose(hist.evaluation_accuracy[-1], acc, rtol=1e-6)


def test_fit_refuses_a_missing_or_needless_state():
    params, state = init(jax.random.key(0))
    with pytest.raises(jreg.JregError, match="pass model_state="):
        jreg.fit(objective(), optax.sgd(0.1), params, toy(), epochs=1, batch_size=10, key=jax.random.key(0))
    model = jreg.mlp([6, 3])
    plain = jreg.objective(model.apply, jreg.losses.cross_entropy)
    with pytest.raises(jreg.JregError, match="carries no state"):
        jreg.fit(
            plain,
            optax.sgd(0.1),
            model.init(jax.random.key(0)),
            toy(),
            epochs=1,
            batch_size=10,
            key=jax.random.key(0),
            model_state=state,
        )


@pytest.mark.parametrize("vectorize", ["vmap", "map", "wide"])
def test_sweep_keeps_one_state_per_model_equal_to_fit(vectorize):
    params, state = init(jax.random.key(0))
    train = toy(40)
    hp = {"lam": [0.0, 0.05], "eta": [0.5, 0.2]}

    def build(h):
        return objective(h["lam"]), optax.sgd(h["eta"])

    p, s, hist = jreg.sweep(
        build,
        params,
        train,
        hparams=hp,
        epochs=2,
        batch_size=8,
        key=jax.random.key(5),
        model_state=state,
        vectorize=vectorize,
        monitor=("training_cost",),
    )
    assert s["mean"].shape == (2, 6) and s["count"].tolist() == [10, 10]
    for i in range(2):
        obj, opt = build({k: v[i] for k, v in hp.items()})
        pi, si, hi = jreg.fit(
            obj, opt, params, train, epochs=2, batch_size=8, key=jax.random.key(5), model_state=state,
            monitor=("training_cost",),
        )  # fmt: skip
        leaves_close(jax.tree.map(lambda a, i=i: a[i], p), pi, rtol=2e-5, atol=2e-6)
        leaves_close(jax.tree.map(lambda a, i=i: a[i], s), si, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(hist["training_cost"][i], hi.training_cost, rtol=2e-5)


def test_checkpoints_save_the_state_and_resume_bit_exactly(tmp_path):
    params, state = init(jax.random.key(0))
    opt = optax.adam(1e-2)
    kw = dict(batch_size=10, key=jax.random.key(3), model_state=state, evaluation=toy(20, seed=4))
    straight = jreg.fit(objective(), opt, params, toy(50), epochs=4, **kw)
    jreg.fit(objective(), opt, params, toy(50), epochs=2, checkpoint=jreg.Checkpointing(tmp_path), **kw)
    saved = jreg.load(tmp_path / "ckpt-000002.npz", params=params, opt_state=opt.init(params), model_state=state)
    assert int(saved.model_state["count"]) == 10
    resumed = jreg.fit(objective(), opt, params, toy(50), epochs=4, resume=tmp_path, **kw)
    jax.tree.map(np.testing.assert_array_equal, straight[:2], resumed[:2])
    assert straight[2].to_dict() == resumed[2].to_dict()


def test_divergence_error_carries_the_last_finite_state():
    params, state = init(jax.random.key(0))
    with pytest.raises(jreg.DivergenceError) as info:
        jreg.fit(
            objective(),
            optax.sgd(float("nan")),
            params,
            toy(),
            epochs=2,
            batch_size=10,
            key=jax.random.key(0),
            model_state=state,
        )
    err = info.value
    assert err.step == 0 and err.epoch == 0
    jax.tree.map(np.testing.assert_array_equal, err.model_state, state)  # before the first step


def test_a_non_finite_model_state_is_divergence():
    params, state = init(jax.random.key(0))

    def exploding(params, x, *, state, train, key=None):
        out, new = apply(params, x, state=state, train=train)
        if train:
            new = {**new, "mean": new["mean"] / jnp.where(new["count"] > 2, 0.0, 1.0)}
        return out, new

    obj = jreg.objective(exploding, jreg.losses.softmax_cross_entropy)
    with pytest.raises(jreg.DivergenceError, match=r"epoch 1 of 1, step 3\b.*model state 'mean' became non-finite"):
        jreg.fit(obj, optax.sgd(0.1), params, toy(), epochs=1, batch_size=10, key=jax.random.key(0), model_state=state)


def test_a_state_that_holds_an_infinity_on_purpose_is_not_divergence():
    """Only a value that *becomes* non-finite counts: optax's reduce_on_plateau starts best_value at inf."""
    params, state = init(jax.random.key(0))
    state = {**state, "best": jnp.asarray(jnp.inf)}

    def apply_with_best(params, x, *, state, train, key=None):
        out, new = apply(params, x, state={"mean": state["mean"], "count": state["count"]}, train=train)
        return out, {**new, "best": state["best"]}

    obj = jreg.objective(apply_with_best, jreg.losses.softmax_cross_entropy)
    keeps_inf = optax.GradientTransformation(  # an optimizer state holding inf on purpose, as reduce_on_plateau's
        lambda params: {"best_value": jnp.asarray(jnp.inf)}, lambda updates, st, params=None: (updates, st)
    )
    opt = optax.chain(optax.sgd(0.1), keeps_inf)
    p, s, hist = jreg.fit(obj, opt, params, toy(), epochs=2, batch_size=10, key=jax.random.key(0), model_state=state)
    assert np.isinf(s["best"]) and len(hist) == 2
