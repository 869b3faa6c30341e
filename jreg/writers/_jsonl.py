"""JSON Lines: one object a line, every run of a training job in one file, readable with ``json`` or pandas.

Records: ``{"run": name, "group": id, "hparams": {...}}`` once a run, then ``{"run": name, "group": id, "step": s,
"scalars": {tag: value}}`` per step (``run`` is None for a fit's run and for the writer used directly; ``group``
is jreg's run id). ``pandas.read_json(path, lines=True)`` reads it. A resumed run (``start`` epochs done) first
drops the file's records of its group after step ``start`` (the epochs a crashed run wrote after its last
checkpoint, which the resumed run writes again), so the file holds each step once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import io
from .._errors import JregTypeError
from ._runs import OwnRun


class JSONL(OwnRun):
    """Every run's scalars and hyperparameters as JSON lines in the file ``path`` (appended to)."""

    def __init__(self, path: str | os.PathLike[str]):
        if not isinstance(path, (str, os.PathLike)):
            raise JregTypeError(f"JSONL: path must be a file path (str or PathLike), got {path!r}")
        self.path = Path(path)
        self._file: Any = None
        self._open = 0  # the runs using the file: it is closed when the last one is
        self._purged: set[str] = set()
        self._own: _Run | None = None

    def __repr__(self) -> str:
        return f"JSONL({str(self.path)!r})"

    def run(self, name: str | None, *, group: str | None = None, start: int = 0) -> _Run:
        """A view of the file whose records carry ``name`` and ``group``."""
        if start and group is not None and group not in self._purged:
            self._purge(group, start)
        if group is not None:
            self._purged.add(group)
        self._open += 1
        return _Run(self, name, group)

    def _purge(self, group: str, start: int) -> None:
        if self._file is not None:
            self._file.flush()
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines(keepends=True) if _kept(line, group, start)]
        io.write_bytes(self.path, "".join(kept).encode())
        if self._file is not None:  # the handle pointed at the replaced file
            self._file.close()
            self._file = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a line)."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 -- line-buffered
        self._file.write(json.dumps(record) + "\n")

    def _release(self) -> None:
        self._open -= 1
        if self._open <= 0 and self._file is not None:
            file, self._file = self._file, None
            file.close()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()


class _Run:
    """One run's records in a :class:`JSONL` file (a :class:`jreg.writers.Writer`)."""

    def __init__(self, file: JSONL, name: str | None, group: str | None):
        self.file, self.name, self.group, self.closed = file, name, group, False

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        values = {str(k): float(v) for k, v in scalars.items()}
        self.file.write({"run": self.name, "group": self.group, "step": int(step), "scalars": values})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        values = {str(k): (v.item() if hasattr(v, "item") else v) for k, v in hparams.items()}
        self.file.write({"run": self.name, "group": self.group, "hparams": values})

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.file._release()


def _kept(line: str, group: str, start: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return True  # not ours to judge
    return not (isinstance(record, dict) and record.get("group") == group and record.get("step", 0) > start)
