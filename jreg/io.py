"""Safe file output: every write goes to a temporary file in the same folder,
is flushed to disk, and is then renamed over the target, so a crash or a kill
half-way leaves the previous file intact (or no file), never a torn one.

A temporary file is named ``.{target}.{host}.{pid}.{random}.tmp``, so a stray
one (its writer was killed) says which file it was for and who wrote it:
:func:`temp_owner` reads that back and :func:`writer_gone` tells whether its
writer is certainly dead, which is when it may be removed.

An OS error while writing (a full disk, a permission lost, a folder removed) is a :class:`WriteError`, one line
naming the path, raised from the ``OSError``. :func:`try_lock` and :func:`lock_holder` are the exclusive OS lock
(``fcntl.flock``) a run holds on its checkpoint folder; the OS releases it when the process dies.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ._checks import check_path
from ._errors import JregError

try:  # POSIX; Windows has no flock, and there folders are not locked (docs/reliability.md)
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

#: whether :func:`try_lock` locks on this platform (False without ``fcntl``, e.g. on Windows)
LOCKING = fcntl is not None


class WriteError(JregError):
    """An OS error while writing a file (full disk, permission lost, folder removed): one line naming the path and
    what was kept, raised from the ``OSError`` (``error.__cause__``)."""


def _file_mode(path: Path) -> int:
    """The mode the file gets: an existing file's own, else 0o666 less the process umask (as open() does)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


_TEMP = re.compile(r"\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]{1,10})\.[A-Za-z0-9_]+\.tmp")


def host_name() -> str:
    """This machine's name as temporary file names carry it (letters, digits and ``-`` only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temp_owner(name: str) -> tuple[str, str, int] | None:
    """``(target file name, host, pid)`` of a temporary file named by :func:`atomic_write`, else None."""
    found = _TEMP.fullmatch(name)
    return None if found is None else (found["target"], found["host"], int(found["pid"]))


def writer_gone(name: str) -> bool:
    """Whether the temporary file ``name`` was written on this host by a process that no longer exists.

    Only then is it certainly abandoned: anything else (another host, a live
    process, a name :func:`atomic_write` did not make) may be a write in progress.
    """
    owner = temp_owner(name)
    if owner is None or owner[1] != host_name() or not 0 < owner[2] < 2**31:
        return False
    try:
        os.kill(owner[2], 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but is not ours to signal (PermissionError), or cannot be asked
        return False
    return False


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``.

    The temporary file, ``.{name}.{host}.{pid}.{random}.tmp``, names its writer
    (see :func:`writer_gone`); it is removed if ``write`` fails.

    The file gets the permissions a plain ``open(path, "w")`` would give it
    (an existing file keeps its own).
    """
    path = check_path(path, "path")
    if path.is_dir():
        raise JregError(f"path {str(path)!r} is a folder; give a file path to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise JregError(f"path {str(path)!r}: cannot make its folder, part of it is a file ({exc.strerror})") from exc
    except OSError as exc:  # permission denied, a full disk, a read-only file system
        raise WriteError(
            f"path {str(path)!r}: cannot make its folder ({exc.strerror or exc}); nothing was written"
        ) from exc
    mode = _file_mode(path)
    prefix = f".{path.name}.{host_name()}.{os.getpid()}."
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    except OSError as exc:  # a read-only folder, a full disk: the user's to fix, said in one line
        raise WriteError(
            f"path {str(path)!r}: cannot write into {str(path.parent)!r} ({exc.strerror or exc}); nothing was replaced"
        ) from exc
    try:
        try:
            os.chmod(tmp, mode)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise WriteError(
                f"path {str(path)!r}: the write failed ({exc.strerror or exc}); nothing was replaced"
            ) from exc
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. the target became a folder after the check above
            raise WriteError(
                f"path {str(path)!r}: cannot put the new file in place ({exc.strerror or exc}); nothing was replaced"
            ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (NumPy/JAX scalars and arrays become lists)."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"cannot write {type(o).__name__} as JSON")

    text = json.dumps(obj, indent=2, default=default, allow_nan=True) + "\n"
    return write_bytes(path, text.encode())


def try_lock(path: Path, record: dict[str, Any], wait: float = 0.5) -> tuple[int | None, dict[str, Any] | None]:
    """Take an exclusive OS lock (``fcntl.flock``) on the file ``path``, made if missing, waiting at most ``wait``
    seconds (a :func:`lock_holder` elsewhere holds a shared lock for an instant; a run holds it for its lifetime).

    Returns ``(descriptor, None)`` once held, ``record`` (JSON: who holds it) written into the file; ``(None,
    holder)`` when another open file holds it, ``holder`` the record read from it (``{}`` if not written yet);
    ``(None, None)`` where the platform has no ``fcntl`` (nothing is locked). The OS releases the lock when the
    process ends, however it ends (the file stays, and the next run takes it); :func:`unlock` releases it and
    removes the file. Raises OSError when the file cannot be made.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return None, None
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = lock_holder(path) if time.monotonic() >= deadline else None
            if holder is not None:
                return None, holder
            time.sleep(0.01)
            continue
        except BaseException:
            os.close(fd)
            raise
        if not _is_file_of(fd, path):  # its holder removed it as we opened it: lock the file now at ``path``
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(record).encode())
        except OSError:  # a full disk: the lock holds all the same, only the holder's name is missing
            pass
        return fd, None


def _is_file_of(fd: int, path: Path) -> bool:
    try:
        st, own = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def unlock(fd: int | None, path: Path) -> None:
    """Release a lock :func:`try_lock` took on ``path``, removing the file first (while still held, so no other
    run can hold a file that is no longer there)."""
    if fd is None:
        return
    try:
        if _is_file_of(fd, path):
            path.unlink(missing_ok=True)
    except OSError:  # a folder that lost its permissions: the file stays, and the next run takes it
        pass
    finally:
        os.close(fd)  # closing the only descriptor of the open file releases the flock


def lock_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock on ``path`` (its JSON record, ``{}`` if unreadable), or None when nobody does (or the file
    does not exist, or the platform has no ``fcntl``). Reads only: nothing is made or changed."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # no such file (no run ever locked there), or not readable: nothing to say
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held exclusively by a run
            try:
                record = json.loads(os.read(fd, 4096).decode() or "{}")
            except (OSError, ValueError):
                record = {}
            return record if isinstance(record, dict) else {}
        except OSError:  # a file system without flock: nothing can be said
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def interactive(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a progress bar may redraw itself there), not a log file, pipe or CI log."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
