"""Early stopping in the engine: the series watched (:func:`check`), fit's hooks (:class:`Stopper`) and sweep's
(:class:`SweepStopper`), both applying the one rule of :mod:`jreg.stopping` (:func:`jreg.stopping.advance`).

fit keeps one model's state as the JSON dict its checkpoints store (``{best, best_epoch, wait, lr_scale,
stopped}``) and applies the rule on the host through :meth:`jreg.EarlyStopping.update` (float64). A sweep keeps
K models' state as ``(K,)`` arrays on the device (:class:`jreg.stopping.PerModel`) and applies the rule in one
small jitted function right after each measured epoch: the best params are a copy of the stacked params kept
with ``where(improved, params, best)`` (only with ``restore_best``), and a stopped model leaves the sweep's
``alive`` flags, so the compiled epoch freezes it exactly as it freezes a diverged one. Its learning-rate
scales are :func:`jreg.stopping.schedule`'s table (float64 products, then float32), indexed by each model's
cuts, so the scales and the epoch a schedule stops at are fit's exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint as ckpt
from .. import stopping
from .._errors import JregError, JregTypeError
from ..stopping import MAX_CUTS, EarlyStopping, PerModel
from . import checkpoint_folder
from . import optimizer as optimizer_
from .loop import Run
from .monitor import EPOCH_LOSS, Monitor
from .resume import load_best
from .state import TrainState

#: what ``EarlyStopping(monitor=None)`` watches: the first of these the run measures
DEFAULT_WATCHED = ("evaluation_accuracy", "evaluation_cost")


def check(early_stopping: Any, monitor: Monitor, where: str = "fit") -> EarlyStopping | None:
    """The rule with its series chosen (``monitor=None``: :data:`DEFAULT_WATCHED`) and checked to be measured."""
    if early_stopping is None:
        return None
    if not isinstance(early_stopping, EarlyStopping):
        raise JregTypeError(
            f"early_stopping must be a jreg.EarlyStopping, e.g. EarlyStopping(patience=10), got {early_stopping!r}"
        )
    wanted = monitor.wanted
    if early_stopping.monitor is None:
        watched = next((name for name in DEFAULT_WATCHED if name in wanted), None)
        if watched is None:
            why = monitor.fix(DEFAULT_WATCHED[0] if monitor.has_evaluation else DEFAULT_WATCHED[1])
            raise JregError(
                f"EarlyStopping() watches evaluation_accuracy, or evaluation_cost without it, which this {where} "
                f"does not monitor (it monitors {sorted(wanted)}): {why}; or name the series to watch, e.g. "
                f"EarlyStopping(monitor={EPOCH_LOSS!r}) for the training loss"
            )
        return early_stopping.watching(watched)
    if early_stopping.monitor not in wanted:
        raise JregError(
            f"early_stopping watches {early_stopping.monitor!r}, which this {where} does not monitor (it monitors "
            f"{sorted(wanted)}): {monitor.fix(early_stopping.monitor)}"
        )
    return early_stopping


class Stopper:
    """Early stopping's state across epochs, as two hooks: :meth:`annotate` (before recording) and :meth:`decide`."""

    def __init__(
        self,
        rule: EarlyStopping,
        state: dict[str, Any],
        writer: checkpoint_folder.Writer | None,
        key: Any,
        verbose: bool,
        every: int = 1,
        ema: bool = False,
    ):
        self.rule, self.state, self.writer, self.key, self.verbose = rule, state, writer, key, verbose
        self.ema = ema  # the best params are the EMA's (jreg.EMA(returned=True): the model fit returns)
        self.every = every  # epochs between measurements (Evaluation.every): patience counts measurements
        self.best: tuple[Any, Any] | None = None  # (params, model_state) of the best epoch, when restore_best

    @property
    def scaled(self) -> bool:
        return self.rule.lr_factor is not None

    @classmethod
    def resumed(cls, rule: EarlyStopping, saved: Any, epochs_done: int, resume: Any, **kwargs: Any) -> Stopper:
        """The stopper of a run resumed from the checkpoint file ``resume`` (None: a fresh run)."""
        if saved is not None:  # what the checkpoint's meta says: checked before it drives the schedule
            where = resume if resume is not None else "the saved early-stopping state"
            return cls(rule, dict(ckpt.check_stopping_state(saved, str(where), epochs_done)), **kwargs)
        if epochs_done:
            raise JregError(
                f"resume: {resume} was saved without early stopping, so its early-stopping state is unknown; "
                "resume it without early_stopping, or start the run again"
            )
        return cls(rule, rule.initial_state(), **kwargs)

    def lr_scale(self) -> jax.Array | None:
        return jnp.asarray(self.state["lr_scale"], jnp.float32) if self.scaled else None

    def annotate(self, run: Run) -> None:
        """Record the learning-rate scale the epoch ran with."""
        if self.scaled:
            run.values["learning_rate_scale"] = float(self.state["lr_scale"])

    def decide(self, run: Run) -> None:
        """Update the patience state from the monitored value (if measured this epoch); cut or stop."""
        rule = self.rule
        if rule.monitor not in run.values:  # not measured this epoch (Evaluation.every > 1)
            return
        self.state, event = rule.update(self.state, run.epoch, run.values[rule.monitor])
        if event == "stop" and self.every > 1:  # the rule counted measurements, not epochs: say so
            self.state["stopped"] = stopping.reason(rule, self.state["lr_scale"], self.every)
        if event == "improved" and rule.restore_best:
            params = optimizer_.state_params(run.state, self.ema)
            self.best = jax.device_get((params, run.state.model_state))
            if self.writer is not None:
                self.writer.save_best(*self.best, run.epoch + 1, self.key)
        if event == "lr_cut":
            run.state = run.state._replace(lr_scale=self.lr_scale())
        run.stop = event == "stop"
        if self.verbose and event in ("lr_cut", "stop"):
            cut = f"no improvement in {rule.monitor} for {rule.patience} epochs; learning-rate scale"
            text = self.state["stopped"] if run.stop else f"{cut} now {self.state['lr_scale']:g}"
            print(f"Epoch {run.epoch + 1}: {text}", flush=True)

    def record(self, epochs_run: int) -> dict[str, Any] | None:
        """``history.stopped``: when and why the run stopped, or None."""
        if self.state["stopped"] is None:
            return None
        best = self.state["best_epoch"]
        return {
            "epochs": epochs_run,
            "reason": self.state["stopped"],
            "best_epoch": None if best is None else best + 1,
            "best": self.state["best"],
            "monitor": self.rule.monitor,
        }

    def restore(self, where: Path, params: Any, model_state: Any, run: str) -> None:
        """On resume with ``restore_best``: the best params so far, from ``best.npz`` in ``where``."""
        if self.rule.restore_best and self.state["best_epoch"] is not None:
            self.best = load_best(where, params, model_state, self.state["best_epoch"] + 1, run)
            best = where / checkpoint_folder.BEST
            if self.writer is not None and self.writer.folder.resolve() == where.resolve():
                self.writer.adopt(best)  # the run's own best.npz, even one written before run ids


class SweepStopper:
    """Early stopping for K models: the initial state, the jitted update, and what the history records."""

    def __init__(self, rule: EarlyStopping, models: int, every: int, returned_ema: bool):
        self.rule, self.models, self.every = rule, models, every
        self.returned_ema = returned_ema  # the best params are the EMA's (EMA(returned=True))
        scales, self.last = stopping.schedule(rule)
        if self.last >= len(scales):
            raise JregError(
                f"early_stopping: lr_factor={rule.lr_factor} and min_lr_scale={rule.min_lr_scale} take more than "
                f"{MAX_CUTS} learning-rate cuts before the schedule stops; jreg.sweep keeps a table of the scales: "
                "use a smaller lr_factor or a larger min_lr_scale"
            )
        self.table = scales.astype(np.float32)  # the scale after c cuts, as the device applies it
        self.scaled = rule.lr_factor is not None
        self.reason = stopping.reason(rule, float(scales[-1]), every)  # the same words for every model
        self.advance = jax.jit(self._advance, donate_argnums=(0, 1))

    def initial(self) -> PerModel:
        k = self.models
        minus = jnp.full((k,), -1, jnp.int32)
        return PerModel(jnp.full((k,), jnp.nan, jnp.float32), minus, jnp.zeros((k,), jnp.int32), minus * 0, minus + 0)

    def kept(self, state: TrainState) -> Any:
        """What the best params are taken from: ``(params or EMA, model_state)``."""
        return (optimizer_.state_params(state, self.returned_ema, stacked=True), state.model_state)

    def initial_best(self, state: TrainState) -> Any:
        """The best params' buffer (one copy of the stacked params; model state too), or None without restore_best."""
        return jax.tree.map(jnp.copy, self.kept(state)) if self.rule.restore_best else None

    def lr_scale(self, per: PerModel) -> jax.Array | None:
        """Each model's learning-rate scale (``(K,)`` float32), or None without ``lr_factor``."""
        return jnp.asarray(self.table)[per.cuts] if self.scaled else None

    def _advance(self, per: PerModel, best: Any, kept: Any, value: jax.Array, alive: jax.Array, epoch: Any):
        """``(per, best, alive, lr_scale)`` after epoch ``epoch``'s monitored ``value`` (``(K,)``) for the models
        alive; ``kept`` is :meth:`kept` of the epoch's state (the best params are taken from it)."""
        value = value.astype(jnp.float32)
        per, alive, _, improved = stopping.advance(self.rule, per, value, alive, epoch, self.last)
        if best is not None:

            def keep(b: jax.Array, n: jax.Array) -> jax.Array:
                return jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)), n, b)

            best = jax.tree.map(keep, best, kept)
        return per, best, alive, self.lr_scale(per)

    def record(self, per: Any, i: int) -> dict[str, Any]:
        """``history.stopped[i]`` (fit's ``history.stopped`` fields) from the host copy of the state."""
        best_epoch = int(per.best_epoch[i])
        return {
            "epochs": int(per.stopped[i]) + 1,
            "reason": self.reason,
            "best_epoch": None if best_epoch < 0 else best_epoch + 1,
            "best": None if best_epoch < 0 else float(per.best[i]),
            "monitor": self.rule.monitor,
        }

    def result(self, best: Any, per: PerModel, final: Any) -> Any:
        """Each model's best ``(params, model_state)`` where it had a best epoch, else its final ones."""
        if best is None:
            return final
        has = per.best_epoch >= 0
        return jax.tree.map(lambda b, f: jnp.where(has.reshape((-1,) + (1,) * (f.ndim - 1)), b, f), best, final)
