from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

from .conftest import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def toy(n=40, seed=0, d=6, classes=3):
    """A learnable toy problem: the class is the argmax of three fixed projections of x."""
    kx, kp = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, d))
    proj = jax.random.normal(kp, (d, classes))
    return x, jnp.argmax((x - 0.5) @ proj, axis=1)


def setup(lam=0.1, n=40, sizes=(6, 8, 3)):
    model = jreg.mlp(list(sizes))
    params = model.init(jax.random.key(1))
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(lam / n))
    return model, params, obj


def leaves_equal(a, b):
    return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_make_step_metrics_and_update():
    model, params, obj = setup()
    opt = optax.sgd(0.5)
    new, state, m = jreg.make_step(obj, opt)(params, opt.init(params), toy())
    assert set(m) == {"loss", "data", "penalty", "l2"}
    np.testing.assert_allclose(m["loss"], m["data"] + m["penalty"], rtol=1e-6)
    total, _ = obj(params, toy())
    np.testing.assert_allclose(m["loss"], total, rtol=1e-6)
    grads = jax.grad(lambda p: obj(p, toy())[0])(params)
    for p0, g, p1 in zip(jax.tree.leaves(params), jax.tree.leaves(grads), jax.tree.leaves(new)):
        np.testing.assert_allclose(p1, p0 - 0.5 * g, rtol=1e-5, atol=1e-6)


def test_make_step_donate():
    model, params, obj = setup()
    opt = optax.sgd(0.5)
    copy = jax.tree.map(jnp.array, params)
    new, _, _ = jreg.make_step(obj, opt, donate=True)(copy, opt.init(copy), toy())
    ref, _, _ = jreg.make_step(obj, opt)(params, opt.init(params), toy())
    assert leaves_equal(new, ref)


@pytest.mark.parametrize(
    "n, batch_size, partial, steps",
    [(40, 10, "include", 4), (25, 10, "include", 3), (25, 10, "drop", 2), (7, 7, "include", 1)],
)
def test_epoch_equals_a_python_loop_of_steps(n, batch_size, partial, steps):
    model, params, obj = setup(n=n)
    opt = optax.adam(1e-2)  # stateful, so the order of steps matters
    x, y = toy(n)
    key = jax.random.key(5)
    p_epoch, s_epoch, m = jreg.make_epoch(obj, opt, batch_size, partial_batch=partial)(
        params, opt.init(params), (x, y), key
    )
    perm = jax.random.permutation(key, n)
    xs, ys = x[perm], y[perm]
    step = jreg.make_step(obj, opt)
    p, s = params, opt.init(params)
    losses, sizes = [], []
    for i in range(steps):
        sl = slice(i * batch_size, min((i + 1) * batch_size, n))
        p, s, mi = step(p, s, (xs[sl], ys[sl]))
        losses.append(float(mi["loss"]))
        sizes.append(sl.stop - sl.start)
    for u, v in zip(jax.tree.leaves(p), jax.tree.leaves(p_epoch)):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["loss"], np.average(losses, weights=sizes), rtol=1e-5)


def test_fit_history_and_learning():
    model, params, obj = setup(lam=0.01, n=200)
    train, test = toy(200, seed=0), toy(100, seed=0)
    seen = []
    trained, hist = jreg.fit(
        obj,
        optax.sgd(1.0),
        params,
        train,
        epochs=15,
        batch_size=10,
        key=jax.random.key(0),
        evaluation=test,
        monitor=jreg.train.NETWORK2,  # the training-set series are measured when asked
        callback=lambda e, m: seen.append(e),
    )
    assert seen == list(range(15))
    assert "epoch_loss" not in hist  # not asked for
    for k in (
        "training_cost",
        "training_accuracy",
        "evaluation_cost",
        "evaluation_accuracy",
        "training_data",
        "training_penalty",
        "training_l2",
    ):
        assert len(hist[k]) == 15, k
    assert hist.training_cost[-1] < hist.training_cost[0]
    assert hist.training_accuracy[-1] > 0.8
    # the reported figures are the helpers' figures on the returned params
    np.testing.assert_allclose(hist.training_accuracy[-1], jreg.accuracy(model.apply, trained, train), rtol=1e-6)
    np.testing.assert_allclose(hist.evaluation_cost[-1], jreg.total_cost(obj, trained, test), rtol=1e-5)
    np.testing.assert_allclose(hist.training_cost[-1], hist.training_data[-1] + hist.training_penalty[-1], rtol=1e-5)
    assert set(hist.to_dict()) == set(hist.keys())


def test_epoch_without_metrics_takes_the_same_steps():
    model, params, obj = setup(n=25)
    opt = optax.adam(1e-2)
    args = (params, opt.init(params), toy(25), jax.random.key(2))
    with_m = jreg.make_epoch(obj, opt, 10)(*args)
    without = jreg.make_epoch(obj, opt, 10, metrics=False)(*args)
    assert without[2] == {} and set(with_m[2]) == {"loss", "data", "penalty", "l2"}
    for u, v in zip(jax.tree.leaves(with_m[0]), jax.tree.leaves(without[0])):
        np.testing.assert_allclose(v, u, rtol=1e-6, atol=1e-7)


def test_fit_epoch_loss_on_request():
    model, params, obj = setup()
    opt = optax.sgd(0.5)
    key = jax.random.key(4)
    _, hist = jreg.fit(obj, opt, params, toy(), epochs=2, batch_size=10, key=key, monitor=("epoch_loss",))
    assert list(hist.keys()) == ["epoch_loss"]
    _, _, m = jreg.make_epoch(obj, opt, 10)(params, opt.init(params), toy(), jax.random.fold_in(key, 0))
    np.testing.assert_allclose(hist.epoch_loss[0], m["loss"], rtol=1e-6)


def test_fit_is_deterministic_and_leaves_the_input_params_alone():
    model, params, obj = setup()
    before = jax.tree.map(np.asarray, params)

    def run(k):
        return jreg.fit(obj, optax.sgd(0.5), params, toy(), epochs=3, batch_size=10, key=jax.random.key(k))

    a, ha = run(0)
    b, hb = run(0)
    c, _ = run(1)
    assert leaves_equal(a, b) and ha.to_dict() == hb.to_dict()
    assert not leaves_equal(a, c)
    assert leaves_equal(params, before)  # still readable: fit donated copies, not these


def test_fit_matches_epochs_run_by_hand():
    model, params, obj = setup()
    opt = optax.sgd(0.5)
    key = jax.random.key(3)
    trained, _ = jreg.fit(obj, opt, params, toy(), epochs=2, batch_size=10, key=key, monitor=())
    epoch = jreg.make_epoch(obj, opt, 10)
    p, s = params, opt.init(params)
    for e in range(2):
        p, s, _ = epoch(p, s, toy(), jax.random.fold_in(key, e))
    for u, v in zip(jax.tree.leaves(p), jax.tree.leaves(trained)):
        np.testing.assert_allclose(v, u, rtol=1e-6, atol=1e-7)


def test_fit_verbose_prints_each_epoch(capsys):
    model, params, obj = setup()
    jreg.fit(
        obj,
        optax.sgd(0.5),
        params,
        toy(),
        epochs=2,
        batch_size=10,
        key=jax.random.key(0),
        evaluation=toy(20, 1),
        verbose=True,
    )
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert "\r" not in out  # plain lines (capsys is not a terminal): fit never redraws a bar
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2: epoch loss")  # the default series
    assert "evaluation cost" in lines[0] and "evaluation accuracy" in lines[0]


def test_fit_with_a_plain_function_objective_monitors_costs():
    model, params, obj = setup()

    def plain(p, batch):
        return obj(p, batch)

    kw = dict(epochs=1, batch_size=10, key=jax.random.key(0))
    _, hist = jreg.fit(plain, optax.sgd(0.5), params, toy(), evaluation=toy(20, 1), **kw)
    assert "evaluation_cost" in hist and "evaluation_accuracy" not in hist  # the default: costs, no accuracy
    _, hist = jreg.fit(plain, optax.sgd(0.5), params, toy(), monitor=("training_cost",), **kw)
    assert "training_cost" in hist and "training_accuracy" not in hist


@pytest.mark.parametrize("variant", VARIANTS)
def test_accuracy_and_total_cost_helpers(variant):
    model = jreg.mlp([2, 2])
    params = [{"w": jnp.eye(2), "b": jnp.zeros(2)}]
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.1]])
    y = jnp.array([0, 1, 1, 0])
    assert float(variant(lambda p, d: jreg.accuracy(model.apply, p, d))(params, (x, y))) == 0.75
    assert float(jreg.accuracy(model.apply, params, (x, jax.nn.one_hot(y, 2)))) == 0.75
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1.0))
    expected = float(np.mean(jreg.losses.cross_entropy(model.apply(params, x), y))) + 1.0
    np.testing.assert_allclose(variant(lambda p, d: jreg.total_cost(obj, p, d))(params, (x, y)), expected, rtol=1e-6)


BAD_FIT = [
    (dict(train=(jnp.ones((10, 6)), jnp.zeros(9, jnp.int32))), r"train: x and y must hold the same number"),
    (
        dict(train=(jnp.ones((10, 5)), jnp.zeros(10, jnp.int32))),
        r"train: x must have shape \(batch, 6\).*got \(10, 5\)",
    ),
    (dict(train=(jnp.ones((10, 6)), jnp.full(10, 3))), r"train: labels must lie in \[0, 3\).*\[3, 3\]"),
    (
        dict(train=(jnp.ones((10, 6)), jnp.zeros((10, 4)))),
        r"train: .*one-hot\) targets must have shape \(10, 3\).*got \(10, 4\)",
    ),
    (dict(train=(jnp.ones((10, 6), jnp.int32), jnp.zeros(10, jnp.int32))), r"train: x must be floating point"),
    (dict(train=(jnp.ones((0, 6)), jnp.zeros(0, jnp.int32))), r"train is empty"),
    (dict(train=(jnp.full((10, 6), jnp.nan), jnp.zeros(10, jnp.int32))), r"train: x holds 60 non-finite"),
    (dict(train=[jnp.ones((10, 6))]), r"train must be a pair \(x, y\)"),
    (dict(batch_size=11), r"batch_size must be at most the number of training examples \(10\), got 11"),
    (dict(batch_size=0), r"batch_size must be a positive integer, got 0"),
    (dict(epochs=-1), r"epochs must be a positive integer, got -1"),
    (dict(key=0), r"key must be a single JAX PRNG key"),
    (dict(optimizer="sgd"), r"optimizer must be an optax GradientTransformation"),
    (dict(monitor=("test_accuracy",)), r"monitor must name some of"),
    (dict(monitor=("evaluation_accuracy",)), r"evaluation data is needed"),
    (dict(partial_batch="pad"), r"partial_batch must be one of"),
    (dict(evaluation=(jnp.ones((4, 6)), jnp.array([0, 1, 2, 5]))), r"evaluation: labels must lie in \[0, 3\)"),
]


@pytest.mark.parametrize("override, match", BAD_FIT)
def test_fit_bad_input_names_the_argument(override, match):
    model, params, obj = setup()
    kwargs = dict(
        objective=obj,
        optimizer=optax.sgd(0.1),
        params=params,
        train=(jnp.ones((10, 6)), jnp.zeros(10, jnp.int32)),
        epochs=1,
        batch_size=5,
        key=jax.random.key(0),
    )
    kwargs.update(override)
    with pytest.raises(jreg.JregError, match=match):
        jreg.fit(**kwargs)


def test_negative_lambda_is_refused():
    with pytest.raises(jreg.JregError, match="l2: coefficient must be >= 0, got -5.0"):
        jreg.penalties.l2(-5.0 / 50_000 * 50_000)


def test_objective_and_make_step_bad_arguments():
    with pytest.raises(jreg.JregTypeError, match="apply must be callable"):
        jreg.objective(None, jreg.losses.cross_entropy)
    with pytest.raises(jreg.JregTypeError, match="penalty must be a jreg Penalty"):
        jreg.objective(lambda p, x: x, jreg.losses.cross_entropy, penalty=0.1)
    model, params, obj = setup()
    with pytest.raises(jreg.JregTypeError, match="optimizer must be an optax"):
        jreg.make_step(obj, None)
    with pytest.raises(jreg.JregError, match="batch_size must be a positive integer"):
        jreg.make_epoch(obj, optax.sgd(0.1), -2)
    step = jreg.make_step(obj, optax.sgd(0.1))
    with pytest.raises(jreg.JregTypeError, match=r"batch must be a pair \(x, y\)"):
        step(params, optax.sgd(0.1).init(params), jnp.ones((3, 6)))


def test_readme_quickstart_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme[readme.index("## One step, by hand") :]
    blocks = re.findall(r"```python\n(.*?)```", quickstart, re.S)
    assert blocks, "README.md's 'One step, by hand' section has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README quickstart", "exec"), namespace)
    assert float(namespace["metrics"]["loss"]) > 0
