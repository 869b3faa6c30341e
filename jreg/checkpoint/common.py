"""What every part of the checkpoint format shares: the format's name, its error, what :func:`load` returns,
the limits a file's header is held to, and the small checks on foreign values."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from .._errors import JregError

FORMAT = "jreg-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(JregError):
    """A file that is not a jreg checkpoint, is truncated or corrupted, or does not fit the target."""


class Checkpoint(NamedTuple):
    """What :func:`load` returns."""

    params: Any
    opt_state: Any
    step: int | None
    key: jax.Array | None
    meta: Any
    model_state: Any = None


#: The most bytes the JSON header may declare (it lists each leaf's path, shape and dtype: ~100 bytes a leaf).
MAX_HEADER_BYTES = 64 * 2**20
#: The deepest tree description accepted (real trees nest a few levels; Python's recursion limit is 1000).
MAX_TREE_DEPTH = 200
#: The deepest ``meta`` :func:`save` writes (a container at the top is level 1): far inside what ``json`` parses.
MAX_META_DEPTH = 200
#: The most dimensions a leaf may have (NumPy's own limit).
MAX_DIMS = 64
#: The most bytes a key member may hold in files that do not record the key's shape (written before they did).
KEY_MAX_BYTES = 2**20


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _regular_file(path: Path, what: str, missing: str) -> os.stat_result:
    """``os.stat(path)`` of a regular file; a missing file, a folder, a FIFO or device is a CheckpointError."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {missing}") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path}: is a folder, not a {what} file")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: is not a regular file, so not a {what}")
    return info
