"""Divergence on the host, one place for every front end: after the compiled epoch says a model went
non-finite (:mod:`jreg.train.guard` checks inside the program), name the step by replaying the epoch and
record it.

* :func:`single` (``fit``): raise :class:`jreg.DivergenceError` with the last finite state.
* :func:`members` (``sweep``): record each newly diverged member in ``history.diverged``, freeze it at its last
  finite state, blank its figures with NaN while the others go on.
* :func:`population` (paths, PBT): the same record, plus what a transfer between members changed (a frozen
  member revived, a live one given a frozen member's state).

With a :class:`jreg.Guard` (``fit``, ``sweep``), :class:`Limits` gives each epoch its traced limit on the running
loss and says, after the epoch, which rule a model broke: recorded as a divergence, without a replay (the
epoch's input state is the one kept, and no step is named).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .._errors import JregError
from . import calls, guard
from .config import EMA, Guard
from .engine import Build
from .history import History
from .loop import Hook, Run
from .monitor import EPOCH_LOSS
from .setup import Setup


class Limits:
    """A :class:`jreg.Guard` on the host: each epoch's limit on the running loss, and which rule an epoch broke.

    ``models``: None for ``fit`` (one limit), else K (one limit per model). The ratio rule's reference is the
    first ``epoch_loss`` in the run's history (a resumed run's history holds it; checkpoints keep it)."""

    def __init__(self, guard: Guard, models: int | None):
        self.guard, self.models = guard, models
        self.limit: np.ndarray | None = None  # the limit the last epoch ran with (float32, what the device compared)
        self.first: np.ndarray | None = None  # the ratio rule's reference (NaN where none)

    def next(self, history: History) -> dict[str, np.ndarray]:
        """The keyword the compiled epoch takes (``limit=``), for the epoch after ``history``'s last."""
        shape = () if self.models is None else (self.models,)
        limit = np.full(shape, np.inf if self.guard.max_loss is None else self.guard.max_loss, np.float64)
        self.first = np.full(shape, np.nan)
        losses = history.series.get(EPOCH_LOSS)
        if self.guard.max_ratio is not None and losses:
            first = np.asarray(losses[0], np.float64).reshape(shape)
            usable = np.isfinite(first) & (first > 0)  # a non-positive (or blanked) reference: no ratio rule
            self.first = np.where(usable, first, np.nan)
            limit = np.minimum(limit, np.where(usable, self.guard.max_ratio * np.where(usable, first, 1.0), np.inf))
        limit = np.where(limit > np.finfo(np.float32).max, np.inf, limit)  # beyond float32: no limit
        self.limit = limit.astype(np.float32)
        return {"limit": self.limit}

    def broken(self, values: dict[str, Any], i: int | None = None) -> tuple[str, str] | None:
        """``(rule, quantity)`` when the epoch's running loss (model ``i``'s) exceeded its limit, else None."""
        if self.limit is None or EPOCH_LOSS not in values:
            return None
        loss = np.asarray(values[EPOCH_LOSS]) if i is None else np.asarray(values[EPOCH_LOSS])[i]
        limit = self.limit if i is None else self.limit[i]
        if not (np.isfinite(loss) and loss > limit):  # a non-finite loss is the finiteness check's
            return None
        value = f"the running loss (epoch_loss) {float(loss):.6g}"
        if self.guard.max_loss is not None and loss > np.float32(self.guard.max_loss):
            return "max_loss", f"{value} exceeded Guard.max_loss = {self.guard.max_loss:g}"
        first = float(self.first if i is None else self.first[i])
        return "max_ratio", (
            f"{value} exceeded Guard.max_ratio = {self.guard.max_ratio:g} times the first epoch's {first:.6g}"
        )


def limits(guard: Guard | None, setup: Setup, models: int | None, where: str, checkpoint: Any = None) -> Limits | None:
    """The run's :class:`Limits` (None without a guard), after checking that the run can apply the guard."""
    if guard is None:
        return None
    if getattr(checkpoint, "every_steps", None) is not None:  # a resumed epoch would not hold its input state
        raise JregError(
            f"{where}: guard=jreg.Guard(...) with Checkpointing(every_steps=...) is not supported: the guard sends a "
            "model back to its epoch's input, which a run resumed mid-epoch no longer holds; drop one of the two"
        )
    if not setup.monitor.epoch_loss:
        raise JregError(
            f"{where}: guard=jreg.Guard(...) reads the running loss epoch_loss, which monitor= leaves out; "
            "add 'epoch_loss' to monitor (it is measured by default)"
        )
    return Limits(guard, models)


def single(objective, optimizer, setup: Setup, train, key, ema: EMA | None = None, rule: Limits | None = None) -> Hook:
    """Raise :class:`DivergenceError` when the epoch came out non-finite, naming the step (by replay), or broke
    a :class:`jreg.Guard` rule (``rule``), naming the rule and the value."""
    keyed = calls.takes_key(objective)
    decay = None if ema is None else ema.decay

    def hook(run: Run) -> None:
        if run.ok:
            return
        broken = None if rule is None else rule.broken(run.values)
        if broken is not None:  # the state kept is the epoch's input: the last one within the limit
            raise guard.DivergenceError(
                f"training diverged (after epoch {run.epoch + 1} of {run.epochs}): {broken[1]}. The params of the "
                f"last epoch within the limit are in error.params. {guard.ADVICE}",
                epoch=run.epoch,
                step=None,
                quantity=broken[1],
                params=run.state.params,
                opt_state=run.state.opt_state,
                model_state=run.state.model_state,
                history=run.history,
                rule=broken[0],
            )
        epoch_key = jax.random.fold_in(key, run.epoch)
        if setup.feed is not None:  # a stream: the failing chunk was replayed as the epoch ran
            found = setup.feed.found.get(None)
        else:
            found = guard.locate(objective, optimizer, setup.plan, run.state, train, epoch_key, keyed, decay)
        figures = {k: v for k, v in run.values.items() if setup.monitor.guarded(k)}
        step, quantity, where = guard.describe(found, figures, run.epoch, run.epochs)
        state = run.state if found is None else found[2]
        raise guard.DivergenceError(
            f"training diverged ({where}): {quantity}. The last finite params are in error.params. {guard.ADVICE}",
            epoch=run.epoch,
            step=step,
            quantity=quantity,
            params=state.params,
            opt_state=state.opt_state,
            model_state=state.model_state,
            history=run.history,
        )

    return hook


def locate_member(
    build: Build, values: dict[str, Any], setup: Setup, run: Run, i: int, key: Any, ema: EMA | None = None
) -> tuple[dict[str, Any], Any]:
    """``(record, found)`` for member ``i`` of ``run``, which diverged in epoch ``run.epoch`` training with the
    hyperparameters ``values``: its epoch replayed from the frozen state (the state that epoch started from) to
    name the step, and the record ``{"epoch", "step", "quantity"}`` (1-based) that ``history.diverged`` keeps;
    ``found`` is :func:`jreg.train.guard.locate`'s result (None when no step went bad)."""
    objective, optimizer = build(values)
    if setup.feed is not None:  # a stream: the failing chunk was replayed as the epoch ran
        found = setup.feed.found.get(int(i))
    else:
        decay = None if ema is None else ema.decay_of(values)
        state = jax.tree.map(lambda a: a[i], run.state)
        epoch_key, plan, train = jax.random.fold_in(key, run.epoch), setup.plan, setup.train
        if setup.members is not None:  # per-member data: the member's own examples, plan and epoch key
            plan, epoch_key = setup.members.member_plan(int(i)), setup.members.member_epoch_key(key, i, run.epoch)
            index = setup.members.member_index(int(i))
            train = train if index is None else jax.tree.map(lambda a: a[index], train)
        keyed = calls.takes_key(objective)
        found = guard.locate(objective, optimizer, plan, state, train, epoch_key, keyed, decay)
    figures = {k: v[i] for k, v in run.values.items() if setup.monitor.guarded(k)}
    step, quantity, _ = guard.describe(found, figures, run.epoch, run.epochs)
    return {"epoch": run.epoch + 1, "step": None if step is None else step + 1, "quantity": quantity}, found


def members(
    build: Build, hp: dict[str, jax.Array], setup: Setup, key: Any, ema: EMA | None = None, rule: Limits | None = None
) -> Hook:
    """Record each newly diverged model (replaying its epoch to name the step; a :class:`jreg.Guard` rule broken
    (``rule``) is recorded with no step and its quantity naming the rule) and blank its figures with NaN."""

    def hook(run: Run) -> None:
        history: History = run.history
        ok = np.asarray(run.ok)
        for i in np.flatnonzero(~ok):
            if int(i) in history.diverged:
                continue
            broken = None if rule is None else rule.broken(run.values, int(i))
            if broken is not None:  # frozen by the check at the epoch's input state: nothing to replay
                history.diverged[int(i)] = {"epoch": run.epoch + 1, "step": None, "quantity": broken[1]}
                continue
            history.diverged[int(i)], found = locate_member(
                build, {k: v[i] for k, v in hp.items()}, setup, run, i, key, ema
            )
            if found is not None:  # frozen at the last finite state, as fit's DivergenceError holds it
                run.state = jax.tree.map(lambda a, b, i=i: a.at[i].set(b), run.state, found[2])
        dead = sorted(history.diverged)
        if dead:
            run.values = {k: blank(v, dead) for k, v in run.values.items()}

    return hook


def blank(values: np.ndarray, dead: list[int]) -> np.ndarray:
    values = np.array(values, dtype=np.float64 if np.asarray(values).dtype == np.float64 else np.float32)
    values[dead] = np.nan
    return values


def population(pop: Any) -> tuple[Hook, Hook]:
    """Two hooks: record the members that diverged this epoch (first), and what the transfer changed (last):
    a frozen member it revived, or a live one it gave a frozen member's state."""
    flags = {"before": np.ones((pop.models,), bool), "trained": np.ones((pop.models,), bool)}

    def diverged(r: Run) -> None:
        history: History = r.history
        flags["trained"] = np.asarray(jax.device_get(r.alive), bool).reshape(-1)  # frozen by the engine or not
        for i in np.flatnonzero(flags["before"] & ~flags["trained"]):  # a frozen member's epochs stay non-finite
            values = {k: v[i] for k, v in pop.hp.items()}  # the values this epoch trained with (before any transfer)
            history.diverged[int(i)] = locate_member(pop.build, values, pop.setup, r, int(i), pop.key)[0]

    def transferred(r: Run) -> None:
        history: History = r.history
        now = np.asarray(jax.device_get(r.alive), bool).reshape(-1)
        for i in np.flatnonzero(now & ~flags["trained"]):
            if int(i) in history.diverged:
                history.diverged[int(i)].setdefault("revived", r.epoch + 1)
        for i in np.flatnonzero(~now & flags["trained"]):  # its figures are NaN from the next epoch on
            history.diverged[int(i)] = {
                "epoch": r.epoch + 2,
                "step": None,
                "quantity": f"the state it took after epoch {r.epoch + 1} was a frozen (diverged) member's",
            }
        flags["before"] = now

    return diverged, transferred
