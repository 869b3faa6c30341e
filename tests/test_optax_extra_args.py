"""optax's extra-argument optimizers under jreg (``value=``, ``grad=``, ``value_fn=``) and schedule-free evaluation.

Each front end is compared with a hand-written optax loop over the same mini-batches (epoch ``e`` shuffles with
``fold_in(key, e)``, :func:`jreg.batching.batch_indices`): ``reduce_on_plateau`` (its scale drops on a plateau),
``lbfgs`` full batch (the same iterates and optimum), ``polyak_sgd``, ``schedule_free_sgd`` (evaluated, returned and
kept as best at ``schedule_free_eval_params``). Also: sweeps (vmap, wide, map; traced learning rate), streams, data
parallel (2 host devices, in a subprocess), resume, the guard's replay, and the errors for what jreg cannot supply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg._errors import JregError, JregTypeError
from jreg.batching import batch_indices
from jreg.train import optimizer as optimizer_

N, D, BATCH = 64, 5, 16
KEY = jax.random.key(0)


def logistic_data(n: int = N, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, D)).astype(np.float32)
    w = r.normal(size=(D,)).astype(np.float32)
    y = (x @ w + 0.5 * r.normal(size=n) > 0).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def objective(params, batch):
    """L2-regularized logistic regression: ``mean BCE + 1e-3 ||w||²`` (a plain jreg objective, no key)."""
    x, y = batch
    logits = x @ params["w"] + params["b"]
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y.astype(jnp.float32)))
    return loss + 1e-3 * jnp.sum(params["w"] ** 2), {}


def value(params, batch):
    return objective(params, batch)[0]


PARAMS = {"w": jnp.zeros(D), "b": jnp.zeros(())}
TRAIN = logistic_data()


def plateau(eta=0.5):
    # rtol=0.2: an epoch-sized window (4 steps) must improve the loss by 20 %, so the scale soon drops
    return optax.chain(
        optax.sgd(eta), optax.contrib.reduce_on_plateau(patience=1, rtol=0.2, factor=0.5, accumulation_size=4)
    )


def hand_loop(opt, epochs, batch_size=BATCH, params=PARAMS, train=TRAIN, key=KEY, extra=("value",)):
    """A hand-written optax loop over the batches fit takes; ``(params, opt_state, per-step values)``."""

    @jax.jit
    def step(p, s, b):
        v, g = jax.value_and_grad(value)(p, b)
        kwargs = {"value": v, "grad": g, "value_fn": lambda q: value(q, b)}
        u, s = opt.update(g, s, p, **{k: kwargs[k] for k in extra})
        return optax.apply_updates(p, u), s, v

    p, s, values = params, opt.init(params), []
    n = jax.tree.leaves(train)[0].shape[0]
    for e in range(epochs):
        full, rest = batch_indices(n, batch_size, jax.random.fold_in(key, e))
        for idx in [*full, *([rest] if rest.size else [])]:
            p, s, v = step(p, s, take(train, idx))
            values.append(float(v))
    return p, s, values


def take(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol), a, b)


# -- which extra arguments go to which update ------------------------------------------------------------


def test_extra_args_transformations_get_value_grad_and_value_fn_plain_ones_none():
    assert optimizer_.wanted(optax.sgd(0.1)) == ("value", "grad", "value_fn")  # a chain: ignores them
    assert optimizer_.wanted(optax.contrib.reduce_on_plateau()) == ("value", "grad", "value_fn")
    plain = optax.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, s))
    assert optimizer_.wanted(plain) == ()

    def named(updates, state, params=None, *, value):  # a plain transformation that names value= only
        return jax.tree.map(lambda u: u * value, updates), state

    assert optimizer_.wanted(optax.GradientTransformation(lambda p: (), named)) == ("value",)


@pytest.mark.parametrize("metrics", [True, False])
@pytest.mark.parametrize("make", [lambda: optax.sgd(0.3, momentum=0.9), lambda: optax.adamw(0.01)])
def test_an_ordinary_optimizer_trains_bit_for_bit_as_without_extra_arguments(make, metrics):
    """optax.sgd and adamw are ExtraArgs chains that ignore value=, grad=, value_fn=: passing them changes no bit
    against the same transformation behind a plain update that takes none (and gets none)."""
    opt = make()
    plain = optax.GradientTransformation(opt.init, lambda u, s, p=None: opt.update(u, s, p))
    assert optimizer_.wanted(plain) == ()
    out = []
    for o in (opt, plain):
        epoch = jreg.make_epoch(objective, o, BATCH, metrics=metrics)
        p, s = PARAMS, o.init(PARAMS)
        for e in range(2):
            p, s, _ = epoch(p, s, TRAIN, jax.random.fold_in(KEY, e))
        out.append((p, s))
    jax.tree.map(np.testing.assert_array_equal, out[0], out[1])


def test_a_plain_transformation_naming_value_gets_the_mini_batch_objective():
    seen = []

    def update(updates, state, params=None, *, value):
        seen.append(value)
        return jax.tree.map(lambda u: -0.1 * u, updates), state

    opt = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
    step = jreg.make_step(objective, opt)
    batch = jax.tree.map(lambda a: a[:BATCH], TRAIN)
    params, _, metrics = step(PARAMS, opt.init(PARAMS), batch)
    assert seen and float(metrics["loss"]) == pytest.approx(float(value(PARAMS, batch)))
    close(params, jax.tree.map(lambda p, g: p - 0.1 * g, PARAMS, jax.grad(value)(PARAMS, batch)))


# -- reduce_on_plateau, polyak_sgd, lbfgs against hand loops ----------------------------------------------


def test_reduce_on_plateau_under_fit_matches_the_hand_loop_and_its_scale_drops():
    result = jreg.fit(objective, plateau(), PARAMS, TRAIN, epochs=5, batch_size=BATCH, key=KEY)
    params, state, values = hand_loop(plateau(), 5)
    assert float(state[1].scale) < 1.0  # the plateau was detected: the test exercises value=
    assert float(result.opt_state[1].scale) == float(state[1].scale)
    close(result.params, params)
    steps = N // BATCH
    close(result.history["epoch_loss"], [np.mean(values[e * steps : (e + 1) * steps]) for e in range(5)])


def test_reduce_on_plateau_without_its_value_would_not_train_the_same():
    """The comparison above can fail: the scale follows the values passed (ones that keep halving never cut it)."""
    opt = plateau()

    @jax.jit
    def step(p, s, b, i):
        g = jax.grad(value)(p, b)
        u, s = opt.update(g, s, p, value=jnp.float32(0.5) ** i)  # a value that keeps improving
        return optax.apply_updates(p, u), s

    p, s, i = PARAMS, opt.init(PARAMS), 0
    for e in range(5):
        for idx in batch_indices(N, BATCH, jax.random.fold_in(KEY, e))[0]:
            p, s, i = *step(p, s, take(TRAIN, idx), i), i + 1
    result = jreg.fit(objective, plateau(), PARAMS, TRAIN, epochs=5, batch_size=BATCH, key=KEY)
    assert float(s[1].scale) == 1.0 != float(result.opt_state[1].scale)


def test_make_epoch_passes_the_value_even_without_metrics():
    opt = plateau()
    epoch = jreg.make_epoch(objective, opt, BATCH, metrics=False)
    p, s = PARAMS, opt.init(PARAMS)
    for e in range(5):
        p, s, out = epoch(p, s, TRAIN, jax.random.fold_in(KEY, e))
    params, state, _ = hand_loop(opt, 5)
    assert out == {} and float(s[1].scale) == float(state[1].scale) < 1.0
    close(p, params)


def test_polyak_sgd_under_fit_matches_the_hand_loop():
    opt = optax.polyak_sgd(max_learning_rate=1.0)
    result = jreg.fit(objective, opt, PARAMS, TRAIN, epochs=3, batch_size=BATCH, key=KEY)
    params, _, _ = hand_loop(opt, 3)
    close(result.params, params)
    assert not np.allclose(np.asarray(params["w"]), 0.0)


def test_lbfgs_full_batch_reaches_the_hand_loops_optimum_through_the_same_iterates():
    """Full batch: one L-BFGS step (with its zoom line search on value_fn) per epoch; the epoch's loss is the value
    at each iterate, which the hand loop (rows in their original order) gives to float rounding."""
    opt, epochs = optax.lbfgs(), 12
    result = jreg.fit(objective, opt, PARAMS, TRAIN, epochs=epochs, batch_size=N, key=KEY)

    @jax.jit
    def step(p, s):
        v, g = optax.value_and_grad_from_state(lambda q: value(q, TRAIN))(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=lambda q: value(q, TRAIN))
        return optax.apply_updates(p, u), s, v

    p, s, values = PARAMS, opt.init(PARAMS), []
    for _ in range(epochs):
        p, s, v = step(p, s)
        values.append(float(v))
    np.testing.assert_allclose(result.history["epoch_loss"], values, rtol=1e-5)
    close(result.params, p, rtol=1e-4, atol=1e-5)
    grad = jax.grad(value)(result.params, TRAIN)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-4  # at the optimum
    assert values[-1] < 0.8 * values[0]


# -- sweep (traced learning rate), streams, resume, the guard's replay ------------------------------------


@pytest.mark.parametrize("vectorize", ["vmap", "wide", "map"])
def test_sweep_with_a_traced_learning_rate_matches_fit_per_member(vectorize):
    model = jreg.mlp([D, 4, 2])
    params = model.init(jax.random.key(3))
    obj = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy)
    etas = [0.5, 2.0]
    result = jreg.sweep(
        lambda hp: (obj, plateau(hp["eta"])), params, TRAIN, hparams={"eta": etas}, epochs=4, batch_size=BATCH,
        key=KEY, vectorize=vectorize,
    )  # fmt: skip
    for k, eta in enumerate(etas):
        one = jreg.fit(obj, plateau(eta), params, TRAIN, epochs=4, batch_size=BATCH, key=KEY)
        assert float(result.opt_state[1].scale[k]) == float(one.opt_state[1].scale)
        close(take(result.params, k), one.params, rtol=1e-4, atol=1e-5)
    assert float(np.min(result.opt_state[1].scale)) < 1.0


def test_a_stream_of_the_same_batches_trains_as_in_memory():
    def source(epoch):
        full, _ = batch_indices(N, BATCH, jax.random.fold_in(KEY, epoch))
        return [jax.tree.map(np.asarray, take(TRAIN, idx)) for idx in full]

    for opt in (plateau(), optax.lbfgs()):
        streamed = jreg.fit(objective, opt, PARAMS, jreg.Stream(source, chunk=2), epochs=3, batch_size=BATCH, key=KEY)
        held = jreg.fit(objective, opt, PARAMS, TRAIN, epochs=3, batch_size=BATCH, key=KEY)
        close(streamed.params, held.params)
        close(streamed.opt_state, held.opt_state)


def test_resume_continues_reduce_on_plateau_bit_for_bit():
    whole = jreg.fit(objective, plateau(), PARAMS, TRAIN, epochs=4, batch_size=BATCH, key=KEY)
    half = jreg.fit(objective, plateau(), PARAMS, TRAIN, epochs=2, batch_size=BATCH, key=KEY)
    rest = jreg.fit(objective, plateau(), PARAMS, TRAIN, epochs=4, batch_size=BATCH, key=KEY, resume=half)
    jax.tree.map(np.testing.assert_array_equal, (rest.params, rest.opt_state), (whole.params, whole.opt_state))


def test_lbfgs_state_is_checkpointed_and_resumed_from_the_folder_bit_for_bit(tmp_path):
    opt, kw = optax.lbfgs(), dict(batch_size=N, key=KEY)
    whole = jreg.fit(objective, opt, PARAMS, TRAIN, epochs=4, **kw)
    jreg.fit(objective, opt, PARAMS, TRAIN, epochs=2, checkpoint=jreg.Checkpointing(tmp_path), **kw)
    rest = jreg.fit(
        objective, opt, PARAMS, TRAIN, epochs=4, checkpoint=jreg.Checkpointing(tmp_path), resume="auto", **kw
    )
    assert len(rest.history["epoch_loss"]) == 4
    jax.tree.map(np.testing.assert_array_equal, (rest.params, rest.opt_state), (whole.params, whole.opt_state))


def test_a_wide_sweep_gives_lbfgs_its_value_fn_per_member():
    """Each member against the hand-written full-batch L-BFGS loop on its own objective (one compiled step, the
    strength an argument; test_lbfgs_full_batch_... checks that fit follows that loop's iterates): two fits
    compiled L-BFGS's line search once each, the slowest part of the test."""
    model = jreg.mlp([D, 3, 2])
    params = model.init(jax.random.key(3))
    build = lambda hp: (  # noqa: E731
        jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(hp["c"])),
        optax.lbfgs(),
    )
    result = jreg.sweep(build, params, TRAIN, hparams={"c": [0.0, 0.1]}, epochs=3, batch_size=N, key=KEY,
                        vectorize="wide")  # fmt: skip
    opt = optax.lbfgs()

    @jax.jit
    def step(p, s, c):
        obj = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(c))
        value_c = lambda q: obj(q, TRAIN)[0]  # noqa: E731
        v, g = optax.value_and_grad_from_state(value_c)(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=value_c)
        return optax.apply_updates(p, u), s, v

    for k, c in enumerate((0.0, 0.1)):
        p, s, values = params, opt.init(params), []
        for _ in range(3):
            p, s, v = step(p, s, c)
            values.append(float(v))
        close(take(result.params, k), p, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(result.history["epoch_loss"][k], values, rtol=1e-5)


def test_the_guards_replay_passes_the_extra_arguments():
    from jreg.train.guard import locate_steps
    from jreg.train.state import TrainState

    opt = optax.lbfgs()
    state = TrainState(PARAMS, opt.init(PARAMS), None, jnp.int32(0))
    assert locate_steps(objective, opt, state, [(TRAIN, None)] * 2) is None  # finite: nothing to report


# -- schedule-free ----------------------------------------------------------------------------------------


def linear_model():
    model = jreg.mlp([D, 2])
    return model, jreg.objective(model.apply, jreg.losses.softmax_cross_entropy), model.init(jax.random.key(1))


def accuracy_at(model, params, data):
    x, y = data
    return float(jnp.mean(jnp.argmax(model.apply(params, x), -1) == y))


def test_schedule_free_is_evaluated_and_returned_at_its_eval_params():
    model, obj, params = linear_model()
    test = logistic_data(200, seed=1)
    opt = optax.contrib.schedule_free_sgd(1.0)
    result = jreg.fit(obj, opt, params, TRAIN, epochs=3, batch_size=BATCH, key=KEY, evaluation=test)

    @jax.jit
    def step(p, s, b):
        g = jax.grad(lambda q: obj(q, b)[0])(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, s, accuracies = params, opt.init(params), []
    for e in range(3):
        for idx in batch_indices(N, BATCH, jax.random.fold_in(KEY, e))[0]:
            p, s = step(p, s, take(TRAIN, idx))
        accuracies.append(accuracy_at(model, optax.contrib.schedule_free_eval_params(s, p), test))
    evaluated = optax.contrib.schedule_free_eval_params(s, p)
    assert result.history["evaluation_accuracy"] == pytest.approx(accuracies)
    close(result.params, evaluated)
    assert not np.allclose(np.asarray(jax.tree.leaves(p)[0]), np.asarray(jax.tree.leaves(evaluated)[0]))
    close(result.snapshot.arrays[0], p)  # the training state (what resume= continues) keeps the live params


def test_schedule_free_best_params_of_early_stopping_and_checkpoints_are_eval_params(tmp_path):
    model, obj, params = linear_model()
    test = logistic_data(200, seed=1)
    opt = optax.contrib.schedule_free_sgd(1.0)
    stop = jreg.EarlyStopping(monitor="evaluation_cost", patience=10, restore_best=True)
    result = jreg.fit(
        obj, opt, params, TRAIN, epochs=3, batch_size=BATCH, key=KEY, evaluation=test, early_stopping=stop,
        checkpoint=jreg.Checkpointing(tmp_path),
    )  # fmt: skip
    best = int(np.argmin(result.history["evaluation_cost"]))
    again = jreg.fit(obj, opt, params, TRAIN, epochs=best + 1, batch_size=BATCH, key=KEY)
    close(result.params, again.params)  # the best epoch's eval params (fit without stopping returns them too)
    close(jreg.load(tmp_path / "best.npz", params=params).params, again.params)


def test_schedule_free_in_a_sweep_returns_each_members_eval_params():
    model, obj, params = linear_model()
    result = jreg.sweep(
        lambda hp: (obj, optax.contrib.schedule_free_sgd(hp["eta"])), params, TRAIN, hparams={"eta": [0.5, 1.0]},
        epochs=2, batch_size=BATCH, key=KEY,
    )  # fmt: skip
    for k, eta in enumerate([0.5, 1.0]):
        one = jreg.fit(obj, optax.contrib.schedule_free_sgd(eta), params, TRAIN, epochs=2, batch_size=BATCH, key=KEY)
        close(take(result.params, k), one.params, rtol=1e-5)
    live = result.snapshot.arrays[0]
    assert not np.allclose(np.asarray(jax.tree.leaves(live)[0]), np.asarray(jax.tree.leaves(result.params)[0]))


def test_schedule_free_sweep_with_early_stopping_keeps_each_members_best_eval_params():
    model, obj, params = linear_model()
    test = logistic_data(200, seed=1)
    stop = jreg.EarlyStopping(monitor="evaluation_cost", patience=10, restore_best=True)
    etas = [0.5, 4.0]
    result = jreg.sweep(
        lambda hp: (obj, optax.contrib.schedule_free_sgd(hp["eta"])), params, TRAIN, hparams={"eta": etas},
        epochs=3, batch_size=BATCH, key=KEY, evaluation=test, early_stopping=stop,
    )  # fmt: skip
    for k, eta in enumerate(etas):
        best = int(np.argmin(result.history["evaluation_cost"][k]))
        again = jreg.fit(
            obj, optax.contrib.schedule_free_sgd(eta), params, TRAIN, epochs=best + 1, batch_size=BATCH, key=KEY
        )
        close(take(result.params, k), again.params, rtol=1e-5)


def test_an_ema_takes_precedence_over_the_schedule_free_rule():
    """EMA(decay=0) is the live params y: returned (and evaluated) as the EMA, not moved to x."""
    model, obj, params = linear_model()
    opt = optax.contrib.schedule_free_sgd(1.0)
    result = jreg.fit(obj, opt, params, TRAIN, epochs=2, batch_size=BATCH, key=KEY, ema=jreg.EMA(0.0))
    live = result.snapshot.arrays[0]
    jax.tree.map(np.testing.assert_array_equal, result.params, live)
    assert not np.allclose(np.asarray(jax.tree.leaves(live)[0]), np.asarray(jax.tree.leaves(
        optax.contrib.schedule_free_eval_params(result.opt_state, live))[0]))  # fmt: skip


def test_evaluated_params_of_a_state_without_schedule_free_are_the_params():
    state = optax.adam(0.1).init(PARAMS)
    assert optimizer_.evaluated_params(PARAMS, state) is PARAMS
    assert not optimizer_.is_schedule_free(state)
    assert optimizer_.is_schedule_free(optax.chain(optax.clip(1.0), optax.contrib.schedule_free_adamw()).init(PARAMS))


# -- data parallel (two host devices, in a subprocess) ----------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    sys.path.insert(0, {tests!r})
    import jax, numpy as np, jreg
    from test_optax_extra_args import BATCH, KEY, PARAMS, TRAIN, objective, plateau
    from jreg.train import DataParallel
    mesh = jax.make_mesh((2,), ("data",))
    one = jreg.fit(objective, plateau(), PARAMS, TRAIN, epochs=4, batch_size=BATCH, key=KEY)
    two = jreg.fit(objective, plateau(), PARAMS, TRAIN, epochs=4, batch_size=BATCH, key=KEY,
                   parallel=DataParallel(mesh))
    print(json.dumps({{"devices": jax.device_count(),
                      "scale": [float(one.opt_state[1].scale), float(two.opt_state[1].scale)],
                      "w": [np.asarray(one.params["w"]).tolist(), np.asarray(two.params["w"]).tolist()]}}))
    """
)


def test_data_parallel_passes_the_global_mini_batch_value():
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(Path(tests).parent), tests])}
    out = subprocess.run(
        [sys.executable, "-c", WORKER.format(tests=tests)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["devices"] == 2 and got["scale"][0] == got["scale"][1] < 1.0
    np.testing.assert_allclose(got["w"][0], got["w"][1], rtol=1e-5, atol=1e-6)


# -- what jreg cannot supply: errors before any work ------------------------------------------------------


def needs_loss():
    def update(updates, state, params=None, *, loss, **extra_args):
        return updates, state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


def test_an_update_that_requires_an_argument_jreg_cannot_supply_is_named_before_any_work():
    with pytest.raises(JregError, match=r"optimizer: its update requires loss=, which jreg cannot supply"):
        jreg.fit(objective, needs_loss(), PARAMS, TRAIN, epochs=1, batch_size=BATCH, key=KEY)
    with pytest.raises(JregError, match=r"requires loss="):
        jreg.make_step(objective, needs_loss())
    with pytest.raises(JregError, match=r"requires loss="):
        jreg.make_epoch(objective, needs_loss(), BATCH)
    with pytest.raises(JregError, match=r"requires loss="):
        jreg.sweep(lambda hp: (objective, needs_loss()), PARAMS, TRAIN, hparams={"x": [0.0, 1.0]}, epochs=1,
                   batch_size=BATCH, key=KEY)  # fmt: skip


def test_a_chain_member_that_requires_such_an_argument_is_named_too():
    chained = optax.chain(optax.sgd(0.1), needs_loss())  # the chain's own signature takes **extra_args
    with pytest.raises(JregError, match=r"requires loss=") as info:
        jreg.fit(objective, chained, PARAMS, TRAIN, epochs=1, batch_size=BATCH, key=KEY)
    assert "missing" in str(info.value.__cause__)
    step = jreg.make_step(objective, chained)
    with pytest.raises(JregError, match=r"requires loss="):
        step(PARAMS, chained.init(PARAMS), take(TRAIN, slice(0, BATCH)))
    epoch = jreg.make_epoch(objective, chained, BATCH)
    with pytest.raises(JregError, match=r"requires loss="):
        epoch(PARAMS, chained.init(PARAMS), TRAIN, KEY)


def test_a_failing_objective_is_not_blamed_on_the_optimizer():
    def broken(params, batch, *, key=None):
        raise TypeError("f() missing 1 required keyword-only argument: 'loss'")  # the objective's own failure

    with pytest.raises(TypeError, match="missing 1 required") as info:
        jreg.make_step(broken, plateau())(PARAMS, plateau().init(PARAMS), TRAIN)
    assert not isinstance(info.value, JregError)


# -- Flax NNX optimizers and Keras's History.history --------------------------------------------------------


def nnx_optimizers():
    nnx = pytest.importorskip("flax.nnx")

    class Linear(nnx.Module):
        def __init__(self, rngs):
            self.layer = nnx.Linear(D, 2, rngs=rngs)

        def __call__(self, x):
            return self.layer(x)

    model = Linear(nnx.Rngs(0))
    found = [nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)]
    if hasattr(nnx, "ModelAndOptimizer"):
        found.append(nnx.ModelAndOptimizer(model, optax.sgd(0.1)))
    return found


def test_an_nnx_optimizer_where_an_optax_transformation_belongs_says_to_pass_its_tx():
    for nnx_opt in nnx_optimizers():
        kind = type(nnx_opt).__name__
        hint = rf"got a flax\.nnx\.{kind}.*pass the optax transformation it wraps, optimizer=<your nnx\.{kind}>\.tx"
        with pytest.raises(JregTypeError, match=hint):
            jreg.fit(objective, nnx_opt, PARAMS, TRAIN, epochs=1, batch_size=BATCH, key=KEY)
        with pytest.raises(JregTypeError, match=hint):
            jreg.make_step(objective, nnx_opt)
        with pytest.raises(JregTypeError, match=hint):
            jreg.make_epoch(objective, nnx_opt, BATCH)
        with pytest.raises(JregTypeError, match=hint):
            jreg.sweep(lambda hp, o=nnx_opt: (objective, o), PARAMS, TRAIN, hparams={"x": [0.0, 1.0]}, epochs=1,
                       batch_size=BATCH, key=KEY)  # fmt: skip
        with pytest.raises(JregTypeError, match=hint):
            jreg.precision.skip_nonfinite(nnx_opt)
        jreg.fit(objective, nnx_opt.tx, PARAMS, TRAIN, epochs=1, batch_size=BATCH, key=KEY)  # its tx trains


def test_history_history_is_keras_dict_of_lists_of_floats():
    model, obj, params = linear_model()
    result = jreg.fit(obj, optax.sgd(0.5), params, TRAIN, epochs=3, batch_size=BATCH, key=KEY,
                      evaluation=logistic_data(50, seed=2))  # fmt: skip
    history = result.history.history
    assert set(history) == {"epoch_loss", "evaluation_cost", "evaluation_accuracy"}
    for series in history.values():  # keras.callbacks.History.history: {name: [one float per epoch]}
        assert isinstance(series, list) and len(series) == 3 and all(type(v) is float for v in series)
    json.dumps(history)
    history["epoch_loss"].append(0.0)  # a copy, as Keras's dict is the caller's to keep
    assert len(result.history.history["epoch_loss"]) == 3
