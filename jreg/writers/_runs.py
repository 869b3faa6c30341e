"""The writer protocol (clu's ``metric_writers`` shape), run names, and the host-side dispatch to K runs.

A *writer* is any object with ``write_scalars(step, scalars)``, ``write_hparams(hparams)``, ``flush()`` and
``close()`` (:class:`Writer`): a clu ``MetricWriter`` is one. A writer that can also open named runs has
``run(name, *, group, start) -> Writer`` (:class:`MultiRunWriter`): jreg's built-ins (TensorBoard, MLflow,
JSONL, W&B) do. :class:`Runs` is what the front ends use: one run per member (named by its hyperparameters,
:func:`member_names`) on every multi-run writer; on a plain writer one run whose tags carry the member's name
(``lmbda=0.1,eta=0.5/evaluation_accuracy``). ``group`` is jreg's run id (kept in checkpoints and results), so a
resumed run finds its tracker runs again; ``start`` is the number of epochs already done (0: a fresh run).

Every call into a writer is guarded: an exception (a full disk, an unreachable server, a bug in a user's
writer) warns once (:class:`jreg.JregWarning`) and drops that writer for the rest of the run, its runs left as
they are (not closed: closing K runs on a server that just failed could stall training K times as long);
training goes on untouched. A member's non-finite figures (the NaN a stopped or diverged member shows in a
sweep) are not written: its run ends at its last real measurement. In a run of several processes only process
0 writes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._errors import JregError, JregTypeError, JregWarning

#: the methods every writer has
METHODS = ("write_scalars", "write_hparams", "flush", "close")


@runtime_checkable
class Writer(Protocol):
    """One run of a tracker: scalars by step, hyperparameters, flush, close (clu's ``MetricWriter`` shape)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class MultiRunWriter(Writer, Protocol):
    """A writer that opens named runs: ``run(name, group=jreg's run id, start=epochs done) -> Writer``.

    ``name`` None is the run of a single model (:func:`jreg.fit`). ``start > 0``: the run resumes after
    ``start`` epochs; the writer appends to the run ``(group, name)`` it opened before when it can find it."""

    def run(self, name: str | None, *, group: str | None = None, start: int = 0) -> Writer: ...


def check_writers(writers: Any, function: str) -> tuple[Any, ...]:
    """``writers=`` checked before any work: a list or tuple of objects with every :data:`METHODS`."""
    if writers is None:
        return ()
    if not isinstance(writers, (list, tuple)):
        hint = f": pass writers=[{type(writers).__name__}(...)]" if hasattr(writers, "write_scalars") else ""
        raise JregTypeError(
            f"{function}: writers must be a list of writers, e.g. writers=[jreg.writers.TensorBoard('runs')]; "
            f"got {type(writers).__name__}{hint}"
        )
    for i, writer in enumerate(writers):
        missing = [m for m in METHODS if not callable(getattr(writer, m, None))]
        if missing:
            raise JregTypeError(
                f"{function}: writers[{i}] ({type(writer).__name__}) has no {', '.join(m + '()' for m in missing)}; "
                "a writer needs write_scalars(step, scalars), write_hparams(hparams), flush() and close() "
                "(jreg.writers.Writer, clu's MetricWriter shape)"
            )
        if hasattr(writer, "run") and not callable(writer.run):
            raise JregTypeError(f"{function}: writers[{i}].run must be a method run(name, *, group, start)")
    return tuple(writers)


def _format(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.6g}"


def member_names(hparams: Mapping[str, Any]) -> list[str]:
    """``lmbda=0.1,eta=0.5`` per member of ``{name: K values}`` (6 significant digits); members whose names
    would be equal get ``,member=i`` added, so every name is unique."""
    columns = {k: np.asarray(v).reshape(-1) for k, v in hparams.items()}
    models = len(next(iter(columns.values()))) if columns else 0
    names = [",".join(f"{k}={_format(v[i].item())}" for k, v in columns.items()) for i in range(models)]
    counts = {n: names.count(n) for n in names}
    return [f"{n},member={i}" if counts[n] > 1 else n for i, n in enumerate(names)]


def member_hparams(hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{name: Python number}]``, one dict per member of ``{name: K values}`` (float32 values as written)."""
    columns = {k: np.asarray(v).reshape(-1) for k, v in hparams.items()}
    models = len(next(iter(columns.values()))) if columns else 0
    return [{k: _python(v[i]) for k, v in columns.items()} for i in range(models)]


def _python(value: np.generic) -> Any:
    """A NumPy scalar as the Python number it was written as: float32 ``0.01`` is ``0.01``, not
    ``0.009999999776482582`` (the shortest decimal that gives back the same float32)."""
    if isinstance(value, np.floating):
        return float(np.format_float_positional(value, unique=True, trim="-"))
    return value.item()


def require(module: str, extra: str, what: str) -> None:
    """A jreg error before any work when an optional tracker package is missing."""
    if importlib.util.find_spec(module) is None:
        raise JregError(f"{what} needs the {module} package: pip install 'jreg[{extra}]'")


def safe(name: str) -> str:
    """``name`` usable as one folder's name (no path separator)."""
    return name.replace("/", "_").replace(os.sep, "_") or "_"


class Runs:
    """Runs named ``names`` (None: a single model's run) on every writer, and the guarded calls into them."""

    def __init__(
        self,
        writers: Sequence[Any],
        names: Sequence[str | None],
        hparams: Sequence[Mapping[str, Any]],
        *,
        group: str | None,
        start: int,
        function: str,
    ):
        self.writers, self.names, self.function = list(writers) if _writing_process() else [], list(names), function
        self.opened: list[list[Any] | None] = [None] * len(self.writers)  # per writer: its runs (None: plain)
        self.dropped: set[int] = set()
        for j, writer in enumerate(self.writers):
            self._guard(j, lambda w=writer, j=j: self._open(j, w, hparams, group, start))

    @classmethod
    def of_members(
        cls,
        writers: Sequence[Any],
        hparams: Mapping[str, Any],
        *,
        group: str | None,
        start: int,
        function: str,
        names: Sequence[str] | None = None,
    ) -> Runs | None:
        """One run per member of ``{name: K values}``, named by its values (:func:`member_names`) unless
        ``names`` are given, its values recorded; None without writers."""
        if not writers:
            return None
        values = {k: np.asarray(v) for k, v in hparams.items()}
        names = member_names(values) if names is None else list(names)
        return cls(writers, names, member_hparams(values), group=group, start=start, function=function)

    def _open(self, j: int, writer: Any, hparams: Sequence[Mapping[str, Any]], group: Any, start: int) -> None:
        if callable(getattr(writer, "run", None)):
            runs: list[Any] = []
            self.opened[j] = runs
            for name, hp in zip(self.names, hparams):
                runs.append(writer.run(name, group=group, start=start))
                if hp:
                    runs[-1].write_hparams(dict(hp))
            return
        merged = {_tag(name, k): v for name, hp in zip(self.names, hparams) for k, v in hp.items()}
        if merged:
            writer.write_hparams(merged)

    def _guard(self, j: int, call: Callable[[], Any]) -> None:
        if j in self.dropped:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 -- a tracker's failure must never stop or corrupt training
            self.dropped.add(j)
            writer = self.writers[j]
            warnings.warn(
                JregWarning(
                    f"{self.function}: writers[{j}] ({type(writer).__name__}) failed ({type(exc).__name__}: {exc}); "
                    "nothing more is written to it in this run, training goes on"
                ),
                stacklevel=4,
            )
            # its runs are abandoned, not closed: closing K runs on a server that just failed could stall training
            # K times as long as the failure did

    @property
    def active(self) -> bool:
        """Whether any writer is still written to."""
        return len(self.dropped) < len(self.writers)

    def write(self, step: int, values: Mapping[str, Any], rows: Sequence[int] | None = None) -> None:
        """Write ``values`` (``{tag: scalar}`` for one run, ``{tag: (R,) array}`` for R members: row ``r`` is
        member ``rows[r]``, by default member ``r``) at ``step``; non-finite values are left out."""
        per = _members(values, rows, len(self.names))
        for j in range(len(self.writers)):
            self._guard(j, lambda j=j: self._write(j, step, per))

    def _write(self, j: int, step: int, per: list[tuple[int, dict[str, float]]]) -> None:
        runs = self.opened[j]
        if runs is not None:
            for i, scalars in per:
                if scalars:
                    runs[i].write_scalars(step, scalars)
            return
        merged = {_tag(self.names[i], k): v for i, scalars in per for k, v in scalars.items()}
        if merged:
            self.writers[j].write_scalars(step, merged)

    def hook(self, rows: Sequence[int] | None = None, extra: Callable[[Any], Mapping[str, Any]] | None = None):
        """The host loop's hook (:mod:`jreg.train.loop`): the epoch's figures (``run.values``, already on the
        host) at step ``epoch + 1``, plus ``extra(run)``'s (PBT's hyperparameters)."""

        def hook(run: Any) -> None:
            if self.active:
                values = run.values if extra is None else {**run.values, **extra(run)}
                self.write(run.epoch + 1, values, rows)

        return hook

    def close(self) -> None:
        """Close the runs jreg opened (a plain writer, which the caller owns, is flushed, not closed)."""
        for j, writer in enumerate(self.writers):
            runs = self.opened[j]
            self._guard(j, (lambda r=runs: [run.close() for run in r]) if runs is not None else writer.flush)


def _writing_process() -> bool:
    """Whether this process writes: in a run of several processes (``jax.distributed``) only process 0 does,
    since every process holds the same gathered figures."""
    jax = sys.modules.get("jax")  # never imported here: a run that trains has imported it already
    return jax is None or jax.process_count() == 1 or jax.process_index() == 0


def _tag(name: str | None, tag: str) -> str:
    return tag if name is None else f"{name}/{tag}"


def _members(values: Mapping[str, Any], rows: Sequence[int] | None, models: int) -> list[tuple[int, dict]]:
    """``[(member, {tag: float})]`` from one run's scalars or R members' rows, non-finite values left out."""
    arrays = {k: np.asarray(v, np.float64).reshape(-1) for k, v in values.items()}
    width = max((a.size for a in arrays.values()), default=0)
    members = list(range(min(width, models))) if rows is None else list(rows)
    out = []
    for r, i in enumerate(members):
        scalars = {k: float(a[r]) for k, a in arrays.items() if r < a.size and math.isfinite(a[r])}
        out.append((i, scalars))
    return out


def write_runs(
    writers: Sequence[Any],
    names: Sequence[str],
    hparams: Sequence[Mapping[str, Any]],
    series: Mapping[str, Any],
    *,
    steps: Sequence[int] | None = None,
    group: str | None = None,
    function: str = "write_runs",
) -> None:
    """Write finished series as one run per name: ``series[tag]`` is ``(R, n)``, row ``r`` run ``names[r]``.

    For results computed whole rather than epoch by epoch, e.g. cross-validation's folds and their mean:
    ``write_runs(writers, ["fold=0", ..., "mean"], [hp] * (k + 1), {"evaluation_accuracy": (k + 1, n)})``.
    ``steps``: the step of each column (default ``1..n``). Failures warn once per writer, as during training.
    """
    writers = check_writers(list(writers), function)
    arrays = {k: np.asarray(v, np.float64).reshape(len(names), -1) for k, v in series.items()}
    n = max((a.shape[1] for a in arrays.values()), default=0)
    steps = list(range(1, n + 1)) if steps is None else [int(s) for s in steps]
    runs = Runs(writers, list(names), list(hparams), group=group, start=0, function=function)
    try:
        for c, step in enumerate(steps):
            runs.write(step, {k: a[:, c] for k, a in arrays.items() if c < a.shape[1]})
    finally:
        runs.close()


def write_history(
    writers: Sequence[Any],
    history: Any,
    *,
    hparams: Mapping[str, Any] | None = None,
    names: Sequence[str] | None = None,
    group: str | None = None,
) -> None:
    """Write a finished :class:`jreg.History` as the runs training would have written: one run for one model's
    history, one per member for K models' (named by ``hparams``, ``{name: K values}``, e.g. a sweep result's
    ``result.hparams``, or by ``names``), each series at the epochs it was measured, non-finite values left out.

    ``jreg.writers.write_history([jreg.writers.TensorBoard("runs")], result.history, hparams=result.hparams)``
    publishes a run trained without ``writers=``.
    """
    writers = check_writers(list(writers), "write_history")
    models = getattr(history, "models", None)
    if models is None:
        runs = Runs(writers, [None], [dict(hparams or {})], group=group, start=0, function="write_history")
    elif hparams is not None:
        runs = Runs.of_members(writers, hparams, names=names, group=group, start=0, function="write_history")
    else:
        names = [f"member={i}" for i in range(models)] if names is None else list(names)
        runs = Runs(writers, names, [{}] * len(names), group=group, start=0, function="write_history")
    columns: dict[int, dict[str, Any]] = {}
    for tag in history.keys():
        values = np.asarray(history[tag], np.float64)
        for c, epoch in enumerate(history.epochs(tag)):
            columns.setdefault(int(epoch), {})[tag] = values[..., c]
    try:
        for step in sorted(columns):
            runs.write(step, columns[step])
    finally:
        runs.close()


class OwnRun:
    """What a multi-run writer (one with ``run(name, *, group, start)``) does when used directly as a writer: it
    logs into one run of its own, ``run(None)``, made on first use, flushed and closed with it."""

    _own: Any = None

    def _run(self) -> Any:
        if self._own is None:
            self._own = self.run(None)  # type: ignore[attr-defined]
        return self._own

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._run().write_scalars(step, scalars)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._run().write_hparams(hparams)

    def flush(self) -> None:
        if self._own is not None:
            self._own.flush()

    def close(self) -> None:
        if self._own is not None:
            own, self._own = self._own, None
            own.close()
