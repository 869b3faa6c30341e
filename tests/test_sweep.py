"""jreg.sweep: K models in one compiled program equal the same runs done one at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

from .test_train import toy

MODEL = jreg.mlp([6, 8, 3])


def build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(hp["eta"])


@pytest.mark.parametrize("vectorize", ["vmap", "map"])
def test_sweep_equals_one_fit_per_model(vectorize):
    params = MODEL.init(jax.random.key(0))
    train, test = toy(40, seed=0), toy(30, seed=1)
    hp = {"lmbda": [0.0, 0.01, 0.3], "eta": [0.5, 0.1, 1.0]}
    key = jax.random.key(7)
    swept, hist = jreg.sweep(
        build, params, train, hparams=hp, epochs=3, batch_size=7, key=key, evaluation=test, vectorize=vectorize
    )
    assert hist.models == 3 and hist["evaluation_accuracy"].shape == (3, 3) and len(hist) == 3
    for i in range(3):
        obj, opt = build({k: v[i] for k, v in hp.items()})
        single, h1 = jreg.fit(obj, opt, params, train, epochs=3, batch_size=7, key=key, evaluation=test)
        for u, v in zip(jax.tree.leaves(single), jax.tree.leaves(swept)):
            np.testing.assert_allclose(v[i], u, rtol=2e-5, atol=2e-6)
        for name in h1.keys():
            np.testing.assert_allclose(hist[name][i], h1[name], rtol=2e-5, atol=2e-6, err_msg=name)
        assert hist.run(i).to_dict().keys() == h1.to_dict().keys()


def test_sweep_over_seeds_with_stacked_params():
    keys = jax.random.split(jax.random.key(0), 2)
    stacked = jax.vmap(MODEL.init)(keys)
    swept, hist = jreg.sweep(
        build,
        stacked,
        toy(),
        hparams={"lmbda": [0.01, 0.01], "eta": [0.5, 0.5]},
        stacked_params=True,
        epochs=2,
        batch_size=10,
        key=jax.random.key(1),
        monitor=("training_cost",),
    )
    obj, opt = build({"lmbda": 0.01, "eta": 0.5})
    for i in range(2):
        single, _ = jreg.fit(obj, opt, MODEL.init(keys[i]), toy(), epochs=2, batch_size=10, key=jax.random.key(1))
        for u, v in zip(jax.tree.leaves(single), jax.tree.leaves(swept)):
            np.testing.assert_allclose(v[i], u, rtol=2e-5, atol=2e-6)
    assert not np.allclose(hist["training_cost"][0], hist["training_cost"][1])


def test_sweep_is_one_program_for_every_value():
    """The hyperparameters are traced: new values of the same length reuse the compiled epoch."""
    traced = []

    def counting_build(hp):
        traced.append(type(hp["lmbda"]).__name__)
        return build(hp)

    params = MODEL.init(jax.random.key(0))
    jreg.sweep(
        counting_build,
        params,
        toy(),
        hparams={"lmbda": [0.0, 0.1], "eta": [0.1, 0.2]},
        epochs=2,
        batch_size=10,
        key=jax.random.key(0),
        monitor=(),
    )
    assert any("Tracer" in t for t in traced)  # built under tracing, not per concrete value


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hparams={"lmbda": [0.1, -0.1], "eta": [0.1, 0.1]}), r"l2: coefficient must be >= 0, got -0.1"),
        (dict(hparams={"lmbda": [0.1, 0.2], "eta": [0.1]}), r"same length"),
        (dict(hparams={"lmbda": [[0.1]], "eta": [[0.1]]}), r"must be a non-empty 1-D array"),
        (dict(hparams={"lmbda": [np.nan], "eta": [0.1]}), r"must be finite"),
        (dict(hparams={}), r"hparams must be a non-empty mapping"),
        (dict(vectorize="pmap"), r"vectorize must be one of"),
        (dict(stacked_params=True), r"leading axis of size 2"),
    ],
)
def test_sweep_bad_arguments(kwargs, match):
    args = dict(hparams={"lmbda": [0.1, 0.2], "eta": [0.1, 0.1]}, epochs=1, batch_size=10, key=jax.random.key(0))
    args.update(kwargs)
    with pytest.raises(jreg.JregError, match=match):
        jreg.sweep(build, MODEL.init(jax.random.key(0)), toy(), **args)


def test_sweep_build_must_return_a_pair():
    with pytest.raises(jreg.JregTypeError, match=r"build must return \(objective, optimizer\)"):
        jreg.sweep(
            lambda hp: optax.sgd(0.1),
            MODEL.init(jax.random.key(0)),
            toy(),
            hparams={"a": [1.0]},
            epochs=1,
            batch_size=10,
            key=jax.random.key(0),
        )


def test_sweep_history_to_dict_is_json_ready():
    _, hist = jreg.sweep(
        build,
        MODEL.init(jax.random.key(0)),
        toy(),
        hparams={"lmbda": [0.0], "eta": [0.1]},
        epochs=2,
        batch_size=10,
        key=jax.random.key(0),
        monitor=("training_cost",),
    )
    d = hist.to_dict()
    assert isinstance(d["training_cost"], list) and np.shape(d["training_cost"]) == (1, 2)
    assert jnp.isfinite(jnp.asarray(d["training_cost"])).all()


@pytest.mark.parametrize("vectorize", ["vmap", "map", "wide"])
def test_a_diverging_model_is_frozen_and_flagged_while_the_others_go_on(vectorize):
    params = MODEL.init(jax.random.key(0))
    train, test = toy(40, seed=0), toy(30, seed=1)
    hp = {"lmbda": [0.01, 0.01, 0.01], "eta": [0.5, 5e6, 0.1]}  # model 1: eta * c far beyond 2
    key = jax.random.key(7)
    swept, hist = jreg.sweep(
        build, params, train, hparams=hp, epochs=3, batch_size=7, key=key, evaluation=test, vectorize=vectorize
    )
    assert set(hist.diverged) == {1}
    bad = hist.diverged[1]
    obj, opt = build({"lmbda": 0.01, "eta": 5e6})
    with pytest.raises(jreg.DivergenceError) as info:
        jreg.fit(obj, opt, params, train, epochs=3, batch_size=7, key=key, evaluation=test)
    assert bad["epoch"] == info.value.epoch + 1 and bad["step"] == info.value.step + 1
    assert bad["quantity"] == info.value.quantity
    # frozen at the last finite params, the ones fit's DivergenceError carries (before the bad step)
    for leaf, last in zip(jax.tree.leaves(swept), jax.tree.leaves(info.value.params)):
        assert bool(jnp.all(jnp.isfinite(leaf[1])))
        np.testing.assert_allclose(leaf[1], last, rtol=1e-4, atol=1e-3)
    assert np.isnan(hist["evaluation_accuracy"][1, bad["epoch"] - 1 :]).all()
    assert len(hist.run(1)) == bad["epoch"] - 1 and "diverged in epoch" in hist.run(1).stopped["reason"]
    for i in (0, 2):  # the others trained as if alone
        obj, opt = build({k: v[i] for k, v in hp.items()})
        single, h1 = jreg.fit(obj, opt, params, train, epochs=3, batch_size=7, key=key, evaluation=test)
        for u, v in zip(jax.tree.leaves(single), jax.tree.leaves(swept)):
            np.testing.assert_allclose(v[i], u, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(hist["evaluation_cost"][i], h1.evaluation_cost, rtol=2e-5)


def test_wide_equals_vmap_with_dropout_momentum_ema_and_a_partial_batch():
    """``vectorize="wide"`` (the models vmapped inside each step, matrices carried with the model axis second)
    trains exactly what ``"vmap"`` trains, up to float reassociation: every param and every series."""
    model = jreg.mlp([6, 8, 3], drop_rate=0.2)  # keyed: every model draws the same step keys

    def b(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
        return obj, optax.sgd(hp["eta"], momentum=0.9)

    hp = {"lmbda": [0.0, 0.01, 0.3], "eta": [0.1, 0.05, 0.2]}
    runs = {
        v: jreg.sweep(
            b,
            model.init(jax.random.key(0)),
            toy(40, seed=0),  # 40 = 5 * 7 + 5: a partial last batch
            hparams=hp,
            epochs=2,
            batch_size=7,
            key=jax.random.key(7),
            evaluation=toy(30, seed=1),
            monitor=("training_cost", "evaluation_accuracy", "epoch_loss"),
            ema=jreg.EMA(0.9),
            vectorize=v,
        )
        for v in ("vmap", "wide")
    }
    (p_vmap, h_vmap), (p_wide, h_wide) = runs["vmap"], runs["wide"]
    assert jax.tree.structure(p_vmap) == jax.tree.structure(p_wide)
    for u, v in zip(jax.tree.leaves(p_vmap), jax.tree.leaves(p_wide)):
        assert u.shape == v.shape and u.shape[0] == 3
        np.testing.assert_allclose(v, u, rtol=2e-5, atol=2e-6)
    assert h_wide.keys() == h_vmap.keys() and "epoch_loss" in h_wide.keys()
    for name in h_vmap.keys():
        np.testing.assert_allclose(h_wide[name], h_vmap[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_wide_is_refused_with_model_parallel():
    mesh = jax.make_mesh((1,), ("model",))
    with pytest.raises(jreg.JregError, match="wide"):
        jreg.sweep(
            build,
            MODEL.init(jax.random.key(0)),
            toy(),
            hparams={"lmbda": [0.0], "eta": [0.5]},
            epochs=1,
            batch_size=10,
            key=jax.random.key(1),
            vectorize="wide",
            parallel=jreg.ModelParallel(mesh),
        )


@pytest.mark.parametrize("vectorize", ["vmap", "wide"])
def test_a_sweep_leaks_no_tracer(vectorize):
    """The objectives ``build`` makes inside the traced program (closing over traced hyperparameters) are
    not kept alive by jreg's signature cache: ``jax.checking_leaks`` finds no leaked tracer."""
    params = MODEL.init(jax.random.key(0))
    with jax.checking_leaks():
        jreg.sweep(
            build,
            params,
            toy(20),
            hparams={"lmbda": [0.0, 0.1], "eta": [0.1, 0.2]},
            epochs=1,
            batch_size=10,
            key=jax.random.key(0),
            vectorize=vectorize,
        )
