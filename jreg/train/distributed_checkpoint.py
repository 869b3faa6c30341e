"""Checkpoints of runs whose arrays span several processes, written and read with orbax-checkpoint.

:func:`jreg.fit` on a mesh that spans processes (after ``jax.distributed.initialize()``) holds global
arrays that no single process can read whole, so a ``.npz`` file (:func:`jreg.save`, which gathers every
array on the saving host) cannot be written. Such a run's checkpoints are orbax-checkpoint folders,
``ckpt-<epoch>.orbax``, written by every process together (each writes the shards it holds; orbax writes
into a temporary folder and renames it when complete, so a checkpoint folder is whole or absent). The folder
holds two items: ``state`` (params, optimizer state, model state; orbax's ``StandardSave``) and ``meta``
(a JSON object, orbax's ``JsonSave``): ``{"step": epoch, "key": [bits], "meta": {...}}``, the same
``meta`` as a ``.npz`` checkpoint's (run id, history, batch size, global step...). The folder rules of
:mod:`jreg.train.checkpointing` apply unchanged: run ids, only the run's own checkpoints pruned.

A resume restores the arrays onto the current run's layout (the template's shardings: one device, or
whatever the run was placed on), whatever the saving run's mesh and number of processes was. Runs whose
arrays one process holds whole keep the ``.npz`` format. orbax-checkpoint is an optional dependency
(``pip install 'jreg[orbax]'``), imported only when such a checkpoint is written or read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .. import checkpoint as ckpt
from .._errors import JregError

SUFFIX = ".orbax"


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
    """Write the folder ``path`` (every process calls this together); an existing one is replaced."""
    ocp = _orbax()
    record = {"step": step, "key": _key_bits(key), "meta": meta}
    arrays = {"params": params, "opt_state": opt_state, "model_state": model_state}
    args = ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(record))
    _checkpointer(ocp).save(Path(path).absolute(), args=args, force=True)


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON record of the folder ``path`` (step, key bits, meta), read without orbax; None if unreadable."""
    try:
        record = json.loads((Path(path) / "meta" / "metadata").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"step", "key", "meta"} <= set(record) else None


def damage(path: Path) -> str | None:
    """Why the folder ``path`` cannot be a checkpoint (not a folder, no readable record); None when it looks whole."""
    if not Path(path).is_dir():
        return "not a folder"
    if read_record(path) is None:
        return "its record (meta/metadata) is missing or not JSON"
    if not (Path(path) / "state").is_dir():
        return "its arrays (state/) are missing"
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

    Raises :class:`jreg.CheckpointError` naming the folder when it cannot be read or does not fit the templates.
    """
    why = damage(path)
    if why is not None:
        raise ckpt.CheckpointError(f"{path}: not a readable orbax checkpoint ({why})")
    record = read_record(path)
    ocp = _orbax()
    target = {"params": params, "opt_state": opt_state, "model_state": model_state}
    try:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target)))
        state = _checkpointer(ocp).restore(Path(path).absolute(), args=args)["state"]
    except Exception as exc:  # noqa: BLE001 - orbax's own errors (missing keys, shapes) become one clear error
        raise ckpt.CheckpointError(
            f"{path}: its arrays do not fit this run's params / optimizer / model state ({type(exc).__name__}: "
            f"{str(exc)[:500]})"
        ) from exc
    key = None if record["key"] is None else np.asarray(record["key"], np.uint32)
    step = record["step"]
    return ckpt.Checkpoint(state["params"], state["opt_state"], step, key, record["meta"], state["model_state"])
