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

The rule itself is one function over ``(K,)`` arrays, :func:`advance`, that
every caller applies: :meth:`EarlyStopping.update` (and so :func:`jreg.fit`)
for one model on the host in float64, :func:`jreg.sweep` for K models under
``jit`` in float32, the device's dtype. The learning-rate scales are one
table, :func:`schedule` (float64 products of ``lr_factor``), and the words a
stop is recorded with one function, :func:`reason`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ._checks import check_nonnegative_scalar, check_positive_int
from ._errors import JregError, JregTypeError
from ._signature import checked_init

MODES = ("auto", "max", "min")
#: the most learning-rate cuts :func:`schedule` tabulates by default (:func:`jreg.sweep` keeps the table on the device)
MAX_CUTS = 100_000


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
        A NaN value never counts as an improvement. The rule is :func:`advance`'s for one model, in float64.
        """
        self._named()
        value = float(value)
        scales, last = schedule(self, state["lr_scale"], most=1)  # the next cut's scale, and whether it stops
        has_best = state["best"] is not None
        per = PerModel(
            best=np.asarray([state["best"] if has_best else math.nan], np.float64),
            best_epoch=np.asarray([0 if has_best else -1]),
            wait=np.asarray([min(state["wait"], self.patience)]),  # a saved count may be any size; this decides alike
            cuts=np.zeros(1, np.int64),
            stopped=np.full(1, -1),
        )
        per, _, stop, improved = advance(self, per, np.asarray([value]), np.ones(1, bool), epoch, last)
        state = dict(state)
        if improved[0]:
            state.update(best=value, best_epoch=int(epoch), wait=0)
            return state, "improved"
        cut = int(per.cuts[0])
        state["wait"] = 0 if cut else state["wait"] + 1
        if cut:
            state["lr_scale"] = float(scales[cut])
        if stop[0]:
            state["stopped"] = reason(self, state["lr_scale"])
            return state, "stop"
        return state, "lr_cut" if cut else None


class PerModel(NamedTuple):
    """The rule's state for K models, ``(K,)`` arrays (0-based epochs, -1: none yet), as :func:`advance` takes it."""

    best: Any  # the best monitored value (NaN before the first); its dtype is the rule's (float32 on the device)
    best_epoch: Any  # integers, from here on
    wait: Any  # measurements since the best (or since the last cut)
    cuts: Any  # learning-rate cuts so far
    stopped: Any  # the epoch the model stopped at


def advance(rule: EarlyStopping, per: PerModel, value: Any, alive: Any, epoch: Any, last: int) -> tuple:
    """The rule, for K models at once: ``(per, alive, stop, improved)`` after a measurement ``value`` (``(K,)``, in
    ``per.best``'s dtype) at epoch ``epoch``.

    Only the models ``alive`` count it. A model improves when it beats its best by more than ``min_delta`` (NaN
    never does); after ``patience`` measurements without, the rule fires: it stops the model, or with
    ``lr_factor`` cuts its learning rate (``cuts + 1``, the count restarting) and stops it at cut ``last``
    (:func:`schedule`'s). NumPy arrays on the host (:meth:`EarlyStopping.update`), JAX arrays under ``jit``.
    """
    xp = np if isinstance(per.best, np.ndarray) else jnp
    delta = xp.asarray(rule.min_delta, per.best.dtype)
    better = value > per.best + delta if rule.maximize else value < per.best - delta
    improved = alive & ~xp.isnan(value) & ((per.best_epoch < 0) | better)
    wait = xp.where(improved, 0, xp.where(alive, per.wait + 1, per.wait))
    fire = alive & ~improved & (wait >= rule.patience)
    cuts = per.cuts
    if rule.lr_factor is None:
        stop = fire
    else:
        cuts = cuts + fire.astype(cuts.dtype)
        wait = xp.where(fire, 0, wait)
        stop = fire & (cuts >= last)
    per = PerModel(
        xp.where(improved, value, per.best),
        xp.where(improved, epoch, per.best_epoch).astype(per.best_epoch.dtype),
        wait.astype(per.wait.dtype),
        cuts,
        xp.where(stop, epoch, per.stopped).astype(per.stopped.dtype),
    )
    return per, alive & ~stop, stop, improved


def schedule(rule: EarlyStopping, start: float = 1.0, most: int = MAX_CUTS) -> tuple[np.ndarray, int]:
    """``(scales, last)``: ``scales[c]`` is the learning-rate scale after ``c`` cuts from ``start`` (float64
    products of ``lr_factor``), ``last`` the cut that stops the run (the first whose scale is at most
    ``min_lr_scale``): ``len(scales) - 1``, or ``len(scales)`` when it lies beyond ``most`` cuts.

    Without ``lr_factor``: ``([start], 0)`` (the rule stops rather than cuts).
    """
    scales = [float(start)]
    if rule.lr_factor is None:
        return np.asarray(scales), 0
    limit = float(rule.min_lr_scale) * (1 + 1e-12)
    while len(scales) <= most:
        scales.append(scales[-1] * float(rule.lr_factor))
        if scales[-1] <= limit:
            return np.asarray(scales), len(scales) - 1
    return np.asarray(scales), len(scales)


def reason(rule: EarlyStopping, scale: float, every: int = 1) -> str:
    """Why a run stopped, in words: the rule fired, or (``lr_factor``) the learning rate fell to ``scale``.

    ``every > 1`` (``Evaluation(every=...)``): the rule counted measurements, not epochs, and says so.
    """
    unit = f"{rule.patience} epochs" if every <= 1 else f"{rule.patience} measurements (every {every} epochs)"
    if rule.lr_factor is None:
        return f"no improvement in {rule.monitor} for {unit}"
    inverse = 1 / scale
    shown = f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"{scale:g}"
    cause = f"no improvement in {rule.monitor} for {unit} each time"
    return f"the learning rate fell to {shown} of its starting value ({cause})"


__all__ = ["EarlyStopping"]
