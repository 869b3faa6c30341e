"""One compiled epoch: shuffle, ``lax.scan`` over the mini-batches, the last partial batch."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .._checks import check_key, check_optimizer, check_positive_int
from .._types import Batch, Metrics
from . import calls
from .inputs import data_size
from .plan import EpochPlan, check_partial_batch, make_plan
from .state import TrainState
from .step import Update, call_checked, check_step_args, make_update


def take(data: Batch, idx: jax.Array, sharding: Any = None) -> Batch:
    """The examples ``idx`` of every leaf (one mini-batch gathered inside the step: no copy of the data set)."""
    batch = jax.tree.map(lambda a: a[idx], data)
    if sharding is not None:  # split the mini-batch across the mesh's data axis
        batch = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)
    return batch


def _mean_metrics(stacked: Metrics | None, weights: jax.Array) -> Metrics:
    if not stacked:
        return {}
    # a step's metric may hold one value per model (the "wide" sweep): weights broadcast over the steps axis
    return {
        k: jnp.sum(v * weights.reshape(weights.shape + (1,) * (v.ndim - 1)), axis=0) / jnp.sum(weights)
        for k, v in stacked.items()
    }


def run_epoch(
    update: Update,
    plan: EpochPlan,
    state: TrainState,
    data: Batch,
    key: jax.Array,
    *,
    keyed: bool,
    sharding: Any = None,
) -> tuple[TrainState, Metrics]:
    """One epoch of ``update`` steps over ``data`` as the plan says; metrics averaged over the examples seen."""
    full, rest = plan.order(key)
    keys = plan.step_keys(key) if keyed else None
    if state.model_state is not None:  # the state is a scan carry: its type may not change (checked at trace time)
        after, _ = jax.eval_shape(update, state, take(data, full[0]), None if keys is None else keys[0])
        calls.check_state_roundtrip(state.model_state, after.model_state)

    def body(state, xs):
        idx, k = xs
        state, metrics = update(state, take(data, idx, sharding), k)
        return state, (metrics or None)

    state, stacked = jax.lax.scan(body, state, (full, None if keys is None else keys[: plan.full]))
    weights = jnp.full((plan.full,), plan.batch_size, jnp.float32)
    if plan.last:
        state, last = update(state, take(data, rest), None if keys is None else keys[plan.full])
        stacked = {k: jnp.concatenate([v, last[k][None]]) for k, v in (stacked or {}).items()}
        weights = jnp.append(weights, jnp.float32(plan.rest))
    return state, _mean_metrics(stacked, weights)


def make_epoch(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    batch_size: int,
    *,
    partial_batch: str = "include",
    donate: bool = False,
    metrics: bool = True,
) -> Callable[..., Any]:
    """One epoch of mini-batch training as one compiled call.

    Returns jitted ``epoch(params, opt_state, train, key, step=None) -> (params, opt_state, metrics)``
    with ``train = (x, y)`` (or any pytree of arrays sharing the leading
    example axis that the objective's ``split`` takes apart). It shuffles the
    example indices with ``jax.random.permutation(key, n)``, cuts them into
    ``n // batch_size`` mini-batches (:func:`jreg.data.batch_indices`) and runs
    the steps with ``jax.lax.scan``, each step gathering its own mini-batch
    (no Python loop, no host round trip, no per-epoch copy of the data set).

    The last partial batch: when ``batch_size`` does not divide ``n``, the
    ``n % batch_size`` examples left over after shuffling form one smaller
    final step with ``partial_batch="include"`` (the default; as network2.py
    does, and its gradient is the mean over those examples), or are skipped
    for this epoch with ``partial_batch="drop"`` (every example is still seen
    over many epochs, since each epoch shuffles anew).

    Randomness and steps: the shuffle uses ``key`` itself; a stochastic
    objective (one that takes ``key``, as every :func:`jreg.objective` does)
    gets a fresh key per mini-batch, split from ``fold_in(key, salt)``, so
    dropout masks and noise differ per step and are reproducible. ``step`` is
    the global step count of the epoch's first mini-batch (``epoch_index *
    steps_per_epoch`` when every epoch has the same number of steps); the
    objective gets ``step + i`` at mini-batch ``i``, for coefficient
    schedules. Leave it ``None`` when no penalty has a schedule.

    A stateful model: ``epoch(params, opt_state, train, key, step, model_state=s)``
    returns ``(params, opt_state, model_state, metrics)``.

    ``metrics`` are the step metrics averaged over the epoch's examples (the
    running training objective, measured before each step). With
    ``metrics=False`` the steps take the gradient only and the epoch returns
    ``{}``: on small networks computing the loss value every step costs a few
    percent of the epoch (see docs/benchmarks.md).
    """
    calls.check_objective(objective)
    check_optimizer(optimizer)
    batch_size = check_positive_int(batch_size, "batch_size")
    check_partial_batch(partial_batch)
    update = make_update(objective, optimizer, with_metrics=metrics)
    keyed, stateful = calls.takes_key(objective), calls.is_stateful(objective)

    def epoch(params, opt_state, train, key, step=None, *, model_state=None):
        calls.check_state_given(stateful, model_state)
        plan = make_plan(data_size(train), batch_size, partial_batch)
        state = TrainState(params, opt_state, model_state, None if step is None else jnp.asarray(step, jnp.int32))
        state, out = run_epoch(update, plan, state, train, key, keyed=keyed)
        if stateful:
            return state.params, state.opt_state, state.model_state, out
        return state.params, state.opt_state, out

    jitted = jax.jit(epoch, donate_argnames=("params", "opt_state", "model_state") if donate else ())

    @functools.wraps(epoch)
    def checked(params, opt_state, train, key, step=None, *, model_state=None):
        check_step_args(opt_state, check_key(key), step)
        return call_checked(jitted, params, opt_state, train, key, step, model_state)

    return checked
