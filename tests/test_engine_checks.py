"""Checks found by an independent review of the engine: each case here gave a wrong result or a raw error before."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

from .test_model_state import apply as stateful_apply
from .test_model_state import init as stateful_init
from .test_train import setup, toy

KW = dict(epochs=1, batch_size=10, key=jax.random.key(0))


def test_accuracy_helper_checks_like_the_metric():
    model = jreg.mlp([6, 3])
    params = model.init(jax.random.key(0))
    x, y = toy(8)
    with pytest.raises(jreg.JregError, match="integer labels|one-hot"):
        jreg.accuracy(model.apply, params, (x, y.astype(jnp.float32)))  # float labels (N,): was a silent 0.0
    with pytest.raises(jreg.JregError, match=r"must lie in \[0, 3\)"):
        jreg.accuracy(model.apply, params, (x, y + 5))
    p, s = stateful_init(jax.random.key(0))
    with pytest.raises(jreg.JregError, match="pass the model's state as model_state="):
        jreg.accuracy(stateful_apply, p, (x, y))
    got = jreg.accuracy(stateful_apply, p, (x, y), model_state=s)
    want = jnp.mean(jnp.argmax(stateful_apply(p, x, state=s, train=False)[0], -1) == y)
    np.testing.assert_allclose(got, want)


def test_a_metric_may_not_take_the_name_of_a_cost_part():
    _, params, obj = setup()
    for name in ("data", "l2", "penalty"):
        with pytest.raises(jreg.JregError, match=rf"metric name\(s\) \['{name}'\] are taken by the objective's parts"):
            jreg.fit(
                obj, optax.sgd(0.1), params, toy(), evaluation=jreg.Evaluation(metrics={name: jreg.metrics.mse}), **KW
            )


def test_restore_best_refuses_a_best_file_from_a_later_part_of_the_run(tmp_path):
    _, params, obj = setup()
    stop = jreg.EarlyStopping(patience=50, monitor="training_cost", restore_best=True)
    kw = dict(
        batch_size=10, key=jax.random.key(0), early_stopping=stop, checkpoint=jreg.Checkpointing(tmp_path, keep=10),
        monitor=("training_cost",),
    )  # fmt: skip
    jreg.fit(obj, optax.sgd(0.5), params, toy(), epochs=6, **kw)
    with pytest.raises(jreg.JregError, match=r"holds later checkpoints of this run"):  # refused first for that
        jreg.fit(obj, optax.sgd(0.5), params, toy(), epochs=6, resume=tmp_path / "ckpt-000003.npz", **kw)
    for e in (4, 5, 6):  # the later checkpoints gone, best.npz (of epoch 6) left behind
        (tmp_path / f"ckpt-{e:06d}.npz").unlink()
    with pytest.raises(jreg.JregError, match=r"best.npz holds the best params of epoch 6, but the checkpoint resumed"):
        jreg.fit(obj, optax.sgd(0.5), params, toy(), epochs=6, resume=tmp_path / "ckpt-000003.npz", **kw)


@pytest.mark.parametrize(
    "metric, match",
    [
        (lambda o, t: {"a": o}, r"metric 'bad' must return an array, got dict"),
        (lambda o, t: None, r"metric 'bad' must return an array, got NoneType"),
        (lambda o, t: "x", r"metric 'bad' must return an array, got str"),
        (lambda o: o, r"metric 'bad' fails on outputs \(20, 3\): TypeError"),
        (lambda o, t: jnp.ones((3,)) + o[:, 0], r"metric 'bad' fails on outputs \(20, 3\)"),
        (
            lambda o, t: jreg.metrics.mse(o, t[:2]),
            r"metric 'bad': targets given as integer labels must have shape \(20,\)",
        ),
    ],
)
def test_a_bad_metric_fails_before_any_training_naming_itself_and_the_data(tmp_path, metric, match):
    _, params, obj = setup()
    ev = jreg.Evaluation(toy(20, seed=1), metrics={"bad": metric}, every=3)
    with pytest.raises(jreg.JregError, match=match) as info:
        jreg.fit(
            obj,
            optax.sgd(0.1),
            params,
            toy(),
            epochs=5,
            batch_size=10,
            key=jax.random.key(0),
            evaluation=ev,
            checkpoint=jreg.Checkpointing(tmp_path / "ck"),
            monitor=("evaluation_bad",),
        )
    assert str(info.value).startswith("evaluation: ")
    assert not list((tmp_path / "ck").glob("*.npz"))  # nothing trained, nothing written


def test_save_refuses_leaves_load_could_not_read(tmp_path):
    for tree in ({"w": np.array(["a"])}, {"w": np.array([b"x"])}):
        with pytest.raises(jreg.JregTypeError, match="is not a numeric array"):
            jreg.save(tmp_path / "s.npz", tree)
    with pytest.raises(jreg.JregTypeError, match="is not a numeric array"):
        jreg.save(tmp_path / "s.npz", {"w": jnp.ones(2)}, model_state="abc")


def test_total_cost_and_the_objective_check_their_arguments():
    _, params, obj = setup()
    for bad, error in ((0, jreg.JregError), (-1, jreg.JregError), (2.5, jreg.JregTypeError), ("a", jreg.JregTypeError)):
        with pytest.raises(error, match="batch_size must be a positive integer"):
            jreg.total_cost(obj, params, toy(), batch_size=bad)
    with pytest.raises(jreg.JregTypeError, match="objective must be callable"):
        jreg.total_cost(None, params, toy())
    with pytest.raises(jreg.JregError, match="data is empty"):
        jreg.total_cost(obj, params, (jnp.ones((0, 6)), jnp.zeros(0, jnp.int32)))
    with pytest.raises(jreg.JregTypeError, match=r"parts a dict of named values"):
        jreg.total_cost(lambda p, b: (obj(p, b)[0], [1, 2]), params, toy(), batch_size=7)
    with pytest.raises(jreg.JregError, match="the batch is empty"):
        obj(params, (jnp.ones((0, 6)), jnp.zeros(0, jnp.int32)))
    with pytest.raises(jreg.JregError, match="the batch is empty"):
        jreg.make_step(obj, optax.sgd(0.1))(
            params, optax.sgd(0.1).init(params), (jnp.ones((0, 6)), jnp.zeros(0, jnp.int32))
        )


def test_make_step_checks_key_step_and_optimizer_state():
    _, params, obj = setup()
    step = jreg.make_step(obj, optax.sgd(0.1))
    state = optax.sgd(0.1).init(params)
    with pytest.raises(jreg.JregTypeError, match="key must be a single JAX PRNG key"):
        step(params, state, toy(), 3)
    with pytest.raises(jreg.JregTypeError, match="step must be the global step count"):
        step(params, state, toy(), None, "a")
    with pytest.raises(jreg.JregTypeError, match="opt_state must be the optimizer's state"):
        step(params, None, toy())


def test_sweep_checks_hparams_build_and_keywords():
    model = jreg.mlp([6, 3])
    params = model.init(jax.random.key(0))

    def build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lam"])), optax.sgd(0.1)

    kw = dict(epochs=1, batch_size=10, key=jax.random.key(0))
    with pytest.raises(jreg.JregError, match=r"hparams\['lam'\] must be a 1-D array of numbers"):
        jreg.sweep(build, params, toy(), hparams={"lam": [[0.1], [0.2, 0.3]]}, **kw)
    with pytest.raises(jreg.JregError, match=r"build\(hp\) fails for model 0, hp = \{'lam': 0.1\}: KeyError"):
        jreg.sweep(lambda hp: build({"lam": hp["eta"]}), params, toy(), hparams={"lam": [0.1]}, **kw)
    with pytest.raises(jreg.JregError, match="must work with traced hyperparameters"):
        jreg.sweep(lambda hp: build({"lam": float(hp["lam"])}), params, toy(), hparams={"lam": [0.1]}, **kw)
    with pytest.raises(jreg.JregTypeError, match=r"sweep\(\) got unexpected keyword argument\(s\) \['mesh'\]"):
        jreg.sweep(build, params, toy(), hparams={"lam": [0.1]}, mesh=None, **kw)


def test_fit_checks_its_output_folder_and_state_before_training(tmp_path):
    _, params, obj = setup()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(jreg.JregError, match="exists and is not a folder"):
        jreg.fit(obj, optax.sgd(0.1), params, toy(), checkpoint=jreg.Checkpointing(tmp_path / "file"), **KW)
    assert (tmp_path / "file").read_text() == "mine"
    with pytest.raises(jreg.JregError, match="cannot make the folder"):
        jreg.fit(obj, optax.sgd(0.1), params, toy(), checkpoint=jreg.Checkpointing(tmp_path / "file" / "ck"), **KW)
    p, s = stateful_init(jax.random.key(0))

    def keyed(params, x, *, state, train, key=None):
        out, new = stateful_apply(params, x, state={"mean": state["mean"], "count": state["count"]}, train=train)
        return out, {**new, "rng": state["rng"]}

    obj_s = jreg.objective(keyed, jreg.losses.softmax_cross_entropy)
    with pytest.raises(jreg.JregTypeError, match="'rng' is a PRNG key, which checkpoints cannot store"):
        jreg.fit(
            obj_s,
            optax.sgd(0.1),
            p,
            toy(),
            model_state={**s, "rng": jax.random.key(1)},
            checkpoint=jreg.Checkpointing(tmp_path / "ck2"),
            **KW,
        )
    with pytest.raises(jreg.JregError, match="model_state: leaf 'mean' holds NaN"):
        jreg.fit(
            jreg.objective(stateful_apply, jreg.losses.softmax_cross_entropy),
            optax.sgd(0.1),
            p,
            toy(),
            model_state={**s, "mean": jnp.full(6, jnp.nan)},
            **KW,
        )
    with pytest.raises(jreg.JregError, match=r"params: leaf '0/w' holds 1 non-finite"):
        bad = jax.tree.map(lambda a: a, params)
        bad[0]["w"] = bad[0]["w"].at[0, 0].set(jnp.inf)
        jreg.fit(obj, optax.sgd(0.1), bad, toy(), **KW)


def test_param_specs_that_do_not_fit_are_a_jreg_error():
    _, params, obj = setup()
    mesh = jax.make_mesh((1,), ("data",))
    for specs in ("junk", [{"w": 3}]):
        with pytest.raises(jreg.JregError, match="param_specs"):
            jreg.fit(obj, optax.sgd(0.1), params, toy(), parallel=jreg.DataParallel(mesh, param_specs=specs), **KW)


def test_a_weighted_loss_keeps_accuracy_on_the_plain_targets():
    x, y = toy(40)
    w = jnp.linspace(0.0, 2.0, 40)
    model = jreg.mlp([6, 3])
    obj = jreg.objective(
        model.apply, jreg.losses.weighted(jreg.losses.softmax_cross_entropy), split=lambda b: (b["x"], (b["y"], b["w"]))
    )
    params, hist = jreg.fit(
        obj,
        optax.sgd(0.5),
        model.init(jax.random.key(0)),
        {"x": x, "y": y, "w": w},
        epochs=2,
        batch_size=10,
        key=jax.random.key(1),
        evaluation=jreg.Evaluation(
            metrics={
                "accuracy": jreg.metrics.unweighted(jreg.metrics.accuracy),
                "mse": jreg.metrics.unweighted(jreg.metrics.mse),
            }
        ),
        monitor=("training_accuracy", "training_mse"),
    )
    np.testing.assert_allclose(hist.training_accuracy[-1], jreg.accuracy(model.apply, params, (x, y)), rtol=1e-6)
    _, default = jreg.fit(
        obj,
        optax.sgd(0.5),
        model.init(jax.random.key(0)),
        {"x": x, "y": y, "w": w},
        epochs=1,
        batch_size=10,
        key=jax.random.key(1),
        evaluation={"x": x, "y": y, "w": w},
    )
    assert "evaluation_accuracy" in default  # accuracy by default, on the plain labels


def test_early_stopping_says_measurements_when_evaluating_every_k_epochs():
    _, params, obj = setup()
    stop = jreg.EarlyStopping(patience=2, monitor="training_cost", min_delta=1e9)
    _, hist = jreg.fit(
        obj,
        optax.sgd(0.5),
        params,
        toy(),
        epochs=30,
        batch_size=10,
        key=jax.random.key(0),
        evaluation=jreg.Evaluation(every=3),
        monitor=("training_cost",),
        early_stopping=stop,
    )
    assert "for 2 measurements (every 3 epochs)" in hist.stopped["reason"]


def test_an_optimizer_that_cannot_update_fails_before_training_named():
    _, params, obj = setup()
    # (reduce_on_plateau's value= is supplied now: tests/test_optax_extra_args.py); an update that fails on shapes
    broken = optax.GradientTransformation(
        lambda p: optax.EmptyState(), lambda u, s, p=None: (jax.tree.map(lambda a: a @ jnp.ones((7, 7)), u), s)
    )
    with pytest.raises(jreg.JregError, match=r"^optimizer: one training step fails on these params: TypeError"):
        jreg.fit(obj, broken, params, toy(), **KW)


@pytest.mark.parametrize("entry", ["fit", "sweep"])
def test_a_model_whose_gradient_fails_is_named_not_blamed_on_the_optimizer(entry):
    """The one-step check before training: a model that runs forward but whose backward pass fails (here a
    custom VJP with a wrongly shaped cotangent) is the objective's gradient failing, named as such with
    JAX's message, not an optimizer that cannot update."""
    model = jreg.mlp([6, 8, 3])

    @jax.custom_vjp
    def identity(z):
        return z

    identity.defvjp(lambda z: (z, None), lambda _, g: (g[:, :1],))

    def apply(p, x, *, key=None, intermediates=False):
        return identity(model.apply(p, x))

    obj = jreg.objective(apply, jreg.losses.cross_entropy)
    params = model.init(jax.random.key(0))
    pattern = r"^train: the objective's gradient fails on a training mini-batch of shapes x \(10, 6\)"
    with pytest.raises(jreg.JregError, match=pattern):
        if entry == "fit":
            jreg.fit(obj, optax.sgd(0.1), params, toy(), **KW)
        else:
            jreg.sweep(lambda hp: (obj, optax.sgd(hp["eta"])), params, toy(), hparams={"eta": [0.1, 0.2]}, **KW)


@pytest.mark.parametrize(
    "opt_state, match",
    [
        ({}, "does not have the structure of optimizer.init"),
        ("s", "does not have the structure of optimizer.init"),
        (optax.sgd(0.1).init({"w": jnp.zeros(3)}), "does not have the structure of optimizer.init"),
    ],
)
def test_fit_checks_a_given_opt_state_against_the_optimizers_init(tmp_path, opt_state, match):
    _, params, obj = setup()
    with pytest.raises(jreg.JregError, match=match):
        folder = jreg.Checkpointing(tmp_path / "run")
        jreg.fit(obj, optax.adam(1e-3), params, toy(20), opt_state=opt_state, checkpoint=folder, **KW)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_fit_names_the_opt_state_leaf_of_a_wrong_shape_or_dtype():
    _, params, obj = setup()
    good = optax.adam(1e-3).init(params)
    bad_shape = jax.tree.map(lambda a: a[..., :1] if a.ndim else a, good)
    with pytest.raises(jreg.JregError, match=r"opt_state.*must have shape"):
        jreg.fit(obj, optax.adam(1e-3), params, toy(20), opt_state=bad_shape, **KW)
    bad_dtype = jax.tree.map(lambda a: a.astype(jnp.float16) if a.dtype == jnp.float32 else a, good)
    with pytest.raises(jreg.JregError, match=r"dtype float16"):
        jreg.fit(obj, optax.adam(1e-3), params, toy(20), opt_state=bad_dtype, **KW)
    junk = jax.tree.map(lambda a: "count" if a.ndim == 0 else a, good)  # Adam's step count a string
    with pytest.raises(jreg.JregTypeError, match=r"opt_state\[0\]\.count must be an array"):
        jreg.fit(obj, optax.adam(1e-3), params, toy(20), opt_state=junk, **KW)
    nested = jax.tree.map(lambda a: a.tolist(), good)  # lists are nodes of the tree: another structure
    with pytest.raises(jreg.JregError, match=r"does not have the structure"):
        jreg.fit(obj, optax.adam(1e-3), params, toy(20), opt_state=nested, **KW)
    jreg.fit(obj, optax.adam(1e-3), params, toy(20), opt_state=good, **KW)  # the right one trains


@pytest.mark.parametrize("dtype", [object, str, np.complex64])
def test_make_step_and_make_epoch_name_a_batch_leaf_of_a_non_real_dtype(dtype):
    _, params, obj = setup()
    optimizer = optax.sgd(0.1)
    x, y = toy(10)
    bad = (np.asarray(x).astype(dtype), y)
    step = jreg.make_step(obj, optimizer)
    real = r"x must hold real numbers, got dtype|x must be floating point"  # jreg.mlp names complex inputs itself
    with pytest.raises(jreg.JregTypeError, match=real):
        step(params, optimizer.init(params), bad)
    epoch = jreg.make_epoch(obj, optimizer, batch_size=5)
    with pytest.raises(jreg.JregTypeError, match=real):
        epoch(params, optimizer.init(params), bad, jax.random.key(0))
