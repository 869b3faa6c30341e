"""What a checkpoint holds and where it goes: :func:`payload` (the arrays and meta of a run's state),
:class:`Snapshot` (a finished run's last checkpoint kept in memory by :class:`jreg.Result`), and
:func:`save_state` / :func:`load_state`, the one place that chooses a ``.npz`` file or an orbax folder.

The folder rules and the :class:`~jreg.train.checkpoint_folder.Writer` that uses these are
:mod:`jreg.train.checkpoint_folder`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint as ckpt
from .._types import ModelState, Params
from . import distributed_checkpoint as dc
from .history import History
from .state import TrainState


def _is_orbax(path: Path) -> bool:
    """Whether ``path`` names an orbax checkpoint (a folder) rather than a ``.npz`` file: by its name, ``*.orbax``."""
    return path.suffix == dc.SUFFIX


def payload(
    state: TrainState,
    key: Any,
    history: History,
    batch_size: int,
    stopping_state: dict[str, Any] | None,
    streamed: bool,
    run: str,
    sweep: tuple[dict[str, Any], Any] | None = None,
) -> tuple[tuple[Params, Any, ModelState], dict[str, Any]]:
    """``((params, optimizer-state section, model state), meta)``: what a checkpoint of this state holds.

    The optimizer-state section is ``opt_state``, ``(opt_state, ema)`` with an EMA of the params, and
    ``(that, sweep arrays)`` for a sweep. One function for the files :class:`Writer` saves and the
    :class:`Snapshot` a :class:`jreg.Result` keeps, so both resume the same way."""
    meta: dict[str, Any] = {
        **history.checkpoint_meta(),
        "batch_size": batch_size,
        "global_step": None if state.step is None or np.ndim(state.step) else int(state.step),
        "run": run,
        "cost_convention": history.cost_convention,
    }
    if stopping_state is not None:
        meta["early_stopping"] = stopping_state
    if streamed:
        meta["streamed"] = True
    opt_state = state.opt_state
    if state.ema is not None:  # the EMA of the params travels beside the optimizer state: (opt_state, ema)
        meta["ema"] = dict(history.ema or {})
        opt_state = (state.opt_state, state.ema)
    if sweep is not None:  # a sweep's own arrays beside those: (opt_state section as fit's, arrays)
        meta["sweep"] = sweep[0]
        opt_state = (opt_state, sweep[1])
    return (state.params, opt_state, state.model_state), meta


class Snapshot(NamedTuple):
    """A finished run's state in memory, as a checkpoint of its last epoch would hold it (kept by
    :class:`jreg.Result` so that ``resume=result`` continues the run exactly as ``resume=<its checkpoint>``).

    ``best``: the best epoch's ``(params, model_state)`` of a fit with ``restore_best`` (what ``best.npz`` holds
    beside the checkpoints), else None."""

    arrays: tuple[Params, Any, ModelState]
    epoch: int
    key: Any
    meta: dict[str, Any]
    best: Any = None

    @classmethod
    def take(cls, state: TrainState, epoch: int, key: Any, *args: Any, best: Any = None, **kwargs: Any) -> Snapshot:
        """The snapshot of ``state`` after ``epoch`` epochs (the rest as :func:`payload`'s). The meta goes through
        JSON as a file's does, so a resumed run reads exactly what it would read from the file."""
        arrays, meta = payload(state, key, *args, **kwargs)
        return cls(arrays, int(epoch), key, json.loads(json.dumps(meta)), best)

    def checkpoint(self) -> ckpt.Checkpoint:
        """The snapshot as :func:`jreg.load` would return its file (fresh buffers: a resumed run may donate them)."""
        params, opt_state, model_state = jax.tree.map(jnp.array, self.arrays)
        return ckpt.Checkpoint(params, opt_state, self.epoch, self.key, self.meta, model_state)


def save_state(path: Path, params: Params, opt_state: Any, model_state: ModelState, **fields: Any) -> None:
    """Write one checkpoint (``fields``: step, key, meta): a ``.npz`` file (:func:`jreg.save`), or, for a path ending
    in ``.orbax``, an orbax folder: :func:`jreg.save`'s ``format="orbax"`` when one process holds every array, else
    one written by every process together (:mod:`jreg.train.distributed_checkpoint`). Once an orbax folder is
    written, the orbax temporaries of this run's interrupted saves beside it are removed."""
    if not _is_orbax(path):
        ckpt.save(path, params, opt_state=opt_state, model_state=model_state, **fields)
    elif dc.needed((params, opt_state, model_state)):
        dc.save(path, params, opt_state=opt_state, model_state=model_state, **fields)
    else:
        started = time.time()
        ckpt.save(path, params, opt_state=opt_state, model_state=model_state, format="orbax", **fields)
        meta = fields.get("meta")
        run = meta.get("run") if isinstance(meta, dict) else None
        dc.clean_temporaries(path.parent, run if isinstance(run, str) else None, started)


def load_state(path: Path, params: Params, opt_state: Any, model_state: ModelState) -> ckpt.Checkpoint:
    """Read one checkpoint written by :func:`save_state`, its arrays laid out as the templates' (an orbax folder
    that records jreg's header, :func:`jreg.load`'s; one written across processes, onto the templates' shardings)."""
    read = dc.load if _is_orbax(path) and not dc.has_header(path) else ckpt.load
    return read(path, params=params, opt_state=opt_state, model_state=model_state)
