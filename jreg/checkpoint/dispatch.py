"""The public save, load, read_header and verify: one ``.npz`` file (:mod:`.format`, the default) or an orbax
checkpoint folder (:mod:`.orbax_format`), chosen by ``format=`` when saving and by what the path is when reading (a
folder is an orbax checkpoint, a file a ``.npz`` one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from .._checks import check_path
from .._errors import JregError
from . import format as npz
from . import orbax_format
from .common import Checkpoint

FORMATS = ("npz", "orbax")


def save(
    path: str | os.PathLike[str],
    params: Any,
    *,
    opt_state: Any = None,
    step: int | None = None,
    key: jax.Array | None = None,
    meta: Any = None,
    model_state: Any = None,
    format: str = "npz",  # noqa: A002 - the keyword users know (orbax, safetensors, pandas)
) -> Path:
    """Save params (and optionally optimizer state, model state, step, PRNG key and JSON-able ``meta``) to ``path``.

    ``format="npz"`` (the default) writes one ``.npz`` file (:func:`jreg.checkpoint.format.save`: no dependency
    beyond NumPy, no pickle); ``format="orbax"`` an orbax-checkpoint folder holding the same fields
    (:mod:`jreg.checkpoint.orbax_format`; ``pip install 'jreg[orbax]'``). :func:`load` reads either. The write is
    atomic: until it completes, ``path`` keeps its previous content. What :func:`load` could not read back is
    refused here: trees nested deeper than :data:`jreg.checkpoint.MAX_TREE_DEPTH`, ``meta`` deeper than
    :data:`jreg.checkpoint.MAX_META_DEPTH` or not JSON, non-numeric leaves.
    """
    if not isinstance(format, str) or format not in FORMATS:
        raise JregError(f"format must be one of {list(FORMATS)} ('npz': one file, 'orbax': a folder), got {format!r}")
    write = npz.save if format == "npz" else orbax_format.save
    return write(path, params, opt_state=opt_state, step=step, key=key, meta=meta, model_state=model_state)


def _is_folder(path: Any) -> bool:
    return Path(check_path(path, "path")).is_dir()


def load(
    path: str | os.PathLike[str], *, params: Any = None, opt_state: Any = None, model_state: Any = None
) -> Checkpoint:
    """Load a checkpoint written by :func:`save` (a ``.npz`` file or an orbax folder, told apart by what ``path``
    is); never executes code from the file.

    Without templates the trees come back as plain dicts, lists and tuples
    (named tuples as dicts of their fields). Pass ``params=`` and/or
    ``opt_state=`` templates (e.g. ``model.init(key)`` and ``optimizer.init(...)``)
    (and ``model_state=``, for a stateful model's state: BatchNorm statistics)
    to get the original structure back (optax states, Flax or Equinox trees):
    every leaf's path, shape and dtype is then checked, and the first
    difference is named in the error.

    A folder that a user's own orbax code wrote with a pytree of params
    (``orbax.checkpoint.StandardCheckpointer().save(path, params)``) is read too:
    ``load(path, params=like)`` restores it into ``like``'s structure (every
    leaf checked first) as :attr:`Checkpoint.params`, the other fields None.
    """
    read = orbax_format.load if _is_folder(path) else npz.load
    return read(path, params=params, opt_state=opt_state, model_state=model_state)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's header (a ``.npz`` file's or a jreg orbax folder's), checked, without reading any array.

    See :func:`jreg.checkpoint.format.read_header` for its fields."""
    return (orbax_format.read_header if _is_folder(path) else npz.read_header)(path)


def verify(path: str | os.PathLike[str]) -> None:
    """Check that a checkpoint (a ``.npz`` file or a jreg orbax folder) can be read in full, without building any
    tree; raises :class:`jreg.CheckpointError` if not (see :func:`jreg.checkpoint.format.verify`)."""
    (orbax_format.verify if _is_folder(path) else npz.verify)(path)
