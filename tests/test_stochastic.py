"""Dropout and Gaussian noise: keyed pure functions, train/eval modes, and training with them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg import losses as L
from jreg import stochastic as S

from .conftest import VARIANTS

KEY = jax.random.key(0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.9])
def test_dropout_drops_at_the_rate_and_scales_the_kept(variant, rate):
    x = jnp.ones((200, 500))
    out = np.asarray(variant(lambda k, x: S.dropout(k, x, rate))(KEY, x))
    dropped = np.mean(out == 0)
    assert abs(dropped - rate) < 0.01  # 100,000 draws: 5 standard errors at most
    np.testing.assert_allclose(out[out != 0], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.03 * (1 + rate / (1 - rate))  # inverted dropout keeps the mean


@pytest.mark.parametrize("variant", VARIANTS)
def test_dropout_eval_mode_is_the_identity_and_the_key_decides_the_mask(variant):
    x = jax.random.normal(KEY, (8, 16))
    f = variant(lambda k, x: S.dropout(k, x, 0.5))
    np.testing.assert_array_equal(S.dropout(None, x, 0.5, train=False), x)
    np.testing.assert_array_equal(f(jax.random.key(1), x), f(jax.random.key(1), x))
    assert not np.array_equal(f(jax.random.key(1), x), f(jax.random.key(2), x))


def test_dropout_rate_may_be_traced():
    x = jnp.ones((100, 100))
    rates = jnp.array([0.1, 0.7])
    out = jax.vmap(lambda r: jnp.mean(S.dropout(KEY, x, r) == 0))(rates)
    np.testing.assert_allclose(out, rates, atol=0.02)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_rate_out_of_range_names_the_argument(rate):
    with pytest.raises(jreg.JregError, match="drop_rate"):
        S.dropout(KEY, jnp.ones(3), rate)
    with pytest.raises(jreg.JregError, match="drop_rate"):
        jreg.mlp([3, 2], drop_rate=rate)
    with pytest.raises(jreg.JregError, match="input_drop_rate"):
        jreg.mlp([3, 2], input_drop_rate=rate)


def test_training_mode_without_a_key_is_refused():
    with pytest.raises(jreg.JregTypeError, match="key"):
        S.dropout(None, jnp.ones(3), 0.5)
    with pytest.raises(jreg.JregTypeError, match="key"):
        S.gaussian_noise("seed", jnp.ones(3), 0.5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gaussian_noise_has_the_stated_spread(variant):
    x = jnp.full((400, 500), 3.0)
    out = np.asarray(variant(lambda k, x: S.gaussian_noise(k, x, 0.25))(KEY, x))
    assert abs(out.mean() - 3.0) < 0.005
    assert abs(out.std() - 0.25) < 0.005
    np.testing.assert_array_equal(S.gaussian_noise(None, x, 0.25, train=False), x)
    with pytest.raises(jreg.JregError, match="stddev"):
        S.gaussian_noise(KEY, x, -1.0)


def test_mlp_dropout_train_and_eval_modes():
    plain = jreg.mlp([6, 20, 3])
    dropped = jreg.mlp([6, 20, 3], drop_rate=0.5, input_drop_rate=0.2)
    params = plain.init(KEY)
    x = jax.random.normal(jax.random.key(1), (5, 6))
    # evaluation mode (no key) is the plain network: inverted dropout needs no rescaling
    np.testing.assert_array_equal(dropped.apply(params, x), plain.apply(params, x))
    # a zero rate with a key is the plain network too
    np.testing.assert_array_equal(jreg.mlp([6, 20, 3], drop_rate=0.0).apply(params, x, key=KEY), plain.apply(params, x))
    a = dropped.apply(params, x, key=jax.random.key(2))
    b = dropped.apply(params, x, key=jax.random.key(3))
    assert not np.allclose(a, b)


def test_mlp_hidden_dropout_is_unbiased_for_the_linear_output_layer():
    """Output logits are linear in the dropped hidden activations, so their mean over masks is the eval output."""
    model = jreg.mlp([6, 20, 3], drop_rate=0.5)
    params = model.init(KEY)
    x = jax.random.normal(jax.random.key(1), (4, 6))
    keys = jax.random.split(jax.random.key(9), 20_000)
    mean = jax.jit(jax.vmap(lambda k: model.apply(params, x, key=k)))(keys).mean(axis=0)
    np.testing.assert_allclose(mean, model.apply(params, x), atol=0.03)


def test_mlp_intermediates_are_the_hidden_activations():
    model = jreg.mlp([4, 5, 6, 2], activation=jnp.tanh)
    params = model.init(KEY)
    x = jax.random.normal(KEY, (3, 4))
    out, hidden = model.apply(params, x, intermediates=True)
    np.testing.assert_array_equal(out, model.apply(params, x))
    h1 = np.tanh(np.asarray(x) @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"]))
    h2 = np.tanh(h1 @ np.asarray(params[1]["w"]) + np.asarray(params[1]["b"]))
    assert [h.shape for h in hidden] == [(3, 5), (3, 6)]
    np.testing.assert_allclose(hidden[0], h1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hidden[1], h2, rtol=1e-5, atol=1e-6)


def _echo(params, x):
    """A 'model' that returns what it was given: the wrappers' perturbations become visible."""
    return params, x


def test_wrappers_perturb_only_in_training_mode():
    params = {"w": jnp.zeros((50, 40)), "b": jnp.zeros((40,))}
    x = jnp.ones((30, 50))
    for wrapped in (S.with_input_noise(_echo, 0.5), S.with_input_dropout(_echo, 0.5), S.with_weight_noise(_echo, 0.5)):
        p, xx = wrapped(params, x)
        np.testing.assert_array_equal(xx, x)
        np.testing.assert_array_equal(p["w"], params["w"])
    p, xx = S.with_input_noise(_echo, 0.5)(params, x, key=KEY)
    assert abs(float(jnp.std(xx)) - 0.5) < 0.02
    p, xx = S.with_input_dropout(_echo, 0.5)(params, x, key=KEY)
    assert abs(float(jnp.mean(xx == 0)) - 0.5) < 0.03
    p, xx = S.with_weight_noise(_echo, 0.5)(params, x, key=KEY)
    assert abs(float(jnp.std(p["w"])) - 0.5) < 0.02
    np.testing.assert_array_equal(p["b"], params["b"])  # default mask: weight matrices only
    np.testing.assert_array_equal(xx, x)


def test_wrappers_compose_and_pass_a_key_inside():
    model = jreg.mlp([6, 10, 3], drop_rate=0.5)
    params = model.init(KEY)
    x = jnp.ones((2, 6))
    wrapped = S.with_input_noise(model.apply, 0.0)  # no noise of its own: any randomness is the inner dropout
    a = wrapped(params, x, key=jax.random.key(1))
    b = wrapped(params, x, key=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(wrapped(params, x), model.apply(params, x))
    _, hidden = wrapped(params, x, intermediates=True)  # other keywords pass through
    assert hidden[0].shape == (2, 10)


def test_weight_noise_gradient_reaches_the_clean_weights():
    model = jreg.mlp([3, 4, 2])
    params = model.init(KEY)
    noisy = S.with_weight_noise(model.apply, 0.1)
    x, y = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
    obj = jreg.objective(noisy, L.cross_entropy)
    g = jax.grad(lambda p: obj(p, (x, y), key=KEY)[0])(params)
    assert all(float(jnp.abs(leaf).sum()) > 0 for leaf in jax.tree.leaves(g))


def _data(n=64, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, (n, 5))
    return x, (x[:, 0] + x[:, 1] > 0).astype(jnp.int32)


def test_fit_with_dropout_is_reproducible_and_monitors_in_eval_mode():
    model = jreg.mlp([5, 16, 2], drop_rate=0.5)
    obj = jreg.objective(model.apply, L.cross_entropy)
    params = model.init(KEY)
    train = _data()
    kw = dict(epochs=3, batch_size=8, monitor=jreg.train.NETWORK2[:2])  # the training-set series, asked for
    run = lambda key: jreg.fit(obj, optax.sgd(0.5), params, train, key=key, **kw)  # noqa: E731
    p1, h1 = run(jax.random.key(4))
    p2, h2 = run(jax.random.key(4))
    p3, _ = run(jax.random.key(5))
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    assert h1.to_dict() == h2.to_dict()
    assert not np.allclose(p1[0]["w"], p3[0]["w"])
    # training accuracy is measured in evaluation mode, without dropout
    np.testing.assert_allclose(h1.training_accuracy[-1], float(jreg.accuracy(model.apply, p1, train)))


def test_fit_with_dropout_matches_a_manual_loop_with_the_documented_keys():
    model = jreg.mlp([5, 8, 2], drop_rate=0.3)
    obj = jreg.objective(model.apply, L.cross_entropy)
    params = model.init(KEY)
    x, y = train = _data(40)
    key = jax.random.key(7)
    fitted, _ = jreg.fit(obj, optax.sgd(0.2), params, train, epochs=2, batch_size=16, key=key, monitor=())
    step = jreg.make_step(obj, optax.sgd(0.2))
    p, s = params, optax.sgd(0.2).init(params)
    for e in range(2):
        ek = jax.random.fold_in(key, e)
        full, rest = jreg.data.batch_indices(40, 16, ek)
        order = list(full) + [rest]
        keys = jax.random.split(jax.random.fold_in(ek, jreg.train._NOISE_SALT), len(order))
        for i, idx in enumerate(order):
            p, s, _ = step(p, s, (x[idx], y[idx]), keys[i], e * len(order) + i)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), fitted, p)


def test_sweep_over_traced_drop_rates_equals_one_fit_per_rate():
    params = jreg.mlp([5, 8, 2]).init(KEY)
    train = _data(48)
    rates = [0.0, 0.25, 0.5]

    def build(hp):
        model = jreg.mlp([5, 8, 2], drop_rate=hp["drop"])
        return jreg.objective(model.apply, L.cross_entropy), optax.sgd(0.3)

    swept, hist = jreg.sweep(
        build, params, train, hparams={"drop": rates}, epochs=2, batch_size=8, key=KEY, vectorize="vmap",
        monitor=("training_cost",),
    )  # fmt: skip
    for i, r in enumerate(rates):
        obj, opt = build({"drop": r})
        alone, h = jreg.fit(obj, opt, params, train, epochs=2, batch_size=8, key=KEY, monitor=("training_cost",))
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), swept, alone)
        np.testing.assert_allclose(hist["training_cost"][i], h.training_cost, rtol=1e-5)


def test_make_step_refuses_a_key_its_objective_cannot_take():
    model = jreg.mlp([5, 4, 2], drop_rate=0.5)
    obj = jreg.objective(model.apply, L.cross_entropy)
    plain = lambda p, b: obj(p, b)  # noqa: E731 - no key parameter
    params = model.init(KEY)
    opt = optax.sgd(0.1)
    batch = _data(4)
    with pytest.raises(jreg.JregError, match="no key parameter"):
        jreg.make_step(plain, opt)(params, opt.init(params), batch, KEY)
    _, _, m1 = jreg.make_step(obj, opt)(params, opt.init(params), batch, KEY)
    _, _, m2 = jreg.make_step(obj, opt)(params, opt.init(params), batch)
    assert float(m1["loss"]) != float(m2["loss"])  # the key reached the dropout
