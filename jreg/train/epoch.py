"""One compiled epoch: shuffle, ``lax.scan`` over the mini-batches, the last partial batch."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.extend.core import jaxprs_in_params

from .._checks import check_key, check_positive_int
from .._errors import JregError
from .._signature import checked
from .._types import Batch, Metrics
from . import calls
from . import optimizer as optimizer_
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
    return {k: _weighted_mean(v, weights.reshape(weights.shape + (1,) * (v.ndim - 1))) for k, v in stacked.items()}


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(values * weights) / sum(weights)`` over the steps; where that overflows although every value is
    finite (losses near the float's largest value times the batch size), the mean with normalized weights."""
    mean = jnp.sum(values * weights, axis=0) / jnp.sum(weights)
    safe = jnp.sum(values * (weights / jnp.sum(weights)), axis=0)
    return jnp.where(jnp.isfinite(mean) | ~jnp.all(jnp.isfinite(values), axis=0), mean, safe)


def run_epoch(
    update: Update,
    plan: EpochPlan,
    state: TrainState,
    data: Batch,
    key: jax.Array,
    *,
    keyed: bool,
    sharding: Any = None,
    finite_only: bool = False,
    unroll: int | None = 1,
    index: jax.Array | None = None,
) -> tuple[TrainState, Metrics]:
    """One epoch of ``update`` steps over ``data`` as the plan says; metrics averaged over the examples seen.

    ``finite_only``: no per-step series; the epoch's metrics are ``{"finite": b}``, whether every step's
    loss was finite (one boolean per model carried through the scan: what the divergence guard needs when
    no running loss is monitored, without writing a value per step).
    ``unroll``: steps per iteration of the scan's loop (``lax.scan``'s ``unroll``: the same operations per
    step in fewer loop iterations, though XLA may fuse running averages across the unrolled steps and round
    them differently); ``None`` picks it from the backend and the step's size (:func:`auto_unroll`).
    ``index``: this model's training examples, ``(plan.n,)`` indices into ``data`` (per-member data,
    :mod:`jreg.train.members`): the plan shuffles positions in it and each step gathers
    ``data[index[positions]]``; None: ``data`` itself.
    """
    full, rest = plan.order(key)
    if index is not None:  # positions in this model's own training set -> examples of the shared arrays
        full, rest = index[full], index[rest]
    keys = plan.step_keys(key) if keyed else None
    first = take(data, full[0]), None if keys is None else keys[0]
    if state.model_state is not None:  # the state is a scan carry: its type may not change (checked at trace time)
        after, _ = jax.eval_shape(update, state, *first)
        calls.check_state_roundtrip(state.model_state, after.model_state)
    if unroll is None:
        unroll = auto_unroll(update, state, first, plan.full)
    xs = (full, None if keys is None else keys[: plan.full])
    if finite_only:
        return _run_finite(update, plan, state, data, xs, rest, keys, first, sharding, unroll)

    def body(state, xs):
        idx, k = xs
        state, metrics = update(state, take(data, idx, sharding), k)
        return state, (metrics or None)

    state, stacked = jax.lax.scan(body, state, xs, unroll=unroll)
    weights = jnp.full((plan.full,), plan.batch_size, jnp.float32)
    if plan.last:
        state, last = update(state, take(data, rest), None if keys is None else keys[plan.full])
        stacked = {k: jnp.concatenate([v, last[k][None]]) for k, v in (stacked or {}).items()}
        weights = jnp.append(weights, jnp.float32(plan.rest))
    return state, _mean_metrics(stacked, weights)


def _run_finite(update, plan, state, data, xs, rest, keys, first, sharding, unroll):
    def body(carry, xs):
        state, finite = carry
        idx, k = xs
        state, metrics = update(state, take(data, idx, sharding), k)
        return (state, finite & jnp.isfinite(metrics["loss"])), None

    loss = jax.eval_shape(update, state, *first)[1]["loss"]  # one per model in the "wide" sweep
    (state, finite), _ = jax.lax.scan(body, (state, jnp.ones(loss.shape, bool)), xs, unroll=unroll)
    if plan.last:
        state, last = update(state, take(data, rest), None if keys is None else keys[plan.full])
        finite &= jnp.isfinite(last["loss"])
    return state, {"finite": finite}


#: the most training steps one iteration of the compiled loop may hold (``lax.scan`` compiles up to
#: ``2 * unroll - 1`` copies of the step, and all of them once ``unroll`` passes half the epoch)
MAX_UNROLL = 64


def check_unroll(unroll: Any) -> int | None:
    """``unroll`` (training steps per iteration of the compiled loop): ``None`` or an int in 1..:data:`MAX_UNROLL`."""
    if unroll is None:
        return None
    unroll = check_positive_int(unroll, "unroll")
    if unroll > MAX_UNROLL:
        raise JregError(
            f"unroll must be at most {MAX_UNROLL} (steps per iteration of the compiled loop; each is compiled "
            f"as a copy of the step, so a larger value only lengthens compilation), got {unroll}"
        )
    return unroll


#: the most operations (counted through nested jaxprs) a step may have for the epoch to unroll its loop
UNROLL_MAX_OPS = 400
#: steps per loop iteration for such a step
UNROLL = 8


def auto_unroll(update: Update, state: TrainState, first: tuple[Batch, Any], steps: int) -> int:
    """:data:`UNROLL` when the step is small (at most :data:`UNROLL_MAX_OPS` operations) and the epoch has at least
    ``2 * UNROLL`` full steps, else 1, on every backend.

    A small step is bound by the loop's per-iteration cost (on an accelerator kernel launches, on a CPU the
    loop's bookkeeping and the step's small fusions), which unrolling divides; a large one would only compile
    longer. On a CPU it takes about 10 % off [784, 30, 10]'s epoch (docs/scaling.md). XLA fuses an unrolled
    body's running averages (an EMA of the params, BatchNorm statistics) differently from a rolled one, so their
    last bits differ from ``unroll=1``'s; ``unroll=1`` keeps the rolled loop.
    """
    if steps < 2 * UNROLL:
        return 1
    jaxpr = jax.make_jaxpr(update)(state, *first)
    return UNROLL if _count_ops(jaxpr.jaxpr, UNROLL_MAX_OPS + 1) <= UNROLL_MAX_OPS else 1


def _count_ops(jaxpr: Any, limit: int) -> int:
    """Operations in ``jaxpr`` and the jaxprs nested in it (stops counting past ``limit``)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += 1
        for sub in jaxprs_in_params(eqn.params):
            count += _count_ops(sub, limit - count)
        if count > limit:
            break
    return count


@checked("make_epoch")
def make_epoch(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    batch_size: int,
    *,
    partial_batch: str = "include",
    donate: bool = False,
    metrics: bool = True,
    unroll: int | None = None,
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

    ``unroll``: training steps per iteration of the compiled loop, as in
    :func:`jreg.fit` (``None``: on a GPU or TPU 8 for a small step, else 1;
    on a CPU 1).
    """
    calls.check_objective(objective)
    optimizer_.check(optimizer)
    batch_size = check_positive_int(batch_size, "batch_size")
    check_partial_batch(partial_batch)
    unroll = check_unroll(unroll)
    update = make_update(objective, optimizer, with_metrics=metrics)
    keyed, stateful = calls.takes_key(objective), calls.is_stateful(objective)

    def epoch(params, opt_state, train, key, step=None, *, model_state=None):
        calls.check_state_given(stateful, model_state)
        plan = make_plan(data_size(train), batch_size, partial_batch)
        state = TrainState(params, opt_state, model_state, None if step is None else jnp.asarray(step, jnp.int32))
        state, out = run_epoch(update, plan, state, train, key, keyed=keyed, unroll=unroll)
        if stateful:
            return state.params, state.opt_state, state.model_state, out
        return state.params, state.opt_state, out

    jitted = jax.jit(epoch, donate_argnames=("params", "opt_state", "model_state") if donate else ())

    @functools.wraps(epoch)
    def checked(params, opt_state, train, key, step=None, *, model_state=None):
        check_step_args(opt_state, check_key(key), step)
        return call_checked(jitted, params, opt_state, train, key, step, model_state, "train", optimizer)

    return checked
