"""The compiled loop over mini-batches unrolled (``unroll=``): the same arithmetic, the same guard.

``lax.scan``'s ``unroll`` runs several steps per loop iteration; it must not change a single bit on a CPU
(recorded results are reproduced bit for bit), and the divergence guard, which then reads one finite flag
per model instead of a per-step loss series, must still name the exact step that went bad.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train import epoch as epoch_module
from jreg.train.state import TrainState
from jreg.train.step import make_update

N, B = 203, 5  # 40 full mini-batches and a partial one of 3
X = jax.random.normal(jax.random.key(0), (N, 8))
Y = jax.random.randint(jax.random.key(1), (N,), 0, 3)
MODEL = jreg.mlp([8, 6, 3])
OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-3))
P0 = MODEL.init(jax.random.key(2))
ON_CPU = jax.default_backend() == "cpu"


def same(a, b):
    """Bit for bit on a CPU; elsewhere a GPU compiles the unrolled body apart and may contract multiply-adds."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if ON_CPU:
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        else:
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def fits():
    runs = {}
    for unroll in (1, None, 3, 8):
        runs[unroll] = jreg.fit(
            OBJ, optax.sgd(0.3), P0, (X, Y), epochs=2, batch_size=B, key=jax.random.key(3), unroll=unroll
        )
    return runs


@pytest.mark.parametrize("unroll", [None, 3, 8])
def test_fit_unrolled_equals_fit_step_by_step(fits, unroll):
    params, history = fits[unroll]
    same(params, fits[1][0])
    for name in history.keys():
        same(history[name], fits[1][1][name])


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
def test_make_epoch_unrolled_equals_step_by_step(jit):
    opt = optax.sgd(0.3)
    out = {}
    for unroll in (1, 8):
        epoch = jreg.make_epoch(OBJ, opt, B, unroll=unroll)
        if jit:
            out[unroll] = epoch(P0, opt.init(P0), (X, Y), jax.random.key(4))
        else:
            with jax.disable_jit():  # step by step in Python: a shorter epoch (8 steps and a partial one)
                out[unroll] = epoch(P0, opt.init(P0), (X[:43], Y[:43]), jax.random.key(4))
    same(out[8], out[1])


@pytest.mark.parametrize("vectorize", ["vmap", "wide", "map"])
def test_sweep_unrolled_equals_step_by_step(vectorize):
    def build(hp):
        return OBJ, optax.sgd(hp["eta"])

    got = {}
    for unroll in (1, 8):
        got[unroll] = jreg.sweep(
            build,
            P0,
            (X, Y),
            hparams={"eta": [0.1, 0.3, 0.5]},
            epochs=2,
            batch_size=B,
            key=jax.random.key(3),
            monitor=(),
            vectorize=vectorize,
            unroll=unroll,
        )
    same(got[8][0], got[1][0])


def small_update():
    return make_update(OBJ, optax.sgd(0.3))


def state_of(params):
    return TrainState(params, optax.sgd(0.3).init(params), None, jnp.int32(0))


def test_auto_unroll_unrolls_small_steps_of_long_epochs_on_accelerators_only():
    first = ((X[:B], Y[:B]), jax.random.key(0))
    update, state = small_update(), state_of(P0)
    assert epoch_module.auto_unroll(update, state, first, 40, backend="gpu") == epoch_module.UNROLL
    assert epoch_module.auto_unroll(update, state, first, 40, backend="tpu") == epoch_module.UNROLL
    assert epoch_module.auto_unroll(update, state, first, 40, backend="cpu") == 1  # bits as they were
    assert epoch_module.auto_unroll(update, state, first, 2 * epoch_module.UNROLL - 1, backend="gpu") == 1
    deep = jreg.mlp([8] + [4] * 30 + [3])  # a step of far more than UNROLL_MAX_OPS operations
    objective = jreg.objective(deep.apply, jreg.losses.cross_entropy)
    params = deep.init(jax.random.key(0))
    big = make_update(objective, optax.sgd(0.3))
    assert epoch_module.auto_unroll(big, state_of(params), first, 40, backend="gpu") == 1


@pytest.mark.parametrize("bad", [0, -2, True, 2.5, "8", 65, 10**9])
def test_a_bad_unroll_is_refused_before_training(bad):
    """Above 64 too: lax.scan compiles up to 2 * unroll - 1 copies of the step (all of them once unroll
    passes half the epoch), so a huge value would compile for hours, not fail."""
    message = "unroll must be at most 64" if type(bad) is int and bad > 64 else "unroll must be a positive integer"
    with pytest.raises(jreg.JregError, match=message):
        jreg.fit(OBJ, optax.sgd(0.3), P0, (X, Y), epochs=1, batch_size=B, key=jax.random.key(3), unroll=bad)
    with pytest.raises(jreg.JregError, match=message):
        jreg.sweep(
            lambda hp: (OBJ, optax.sgd(0.3)),
            P0,
            (X, Y),
            hparams={"eta": [0.1, 0.3]},
            epochs=1,
            batch_size=B,
            key=jax.random.key(3),
            unroll=bad,
        )
    with pytest.raises(jreg.JregError, match=message):
        jreg.make_epoch(OBJ, optax.sgd(0.3), B, unroll=bad)


BAD_STEP = 11  # inside the second unrolled iteration of 8 steps


def loss_goes_inf_at(bad_step):
    def objective(params, batch, step=None):
        """A finite gradient throughout; the loss value alone becomes +inf at global step ``bad_step``."""
        data = jnp.mean((batch[0] @ params["w"]) ** 2)
        value = data + jax.lax.stop_gradient(jnp.where(step == bad_step, jnp.inf, 0.0))
        return value, {"data": value}

    return objective


@pytest.mark.parametrize("unroll", [1, 8])
def test_the_guard_names_the_step_inside_an_unrolled_loop(unroll):
    params = {"w": jnp.ones((8, 2)) * 0.1}
    with pytest.raises(jreg.DivergenceError) as info:
        jreg.fit(
            loss_goes_inf_at(BAD_STEP),
            optax.sgd(0.01),
            params,
            (X, jnp.zeros(N)),
            epochs=2,
            batch_size=B,
            key=jax.random.key(0),
            monitor=(),
            unroll=unroll,
        )
    assert (info.value.epoch, info.value.step) == (0, BAD_STEP) and "the loss became inf" in info.value.quantity


@pytest.mark.parametrize("vectorize", ["vmap", "wide"])
def test_an_unmonitored_wide_or_vmapped_sweep_flags_the_one_model_that_went_bad(vectorize):
    def build(hp):
        def objective(params, batch, step=None):
            data = jnp.mean((batch[0] @ params["w"]) ** 2)
            bad = (hp["bad"] > 0) & (step == BAD_STEP)
            return data + jax.lax.stop_gradient(jnp.where(bad, jnp.inf, 0.0)), {"data": data}

        return objective, optax.sgd(0.01)

    _, history = jreg.sweep(
        build,
        {"w": jnp.ones((8, 2)) * 0.1},
        (X, jnp.zeros(N)),
        hparams={"bad": [0.0, 1.0, 0.0]},
        epochs=2,
        batch_size=B,
        key=jax.random.key(0),
        monitor=(),
        vectorize=vectorize,
        unroll=8,
    )
    assert set(history.diverged) == {1}
    assert history.diverged[1]["epoch"] == 1 and history.diverged[1]["step"] == BAD_STEP + 1  # 1-based there
