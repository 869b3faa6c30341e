"""Any batch: pytrees with sample weights and several inputs, regression targets (N,) and (N, d), and
errors that quote the data's own shapes and say whether train or evaluation was wrong."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg import losses

from .conftest import VARIANTS


def two_inputs(n=48, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    a, b = jax.random.normal(k1, (n, 3)), jax.random.normal(k2, (n, 2))
    y = (a[:, 0] + b[:, 1] > 0).astype(jnp.int32)
    w = jax.random.uniform(k3, (n,))
    return {"a": a, "b": b, "label": y, "weight": w}


def init(key):
    return {"w": 0.1 * jax.random.normal(key, (5, 2)), "b": jnp.zeros(2)}


def apply(params, inputs):
    a, b = inputs
    return jnp.concatenate([a, b], axis=-1) @ params["w"] + params["b"]


def split(batch):
    return (batch["a"], batch["b"]), (batch["label"], batch["weight"])


OBJ = jreg.objective(apply, losses.weighted(losses.softmax_cross_entropy), jreg.penalties.l2(0.01), split=split)


@pytest.mark.parametrize("variant", VARIANTS)
def test_weighted_objective_is_the_weighted_mean(variant):
    batch, params = two_inputs(), init(jax.random.key(1))
    total, parts = variant(lambda p, b: OBJ(p, b))(params, batch)
    per_example = losses.softmax_cross_entropy(apply(params, (batch["a"], batch["b"])), batch["label"])
    np.testing.assert_allclose(parts["data"], np.mean(batch["weight"] * per_example), rtol=1e-6)
    np.testing.assert_allclose(total, parts["data"] + 0.005 * np.sum(params["w"] ** 2), rtol=1e-6)


def test_zero_weights_mask_examples_out_of_the_gradient():
    batch, params = two_inputs(), init(jax.random.key(1))
    mask = (jnp.arange(48) < 20).astype(jnp.float32)
    masked = {**batch, "weight": mask}
    head = {k: v[:20] for k, v in batch.items()}
    head["weight"] = jnp.ones(20)
    g_masked = jax.grad(lambda p: OBJ(p, masked)[1]["data"])(params)
    g_head = jax.grad(lambda p: OBJ(p, head)[1]["data"])(params)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v * 20 / 48, rtol=1e-5, atol=1e-7), g_masked, g_head)


def test_fit_and_sweep_take_a_dict_batch_with_two_inputs_and_weights():
    train, test = two_inputs(64, 0), two_inputs(32, 1)
    acc = jreg.metrics.Metric(lambda out, t: jreg.metrics.accuracy(out, t[0]))
    ev = jreg.Evaluation(test, metrics={"accuracy": acc}, batch_size=10)
    params, hist = jreg.fit(
        OBJ,
        optax.sgd(0.5),
        init(jax.random.key(0)),
        train,
        epochs=4,
        batch_size=8,
        key=jax.random.key(2),
        evaluation=ev,
        monitor=jreg.train.NETWORK2,
    )
    assert set(hist.keys()) >= {"training_cost", "evaluation_cost", "training_accuracy", "evaluation_accuracy"}
    assert hist.training_cost[-1] < hist.training_cost[0]
    expected = jnp.mean(jnp.argmax(apply(params, (test["a"], test["b"])), -1) == test["label"])
    np.testing.assert_allclose(hist.evaluation_accuracy[-1], expected, rtol=1e-6)

    def build(hp):
        return OBJ, optax.sgd(hp["eta"])

    swept, sh = jreg.sweep(
        build,
        init(jax.random.key(0)),
        train,
        hparams={"eta": [0.5, 0.1]},
        epochs=4,
        batch_size=8,
        key=jax.random.key(2),
        evaluation=ev,
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=2e-5, atol=2e-6), swept, params)
    np.testing.assert_allclose(sh["evaluation_cost"][0], hist.evaluation_cost, rtol=2e-5)


def test_accuracy_by_default_only_when_the_targets_are_classes():
    train = two_inputs(32)
    kw = dict(epochs=1, batch_size=8, key=jax.random.key(0), evaluation=train)
    _, weighted = jreg.fit(OBJ, optax.sgd(0.1), init(jax.random.key(0)), train, **kw)
    assert "evaluation_accuracy" in weighted  # a weighted loss: accuracy on its plain labels

    def loss(outputs, targets):  # targets as a dict: nothing says they are classes
        return targets["weight"] * losses.softmax_cross_entropy(outputs, targets["label"])

    as_dict = jreg.objective(
        apply, loss, split=lambda b: ((b["a"], b["b"]), {"label": b["label"], "weight": b["weight"]})
    )
    _, hist = jreg.fit(as_dict, optax.sgd(0.1), init(jax.random.key(0)), train, **kw)
    assert "evaluation_accuracy" not in hist and "evaluation_cost" in hist


@pytest.mark.parametrize("target_shape, out", [((40,), 1), ((40, 1), 1), ((40, 3), 3)])
def test_regression_targets_train_with_quadratic(target_shape, out):
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(kx, (40, 2), minval=-1, maxval=1)
    y = jnp.reshape(jnp.tile(jnp.sin(x[:, :1]), (1, target_shape[-1] if len(target_shape) > 1 else 1)), target_shape)
    model = jreg.mlp([2, 16, out], activation=jnp.tanh, init="glorot")
    obj = jreg.objective(model.apply, losses.quadratic)
    params, hist = jreg.fit(
        obj,
        optax.adam(1e-2),
        model.init(ky),
        (x, y),
        epochs=30,
        batch_size=8,
        key=jax.random.key(1),
        evaluation=jreg.Evaluation((x, y), metrics={"mse": jreg.metrics.mse}),
    )
    assert "training_accuracy" not in hist and "evaluation_accuracy" not in hist
    assert hist.evaluation_mse[-1] < 0.5 * hist.evaluation_mse[0]
    pred = model.apply(params, x).reshape(-1)
    np.testing.assert_allclose(hist.evaluation_mse[-1], np.mean((pred - np.reshape(y, -1)) ** 2), rtol=1e-5)
    if out == 1:  # (N,) against (N, 1) never broadcasts to (N, N)
        np.testing.assert_allclose(
            losses.quadratic(model.apply(params, x), y), 0.5 * (pred - y.reshape(-1)) ** 2, rtol=1e-5
        )


BAD = [
    (
        "train",
        (jnp.ones((10, 6)), jnp.ones((10, 4))),
        r"^train: .*must have shape \(10, 3\) to match the outputs \(10, 3\), got \(10, 4\)",
    ),
    ("train", (jnp.ones((10, 6)), jnp.ones((10,))), r"^train: .*must have shape \(10, 3\).*got \(10,\)"),
    ("evaluation", (jnp.ones((7, 6)), jnp.ones((7, 2))), r"^evaluation: .*must have shape \(7, 3\).*got \(7, 2\)"),
    (
        "evaluation",
        (jnp.ones((7, 5)), jnp.zeros(7, jnp.int32)),
        r"^evaluation: x must have shape \(batch, 6\).*got \(7, 5\)",
    ),
    (
        "train",
        {"x": jnp.ones((10, 6)), "y": jnp.zeros(10, jnp.int32)},
        r"^train must be a pair \(x, y\), or give jreg.objective a split=",
    ),
    (
        "train",
        (jnp.ones((10, 6)), jnp.zeros((9,), jnp.int32)),
        r"^train: x and y must hold the same number of examples",
    ),
]


@pytest.mark.parametrize("which, data, match", BAD)
def test_shape_errors_quote_the_data_and_name_the_set(which, data, match):
    model = jreg.mlp([6, 4, 3])
    obj = jreg.objective(model.apply, losses.quadratic)
    good = (jnp.ones((10, 6)), jnp.zeros((10, 3)))
    kw = dict(epochs=1, batch_size=5, key=jax.random.key(0))
    train, evaluation = (data, None) if which == "train" else (good, data)
    with pytest.raises(jreg.JregError, match=match):
        jreg.fit(obj, optax.sgd(0.1), model.init(jax.random.key(0)), train, evaluation=evaluation, **kw)


def test_a_foreign_error_inside_a_users_model_becomes_a_jreg_error_naming_the_data():
    def apply(params, x):
        return jnp.dot(x, params["w"])  # a shape error from inside jax.numpy

    obj = jreg.objective(apply, losses.quadratic)
    with pytest.raises(
        jreg.JregError, match=r"^train: the objective fails on data of shapes x \(10, 4\), y \(10, 2\): TypeError"
    ):
        jreg.fit(
            obj,
            optax.sgd(0.1),
            {"w": jnp.ones((3, 2))},
            (jnp.ones((10, 4)), jnp.ones((10, 2))),
            epochs=1,
            batch_size=5,
            key=jax.random.key(0),
        )


def test_split_must_return_a_pair():
    obj = jreg.objective(apply, losses.softmax_cross_entropy, split=lambda b: b["a"])
    with pytest.raises(jreg.JregTypeError, match=r"split must return a pair \(inputs, targets\)"):
        obj(init(jax.random.key(0)), two_inputs())
    with pytest.raises(jreg.JregTypeError, match="split must be a function"):
        jreg.objective(apply, losses.softmax_cross_entropy, split="x")


def test_weighted_loss_checks_its_targets():
    loss = losses.weighted(losses.quadratic)
    with pytest.raises(jreg.JregTypeError, match=r"pair \(targets, weights\)"):
        loss(jnp.zeros((3, 1)), jnp.zeros(3))
    with pytest.raises(jreg.JregError, match=r"weights must have shape \(3,\)"):
        loss(jnp.zeros((3, 1)), (jnp.zeros(3), jnp.ones(4)))
