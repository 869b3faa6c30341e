"""A streamed epoch's compiled program: each chunk one jitted ``lax.scan`` of the update (padding steps masked), the
divergence check per chunk read one chunk late, the failing chunk replayed step by step, then the monitored
series (the rules in :mod:`jreg.train.stream`'s docstring, "Keys and steps", "Monitoring" and "Divergence")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..._tree import all_finite
from .. import calls, guard
from .. import optimizer as optimizer_
from ..monitor import EPOCH_LOSS
from ..plan import NOISE_SALT
from ..state import TrainState
from ..step import make_update
from .feed import Chunk, Feed, Opened


def program(
    build: Callable[[Any], Any],
    feed: Feed,
    monitor: Any,
    *,
    models: int | None,
    vectorize: str = "vmap",
    sharding: Any = None,
    ema: Any = None,
    unroll: int | None = None,
) -> Callable[..., Any]:
    """``epoch(hp, state, alive, opened, evaluation, key, *, evaluate) -> (state, alive, metrics, ok)``.

    The streamed counterpart of :func:`jreg.train.engine.program`: ``opened`` is
    :meth:`Feed.epoch`'s result for the epoch. Chunks run as compiled scans;
    ``feed.found`` receives the replay of each model that diverged (key
    ``None`` for fit's one model, the model's index in a sweep).
    """
    feed.place(sharding)
    train_one = _chunk_trainer(build, sharding, ema, unroll)

    def chunk(hp, state, alive, acc, batches, valid, key, first, *, masked: bool):
        if models is None:
            return train_one(hp, state, alive, acc, batches, valid, key, first, masked)
        one = lambda h, s, a, c: train_one(h, s, a, c, batches, valid, key, first, masked)  # noqa: E731
        if vectorize == "vmap":
            return jax.vmap(one)(hp, state, alive, acc)
        return jax.lax.map(lambda t: one(*t), (hp, state, alive, acc))

    compiled = jax.jit(chunk, static_argnames=("masked",), donate_argnames=("state", "acc"))
    finished = jax.jit(_finisher(build, monitor, models, ema), static_argnames=("evaluate",))
    replay = _replayer(build, feed, ema)
    return _epoch(feed, models, compiled, finished, replay)


def _chunk_trainer(build: Callable[[Any], Any], sharding: Any, ema: Any, unroll: int | None) -> Callable[..., Any]:
    """``train_one(hp, state, alive, acc, batches, valid, key, first, masked) -> (state, alive, acc)``: one model
    through one chunk (a scan of the update; padding steps masked), then the check."""

    def train_one(hp, state: TrainState, alive, acc, batches, valid, key, first, masked: bool):
        objective, optimizer = build(hp)
        decay = None if ema is None else ema.decay_of(hp)
        update = make_update(objective, optimizer, with_metrics=True, ema_decay=decay)
        keyed = calls.takes_key(objective)
        base = jax.random.fold_in(key, NOISE_SALT)
        size = valid.shape[0]
        rows = jax.tree.leaves(batches)[0].shape[1]
        if state.model_state is not None:  # a scan carry: its type may not change
            one = jax.tree.map(lambda a: a[0], batches)
            after, _ = jax.eval_shape(update, state, one, base if keyed else None)
            calls.check_state_roundtrip(state.model_state, after.model_state)

        def body(carry, xs):
            batch, ok, i = xs
            if sharding is not None:
                batch = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)
            new, metrics = update(carry, batch, jax.random.fold_in(base, first + i) if keyed else None)
            loss = metrics["loss"]
            if masked:
                new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, carry)
                loss = jnp.where(ok, loss, 0.0)
            return new, loss

        xs = (batches, valid, jnp.arange(size, dtype=jnp.int32))
        # a streamed epoch is bound by the host feeding it; its loop is unrolled only when asked
        new, losses = jax.lax.scan(body, state, xs, unroll=1 if unroll is None else unroll)
        loss_sum = jnp.sum(losses) * rows
        state, ok, alive = guard.check(state, new, [loss_sum], alive)
        acc = acc + jnp.where(alive, loss_sum, 0.0)
        return state, alive, acc

    return train_one


def _finisher(build: Callable[[Any], Any], monitor: Any, models: int | None, ema: Any) -> Callable[..., Any]:
    """``finish(hp, state, alive, evaluation, acc, rows, *, evaluate) -> (metrics, ok)``: the epoch's series."""

    def measure_one(hp, state: TrainState, evaluation):
        objective, _ = build(hp)
        params = optimizer_.state_params(state, ema is not None and ema.evaluate)
        return monitor.measure(objective, params, state.model_state, None, evaluation, state.step)

    def finish(hp, state, alive, evaluation, acc, rows, *, evaluate: bool):
        metrics = {EPOCH_LOSS: acc / rows} if monitor.epoch_loss else {}
        if evaluate:
            measure = measure_one if models is None else jax.vmap(measure_one, in_axes=(0, 0, None))
            metrics.update(measure(hp, state, evaluation))
        guarded = [v for k, v in metrics.items() if monitor.guarded(k)]
        if models is None:
            ok = alive & all_finite(guarded)
        else:
            ok = alive & jax.vmap(lambda *g: all_finite(list(g)))(*guarded) if guarded else alive
        return metrics, ok

    return finish


def _replayer(build: Callable[[Any], Any], feed: Feed, ema: Any) -> Callable[..., None]:
    """``replay(hp, state, chunk, key, model)``: the diverged model's chunk step by step, into ``feed.found``."""
    ema_decay = (lambda hp: None) if ema is None else ema.decay_of

    def replay(hp, state, chunk_: Chunk, key, model):
        """Step by step through the chunk from the state it started with (frozen there by the check)."""
        values = hp if model is None else {k: v[model] for k, v in hp.items()}
        objective, optimizer = build(values)
        keyed = calls.takes_key(objective)
        start = state if model is None else jax.tree.map(lambda a: a[model], state)
        base = jax.random.fold_in(key, NOISE_SALT)
        steps = (
            (
                jax.tree.map(lambda a, j=j: a[j], chunk_.batches),
                jax.random.fold_in(base, chunk_.first + j) if keyed else None,
            )
            for j in range(chunk_.count)
        )
        found = guard.locate_steps(objective, optimizer, start, steps, ema_decay(values), first=chunk_.first)
        if found is not None:
            feed.found[model] = found

    return replay


def _epoch(
    feed: Feed, models: int | None, compiled: Any, finished: Any, replay: Callable[..., None]
) -> Callable[..., Any]:
    """The host loop over an opened epoch's chunks: each chunk trained, the previous one's check read."""

    def epoch(hp, state, alive, opened: Opened, evaluation, key, *, evaluate: bool, limit=None):
        feed.found = {}
        alive = jnp.asarray(True) if models is None else alive
        # a Guard's rule is read at the epoch's end: the epoch's input is kept (a copy: the chunks donate the state)
        start = None if limit is None else jax.tree.map(jnp.copy, state)
        acc, rows = _totals(feed, opened.epoch, models)
        dead, stopped = set(), False
        # members frozen before this epoch (diverged or stopped: their flags are down already) do not hold back a
        # mid-epoch checkpoint; one that diverges during the epoch does (it is recorded at the epoch's end)
        before = set() if feed.saver is None else set(np.flatnonzero(~np.atleast_1d(jax.device_get(alive))))
        full = np.ones((feed.chunk,), bool)
        previous: tuple[Chunk, Any] | None = None
        due: tuple[int, Any] | None = None  # a mid-epoch checkpoint to write once the epoch is known to go on

        def check(item: Chunk, flags: Any) -> bool:
            """Replay the models that ``item`` made non-finite; True when training should stop (fit). Reading
            ``flags`` waits for the compiled call that read ``item``, so its host buffers go back to the feed."""
            now = np.atleast_1d(np.asarray(jax.device_get(flags)))
            newly = [i for i in np.flatnonzero(~now) if i not in dead]
            for i in newly:
                dead.add(i)
                replay(hp, state, item, key, None if models is None else int(i))
            item.release()
            return models is None and bool(newly) or len(dead) == (models or 1)

        with opened.chunks() as chunks:
            for item in chunks:
                if due is not None:  # the state after the previous chunk, before this one takes (donates) it
                    if previous is not None and check(*previous):
                        stopped = True
                        break
                    previous = None
                    if dead <= before:  # a member that diverged this epoch is recorded at its end: no checkpoint before
                        _save(feed, state, alive, opened.epoch, due, acc, rows, models)
                    due = None
                masked = item.count < item.size
                valid = np.arange(item.size) < item.count if masked else full[: item.size]
                first = np.int32(item.first)
                state, alive, acc = compiled(hp, state, alive, acc, item.batches, valid, key, first, masked=masked)
                rows += item.count * item.rows
                if previous is not None and check(*previous):
                    stopped = True
                    break
                previous = (item, alive)
                done = item.first + item.count
                if (
                    feed.saver is not None
                    and item.position is not None
                    and done // feed.every_steps > item.first // feed.every_steps
                ):
                    due = (done, item.position)
        if not stopped and previous is not None:
            check(*previous)
        metrics, ok = finished(hp, state, alive, evaluation, acc, jnp.float32(max(rows, 1)), evaluate=evaluate)
        if limit is not None:
            state, ok, alive = _within(start, state, metrics[EPOCH_LOSS], limit, ok, alive)
        return state, (None if models is None else alive), metrics, ok

    return epoch


@jax.jit
def _within(start: TrainState, state: TrainState, loss: Any, limit: Any, ok: Any, alive: Any) -> tuple:
    """A :class:`jreg.Guard` on a streamed epoch: a model whose running loss exceeds its ``limit`` goes back to
    the epoch's input ``start`` (the last state within the limit, as in memory) and fails the check."""
    over = loss > limit
    keep = ~over

    def pick(new: jax.Array, old: jax.Array) -> jax.Array:
        return jnp.where(keep.reshape(keep.shape + (1,) * (new.ndim - keep.ndim)), new, old)

    return jax.tree.map(pick, state, start), ok & keep, alive & keep


def _totals(feed: Feed, epoch: int, models: int | None) -> tuple[jax.Array, int]:
    """The epoch's running loss sum and example count: zero, or what a mid-epoch checkpoint resumed from had."""
    acc = jnp.zeros(() if models is None else (models,), jnp.float32)
    totals, feed.totals = feed.totals, None
    if totals is None or totals[0] != epoch:
        return acc, 0
    saved = np.asarray(totals[1], np.float32)  # its shape was checked on resume (Feed.resume_at)
    return jnp.asarray(saved.reshape(acc.shape)), int(totals[2])


def _save(feed: Feed, state: Any, alive: Any, epoch: int, due: tuple[int, Any], acc: Any, rows: int, models) -> None:
    """Write the mid-epoch checkpoint ``due`` (its step and the iterator's state then) through ``feed.saver``."""
    loss = np.asarray(jax.device_get(acc), np.float64)
    position = {
        "epoch": epoch,
        "step": int(due[0]),
        "rows": int(rows),
        "loss_sum": float(loss) if models is None else [float(v) for v in loss],
        "iterator": due[1],
    }
    assert feed.saver is not None
    feed.saver(state, alive, position)
