"""Early stopping in the host loop: the patience state, learning-rate cuts, best params, and resuming them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from .. import checkpoint as ckpt
from .._errors import JregError, JregTypeError
from ..stopping import EarlyStopping
from . import checkpoint_folder
from .loop import Run
from .monitor import EPOCH_LOSS, Monitor
from .resume import load_best

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
            unit = f"{rule.patience} measurements (every {self.every} epochs)"
            self.state["stopped"] = self.state["stopped"].replace(f"{rule.patience} epochs", unit)
        if event == "improved" and rule.restore_best:
            params = run.state.ema if self.ema else run.state.params
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
