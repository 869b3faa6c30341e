"""Per-epoch series of a run (:class:`History`) or of K models (:class:`SweepHistory`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import checkpoint


@dataclasses.dataclass
class History:
    """Per-epoch series from :func:`jreg.fit`, each a list with one float per epoch it was measured.

    Keys (present when monitored): ``training_cost``, ``evaluation_cost``
    (costs include the penalty, measured after the epoch on the whole set, as
    network2.py does), one ``training_<metric>`` / ``evaluation_<metric>`` per
    metric (``training_accuracy`` and ``evaluation_accuracy`` by default for
    classification), ``epoch_loss`` (mean mini-batch objective during the
    epoch, when asked for), and the training cost's parts as
    ``training_data`` / ``training_penalty`` and one ``training_<term>`` per
    penalty term; ``learning_rate_scale`` under a learning-rate schedule.

    A series measured every ``k`` epochs (:class:`jreg.Evaluation` ``every=k``)
    holds one value per measurement; :meth:`epochs` says at which epochs.

    ``cost_convention`` says how the costs were measured
    (:class:`jreg.Evaluation`'s ``cost_convention``): ``"jreg"``, the objective
    with its own penalty on every set, or ``"network2"``, network2.py's
    ``total_cost`` with the penalty scaled to each set's size. The series
    names are the same under both.

    ``ema``: the :class:`jreg.EMA` settings of a run that kept an exponential
    moving average of the params (None otherwise); when ``ema["evaluate"]`` is
    true, the costs, their parts and the metrics were measured with the EMA
    params (``epoch_loss`` is always the live params' running loss). The
    series names are the same either way.
    """

    series: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    #: set by early stopping: ``{"epochs": run, "reason": ..., "best_epoch": ..., "best": ...}``
    stopped: dict[str, Any] | None = None
    #: the 1-based epoch of each value, per series (missing: every epoch from 1)
    at: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    #: how the costs count the params' penalty: "jreg" or "network2" (jreg.conventions.COST_CONVENTIONS)
    cost_convention: str = "jreg"
    #: the run's :class:`jreg.EMA` settings (``{"decay", "evaluate", "returned"}``), None when it kept no EMA;
    #: with ``evaluate`` true every monitored series except ``epoch_loss`` was measured with the EMA params
    ema: dict[str, Any] | None = None

    def append(self, metrics: dict[str, Any], epoch: int | None = None) -> None:
        """Record one epoch's values (``epoch`` 1-based; default: the epoch after the last recorded)."""
        epoch = len(self) + 1 if epoch is None else int(epoch)
        for k, v in metrics.items():
            self.series.setdefault(k, []).append(v)
            self.at.setdefault(k, list(range(1, len(self.series[k])))).append(epoch)

    def epochs(self, key: str) -> list[int]:
        """The 1-based epochs at which series ``key`` was measured."""
        return list(self.at.get(key, range(1, len(self.series[key]) + 1)))

    def __getitem__(self, key: str) -> Any:
        return self.series[key]

    def __getattr__(self, key: str) -> Any:
        series = self.__dict__.get("series", {})
        if key in series:
            return self[key]
        raise AttributeError(f"{type(self).__name__} has no series {key!r}; it has {sorted(series)}")

    def __contains__(self, key: str) -> bool:
        return key in self.series

    def keys(self) -> Iterable[str]:
        return self.series.keys()

    def __len__(self) -> int:
        """The number of epochs recorded (the last epoch any series was measured at)."""
        return max((self.epochs(k)[-1] for k, v in self.series.items() if len(v)), default=0)

    def to_dict(self) -> dict[str, list[Any]]:
        """A JSON-ready copy: ``{series name: [one value per measurement]}``."""
        return {k: np.asarray(self[k]).tolist() for k in self.series}

    def epochs_dict(self) -> dict[str, list[int]]:
        """``{series name: [1-based epochs]}``, JSON-ready (saved in checkpoints beside :meth:`to_dict`)."""
        return {k: self.epochs(k) for k in self.series}

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint's ``meta`` records of this history: ``{"history": ..., "history_epochs": ...}``."""
        return {"history": self.to_dict(), "history_epochs": self.epochs_dict()}

    @classmethod
    def from_dicts(cls, series: dict[str, list[Any]] | None, at: dict[str, list[int]] | None = None) -> History:
        """The history :meth:`to_dict` and :meth:`epochs_dict` describe (as a checkpoint saves them), checked."""
        checkpoint.check_history(series, at, "the saved history")
        history = cls({k: list(v) for k, v in (series or {}).items()})
        history.at = {k: [int(e) for e in v] for k, v in (at or {}).items() if k in history.series}
        return history


@dataclasses.dataclass
class SweepHistory(History):
    """Per-epoch series from :func:`jreg.sweep`: ``history[name]`` is an array ``(models, measurements)``.

    ``history.run(i)`` is model ``i``'s own :class:`History`. A model whose
    training became non-finite is frozen at its last finite state (the one
    before the step that went bad, as :class:`jreg.DivergenceError` holds it
    for ``fit``) while the others go on: ``history.diverged[i]`` says where
    (``{"epoch": e, "step": s or None, "quantity": ...}``; epoch and step are
    1-based, as in the messages, where ``DivergenceError.epoch``/``.step`` are
    0-based), and its series hold NaN from that epoch on.

    With early stopping, ``history.stopped[i]`` says when and why model ``i``
    stopped, with the same fields as :attr:`History.stopped` of :func:`jreg.fit`
    (``{"epochs", "reason", "best_epoch", "best", "monitor"}``); its series hold
    NaN after that epoch. A model is in ``diverged`` or in ``stopped``, never both.
    """

    diverged: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: early stopping: ``{model: {"epochs", "reason", "best_epoch", "best", "monitor"}}`` (see :class:`History`)
    stopped: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)  # type: ignore[assignment]

    def checkpoint_meta(self) -> dict[str, Any]:
        """Nothing: a sweep checkpoint keeps its series as arrays (:mod:`jreg.train.sweep_checkpoint`)."""
        return {}

    def __getitem__(self, key: str) -> np.ndarray:
        return np.stack(self.series[key], axis=-1)

    @property
    def models(self) -> int:
        first = next(iter(self.series.values()), [])
        return int(np.shape(first[0])[0]) if first else 0

    def run(self, i: int) -> History:
        """Model ``i``'s history (up to the epoch before it diverged, or the epoch it stopped at, if it did).

        A member of :func:`jreg.pbt` or :func:`jreg.regularization_path` that a transfer revived after it
        diverged (``"revived"`` in its record) keeps its whole row, NaN while it was frozen."""
        bad, stopped = self.diverged.get(i), self.stopped.get(i)
        bad = None if bad is not None and "revived" in bad else bad
        last = None if bad is None else bad["epoch"] - 1
        last = stopped["epochs"] if stopped is not None else last
        out = History(cost_convention=self.cost_convention, ema=self.ema)
        for k, values in self.series.items():
            for epoch, v in zip(self.epochs(k), values):
                if last is None or epoch <= last:
                    out.append({k: float(v[i])}, epoch)
        if stopped is not None:
            out.stopped = dict(stopped)
        elif bad is not None:
            out.stopped = {"epochs": last, "reason": f"diverged in epoch {bad['epoch']}: {bad['quantity']}"}
        return out
