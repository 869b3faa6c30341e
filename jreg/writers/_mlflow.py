"""MLflow runs through ``mlflow.MlflowClient`` (no global active run): metrics by step, hyperparameters as params.

Each run jreg opens is tagged ``jreg.group`` (jreg's run id) and ``jreg.member`` (the member's name), so a
resumed run finds its MLflow runs again and appends to them.

The runs of one writer send together, in *rounds*: a run holds its metrics until a round is due, then sends them
in one ``log_batch`` call. On SQLite each call is a transaction of about 20 ms of CPU whatever it carries, so a
round of K runs costs K of them (about 1.3 CPU-seconds at K = 64, docs/benchmarks.md); rounds are therefore at
least ``every`` seconds apart *and* at least ``1 / SHARE`` times the previous round's CPU time apart, which keeps
the sending under 2 % of one core at any K (at K = 64: a round about every minute; at K = 4, every ``every``
seconds). The calls run on one background thread (asynchronous, the default), so training goes on while they
write; a run keeps at most two rounds' calls in flight (the third waits for the first), and a failed call's error
is raised at the run's next call, ``flush`` or ``close`` (and reported once by jreg). ``flush()`` and ``close()``
send what a run holds at once.

MLflow keeps every logged value: the steps a crashed run logged after its last checkpoint stay in the metric
history beside the resumed run's (``get_metric_history`` returns both, the resumed run's with the later
timestamps).
"""

from __future__ import annotations

import collections
import concurrent.futures
import numbers
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import JregTypeError
from ._runs import OwnRun, require

#: MLflow's limit on params per ``log_batch`` call
_PARAMS_PER_BATCH = 100
#: asynchronous ``log_batch`` calls a run keeps in flight before the next one waits for the oldest
_IN_FLIGHT = 2
#: the most of one core's time the rounds of sends may take: the next round waits at least 1 / SHARE times the
#: CPU seconds of the last one
SHARE = 0.02
#: MLflow takes at most 1,000 metrics per log_batch call
_METRICS_PER_BATCH = 1000


class MLflow(OwnRun):
    """MLflow runs in ``experiment`` on ``tracking_uri``: one per member of a sweep, named by its hyperparameters.

    ``tracking_uri``: any MLflow tracking URI (``"sqlite:///runs/mlflow.db"``, ``"http://host:5000"``,
    ``"databricks"``), or a path to a ``.db`` file (SQLite); None (default) is MLflow's own default
    (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working folder with MLflow 3). A fit's run is
    named ``run_name`` (MLflow picks one when None); ``tags`` are added to every run. ``asynchronous``:
    metrics are logged on a background thread (the default), or in the caller's thread. ``every``: the runs send
    what they hold together, at most every ``every`` seconds (default 5) and at most every 50 times the CPU
    seconds the last round of sends took (module docstring: on SQLite each ``log_batch`` is a transaction, which
    at K = 64 runs cost as much as a short epoch), and always on ``flush()`` and ``close()`` (at the end of the
    run, however it ends); ``every=0`` sends each epoch at once. Used directly as a writer, it logs into one run it
    creates on first use.
    """

    def __init__(
        self,
        tracking_uri: str | os.PathLike[str] | None = None,
        *,
        experiment: str = "jreg",
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        asynchronous: bool = True,
        every: float = 5.0,
    ):
        if tracking_uri is not None and not isinstance(tracking_uri, (str, os.PathLike)):
            raise JregTypeError(f"MLflow: tracking_uri must be a URI or a path to a .db file, got {tracking_uri!r}")
        if not isinstance(experiment, str) or not experiment:
            raise JregTypeError(f"MLflow: experiment must be a non-empty name (str), got {experiment!r}")
        require("mlflow", "mlflow", "jreg.writers.MLflow")
        self.tracking_uri = _uri(tracking_uri)
        self.experiment, self.run_name, self.tags = experiment, run_name, dict(tags or {})
        self.asynchronous = bool(asynchronous)
        self.every = _seconds(every)
        self._client: Any = None
        self._experiment_id: str | None = None
        self._own: _Run | None = None
        self._pace = None if self.every == 0 else _Pace(self.every)

    def __repr__(self) -> str:
        return f"MLflow({self.tracking_uri!r}, experiment={self.experiment!r})"

    def client(self) -> Any:
        """The ``MlflowClient`` (made on first use), with the experiment created if need be."""
        if self._client is None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.tracking_uri)
            found = client.get_experiment_by_name(self.experiment)
            self._experiment_id = (
                found.experiment_id if found is not None else client.create_experiment(self.experiment)
            )
            self._client = client
        return self._client

    def run(self, name: str | None, *, group: str | None = None, start: int = 0) -> _Run:
        """The run ``name`` (None: ``run_name``): found again by its tags when resumed, else created."""
        client = self.client()
        member = "" if name is None else name
        if start and group is not None:
            found = client.search_runs(
                [self._experiment_id],
                filter_string=f"tags.`jreg.group` = '{group}' AND tags.`jreg.member` = '{_quoted(member)}'",
                max_results=1,
            )
            if found:
                run_id = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
                return _Run(client, run_id, resumed=True, asynchronous=self.asynchronous, pace=self._pace)
        tags = {**self.tags, "jreg.member": member, **({"jreg.group": group} if group is not None else {})}
        created = client.create_run(self._experiment_id, run_name=name or self.run_name, tags=tags)
        return _Run(client, created.info.run_id, resumed=False, asynchronous=self.asynchronous, pace=self._pace)


class _Pace:
    """When the runs of one :class:`MLflow` writer send: together, in rounds at least ``every`` seconds apart and
    at least ``1 / SHARE`` times the CPU seconds of the last round apart (``clock``: seconds, monotonic)."""

    def __init__(self, every: float, clock: Any = time.monotonic):
        self.every, self.clock, self.lock = every, clock, threading.Lock()
        self.round, self.started, self.cost = 0, clock(), 0.0  # the current round, its start, its CPU seconds so far

    def current(self) -> int:
        """The current round's number, a new round begun if one is due."""
        now = self.clock()
        with self.lock:
            if now - self.started >= max(self.every, self.cost / SHARE):
                self.round, self.started, self.cost = self.round + 1, now, 0.0
            return self.round

    def spent(self, seconds: float) -> None:
        """Add a send's CPU seconds to the current round's."""
        with self.lock:
            self.cost += seconds


_SENDER: concurrent.futures.ThreadPoolExecutor | None = None
_SENDER_LOCK = threading.Lock()


def _sender() -> concurrent.futures.ThreadPoolExecutor:
    """The one background thread that sends every MLflow writer's rounds (made on first use)."""
    global _SENDER
    with _SENDER_LOCK:
        if _SENDER is None:
            _SENDER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jreg-mlflow")
        return _SENDER


class _Run:
    """One MLflow run (a :class:`jreg.writers.Writer`); ``pace`` None sends each epoch at once."""

    def __init__(self, client: Any, run_id: str, resumed: bool, asynchronous: bool = True, pace: _Pace | None = None):
        self.client, self.run_id, self.resumed, self.asynchronous = client, run_id, resumed, asynchronous
        self.pending: collections.deque = collections.deque()  # asynchronous calls in flight, oldest first
        self.pace, self.held, self.round = pace, [], 0 if pace is None else pace.round  # metrics not sent yet

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        while self.pending and self.pending[0].done():
            self.pending.popleft().result()  # raises a finished call's error, if any
        stamp = int(time.time() * 1000)
        self.held += [Metric(str(k), float(v), stamp, int(step)) for k, v in scalars.items()]
        due = self.pace is None or self.pace.current() > self.round
        if len(self.held) >= _METRICS_PER_BATCH or due:
            self._send()

    def _send(self, synchronous: bool = False) -> None:
        """One ``log_batch`` per :data:`_METRICS_PER_BATCH` metrics held (MLflow's limit per call)."""
        held, self.held = self.held, []
        if self.pace is not None:
            self.round = self.pace.round
        for i in range(0, len(held), _METRICS_PER_BATCH):
            while len(self.pending) >= _IN_FLIGHT:
                self.pending.popleft().result()  # raises the call's error, if any
            batch = held[i : i + _METRICS_PER_BATCH]
            if synchronous or not self.asynchronous:
                self._log(batch)
            else:
                self.pending.append(_sender().submit(self._log, batch))

    def _log(self, metrics: list[Any]) -> None:
        start = time.thread_time()
        try:
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        finally:
            if self.pace is not None:
                self.pace.spent(time.thread_time() - start)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params if self.resumed else {}
        params = [Param(str(k), str(_plain(v))) for k, v in hparams.items() if str(k) not in logged]
        for i in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _PARAMS_PER_BATCH])

    def flush(self) -> None:
        if self.held:
            self._send()
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.flush()  # the last batch after those in flight, on the same thread: in order, one caller of the client
        self.client.set_terminated(self.run_id)


def _seconds(every: Any) -> float:
    """``every`` as a finite float >= 0 (a Python or NumPy real number), else a :class:`JregTypeError`."""
    try:
        seconds = float(every) if isinstance(every, numbers.Real) and not isinstance(every, (bool, np.bool_)) else None
    except OverflowError:
        seconds = None
    if seconds is None or not 0 <= seconds < float("inf"):
        raise JregTypeError(f"MLflow: every must be a finite number of seconds >= 0, got {every!r}")
    return seconds


def _uri(value: Any) -> str | None:
    if value is None:
        return None
    text = os.fspath(value)
    if "://" not in text and text.endswith((".db", ".sqlite")):
        return "sqlite:///" + os.path.abspath(text)
    return text


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
