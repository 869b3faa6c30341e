"""Safe file output: every write goes to a temporary file in the same folder,
is flushed to disk, and is then renamed over the target, so a crash or a kill
half-way leaves the previous file intact (or no file), never a torn one.

A temporary file is named ``.{target}.{host}.{pid}.{random}.tmp``, so a stray
one (its writer was killed) says which file it was for and who wrote it:
:func:`temp_owner` reads that back and :func:`writer_gone` tells whether its
writer is certainly dead, which is when it may be removed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ._checks import check_path
from ._errors import JregError


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
    mode = _file_mode(path)
    prefix = f".{path.name}.{host_name()}.{os.getpid()}."
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    except OSError as exc:  # a read-only folder, a full disk: the user's to fix, said in one line
        raise JregError(f"path {str(path)!r}: cannot write into {str(path.parent)!r} ({exc.strerror or exc})") from exc
    try:
        try:
            os.chmod(tmp, mode)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise JregError(
                f"path {str(path)!r}: the write failed ({exc.strerror or exc}); nothing was replaced"
            ) from exc
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. the target became a folder after the check above
            raise JregError(
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


def interactive(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a progress bar may redraw itself there), not a log file, pipe or CI log."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
