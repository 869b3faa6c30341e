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
from jax.extend.core import jaxprs_in_params

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


def test_auto_unroll_unrolls_small_steps_of_long_epochs():
    """On every backend since 0.3, a CPU too (about 10 % of an epoch there, docs/scaling.md); the rule reads only
    the step's size and the epoch's length."""
    first = ((X[:B], Y[:B]), jax.random.key(0))
    update, state = small_update(), state_of(P0)
    assert epoch_module.auto_unroll(update, state, first, 40) == epoch_module.UNROLL
    assert epoch_module.auto_unroll(update, state, first, 2 * epoch_module.UNROLL - 1) == 1
    deep = jreg.mlp([8] + [4] * 30 + [3])  # a step of far more than UNROLL_MAX_OPS operations
    objective = jreg.objective(deep.apply, jreg.losses.cross_entropy)
    params = deep.init(jax.random.key(0))
    big = make_update(objective, optax.sgd(0.3))
    assert epoch_module.auto_unroll(big, state_of(params), first, 40) == 1


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


# --------------------------------------------------------------------------- an independent review's cases
# ``lax.scan(..., unroll=u)`` is not bit-identical to ``unroll=1`` on a CPU once an elementwise recurrence
# runs from step to step (an EMA of the params, a BatchNorm-like running statistic): unrolled, XLA fuses the
# recurrence of several steps into one kernel and LLVM contracts its multiply-adds differently. Since 0.3 the
# CPU default unrolls small steps too (about 10 % of an epoch): the default is exactly ``unroll=8`` there,
# equals ``unroll=1`` up to float rounding, and a run saved with the default resumes with the default bit for
# bit. A huge ``unroll`` would unroll the whole epoch (``lax.scan`` does when ``unroll`` exceeds half the
# length, a compile of hours): it is refused. A running loss that overflows although every step's loss is
# finite is no divergence.

N32 = 160  # 32 full steps of B: unroll=None picks 8 for the small steps below
X32 = jax.random.normal(jax.random.key(0), (N32, 8))
Y32 = jax.random.randint(jax.random.key(1), (N32,), 0, 3)
KEY = jax.random.key(3)

cpu_only = pytest.mark.skipif(not ON_CPU, reason="bit-identity is promised on a CPU only")


def assert_bitwise(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def assert_close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


def by_default_unrolled(run):
    """``run(unroll)``'s result with the default: exactly ``unroll=UNROLL``'s, and ``unroll=1``'s up to rounding."""
    default = run(None)
    assert_bitwise(default, run(epoch_module.UNROLL))
    assert_close(default, run(1))


@cpu_only
def test_fit_with_an_ema_by_default_is_unrolled():
    kwargs = dict(epochs=1, batch_size=B, key=KEY, monitor=(), ema=jreg.EMA(0.9))
    by_default_unrolled(lambda u: jreg.fit(OBJ, optax.sgd(0.3), P0, (X32, Y32), unroll=u, **kwargs).params)


MOMENTUM = 0.8


def running_mean_apply(params, x, *, state, train, key=None):
    """A BatchNorm-like model: centre x with the batch mean in training (updating a running mean)."""
    if train:
        mean = x.mean(axis=0)
        state = {"mean": MOMENTUM * state["mean"] + (1 - MOMENTUM) * mean}
    else:
        mean = state["mean"]
    return (x - mean) @ params["w"] + params["b"], state


@cpu_only
def test_fit_of_a_stateful_model_by_default_is_unrolled():
    params = {"w": 0.3 * jax.random.normal(jax.random.key(5), (8, 3)), "b": jnp.zeros(3)}
    state = {"mean": jnp.zeros(8)}
    obj = jreg.objective(running_mean_apply, jreg.losses.softmax_cross_entropy)
    kwargs = dict(model_state=state, epochs=1, batch_size=B, key=KEY, monitor=())
    by_default_unrolled(lambda u: jreg.fit(obj, optax.sgd(0.3), params, (X32, Y32), unroll=u, **kwargs)[:2])


@cpu_only
def test_wide_sweep_with_an_ema_by_default_is_unrolled():
    def build(hp):
        return OBJ, optax.adam(hp["eta"])

    kwargs = dict(hparams={"eta": [0.01, 0.03]}, epochs=1, batch_size=B, key=KEY, monitor=(), vectorize="wide")
    by_default_unrolled(lambda u: jreg.sweep(build, P0, (X32, Y32), ema=jreg.EMA(0.9), unroll=u, **kwargs).params)


@cpu_only
def test_a_run_checkpointed_by_default_resumes_by_default_bit_for_bit(tmp_path):
    kwargs = dict(batch_size=B, key=KEY, monitor=(), ema=jreg.EMA(0.9))
    whole, _ = jreg.fit(OBJ, optax.sgd(0.3), P0, (X32, Y32), epochs=2, **kwargs)
    ck = jreg.Checkpointing(tmp_path / "run")
    jreg.fit(OBJ, optax.sgd(0.3), P0, (X32, Y32), epochs=1, checkpoint=ck, **kwargs)
    resumed, _ = jreg.fit(
        OBJ, optax.sgd(0.3), P0, (X32, Y32), epochs=2, checkpoint=ck, resume=tmp_path / "run", **kwargs
    )
    assert_bitwise(resumed, whole)


def _step_copies(jaxpr) -> list[int]:
    """Copies of the loop body each ``scan`` in ``jaxpr`` compiles (``lax.scan``'s rule for ``unroll``)."""
    copies = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            length, unroll = eqn.params["length"], eqn.params["unroll"]
            trips, rest = divmod(length, unroll) if unroll else (0, length)
            copies.append(length if trips <= 1 and (trips == 0 or rest == 0) else unroll + rest)
        for sub in jaxprs_in_params(eqn.params):
            copies += _step_copies(sub)
    return copies


def test_a_huge_unroll_does_not_unroll_the_whole_epoch():
    """unroll=10**9 would make lax.scan unroll all 1000 steps of the epoch: a compile of many minutes (100 steps
    already take about 100 s on a CPU). It must be refused up front or capped."""
    n = 1000
    x, y = jnp.zeros((n, 8)), jnp.zeros((n,), jnp.int32)
    opt = optax.sgd(0.1)
    try:
        epoch = jreg.make_epoch(OBJ, opt, 1, unroll=10**9)
        jaxpr = jax.make_jaxpr(epoch)(P0, opt.init(P0), (x, y), KEY)  # traced only: nothing compiles
    except jreg.JregError as error:
        assert "unroll" in str(error)
        return
    copies = _step_copies(jaxpr.jaxpr)
    assert copies and max(copies) <= 256, f"the epoch's loop compiles {max(copies)} copies of the step"


def test_running_loss_overflow_is_not_a_divergence_when_monitored():
    """Every step's loss is finite (1e38) and so are the params; with ``monitor=()`` fit trains on (the guard
    reads per-step finite flags), and monitoring ``epoch_loss`` must agree: the running mean, summed as
    loss * batch_size (5e38 overflows float32), falls back to normalized weights."""

    def objective(params, batch):
        data = jnp.mean((batch[0] @ params["w"]) ** 2)
        return data + jax.lax.stop_gradient(jnp.float32(1e38)), {"data": data}

    params = {"w": jnp.ones((8, 2)) * 0.1}
    kwargs = dict(epochs=1, batch_size=B, key=KEY, unroll=1)
    jreg.fit(objective, optax.sgd(0.01), params, (X32, jnp.zeros(N32)), monitor=(), **kwargs)  # passes
    _, history = jreg.fit(objective, optax.sgd(0.01), params, (X32, jnp.zeros(N32)), monitor=("epoch_loss",), **kwargs)
    assert np.isfinite(history["epoch_loss"][-1])
