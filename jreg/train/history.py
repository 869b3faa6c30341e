"""Per-epoch series of a run (:class:`History`) or of K models (:class:`SweepHistory`).

Both answer the same questions the same way: ``history[name]`` (a list for one model, ``(K, measurements)``
for K), :meth:`History.epochs`, :meth:`History.best`, :meth:`History.summary`, Keras's ``history.history``
dict; a sweep's per-member ``stopped`` and ``diverged`` records index like its series (an int, a negative int,
a slice, a list or a boolean mask of members).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from .. import checkpoint
from .._errors import JregError

#: the series :meth:`History.best` watches by default when no early stopping chose one, in this order
DEFAULT_MONITORS = ("evaluation_accuracy", "evaluation_cost", "epoch_loss", "training_cost")


def maximized(monitor: str) -> bool:
    """Whether higher is better for series ``monitor`` (as :class:`jreg.EarlyStopping`'s ``mode="auto"``)."""
    return "accuracy" in monitor


class Best(NamedTuple):
    """What :meth:`History.best` returns: per model, the best measurement of ``monitor``.

    One model: ``epoch`` (1-based) and ``value`` are scalars, ``member`` is None. K models: ``epoch`` is an int
    array ``(K,)`` (0 for a member with no finite measurement), ``value`` a float array ``(K,)`` (NaN there),
    and ``member`` the index of the best member overall."""

    epoch: Any
    value: Any
    monitor: str
    maximize: bool
    member: int | None = None


class Records(dict):
    """Per-member records of a sweep (``history.stopped``, ``history.diverged``): ``{member: record}``.

    It is a dict of the members that have a record, and it also indexes like the series: ``records[i]`` is
    member ``i``'s record or None (``i`` may be negative), ``records[:3]``, ``records[[0, 2]]`` and
    ``records[mask]`` give lists of records-or-None. :meth:`mask` and :meth:`field` give arrays over all
    members."""

    def __init__(self, items: Any = (), members: Any = None):
        super().__init__(items)
        self._members = members  # a callable giving K, the number of members

    @property
    def members(self) -> int:
        counted = self._members() if callable(self._members) else 0
        return max(counted, max((int(k) + 1 for k in self), default=0))

    def _index(self, i: Any) -> int:
        k = self.members
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise JregError(f"a member index must be an int, a slice, a list or a boolean mask, got {i!r}")
        if not -k <= int(i) < k:
            raise IndexError(f"member {int(i)} is out of range for {k} members")
        return int(i) % k

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [super(Records, self).get(j) for j in range(self.members)[i]]
        if isinstance(i, (list, tuple, np.ndarray)):
            chosen = np.asarray(i)
            if chosen.dtype == bool:
                if chosen.shape != (self.members,):
                    raise JregError(f"a boolean mask of members must have shape ({self.members},), got {chosen.shape}")
                chosen = np.flatnonzero(chosen)
            return [self[int(j)] for j in chosen.tolist()]
        return super().get(self._index(i))

    def mask(self) -> np.ndarray:
        """``(K,)`` bool: which members have a record."""
        out = np.zeros(self.members, bool)
        out[list(self)] = True
        return out

    def field(self, name: str, fill: Any = np.nan) -> np.ndarray:
        """``(K,)`` array of each record's ``name`` (``fill`` where a member has none, or it is None)."""
        values = [fill if (r := super(Records, self).get(j)) is None or r.get(name) is None else r[name]
                  for j in range(self.members)]  # fmt: skip
        return np.asarray(values)


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

    @property
    def history(self) -> dict[str, list[Any]]:
        """Keras's ``History.history``: ``{series name: [one value per measurement]}`` (for K models, a list of
        K such lists)."""
        return {k: np.asarray(self[k]).tolist() for k in self.series}

    def _monitor(self, monitor: str | None) -> str:
        """The series :meth:`best` watches: ``monitor``, else early stopping's, else the first of
        :data:`DEFAULT_MONITORS` measured."""
        if monitor is None:
            chosen = self._stopping_monitor()
            if chosen is None:
                chosen = next((m for m in DEFAULT_MONITORS if m in self.series), None)
            if chosen is None:
                raise JregError(f"best: no series to rank by in this history (it has {sorted(self.series)}); pass "
                                "monitor='<series>' or monitor one of " + ", ".join(DEFAULT_MONITORS))  # fmt: skip
            return chosen
        if monitor not in self.series:
            raise JregError(f"best: monitor={monitor!r} was not measured; this history has {sorted(self.series)}")
        return monitor

    def _stopping_monitor(self) -> str | None:
        stopped = self.stopped
        return stopped.get("monitor") if isinstance(stopped, dict) else None

    def best(self, monitor: str | None = None) -> Best:
        """The best measurement of ``monitor`` (default: what early stopping watched, else the first measured of
        evaluation accuracy, evaluation cost, ``epoch_loss``, training cost): its 1-based epoch and value;
        higher is better for an accuracy, lower otherwise. NaN measurements (a stopped or diverged member's)
        never count."""
        monitor = self._monitor(monitor)
        values, epochs = np.asarray(self[monitor], np.float64), np.asarray(self.epochs(monitor))
        maximize = maximized(monitor)
        finite = np.isfinite(values)
        if not finite.any():
            return Best(None, float("nan"), monitor, maximize)
        ranked = np.where(finite, values, -np.inf if maximize else np.inf)
        i = int(np.argmax(ranked) if maximize else np.argmin(ranked))
        return Best(int(epochs[i]), float(values[i]), monitor, maximize)

    def summary(self) -> str:
        """A compact table: per series, its last and best measurement (and epoch)."""
        rows = [("series", "last", "best", "at epoch")]
        for name in sorted(self.series):
            values = np.asarray(self[name], np.float64)
            best = self.best(name)
            rows.append((name, f"{values[-1]:.6g}" if len(values) else "-", f"{best.value:.6g}", str(best.epoch)))
        text = _table(rows)
        if self.stopped:
            text += f"\nstopped after epoch {self.stopped['epochs']}: {self.stopped['reason']}"
        return text

    def __repr__(self) -> str:
        stopped = "" if not self.stopped else f", stopped={self.stopped['epochs']}"
        return f"History(epochs={len(self)}, series={sorted(self.series)}{stopped})"

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
    #: K, the number of models (None: read from the series)
    size: int | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("stopped", "diverged"):  # per-member records that index like the series
            value = Records(value or {}, lambda: self.models)
        super().__setattr__(name, value)

    def _stopping_monitor(self) -> str | None:
        return next((r.get("monitor") for r in self.stopped.values() if r.get("monitor")), None)

    def best(self, monitor: str | None = None) -> Best:
        """Per member, the best measurement of ``monitor`` (default as for :meth:`History.best`): ``epoch`` and
        ``value`` are ``(K,)`` arrays (epoch 0 and NaN for a member with no finite measurement) and ``member``
        is the index of the best member overall. NaN measurements (after a member stopped or diverged) never
        count."""
        monitor = self._monitor(monitor)
        values, epochs = np.asarray(self[monitor], np.float64), np.asarray(self.epochs(monitor))
        maximize = maximized(monitor)
        finite = np.isfinite(values)
        ranked = np.where(finite, values, -np.inf if maximize else np.inf)
        at = np.argmax(ranked, axis=1) if maximize else np.argmin(ranked, axis=1)
        any_finite = finite.any(axis=1)
        best_values = np.where(any_finite, values[np.arange(len(values)), at], np.nan)
        best_epochs = np.where(any_finite, epochs[at], 0) if epochs.size else np.zeros(len(values), int)
        member = None
        if any_finite.any():
            scores = np.where(any_finite, best_values, -np.inf if maximize else np.inf)
            member = int(np.argmax(scores) if maximize else np.argmin(scores))
        return Best(best_epochs.astype(int), best_values, monitor, maximize, member)

    def summary(self, hparams: dict[str, Any] | None = None) -> str:
        """A compact table, one row per member: its hyperparameters (when given), the best measurement of the
        default monitor and its epoch, the last of every series, and whether it stopped or diverged."""
        names = sorted(self.series)
        try:
            best = self.best()
        except JregError:
            best = None
        hp = {k: np.asarray(v).reshape(self.models, -1)[:, -1] for k, v in (hparams or {}).items()}
        head = ["member", *hp, *([f"best {best.monitor}", "at"] if best else []), *names, "status"]
        rows = [tuple(head)]
        for i in range(self.models):
            status = "stopped" if i in self.stopped else "diverged" if i in self.diverged else ""
            cells = [str(i), *(f"{hp[k][i]:.4g}" for k in hp)]
            cells += [f"{best.value[i]:.6g}", str(best.epoch[i])] if best else []
            cells += [_last(self[n][i]) for n in names]
            rows.append((*cells, status))
        return _table(rows)

    def __repr__(self) -> str:
        events = f", stopped={len(self.stopped)}, diverged={len(self.diverged)}"
        return f"SweepHistory(models={self.models}, epochs={len(self)}, series={sorted(self.series)}{events})"

    @property
    def history(self) -> dict[str, list[Any]]:
        """Keras's ``History.history`` for each member: ``{series name: K lists of values}``."""
        return {k: self[k].tolist() for k in self.series}

    def checkpoint_meta(self) -> dict[str, Any]:
        """Nothing: a sweep checkpoint keeps its series as arrays (:mod:`jreg.train.sweep_checkpoint`)."""
        return {}

    def __getitem__(self, key: str) -> np.ndarray:
        return np.stack(self.series[key], axis=-1)

    @property
    def models(self) -> int:
        if self.size is not None:
            return self.size
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


def _last(values: Any) -> str:
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    return f"{finite[-1]:.6g}" if finite.size else "nan"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(r, widths)))
                     for r in rows)  # fmt: skip
