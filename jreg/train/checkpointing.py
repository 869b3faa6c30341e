"""Checkpoints during a run and resuming from them: the training state, the epoch, the key and the history.

A checkpoint is one :func:`jreg.save` file, ``ckpt-<epoch>.npz``: params,
optimizer state, model state, the epoch (as ``step``), the run's key, and in
``meta`` the history (values and the epochs they were measured at), the batch
size, the global step count and the early-stopping state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint as ckpt
from .._errors import JregError, JregTypeError
from .._types import ModelState, Params
from .config import Checkpointing
from .history import History
from .state import TrainState


def latest(path: Path) -> Path:
    """A checkpoint file itself, or the newest ``ckpt-*.npz`` in a folder."""
    if path.is_dir():
        found = sorted(path.glob("ckpt-*.npz"))
        if not found:
            raise JregError(f"resume: no checkpoint (ckpt-*.npz) in {path}")
        return found[-1]
    return path


def key_bits(key: Any) -> np.ndarray:
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return np.asarray(jax.random.key_data(key) if typed else key)


def save(
    config: Checkpointing,
    state: TrainState,
    epoch: int,
    key: Any,
    history: History,
    batch_size: int,
    stopping_state: dict[str, Any] | None,
) -> None:
    """Write ``ckpt-<epoch>.npz`` atomically and keep the newest ``config.keep``."""
    meta: dict[str, Any] = {
        "history": history.to_dict(),
        "history_epochs": history.epochs_dict(),
        "batch_size": batch_size,
        "global_step": None if state.step is None else int(state.step),
    }
    if stopping_state is not None:
        meta["early_stopping"] = stopping_state
    folder = config.folder
    ckpt.save(
        folder / f"ckpt-{epoch:06d}.npz",
        state.params,
        opt_state=state.opt_state,
        model_state=state.model_state,
        step=epoch,
        key=key,
        meta=meta,
    )
    for old in sorted(folder.glob("ckpt-*.npz"))[: -config.keep]:
        old.unlink(missing_ok=True)


def resume(resume: Any, template: TrainState, key: Any, batch_size: int, epochs: int, steps_per_epoch: int):
    """``(state, start epoch, history, saved early-stopping state)`` from a checkpoint file or folder."""
    if not isinstance(resume, (str, Path)) and not hasattr(resume, "__fspath__"):
        raise JregTypeError(f"resume must be a checkpoint file or folder path, got {type(resume).__name__}")
    path = latest(Path(resume))
    loaded = ckpt.load(path, params=template.params, opt_state=template.opt_state, model_state=template.model_state)
    if loaded.key is None or not np.array_equal(key_bits(loaded.key), key_bits(key)):
        raise JregError(f"resume: key differs from the one {path} was trained with; pass the run's key to continue it")
    if (template.model_state is None) != (loaded.model_state is None):
        has = "holds" if loaded.model_state is not None else "holds no"
        raise JregError(f"resume: {path} {has} model state, but this run's objective does not match it")
    meta = loaded.meta if isinstance(loaded.meta, dict) else {}
    if meta.get("batch_size", batch_size) != batch_size:
        raise JregError(f"resume: batch_size {batch_size} differs from the run's {meta['batch_size']} ({path})")
    epoch = int(loaded.step or 0)
    if epoch > epochs:
        raise JregError(f"resume: {path} is at epoch {epoch}, beyond epochs={epochs}")
    history = History.from_dicts(meta.get("history"), meta.get("history_epochs"))
    step = meta.get("global_step")
    step = epoch * steps_per_epoch if step is None else int(step)
    state = TrainState(loaded.params, loaded.opt_state, loaded.model_state, jnp.asarray(step, jnp.int32))
    return state, epoch, history, meta.get("early_stopping")


def best_path(folder: Path) -> Path:
    return folder / "best.npz"


def save_best(folder: Path, params: Params, model_state: ModelState, epoch: int, key: Any) -> None:
    ckpt.save(best_path(folder), params, model_state=model_state, step=epoch, key=key, meta={"best": True})


def load_best(
    where: Path | None, params: Params, model_state: ModelState, best_epoch: int
) -> tuple[Params, ModelState]:
    """The best params (and model state) of epoch ``best_epoch`` (1-based) from ``best.npz`` beside the checkpoints."""
    path = None if where is None else best_path(where)
    if path is None or not path.exists():
        raise JregError(
            f"resume: restore_best needs the best params, saved as best.npz beside the checkpoints; none in {where}"
        )
    loaded = ckpt.load(path, params=params, model_state=model_state)
    if loaded.step != best_epoch:
        raise JregError(
            f"resume: {path} holds the best params of epoch {loaded.step}, but the checkpoint resumed from records "
            f"its best at epoch {best_epoch} (best.npz was overwritten by a later part of the run); resume from the "
            "newest checkpoint, or without restore_best"
        )
    return loaded.params, loaded.model_state
