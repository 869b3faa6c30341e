"""The compiled epoch shared by fit and sweep: train, monitor, check, for one model or K of them.

``build(hp) -> (objective, optimizer)`` gives a model's objective and
optimizer from its hyperparameters (for ``fit``: the one pair, whatever
``hp``). The program runs one epoch of training (:func:`run_epoch`), then,
when due, the monitored evaluations on the new params, then the divergence
check, and returns ``(state, alive, metrics, ok)``. For a sweep the same
functions run over a leading model axis: training with ``jax.vmap`` or one
model after another (``lax.map``), evaluation always batched across models
(the shared data meets every model's weights in one matmul), the check per
model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from . import calls, guard, stream
from .config import EMA
from .epoch import run_epoch
from .monitor import EPOCH_LOSS, Monitor
from .plan import EpochPlan
from .state import TrainState
from .step import make_update

Build = Callable[[Any], tuple[Callable[..., Any], optax.GradientTransformation]]
VECTORIZE = ("auto", "vmap", "map", "wide")


def program(
    build: Build,
    plan: EpochPlan,
    monitor: Monitor,
    *,
    models: int | None,
    vectorize: str = "vmap",
    sharding=None,
    ema: EMA | None = None,
    feed: stream.Feed | None = None,
) -> Callable[..., Any]:
    """Jitted ``epoch(hp, state, alive, train, evaluation, key, *, evaluate) -> (state, alive, metrics, ok)``.

    ``models=None``: one model (``fit``); else the state, ``hp`` and ``alive``
    have a leading axis of size ``models``. ``state`` is donated. With ``ema``
    (:class:`jreg.EMA`; ``state.ema`` then holds the average) every step updates
    the EMA of the params with the model's decay, and ``ema.evaluate`` measures
    the monitored series with the EMA params.

    With ``feed`` (a streamed run, :mod:`jreg.train.stream`) the program takes
    the opened epoch (``feed.epoch(e)``) in place of ``train`` and runs it in
    compiled chunks.
    """
    if feed is not None:  # a stream's chunks: "wide" runs as "vmap" there
        vectorize = "vmap" if vectorize == "wide" else vectorize
        return stream.program(build, feed, monitor, models=models, vectorize=vectorize, sharding=sharding, ema=ema)

    def train_one(hp, state: TrainState, train, key):
        objective, optimizer = build(hp)
        # the loss value is always computed: the guard needs it even when nothing is monitored (a loss can
        # become inf or NaN while its gradient stays finite); it costs little beside the gradient
        decay = None if ema is None else ema.decay_of(hp)
        update = make_update(objective, optimizer, with_metrics=True, ema_decay=decay)
        return run_epoch(update, plan, state, train, key, keyed=calls.takes_key(objective), sharding=sharding)

    def train_wide(hp, state: TrainState, train, key):
        """The K models ``vmap``-ed inside each step of one scan, every weight matrix carried with the model axis
        second (``(784, K, 30)``): the shared mini-batch meets all K first layers in one wide matmul."""
        carried = jax.tree.map(_model_axis_second, state)
        axes = jax.tree.map(lambda a: 1 if a.ndim >= 3 else 0, carried)
        keyed = calls.takes_key(build(jax.tree.map(lambda v: v[0], hp))[0])

        def one(h, s, batch, k):
            objective, optimizer = build(h)
            decay = None if ema is None else ema.decay_of(h)
            return make_update(objective, optimizer, with_metrics=True, ema_decay=decay)(s, batch, k)

        def update(s, batch, k):
            return jax.vmap(one, in_axes=(0, axes, None, None), out_axes=(axes, 0))(hp, s, batch, k)

        new, running = run_epoch(update, plan, carried, train, key, keyed=keyed, sharding=sharding)
        return jax.tree.map(_model_axis_first, new), running

    def measure_one(hp, state: TrainState, train, evaluation):
        objective, _ = build(hp)
        params = state.ema if ema is not None and ema.evaluate else state.params
        return monitor.measure(objective, params, state.model_state, train, evaluation, state.step)

    def check_one(old: TrainState, new: TrainState, loss, metrics, alive):
        return guard.check(old, new, [loss, *(v for k, v in metrics.items() if monitor.guarded(k))], alive)

    def epoch(hp, state, alive, train, evaluation, key, *, evaluate: bool):
        if models is None:
            new, running = train_one(hp, state, train, key)
        elif vectorize == "vmap":
            new, running = jax.vmap(train_one, in_axes=(0, 0, None, None))(hp, state, train, key)
        elif vectorize == "wide":
            new, running = train_wide(hp, state, train, key)
        else:
            new, running = jax.lax.map(lambda a: train_one(a[0], a[1], train, key), (hp, state))
        metrics = {EPOCH_LOSS: running["loss"]} if monitor.epoch_loss else {}
        if evaluate:
            measure = measure_one if models is None else jax.vmap(measure_one, in_axes=(0, 0, None, None))
            metrics.update(measure(hp, new, train, evaluation))
        check = check_one if models is None else jax.vmap(check_one)
        state, ok, alive = check(state, new, running["loss"], metrics, alive)
        return state, alive, metrics, ok

    return jax.jit(epoch, static_argnames=("evaluate",), donate_argnames=("state",))


def _model_axis_second(a: jax.Array) -> jax.Array:
    """A stacked leaf ``(K, n_in, ...)`` carried as ``(n_in, K, ...)`` (vectors and scalars stay ``(K, ...)``)."""
    return jnp.moveaxis(a, 0, 1) if a.ndim >= 3 else a


def _model_axis_first(a: jax.Array) -> jax.Array:
    return jnp.moveaxis(a, 1, 0) if a.ndim >= 3 else a
