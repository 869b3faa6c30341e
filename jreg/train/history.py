"""Per-epoch series of one model or of K models: one class, :class:`History` (``history.models``: None or K).

It answers the same questions the same way for both: ``history[name]`` (a list for one model,
``(K, measurements)`` for K), :meth:`History.epochs`, :meth:`History.best`, :meth:`History.summary`, Keras's
``history.history`` dict; K models' per-member ``stopped`` and ``diverged`` records index like the series (an
int, a negative int, a slice, a list or a boolean mask of members). ``SweepHistory``, the K-model class
of jreg 0.2, is a deprecated name for one release (:func:`sweep_history`).
"""

from __future__ import annotations

import dataclasses
import warnings
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
    """Per-epoch series of one model (:func:`jreg.fit`) or of K models (:func:`jreg.sweep`, :func:`jreg.pbt`,
    :func:`jreg.regularization_path`): ``models`` is None for one model, K for K.

    ``history[name]``: for one model a list with one float per measurement; for K models an array
    ``(K, measurements)``, member ``i``'s row ``history[name][i]``.

    Keys (present when monitored): ``training_cost``, ``evaluation_cost``
    (costs include the penalty, measured after the epoch on the whole set, as
    network2.py does), one ``training_<metric>`` / ``evaluation_<metric>`` per
    metric (``training_accuracy`` and ``evaluation_accuracy`` by default for
    classification), ``epoch_loss`` (mean mini-batch objective during the
    epoch, when asked for), and the training cost's parts as
    ``training_data`` / ``training_penalty`` and one ``training_<term>`` per
    penalty term; ``learning_rate_scale`` under a learning-rate schedule.

    A series measured every ``k`` epochs (:class:`jreg.Evaluation` ``every=k``)
    holds one value per measurement; :meth:`epochs` says at which epochs (the
    same for every member of K).

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

    K models: a model whose training became non-finite is frozen at its last
    finite state (the one before the step that went bad, as
    :class:`jreg.DivergenceError` holds it for ``fit``) while the others go on:
    ``history.diverged[i]`` says where (``{"epoch": e, "step": s or None,
    "quantity": ...}``; epoch and step are 1-based, as in the messages, where
    ``DivergenceError.epoch``/``.step`` are 0-based), and its series hold NaN
    from that epoch on. With early stopping, ``history.stopped[i]`` says when
    and why model ``i`` stopped, with the fields of one model's ``stopped``;
    its series hold NaN after that epoch. A model is in ``diverged`` or in
    ``stopped``, never both. Both are :class:`Records`, which index like the
    series; ``history.run(i)`` is model ``i``'s own one-model history.
    """

    series: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    #: early stopping's record ``{"epochs": run, "reason": ..., "best_epoch": ..., "best": ..., "monitor": ...}``:
    #: one model, the record or None; K models, :class:`Records` ``{member: record}``
    stopped: Any = None
    #: the 1-based epoch of each value, per series (missing: every epoch from 1)
    at: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    #: how the costs count the params' penalty: "jreg" or "network2" (jreg.conventions.COST_CONVENTIONS)
    cost_convention: str = "jreg"
    #: the run's :class:`jreg.EMA` settings (``{"decay", "evaluate", "returned"}``), None when it kept no EMA;
    #: with ``evaluate`` true every monitored series except ``epoch_loss`` was measured with the EMA params
    ema: dict[str, Any] | None = None
    #: K models: :class:`Records` ``{member: {"epoch", "step", "quantity"}}`` of the members that diverged;
    #: one model: None (:func:`jreg.fit` raises :class:`jreg.DivergenceError` instead)
    diverged: Any = None
    #: None for one model; K for K models (each value recorded is then a ``(K,)`` array)
    models: int | None = None

    def __post_init__(self) -> None:
        if self.models is None:
            if self.diverged is not None:
                raise JregError("History: diverged records are kept for K models (models=K); fit raises instead")
            return
        if isinstance(self.models, bool) or not isinstance(self.models, (int, np.integer)) or self.models < 0:
            raise JregError(f"History: models must be None (one model) or the number of models, got {self.models!r}")
        self.models = int(self.models)
        self.stopped, self.diverged = self.stopped, self.diverged  # as Records (see __setattr__)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("stopped", "diverged") and self.__dict__.get("models") is not None:
            value = Records(value or {}, lambda: self.models)  # per-member records that index like the series
        super().__setattr__(name, value)

    @property
    def size(self) -> int | None:
        """Deprecated: :attr:`models` (what ``SweepHistory`` called K)."""
        warnings.warn("History.size is deprecated: read history.models (K, or None for one model)",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
        return self.models

    def append(self, metrics: dict[str, Any], epoch: int | None = None) -> None:
        """Record one epoch's values (``epoch`` 1-based; default: the epoch after the last recorded); for K
        models each value is a ``(K,)`` array."""
        epoch = len(self) + 1 if epoch is None else int(epoch)
        for k, v in metrics.items():
            self.series.setdefault(k, []).append(v)
            self.at.setdefault(k, list(range(1, len(self.series[k])))).append(epoch)

    def epochs(self, key: str) -> list[int]:
        """The 1-based epochs at which series ``key`` was measured."""
        return list(self.at.get(key, range(1, len(self.series[key]) + 1)))

    def __getitem__(self, key: str) -> Any:
        """Series ``key``: a list for one model, an array ``(K, measurements)`` for K."""
        values = self.series[key]
        if self.models is None:
            return values
        return np.stack(values, axis=-1) if values else np.zeros((self.models, 0))

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
        """A JSON-ready copy: ``{series name: [one value per measurement]}`` (K models: K such lists)."""
        return {k: np.asarray(self[k]).tolist() for k in self.series}

    def epochs_dict(self) -> dict[str, list[int]]:
        """``{series name: [1-based epochs]}``, JSON-ready (saved in checkpoints beside :meth:`to_dict`)."""
        return {k: self.epochs(k) for k in self.series}

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint's ``meta`` records of this history: ``{"history": ..., "history_epochs": ...}`` for
        one model; nothing for K (a sweep checkpoint keeps its series as arrays,
        :mod:`jreg.train.sweep_checkpoint`)."""
        if self.models is not None:
            return {}
        return {"history": self.to_dict(), "history_epochs": self.epochs_dict()}

    @property
    def history(self) -> dict[str, list[Any]]:
        """Keras's ``History.history``: ``{series name: [one value per measurement]}`` (for K models, a list of
        K such lists)."""
        return self.to_dict()

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
        """The series early stopping watched (the first record's, for K models), or None."""
        if self.models is None:
            return self.stopped.get("monitor") if isinstance(self.stopped, dict) else None
        return next((r.get("monitor") for r in self.stopped.values() if r.get("monitor")), None)

    def best(self, monitor: str | None = None) -> Best:
        """The best measurement of ``monitor`` (default: what early stopping watched, else the first measured of
        evaluation accuracy, evaluation cost, ``epoch_loss``, training cost); higher is better for an accuracy,
        lower otherwise. NaN measurements (a stopped or diverged member's) never count.

        One model: its 1-based ``epoch`` (None when nothing finite was measured) and ``value``. K models, per
        member: ``epoch`` and ``value`` are ``(K,)`` arrays (epoch 0 and NaN for a member with no finite
        measurement) and ``member`` is the index of the best member overall."""
        monitor = self._monitor(monitor)
        values, epochs = np.asarray(self[monitor], np.float64), np.asarray(self.epochs(monitor))
        rows = values.reshape(1, -1) if self.models is None else values.reshape(len(values), -1)
        maximize = maximized(monitor)
        finite = np.isfinite(rows)
        any_finite = finite.any(axis=1)
        if rows.shape[1]:
            ranked = np.where(finite, rows, -np.inf if maximize else np.inf)
            at = np.argmax(ranked, axis=1) if maximize else np.argmin(ranked, axis=1)
            picked, picked_epochs = rows[np.arange(len(rows)), at], epochs[at]
        else:
            picked, picked_epochs = np.full(len(rows), np.nan), np.zeros(len(rows), int)
        best_values = np.where(any_finite, picked, np.nan)
        best_epochs = np.where(any_finite, picked_epochs, 0).astype(int)
        if self.models is None:
            return Best(int(best_epochs[0]) if any_finite[0] else None, float(best_values[0]), monitor, maximize)
        member = None
        if any_finite.any():
            scores = np.where(any_finite, best_values, -np.inf if maximize else np.inf)
            member = int(np.argmax(scores) if maximize else np.argmin(scores))
        return Best(best_epochs, best_values, monitor, maximize, member)

    def summary(self, hparams: dict[str, Any] | None = None) -> str:
        """A compact table. One model: per series, its last and best measurement (and epoch), and when it
        stopped. K models: one row per member: its hyperparameters (``hparams``, ``{name: (K,) values}``, when
        given), the best measurement of the default monitor and its epoch, the last of every series, and
        whether it stopped or diverged."""
        if self.models is None:
            if hparams:
                raise JregError("summary: hparams are shown per member of a K-model history; this one holds one model")
            rows = [("series", "last", "best", "at epoch")]
            for name in sorted(self.series):
                values = np.asarray(self[name], np.float64)
                best = self.best(name)
                rows.append((name, f"{values[-1]:.6g}" if len(values) else "-", f"{best.value:.6g}", str(best.epoch)))
            text = _table(rows)
            if self.stopped:
                text += f"\nstopped after epoch {self.stopped['epochs']}: {self.stopped['reason']}"
            return text
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
        shown = f"epochs={len(self)}, series={sorted(self.series)}"
        if self.models is None:
            stopped = "" if not self.stopped else f", stopped={self.stopped['epochs']}"
            return f"History({shown}{stopped})"
        return f"History(models={self.models}, {shown}, stopped={len(self.stopped)}, diverged={len(self.diverged)})"

    def run(self, i: int) -> History:
        """Model ``i``'s one-model history (K models only; ``i`` may be negative), up to the epoch before it
        diverged, or the epoch it stopped at, if it did.

        A member of :func:`jreg.pbt` or :func:`jreg.regularization_path` that a transfer revived after it
        diverged (``"revived"`` in its record) keeps its whole row, NaN while it was frozen."""
        if self.models is None:
            raise JregError("run(i) takes member i out of a K-model history; this history holds one model")
        i = self.stopped._index(i)
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

    @classmethod
    def from_dicts(cls, series: dict[str, list[Any]] | None, at: dict[str, list[int]] | None = None) -> History:
        """The one-model history :meth:`to_dict` and :meth:`epochs_dict` describe (as a checkpoint saves them),
        checked."""
        checkpoint.check_history(series, at, "the saved history")
        history = cls({k: list(v) for k, v in (series or {}).items()})
        history.at = {k: [int(e) for e in v] for k, v in (at or {}).items() if k in history.series}
        return history


# -- SweepHistory: jreg 0.2's K-model class, a deprecated name for one release -----------------------------------

DEPRECATED_SWEEP_HISTORY = (
    "{where}SweepHistory is deprecated and will be removed in the next release: jreg.History holds one model's "
    "series or K models' (history.models is K, None for one model); write isinstance(h, jreg.History) and "
    "h.models is not None, and jreg.History(..., models=K) for SweepHistory(..., size=K)"
)


class _SweepHistoryType(type):
    """``SweepHistory``'s class: calling it builds a K-model :class:`History`; ``isinstance(h, SweepHistory)`` is
    ``isinstance(h, History) and h.models is not None``."""

    def __call__(cls, *args: Any, size: int | None = None, **kwargs: Any) -> History:
        if len(args) < 7 and "models" not in kwargs:
            if size is None:  # SweepHistory read K from its series
                series = args[0] if args else kwargs.get("series") or {}
                first = next(iter(series.values()), [])
                size = int(np.shape(first[0])[0]) if first else 0
            kwargs["models"] = size
        return History(*args, **kwargs)

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, History) and instance.models is not None


class _SweepHistory(History, metaclass=_SweepHistoryType):
    """Deprecated: :class:`History` with ``models=K``. ``SweepHistory(..., size=K)`` returns
    ``History(..., models=K)``; ``isinstance(h, SweepHistory)`` is true of a K-model history."""


_SweepHistory.__name__ = _SweepHistory.__qualname__ = "SweepHistory"


def sweep_history(where: str, stacklevel: int = 3) -> type:
    """The deprecated ``SweepHistory``, with a :class:`DeprecationWarning` attributed ``stacklevel`` frames up
    (a module ``__getattr__`` that calls this one: its caller)."""
    warnings.warn(DEPRECATED_SWEEP_HISTORY.format(where=where), DeprecationWarning, stacklevel=stacklevel)
    return _SweepHistory


def __getattr__(name: str) -> Any:
    if name == "SweepHistory":
        return sweep_history("jreg.train.history.")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _last(values: Any) -> str:
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    return f"{finite[-1]:.6g}" if finite.size else "nan"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(r, widths)))
                     for r in rows)  # fmt: skip
