"""An independent review of the unrolled training loop: the cases it found, as regression tests.

``lax.scan(..., unroll=u)`` is not bit-identical to ``unroll=1`` on a CPU once an elementwise recurrence
runs from step to step (an EMA of the params, a BatchNorm-like running statistic): unrolled, XLA fuses the
recurrence of several steps into one kernel and LLVM contracts its multiply-adds differently. So the CPU
default stays 1 (these runs keep their bits), and a run saved with the default resumes bit for bit step by
step. A huge ``unroll`` would unroll the whole epoch (``lax.scan`` does when ``unroll`` exceeds half the
length, a compile of hours): it is refused. A running loss that overflows although every step's loss is
finite is no divergence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend.core import jaxprs_in_params

import jreg

N, B = 160, 5  # 32 full steps: unroll=None picks 8 for the small steps below
X = jax.random.normal(jax.random.key(0), (N, 8))
Y = jax.random.randint(jax.random.key(1), (N,), 0, 3)
MODEL = jreg.mlp([8, 6, 3])
OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-3))
P0 = MODEL.init(jax.random.key(2))
KEY = jax.random.key(3)
ON_CPU = jax.default_backend() == "cpu"
cpu_only = pytest.mark.skipif(not ON_CPU, reason="bit-identity is promised on a CPU only")


def assert_bitwise(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@cpu_only
@pytest.mark.parametrize("unroll", [None], ids=["default"])
def test_fit_with_an_ema_by_default_is_bit_identical(unroll):
    kwargs = dict(epochs=1, batch_size=B, key=KEY, monitor=(), ema=jreg.EMA(0.9))
    step_by_step, _ = jreg.fit(OBJ, optax.sgd(0.3), P0, (X, Y), unroll=1, **kwargs)
    unrolled, _ = jreg.fit(OBJ, optax.sgd(0.3), P0, (X, Y), unroll=unroll, **kwargs)
    assert_bitwise(unrolled, step_by_step)


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
def test_fit_of_a_stateful_model_by_default_is_bit_identical():
    params = {"w": 0.3 * jax.random.normal(jax.random.key(5), (8, 3)), "b": jnp.zeros(3)}
    state = {"mean": jnp.zeros(8)}
    obj = jreg.objective(running_mean_apply, jreg.losses.softmax_cross_entropy)
    kwargs = dict(model_state=state, epochs=1, batch_size=B, key=KEY, monitor=())
    step_by_step = jreg.fit(obj, optax.sgd(0.3), params, (X, Y), unroll=1, **kwargs)[:2]
    unrolled = jreg.fit(obj, optax.sgd(0.3), params, (X, Y), unroll=None, **kwargs)[:2]
    assert_bitwise(unrolled, step_by_step)


@cpu_only
def test_wide_sweep_with_an_ema_by_default_is_bit_identical():
    def build(hp):
        return OBJ, optax.adam(hp["eta"])

    kwargs = dict(hparams={"eta": [0.01, 0.03]}, epochs=1, batch_size=B, key=KEY, monitor=(), vectorize="wide")
    step_by_step, _ = jreg.sweep(build, P0, (X, Y), ema=jreg.EMA(0.9), unroll=1, **kwargs)
    unrolled, _ = jreg.sweep(build, P0, (X, Y), ema=jreg.EMA(0.9), unroll=None, **kwargs)
    assert_bitwise(unrolled, step_by_step)


@cpu_only
def test_a_run_checkpointed_by_default_resumes_step_by_step_bit_for_bit(tmp_path):
    kwargs = dict(batch_size=B, key=KEY, monitor=(), ema=jreg.EMA(0.9))
    whole, _ = jreg.fit(OBJ, optax.sgd(0.3), P0, (X, Y), epochs=2, unroll=1, **kwargs)
    ck = jreg.Checkpointing(tmp_path / "run")
    jreg.fit(OBJ, optax.sgd(0.3), P0, (X, Y), epochs=1, checkpoint=ck, **kwargs)
    resumed, _ = jreg.fit(
        OBJ, optax.sgd(0.3), P0, (X, Y), epochs=2, checkpoint=ck, resume=tmp_path / "run", unroll=1, **kwargs
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
    jreg.fit(objective, optax.sgd(0.01), params, (X, jnp.zeros(N)), monitor=(), **kwargs)  # passes
    _, history = jreg.fit(objective, optax.sgd(0.01), params, (X, jnp.zeros(N)), monitor=("epoch_loss",), **kwargs)
    assert np.isfinite(history["epoch_loss"][-1])
