"""Checkpoints of runs whose arrays span several processes, written and read with orbax-checkpoint.

:func:`jreg.fit` on a mesh that spans processes (after ``jax.distributed.initialize()``) holds global
arrays that no single process can read whole, so a ``.npz`` file (:func:`jreg.save`, which gathers every
array on the saving host) cannot be written. Such a run's checkpoints are orbax-checkpoint folders,
``ckpt-<epoch>.orbax``, written by every process together (each writes the shards it holds; orbax writes
into a temporary folder and renames it when complete, so a checkpoint folder is whole or absent). The folder
holds two items: ``state`` (params, optimizer state, model state; orbax's ``StandardSave``) and ``meta``
(a JSON object, orbax's ``JsonSave``): ``{"step": epoch, "key": [bits], "meta": {...}}``, the same
``meta`` as a ``.npz`` checkpoint's (run id, history, batch size, global step...). The folder rules of
:mod:`jreg.train.checkpoint_folder` apply unchanged: run ids, only the run's own checkpoints pruned, a resume into
the run's folder by the folder or by one of its checkpoints.

The record is foreign bytes until checked, as a ``.npz`` header is: :func:`check` reads it without orbax (a regular
file, its size capped, JSON) and checks every field (:func:`check_record`) with the checks every checkpoint format
shares (:class:`jreg.checkpoint.common.Fields`) before any is used or orbax restores an array.

A resume restores the arrays onto the current run's layout (the template's shardings: one device, or
whatever the run was placed on), whatever the saving run's mesh and number of processes was. Runs whose
arrays one process holds whole keep the ``.npz`` format. orbax-checkpoint is an optional dependency
(``pip install 'jreg[orbax]'``), imported only when such a checkpoint is written or read.

A save interrupted by a crash leaves orbax's temporary folder, ``ckpt-<epoch>.orbax.orbax-checkpoint-tmp``
(older orbax versions add ``-<timestamp>``). orbax removes it itself when the same checkpoint is saved again;
besides, each completed save removes (on the first process) the temporaries in its folder that record this run's
id in their ``meta`` item and are older than the save: saves of one run follow each other, so such a folder is an
earlier, interrupted save of this run, never a live one. Any other folder with such a name (another run's, or one
interrupted before its record was written) is left alone and named once in a :class:`jreg.JregWarning`, as
:class:`jreg.train.checkpoint_folder.Writer` does with the ``.npz`` temporary files.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .. import checkpoint as ckpt
from .._errors import JregError, JregWarning
from ..checkpoint import orbax_format
from ..checkpoint.common import read_json

SUFFIX = ".orbax"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's (atomicity_types.TMP_DIR_SUFFIX), stable since orbax 0.1
_TEMPORARY = re.compile(r"ckpt-[0-9]+\.orbax\.orbax-checkpoint-tmp(?:-[0-9]+)?")
_reported: set[tuple[str, str]] = set()  # temporaries already named in a warning: (folder, name)


def needed(tree: Any) -> bool:
    """Whether some array of ``tree`` is not fully addressable from this process (so ``.npz`` cannot hold it)."""
    return any(isinstance(a, jax.Array) and not a.is_fully_addressable for a in jax.tree.leaves(tree))


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as exc:
        raise JregError(
            "checkpoints of a run whose arrays span several processes are written with orbax-checkpoint, which "
            "is not installed: pip install 'jreg[orbax]' (or orbax-checkpoint)"
        ) from exc
    return ocp


def _checkpointer(ocp: Any) -> Any:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _key_bits(key: Any) -> list[int] | None:
    if key is None:
        return None
    typed = isinstance(key, jax.Array) and jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key)
    return np.asarray(jax.random.key_data(key) if typed else key).astype(np.uint32).ravel().tolist()


def save(
    path: Path,
    params: Any,
    *,
    opt_state: Any = None,
    model_state: Any = None,
    step: int | None = None,
    key: Any = None,
    meta: Any = None,
) -> None:
    """Write the folder ``path`` (every process calls this together); an existing one is replaced.

    Once it is written, abandoned temporaries of this run beside it are removed (:func:`clean_temporaries`,
    ``meta["run"]`` naming the run)."""
    ocp = _orbax()
    record = {"step": step, "key": _key_bits(key), "meta": meta}
    arrays = {"params": params, "opt_state": opt_state, "model_state": model_state}
    args = ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(record))
    started = time.time()
    _checkpointer(ocp).save(Path(path).absolute(), args=args, force=True)
    run = meta.get("run") if isinstance(meta, dict) else None
    clean_temporaries(Path(path).parent, run if isinstance(run, str) else None, started)


def temporary_run(path: Path) -> str | None:
    """The run id that the orbax temporary folder ``path`` records in its ``meta`` item (finalized or not)."""
    for item in ("meta", "meta" + TMP_SUFFIX):
        record = read_record(path, item)
        meta = None if record is None else record["meta"]
        if isinstance(meta, dict) and isinstance(meta.get("run"), str):
            return meta["run"]
    return None


def clean_temporaries(folder: Path, run: str | None, before: float) -> None:
    """Remove the orbax temporaries in ``folder`` that ``run`` left (interrupted saves); warn once about others.

    Removed: a real folder (not a link) named as orbax names a jreg checkpoint's temporary, whose ``meta`` item
    records ``run`` and last changed before ``before`` (the start of the save just completed). Only the first
    process removes (the processes share the folder)."""
    if jax.process_index() != 0:
        return
    try:
        names = sorted(p.name for p in folder.iterdir() if _TEMPORARY.fullmatch(p.name))
    except OSError:
        return
    kept = []
    for name in names:
        path = folder / name
        if run is not None and _stale_of(path, run, before):
            shutil.rmtree(path, ignore_errors=True)
        elif (str(folder), name) not in _reported:
            kept.append(name)
    if kept:
        _reported.update((str(folder), name) for name in kept)
        warnings.warn(
            f"checkpoint: left {len(kept)} temporary orbax folder(s) in {folder} alone: {', '.join(kept)} (not "
            "recorded as this run's: another run's, a save interrupted before it recorded its run, or one still "
            "running); remove them by hand once no save into this folder is running",
            JregWarning,
            stacklevel=3,
        )


def _stale_of(path: Path, run: str, before: float) -> bool:
    try:
        changed = path.lstat().st_mtime
    except OSError:
        return False
    return not path.is_symlink() and path.is_dir() and changed < before and temporary_run(path) == run


#: The most uint32 words of key data a run record may hold (the ``.npz`` format's ``KEY_MAX_BYTES``).
KEY_MAX_WORDS = orbax_format.KEY_MAX_WORDS
#: A run record's checks, shared with the single-process orbax checkpoints (:mod:`jreg.checkpoint.orbax_format`).
check_record = orbax_format.check_record


def has_header(path: Path) -> bool:
    """Whether the orbax checkpoint folder ``path`` records jreg's header (a single-process checkpoint, written by
    :mod:`jreg.checkpoint.orbax_format`, which :func:`jreg.load` reads whole); False when its record holds only step,
    key and meta (this module's), or cannot be read."""
    found = read_record(path)
    return found is not None and "jreg" in found


def record(path: Path, item: str = "meta") -> dict[str, Any]:
    """The run record of the folder ``path`` (step, key bits, meta), read without orbax as foreign bytes and checked:
    a regular file of at most :data:`jreg.checkpoint.MAX_HEADER_BYTES` (as a ``.npz`` header), JSON, each field
    as :func:`check_record` says. Raises :class:`jreg.CheckpointError` naming the record's file."""
    where = Path(path) / item / "metadata"
    missing = "not a readable orbax checkpoint (its run record, meta/metadata, is missing)"
    found = read_json(where, "orbax run record", ckpt.MAX_HEADER_BYTES, "jreg.checkpoint.MAX_HEADER_BYTES", missing)
    return check_record(found, where)


def read_record(path: Path, item: str = "meta") -> dict[str, Any] | None:
    """:func:`record`, or None when the record is missing or unreadable (for a question that needs no answer)."""
    try:
        return record(path, item)
    except ckpt.CheckpointError:
        return None


def check(path: Path) -> dict[str, Any]:
    """The run record of the orbax checkpoint folder ``path``, checked, once the folder looks whole (a folder, a valid
    record, its arrays' folder ``state/``); else a :class:`jreg.CheckpointError` naming the folder or the record."""
    if not Path(path).is_dir():
        raise ckpt.CheckpointError(f"{path}: not a readable orbax checkpoint (not a folder)")
    found = record(path)
    if not (Path(path) / "state").is_dir():
        raise ckpt.CheckpointError(f"{path}: not a readable orbax checkpoint (its arrays, state/, are missing)")
    return found


def damage(path: Path) -> str | None:
    """Why the folder ``path`` cannot be a checkpoint (:func:`check`'s message; for one that records jreg's header,
    :func:`jreg.checkpoint.verify`'s, which reads every array); None when it looks whole."""
    try:
        check(path)
        if has_header(path):
            ckpt.verify(path)
    except ckpt.CheckpointError as exc:
        return str(exc)
    return None


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings to restore onto: each template leaf's own layout (one local device if none)."""
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(a: Any) -> Any:
        sharding = a.sharding if isinstance(a, jax.Array) else local
        return jax.ShapeDtypeStruct(
            np.shape(a), np.asarray(a).dtype if not hasattr(a, "dtype") else a.dtype, sharding=sharding
        )

    return jax.tree.map(leaf, tree)


def load(path: Path, *, params: Any, opt_state: Any = None, model_state: Any = None) -> ckpt.Checkpoint:
    """The checkpoint in the folder ``path``, its arrays laid out as the templates' (every process calls this).

    Raises :class:`jreg.CheckpointError` naming the folder (or its run record, and the field) when it cannot be read
    (:func:`check`) or does not fit the templates.
    """
    found = check(path)
    ocp = _orbax()
    target = {"params": params, "opt_state": opt_state, "model_state": model_state}
    try:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target)))
        state = _checkpointer(ocp).restore(Path(path).absolute(), args=args)["state"]
    except Exception as exc:  # noqa: BLE001 - orbax's own errors (missing keys, shapes, damage) become one clear error
        raise ckpt.CheckpointError(
            f"{path}: its arrays (state/) cannot be read, or do not fit this run's params / optimizer / model state "
            f"({type(exc).__name__}: {str(exc)[:500]})"
        ) from exc
    key = None if found["key"] is None else np.asarray(found["key"], np.uint32)  # checked: uint32 words
    return ckpt.Checkpoint(state["params"], state["opt_state"], found["step"], key, found["meta"], state["model_state"])
