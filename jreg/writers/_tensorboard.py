"""TensorBoard event files through tensorboardX's protobufs (no TensorFlow), written synchronously.

Each run is a folder (``logdir`` for :func:`jreg.fit`, ``logdir/<member name>`` for each member of a sweep);
TensorBoard shows every folder under the ``--logdir`` it is given as a run. Scalars are ``simple_value``
summaries, one event per step; hyperparameters go to TensorBoard's HParams plugin as the run's
``session_start_info`` (its metrics are the run's scalar tags, which the plugin finds itself).

Written in the caller's thread (tensorboardX's ``EventsWriter``), not through ``SummaryWriter``'s queue and
worker thread: an error (a full disk, a folder gone) is raised to jreg, which warns once and goes on, where a
dead worker thread would leave its queue full and the next write blocking. A resumed run (``start`` epochs
done) appends a new event file to the same folder, starting with the session-log event that makes TensorBoard
hide the earlier files' steps after ``start`` (tensorboardX's ``purge_step``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

from .._errors import JregTypeError
from ._runs import require, safe


class TensorBoard:
    """Scalars and hyperparameters as TensorBoard event files under ``logdir`` (one folder a run).

    ``jreg.writers.TensorBoard("runs/exp1")``: a fit writes into ``runs/exp1``, a sweep one folder a member
    (``runs/exp1/lmbda=0.1,eta=0.5``); view with ``tensorboard --logdir runs/exp1``. Used directly as a
    writer (``write_scalars``...), it writes into ``logdir``. ``flush_secs``: how often the file is flushed
    to disk while training (and always at the end).
    """

    def __init__(self, logdir: str | os.PathLike[str], *, flush_secs: float = 10.0):
        if not isinstance(logdir, (str, os.PathLike)):
            raise JregTypeError(f"TensorBoard: logdir must be a folder path (str or PathLike), got {logdir!r}")
        require("tensorboardX", "tensorboard", "jreg.writers.TensorBoard")
        self.logdir = os.fspath(logdir)
        self.flush_secs = float(flush_secs)
        self._purge: int | None = None
        self._file: Any = None
        self._flushed = 0.0

    def __repr__(self) -> str:
        return f"TensorBoard({self.logdir!r})"

    def run(self, name: str | None, *, group: str | None = None, start: int = 0) -> TensorBoard:
        """The run ``name`` (a folder under ``logdir``; None: ``logdir`` itself), appended to when resumed."""
        out = TensorBoard(self.logdir if name is None else os.path.join(self.logdir, safe(name)))
        out.flush_secs = self.flush_secs
        out._purge = start + 1 if start else None
        return out

    def _events(self) -> Any:
        if self._file is None:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog

            os.makedirs(self.logdir, exist_ok=True)
            # TensorBoard reads a run's files in the order of their names: the time in nanoseconds first (a resumed
            # run's file after the first, even within the second tensorboardX's own name has), then unique
            prefix = os.path.join(self.logdir, f"events.{time.time_ns():020d}")
            self._file = EventsWriter(prefix, f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
            if self._purge is not None:  # TensorBoard hides the earlier files' events from this step on
                self._file.write_event(Event(step=self._purge, session_log=SessionLog(status=SessionLog.START)))
            self._flushed = time.monotonic()
        return self._file

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=str(k), simple_value=float(v)) for k, v in scalars.items()]
        events = self._events()
        events.write_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))
        if time.monotonic() - self._flushed >= self.flush_secs:
            self.flush()

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import hparams as summaries

        plain = {str(k): _plain(v) for k, v in hparams.items()}
        _, start_info, _ = summaries(plain, {})  # the experiment is inferred from the runs by the HParams plugin
        self._events().write_event(Event(wall_time=time.time(), summary=start_info))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


def _plain(value: Any) -> Any:
    """A hyperparameter as TensorBoard's HParams plugin takes it: a bool, a number or a string."""
    if hasattr(value, "item"):
        value = value.item()
    return value if isinstance(value, (bool, int, float, str)) else str(value)
