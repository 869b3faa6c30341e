"""A run's checkpoints in its folder: what a checkpoint holds, the folder rules and the :class:`Writer`.

A checkpoint is one :func:`jreg.save` file, ``ckpt-<epoch>.npz``: params,
optimizer state, model state, the epoch (as ``step``), the run's key, and in
``meta`` the history (values and the epochs they were measured at), the batch
size, the global step count, the early-stopping state and the run's id.

A folder belongs to one run. :func:`check_folder` refuses, before any work, a
folder that already holds checkpoints unless the run resumes from it; each
checkpoint records its run's id (``meta["run"]``, carried over on resume), and
a :class:`Writer` deletes (``keep``) and overwrites only files of its own run.
Files of another run, unreadable files and anything it cannot vouch for stay
as they are.

One writer per folder: a run holds an exclusive OS lock (``fcntl.flock``) on
the folder's lock file, ``.jreg-lock`` (which records its pid, host and run
id), from :func:`open_writer`, after every input has passed its checks, to
:meth:`Writer.close` when the run ends, however it ends; the OS releases it
when the process dies (kill -9 included). Another run or resume into a held
folder is refused at once (:func:`check_folder`), naming the holder
(:class:`FolderInUseError`). Across processes (``jax.distributed``) process 0
locks, once per run; every process learns whether it could (all refuse together, none waits for the others in a
collective), and the others check that the lock file names their run. Without ``fcntl`` (Windows)
nothing is locked. The lock file is neither a checkpoint nor a temporary
file: the folder checks, resuming and pruning never look at it.

An OS error while writing a checkpoint (a full disk, a permission lost, the
folder removed) is a :class:`CheckpointWriteError` naming the path and what
was kept.

``Checkpointing(format="orbax")`` writes ``ckpt-<epoch>.orbax`` folders instead
(:mod:`jreg.checkpoint.orbax_format`: orbax-checkpoint, the same fields), as
does a run whose arrays span several processes (a mesh over ``jax.distributed``;
:mod:`jreg.train.distributed_checkpoint`), under the same rules: ``keep`` is
orbax's ``max_to_keep`` over this run's own checkpoints, orbax finalizes each
folder atomically (temporary folder, rename), and orbax's temporaries of this
run's interrupted saves are removed, others named in a warning. jreg does not
hand the folder to an orbax ``CheckpointManager``: that would take every
numbered checkpoint in the folder for its own and prune other runs' too. The
choice is made in one place, :func:`save_state` (and :func:`load_state` when
reading); ``best.npz`` stays a ``.npz`` file in both formats.

:func:`payload`, :class:`Snapshot` (what a checkpoint of a finished run's last epoch would hold, kept in
memory by :class:`jreg.Result`), :func:`save_state` and :func:`load_state` live in
:mod:`jreg.train.checkpoint_state` and are re-exported here; resuming from a file, a folder or a snapshot is
:mod:`jreg.train.resume`.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .. import checkpoint as ckpt
from .. import io
from .._errors import JregError, JregWarning
from .._types import ModelState, Params
from . import distributed_checkpoint as dc
from .checkpoint_state import Snapshot as Snapshot
from .checkpoint_state import _is_orbax, payload, save_state
from .checkpoint_state import load_state as load_state
from .config import Checkpointing
from .history import History
from .state import TrainState

_RUN_ID = re.compile(ckpt.meta.RUN_ID)
BEST = "best.npz"
#: the lock file a run holds in its checkpoint folder (never a checkpoint, never pruned)
LOCK = ".jreg-lock"


class FolderInUseError(JregError):
    """A run or resume into a checkpoint folder that another live run holds (its pid and host in the message)."""


class CheckpointWriteError(io.WriteError):
    """An OS error while writing a checkpoint (full disk, permission lost, folder removed): one line naming the path
    and what was kept; raised from the ``OSError``."""


# --------------------------------------------------------------------------- the folder rules, for both formats
#
# A run's checkpoints are the entries of its folder named ``ckpt-<epoch>.npz`` (a file, :func:`jreg.save`'s format)
# or ``ckpt-<epoch>.orbax`` (a folder, orbax's: arrays that span processes), and ``best.npz``. Whatever the format,
# every question "is this a checkpoint, is it a folder of them, which folder is it in" is answered here, once.

_NUMBERED = re.compile(r"ckpt-([0-9]+)(?:-([0-9]+))?\.(?:npz|orbax)")
_SUFFIXES = (".npz", dc.SUFFIX)


def checkpoint_name(epoch: int, orbax: bool = False, step: int = 0) -> str:
    """The name of the run's checkpoint of ``epoch``: ``ckpt-000003.npz``, or ``ckpt-000003.orbax``; a mid-epoch
    one (``step`` steps into epoch ``epoch + 1``, ``Checkpointing(every_steps=...)``): ``ckpt-000003-000128.npz``."""
    middle = f"-{step:06d}" if step else ""
    return f"ckpt-{epoch:06d}{middle}{dc.SUFFIX if orbax else '.npz'}"


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint of the kind its name says: an ``.orbax`` folder, or else a regular file;
    never a link (a run deletes and overwrites only such entries, and only its own)."""
    return not path.is_symlink() and (path.is_dir() if _is_orbax(path) else path.is_file())


def is_folder_of_checkpoints(path: Path) -> bool:
    """Whether ``resume=path`` names a folder of checkpoints (the newest valid one is taken), not one checkpoint:
    a folder whose name is not an orbax checkpoint's (which is a folder too, but one checkpoint)."""
    return path.is_dir() and not _is_orbax(path)


def folder_of(resume: Path) -> Path:
    """The folder a ``resume`` path continues a run in: the path itself when it is a folder of checkpoints, else
    the folder holding the checkpoint it names (a ``.npz`` file or an orbax checkpoint's folder alike)."""
    return resume if is_folder_of_checkpoints(resume) else resume.parent


def held(folder: Path) -> list[str]:
    """The names that make ``folder`` a run's: ``ckpt-*.npz``, ``ckpt-*.orbax`` and ``best.npz`` (links too, even
    dangling ones), by epoch; other files do not count. Raises OSError when the folder cannot be listed."""
    names = sorted((p.name for p in folder.glob("ckpt-*") if p.suffix in _SUFFIXES), key=_sort_key)
    return names + ([BEST] if (folder / BEST).exists() or (folder / BEST).is_symlink() else [])


def new_run() -> str:
    """A fresh run id (``uuid4().hex``): process 0's on every process of a ``jax.distributed`` run (one broadcast;
    every process calls it at the same point), so that all of them name the run alike."""
    run = uuid.uuid4()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        raw = np.frombuffer(run.bytes, np.uint8)
        run = uuid.UUID(bytes=bytes(np.asarray(multihost_utils.broadcast_one_to_all(raw), np.uint8)))
    return run.hex


def numbered(folder: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``ckpt-<epoch>.npz`` or ``.orbax`` entry in ``folder`` (mid-epoch ones included,
    with the epochs they had completed), oldest first by position (:func:`positions`)."""
    return [(position[0], path) for position, path in positions(folder)]


def positions(folder: Path) -> list[tuple[tuple[int, int], Path]]:
    """``((epochs done, steps into the next), path)`` of every checkpoint entry in ``folder``, oldest first:
    ``ckpt-000002.npz`` is at ``(2, 0)``, the mid-epoch ``ckpt-000002-000128.npz`` at ``(2, 128)``."""
    found = []
    for path in folder.glob("ckpt-*"):
        match = _NUMBERED.fullmatch(path.name)
        if match:
            found.append(((int(match[1]), int(match[2] or 0)), path))
    return sorted(found, key=lambda item: (item[0], item[1].name))


def _same_folder(resume: Path, folder: Path) -> bool:
    """Whether ``resume`` is ``folder`` or a checkpoint in it (a file, or an orbax checkpoint's folder)."""
    try:
        return os.path.samefile(folder_of(resume), folder)
    except OSError:
        return False


def _listing(names: list[str]) -> str:
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]} ({len(names)} files)"


def _holder(record: dict[str, Any]) -> str:
    pid, host, run = record.get("pid"), record.get("host"), record.get("run")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return "another process (its pid is not recorded yet)"
    where = f" on host {host}" if isinstance(host, str) else ""
    return f"pid {pid}{where}" + (f" (run {run})" if isinstance(run, str) and _RUN_ID.fullmatch(run) else "")


def _in_use(folder: Path, record: dict[str, Any], argument: str) -> FolderInUseError:
    return FolderInUseError(
        f"{argument}: the folder {folder} is in use by {_holder(record)}: one run writes into a folder at a time. "
        "Wait for that run to end (or stop it) before resuming there, or checkpoint into another folder"
    )


def check_unlocked(folder: Path, argument: str = "checkpoint") -> None:
    """Refuse a folder whose lock another live run holds (:class:`FolderInUseError`); reads only, makes nothing.
    Across processes process 0 asks (it alone locks) and every process learns its answer (:func:`_agreed`), so all
    of them refuse together: none goes on to wait for the others in a collective."""
    record = io.lock_holder(folder / LOCK) if jax.process_index() == 0 else None
    if _agreed(record is not None):
        raise _in_use(folder, record if record is not None else io.lock_holder(folder / LOCK) or {}, argument)


def _agreed(failed: bool) -> bool:
    """Process 0's ``failed`` on every process (one broadcast across ``jax.distributed`` processes; as it is in one
    process). Every process must call it at the same point, with process 0 not having raised before it."""
    if jax.process_count() == 1:
        return failed
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))


def check_folder(checkpoint: Checkpointing, resume: Any, argument: str = "checkpoint") -> None:
    """Refuse a checkpoint folder that another live run holds (:func:`check_unlocked`), or that already holds
    checkpoints (:func:`held`), unless this run resumes from that folder or a checkpoint in it (:func:`folder_of`:
    a ``.npz`` file or an orbax checkpoint's folder alike).

    Nothing is written or deleted; other files in the folder (the lock file among them) do not count.
    """
    folder = checkpoint.folder
    check_unlocked(folder, argument)  # first: every process asks at the same point (a missing folder is unlocked)
    if not folder.is_dir():
        return
    try:
        names = held(folder)
    except OSError as exc:
        raise JregError(f"{argument}: cannot read the folder {folder} ({exc.strerror or exc})") from exc
    if not names or (isinstance(resume, (str, os.PathLike)) and _same_folder(Path(resume), folder)):
        return
    raise JregError(
        f"{argument}: the folder {folder} already holds checkpoints ({_listing(names)}); a run never writes into "
        f"another run's folder. Pass resume={str(folder)!r} to continue that run there, or checkpoint into a new "
        "or empty folder"
    )


def _sort_key(name: str) -> tuple[int, int, str]:
    match = _NUMBERED.fullmatch(name)
    return (int(match[1]) if match else -1, int(match[2] or 0) if match else 0, name)


def _header_meta(path: Path) -> Any:
    """The ``meta`` in a checkpoint's JSON header, read without loading its arrays; None when unreadable."""
    if _is_orbax(path):
        record = dc.read_record(path)
        return None if record is None else record["meta"]
    try:
        return ckpt.read_header(path)["meta"]
    except (ckpt.CheckpointError, OSError):  # any doubt means "not known to be ours": the file is never touched
        return None


def run_of(path: Path) -> str | None:
    """The run id a checkpoint file records, or None (another kind of file, unreadable, written before run ids)."""
    meta = _header_meta(path)
    run = meta.get("run") if isinstance(meta, dict) else None
    return run if isinstance(run, str) and _RUN_ID.fullmatch(run) else None


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _damage(path: Path) -> str | None:
    """Why ``path`` cannot be read as a checkpoint at all (forged, truncated, a damaged member); None if intact.

    :func:`jreg.checkpoint.verify` reads only what the header names, each member's size checked first.
    """
    if _is_orbax(path):
        return dc.damage(path)
    try:
        ckpt.verify(path)
    except ckpt.CheckpointError as exc:
        return str(exc)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class Writer:
    """One run's checkpoint writes in one folder: saves, pruning (``keep``), ``best.npz`` and stray temporary files.

    It deletes or overwrites only files of its own run: written by this
    process (known by their inode, size and time, without reading them) or
    recording its run id. It removes a temporary file of a checkpoint only
    when :func:`jreg.io.writer_gone` (this host, a process that no longer
    exists), and warns once about any other it leaves alone.
    """

    def __init__(self, config: Checkpointing, run: str):
        self.config, self.run = config, run
        self.folder = config.folder
        self.written: dict[str, tuple[int, int, int] | None] = {}  # name -> signature after our write
        self.reported: set[str] = set()  # temporary files already warned about
        self.lock: int | None = None  # the lock file's descriptor while this run holds the folder (open_writer)
        self.identity: tuple[int, int] | None = None  # the folder's (device, inode) when opened

    def close(self) -> None:
        """Release the folder's lock (the run has ended, however it ended); safe to call twice."""
        lock, self.lock = self.lock, None
        io.unlock(lock, self.folder / LOCK)

    def _check_folder_kept(self, path: Path) -> None:
        """Refuse to write once the folder was removed or replaced during the run (a write would make a new, empty
        folder that this run holds no lock on)."""
        try:
            st = self.folder.stat()
            same = self.identity is None or (st.st_dev, st.st_ino) == self.identity
        except OSError as exc:
            same, cause = False, exc
        else:
            cause = FileNotFoundError(2, "the folder was replaced by another")
        if not same:
            raise CheckpointWriteError(
                f"checkpoint: cannot write {path}: the folder {self.folder} was removed or replaced during the run, "
                "and the run's earlier checkpoints with it; nothing was written and the run stopped. Train again "
                "into a folder that stays"
            ) from cause

    def ours(self, path: Path) -> bool:
        """Whether ``path`` is a regular file (an orbax checkpoint's folder) of this run."""
        if not is_checkpoint(path):
            return False
        signature = _signature(path)
        if path.name in self.written and signature is not None and self.written[path.name] == signature:
            return True
        return run_of(path) == self.run

    def adopt(self, path: Path) -> None:
        """Count ``path`` as this run's (a ``best.npz`` the resumed run was restored from)."""
        self.written[path.name] = _signature(path)

    def check_ahead(self, start: int, epochs: int, start_step: int = 0) -> None:
        """Before training: refuse if a checkpoint this run would write exists and is not this run's, or if the
        folder holds this run's checkpoints of epochs after ``start`` (resuming from an older one would branch
        the run: its later files would be overwritten with other content, or outlive the new ones). ``start_step``:
        the steps of epoch ``start + 1`` a mid-epoch checkpoint resumed from had run (later positions count)."""
        later = [p.name for at, p in positions(self.folder) if at > (start, start_step) and self.ours(p)]
        present = [(e, p) for e, p in numbered(self.folder) if e > start]  # what is there, not every epoch to come
        if later:
            raise JregError(
                f"checkpoint: {self.folder} holds later checkpoints of this run ({_listing(later)}) than the epoch "
                f"{start} resumed from; continuing from there would mix two branches of the run in one folder. "
                "Resume from the newest checkpoint (resume=<the folder>), or checkpoint into a new folder"
            )
        for e, path in present:  # a file this run would write (its exact name, at an epoch it saves) is not its own
            if (
                e <= epochs
                and path.name in (checkpoint_name(e), checkpoint_name(e, orbax=True))
                and self.config.due(e - 1, epochs)
            ):
                raise self._foreign(path)

    def _foreign(self, path: Path) -> JregError:
        if not is_checkpoint(path):
            why = "is not a plain file" if not _is_orbax(path) else "is not a plain folder"
        elif _damage(path) is not None:
            why = "cannot be read"
        else:
            other = run_of(path)
            why = "records no run" if other is None else f"belongs to run {other}"
        return JregError(
            f"checkpoint: this run (run {self.run}) would write {path}, which exists and {why}: a run overwrites "
            "and deletes only its own files. Move it away, or checkpoint into another folder"
        )

    def _publish(self, path: Path, write: Any) -> None:
        self._check_folder_kept(path)
        if (path.exists() or path.is_symlink()) and not self.ours(path):
            raise self._foreign(path)
        try:
            write()
        except (io.WriteError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc, io.WriteError) and exc.__cause__ is not None else exc
            raise self._write_failed(path, cause) from cause
        self.written[path.name] = _signature(path)

    def _write_failed(self, path: Path, cause: BaseException) -> CheckpointWriteError:
        """The one-line error for an OS error while writing ``path``, saying what the folder still holds."""
        reason = getattr(cause, "strerror", None) or str(cause)
        try:
            kept = [p.name for _, p in numbered(self.folder) if p.name != path.name and self.ours(p)]
        except OSError:
            kept = []
        if kept:
            what = (
                f"the run's earlier checkpoints are intact ({_listing(kept)}); resume={str(self.folder)!r} "
                "continues from the newest once there is room"
            )
        else:
            what = "no checkpoint of this run was kept"
        previous = f"{path.name} keeps its previous content" if path.exists() else f"{path.name} was not written"
        return CheckpointWriteError(f"checkpoint: cannot write {path} ({reason}); {previous}, {what}")

    def clean_temps(self) -> None:
        """Remove abandoned temporary files of checkpoints in the folder; warn once about those left alone."""
        kept = []
        for path in sorted(self.folder.glob(".*.tmp")):
            owner = io.temp_owner(path.name)
            target = owner[0] if owner is not None else path.name[1:]
            if not (target.startswith("ckpt-") or target.startswith(BEST)):
                continue  # not a checkpoint's temporary file
            if owner is not None and _is_checkpoint_name(target) and io.writer_gone(path.name) and path.is_file():
                path.unlink(missing_ok=True)
            elif path.name not in self.reported:
                kept.append(path.name)
        if kept:
            self.reported.update(kept)
            warnings.warn(
                f"checkpoint: left {len(kept)} temporary file(s) in {self.folder} alone: {', '.join(kept)} (written "
                "on another host, by a process still running, or named otherwise than jreg names them); remove "
                "them by hand once no save into this folder is running",
                JregWarning,
                stacklevel=2,
            )

    def save(
        self,
        state: TrainState,
        epoch: int,
        key: Any,
        history: History,
        batch_size: int,
        stopping_state: dict[str, Any] | None,
        streamed: bool = False,
        *,
        sweep: tuple[dict[str, Any], Any] | None = None,
        position: dict[str, Any] | None = None,
    ) -> None:
        """Write ``ckpt-<epoch>.npz`` (``.orbax`` with ``format="orbax"`` or across processes) atomically; keep the
        run's newest ``keep``.

        ``streamed``: the run trains on a stream (recorded as ``meta["streamed"]``; see :func:`resume`).
        ``sweep``: ``(meta, arrays)`` of a :func:`jreg.sweep` checkpoint (``meta["sweep"]`` and the arrays that
        travel beside the optimizer state; see :mod:`jreg.train.sweep_checkpoint`). ``position``: a mid-epoch
        checkpoint's place in the stream (``meta["stream_position"]``: ``step`` steps into epoch ``epoch + 1``,
        :mod:`jreg.train.stream.position`), written as ``ckpt-<epoch>-<step>.npz``."""
        arrays, meta = payload(state, key, history, batch_size, stopping_state, streamed, self.run, sweep)
        step = 0
        if position is not None:
            meta["stream_position"], step = position, position["step"]
        self.clean_temps()
        path = self.folder / checkpoint_name(epoch, orbax=self.config.format == "orbax" or dc.needed(arrays), step=step)
        self._publish(path, lambda: save_state(path, *arrays, step=epoch, key=key, meta=meta))
        mine = [p for at, p in positions(self.folder) if at <= (epoch, step) and self.ours(p)]  # this one is last
        for old in mine[: -self.config.keep]:
            _remove(old)
            self.written.pop(old.name, None)

    def save_best(self, params: Params, model_state: ModelState, epoch: int, key: Any) -> None:
        path = self.folder / BEST
        meta = {"best": True, "run": self.run}
        self._publish(path, lambda: ckpt.save(path, params, model_state=model_state, step=epoch, key=key, meta=meta))


def open_writer(checkpoint: Checkpointing, run: str, start: int, epochs: int, start_step: int = 0) -> Writer:
    """The run's :class:`Writer`, holding the folder: made now (after every input passed its checks, so a refused
    run leaves nothing on disk), locked (process 0; :class:`FolderInUseError` if another run holds it), and checked
    ahead (:meth:`Writer.check_ahead`). Close it when the run ends (:meth:`Writer.close`)."""
    folder = checkpoint.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JregError(f"checkpoint: cannot make the folder {folder} ({exc.strerror or exc})") from exc
    writer = Writer(checkpoint, run)
    try:
        _lock(writer, folder, run)
        st = folder.stat()
        writer.identity = (st.st_dev, st.st_ino)
        writer.check_ahead(start, epochs, start_step)
    except BaseException:
        writer.close()
        raise
    return writer


def _lock(writer: Writer, folder: Path, run: str) -> None:
    """Process 0 locks the folder for ``writer``; across processes the others learn whether it could
    (:func:`_agreed`: all refuse together) and check that the lock file, where they see it, names this run."""
    holder: dict[str, Any] | None = None
    failure: OSError | None = None
    if jax.process_index() == 0:
        record = {"pid": os.getpid(), "host": io.host_name(), "run": run}
        try:
            writer.lock, holder = io.try_lock(folder / LOCK, record)
        except OSError as exc:
            failure = exc
    if _agreed(failure is not None or holder is not None):
        if failure is not None:
            raise JregError(f"checkpoint: cannot lock the folder {folder} ({failure.strerror or failure})") from failure
        if holder is None:  # a process other than 0: the holder as this process sees it
            holder = io.lock_holder(folder / LOCK) or {}
        raise _in_use(folder, holder, "checkpoint")
    if jax.process_index() != 0:  # process 0 holds it: the file (on a shared folder) names this run
        seen = io.lock_holder(folder / LOCK)
        if seen is not None and seen.get("run") not in (None, run):
            raise _in_use(folder, seen, "checkpoint")


def _remove(path: Path) -> None:
    """Delete one of the run's checkpoints; an orbax folder by the first process only (they share the folder)."""
    if not _is_orbax(path):
        path.unlink(missing_ok=True)
    elif jax.process_index() == 0:
        shutil.rmtree(path, ignore_errors=True)


def _is_checkpoint_name(name: str) -> bool:
    return name == BEST or _NUMBERED.fullmatch(name) is not None
