"""Early stopping and Nielsen's learning-rate schedule, decided on the host after each epoch.

Nielsen (*Neural Networks and Deep Learning*, ch. 3) suggests two rules:

* **no-improvement-in-n**: stop when the validation accuracy has not improved
  on its best value for ``n`` epochs;
* **learning-rate schedule**: instead of stopping, halve the learning rate each
  time the rule fires, and stop when it has fallen to ``1/128`` of its
  starting value ``η₀``.

``EarlyStopping(patience=n)`` is the first; ``EarlyStopping(patience=n,
lr_factor=0.5, min_lr_scale=1/128)`` (or :meth:`EarlyStopping.nielsen`) the
second. :func:`jreg.fit` applies it: the monitored value must be one of fit's
monitored series; by default the run picks ``"evaluation_accuracy"`` when it
measures it, else ``"evaluation_cost"``, so pass validation data as
``evaluation``. The learning-rate scale is a traced input of the compiled
epoch that multiplies every update the optimizer returns, so changing it
recompiles nothing; for optimizers whose update is proportional to their
learning rate (SGD, momentum, Nesterov, Adam, AdamW, RMSProp, and
:func:`jreg.decoupled_weight_decay` of them) that is exactly ``η ← factor · η``.
It is *not* exact for :func:`jreg.proximal` (its threshold keeps ``η₀ λ``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ._checks import check_nonnegative_scalar, check_positive_int
from ._errors import JregError, JregTypeError
from ._signature import checked_init

MODES = ("auto", "max", "min")


@checked_init
@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """When to stop training, and optionally when to cut the learning rate, from a monitored series.

    Attributes:
        patience: ``n`` of no-improvement-in-n: epochs without a new best before the rule fires.
        monitor: the series to watch, one of :func:`jreg.fit`'s monitored
            series; with ``Evaluation(every=k)`` the rule counts
            measurements, not epochs. ``None`` (default): chosen by
            :func:`jreg.fit` / :func:`jreg.sweep` from what the run measures:
            ``"evaluation_accuracy"`` when it is measured (class targets and
            the default metrics), else ``"evaluation_cost"``. Without
            evaluation data that is an error, not a silent switch to the
            training loss (which keeps falling while the model overfits):
            pass held-out data as ``evaluation``, or name a training series,
            e.g. ``monitor="epoch_loss"``. ``history.stopped["monitor"]``
            says which series was watched.
        mode: ``"max"`` (higher is better), ``"min"``, or ``"auto"``: ``max``
            for series whose name contains ``accuracy``, ``min`` for every
            other (costs, losses, ``evaluation_mse``...); give ``"max"`` for a
            custom metric where higher is better.
        min_delta: an improvement must beat the best by more than this.
        lr_factor: ``None``: stop when the rule fires. A number in ``(0, 1)``:
            multiply the learning rate by it when the rule fires (and restart
            the count), and stop once the learning rate has fallen to
            ``min_lr_scale`` times its starting value.
        min_lr_scale: see ``lr_factor`` (default ``1/128``, Nielsen's).
        restore_best: return the params of the best epoch rather than the last.
    """

    patience: int = 10
    monitor: str | None = None
    mode: str = "auto"
    min_delta: float = 0.0
    lr_factor: float | None = None
    min_lr_scale: float = 1 / 128
    restore_best: bool = False

    def __post_init__(self) -> None:
        check_positive_int(self.patience, "patience")
        if self.monitor is not None and not isinstance(self.monitor, str):
            raise JregTypeError(f"monitor must be the name of a monitored series or None, got {self.monitor!r}")
        if self.mode not in MODES:
            raise JregError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_nonnegative_scalar(self.min_delta, "min_delta")
        if self.lr_factor is not None:
            check_nonnegative_scalar(self.lr_factor, "lr_factor")
            if not 0 < float(self.lr_factor) < 1:
                raise JregError(f"lr_factor must lie in (0, 1) (0.5 halves the learning rate), got {self.lr_factor}")
        check_nonnegative_scalar(self.min_lr_scale, "min_lr_scale")
        if not 0 < float(self.min_lr_scale) < 1:
            raise JregError(f"min_lr_scale must lie in (0, 1), got {self.min_lr_scale}")
        if not isinstance(self.restore_best, bool):
            raise JregTypeError(f"restore_best must be a bool, got {self.restore_best!r}")

    @classmethod
    def nielsen(cls, patience: int = 10, monitor: str | None = None, **kwargs: Any) -> EarlyStopping:
        """Nielsen's schedule: halve η after each ``patience`` epochs without improvement; stop at η₀/128."""
        return cls(patience=patience, monitor=monitor, lr_factor=0.5, min_lr_scale=1 / 128, **kwargs)

    def watching(self, monitor: str) -> EarlyStopping:
        """The same rule on series ``monitor`` (what fit and sweep apply once they have chosen the default)."""
        return dataclasses.replace(self, monitor=monitor)

    def _named(self) -> str:
        if self.monitor is None:
            raise JregError(
                "EarlyStopping(monitor=None) leaves the series to fit/sweep, which pick it from what the run "
                "measures; to apply the rule yourself, name the series: EarlyStopping(monitor='evaluation_accuracy')"
            )
        return self.monitor

    @property
    def maximize(self) -> bool:
        if self.mode != "auto":
            return self.mode == "max"
        return "accuracy" in self._named()

    def initial_state(self) -> dict[str, Any]:
        """The state before the first epoch (JSON-ready, saved in checkpoints)."""
        return {"best": None, "best_epoch": None, "wait": 0, "lr_scale": 1.0, "stopped": None}

    def update(self, state: dict[str, Any], epoch: int, value: float) -> tuple[dict[str, Any], str | None]:
        """Apply epoch ``epoch``'s (0-based) monitored ``value``: ``(new state, event)``.

        ``event`` is ``"improved"``, ``"lr_cut"``, ``"stop"`` or ``None``.
        A NaN value never counts as an improvement.
        """
        self._named()
        state = dict(state)
        best = state["best"]
        comparable = not math.isnan(value)
        if best is None:
            improved = comparable
        elif self.maximize:
            improved = comparable and value > best + self.min_delta
        else:
            improved = comparable and value < best - self.min_delta
        if improved:
            state.update(best=float(value), best_epoch=int(epoch), wait=0)
            return state, "improved"
        state["wait"] += 1
        if state["wait"] < self.patience:
            return state, None
        if self.lr_factor is None:
            state["stopped"] = f"no improvement in {self.monitor} for {self.patience} epochs"
            return state, "stop"
        state["lr_scale"] *= float(self.lr_factor)
        state["wait"] = 0
        if state["lr_scale"] <= float(self.min_lr_scale) * (1 + 1e-12):
            inverse = 1 / state["lr_scale"]
            shown = f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"{state['lr_scale']:g}"
            state["stopped"] = (
                f"the learning rate fell to {shown} of its starting value "
                f"(no improvement in {self.monitor} for {self.patience} epochs each time)"
            )
            return state, "stop"
        return state, "lr_cut"


__all__ = ["EarlyStopping"]
