"""Resuming a run bit for bit: from a checkpoint file, the newest valid checkpoint in a folder, or a
:class:`jreg.Result` in memory (``resume="auto"``: the run's own folder when that holds checkpoints), each after
the checks that it is this run's (key, model state, batch size, cost convention, EMA, kind of data); and the best
params (``best.npz``) a resumed ``restore_best`` run needs. Files are read through
:mod:`jreg.train.checkpoint_folder` (``.npz`` or orbax folders alike).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint as ckpt
from .._checks import check_path
from .._errors import JregError, JregTypeError, JregWarning
from .._types import ModelState, Params
from .checkpoint_folder import (
    _RUN_ID,
    BEST,
    Snapshot,
    _damage,
    _header_meta,
    is_folder_of_checkpoints,
    load_state,
    new_run,
    numbered,
)
from .config import Checkpointing
from .history import History
from .state import TrainState

AUTO = "auto"


def resolve(resume: Any, checkpoint: Checkpointing | None, where: str) -> Any:
    """``resume`` as the run reads it: a :class:`jreg.Result` becomes its :class:`Snapshot`; ``"auto"`` becomes
    ``checkpoint``'s folder when that holds checkpoints (a re-run of a preemptible job continues where the last
    one stopped, after the usual checks that they are this run's) and None when it holds none (a fresh start).
    A folder literally named ``auto`` is passed as ``"./auto"``."""
    if hasattr(resume, "snapshot") and hasattr(resume, "history"):  # a jreg.Result
        snapshot = resume.snapshot
        if not isinstance(snapshot, Snapshot):
            raise JregError(
                f"{where}: resume={type(resume).__name__}(...) holds no run to continue (only the results of "
                "jreg.fit and jreg.sweep do, not a member taken out with select() or a path or PBT result)"
            )
        return snapshot
    if not (isinstance(resume, str) and resume == AUTO):
        return resume
    if checkpoint is None:
        raise JregError(
            f"{where}: resume='auto' resumes from the checkpoint folder when it holds checkpoints; pass "
            "checkpoint=jreg.Checkpointing('folder') too"
        )
    try:
        held = checkpoint.folder.is_dir() and bool(numbered(checkpoint.folder))
    except OSError as exc:
        raise JregError(f"resume='auto': cannot read the folder {checkpoint.folder} ({exc.strerror or exc})") from exc
    return checkpoint.folder if held else None


def check_resume(resume: Any) -> None:
    if resume is None or isinstance(resume, Snapshot):
        return
    if not isinstance(resume, (str, os.PathLike)):
        raise JregTypeError(
            f"resume must be a jreg.Result, a checkpoint file or folder path, or 'auto', got {type(resume).__name__}"
        )
    if resume is not None:
        check_path(resume, "resume")  # not empty, no NUL character


IN_MEMORY = "the jreg.Result passed as resume="


def key_bits(key: Any) -> np.ndarray:
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return np.asarray(jax.random.key_data(key) if typed else key)


class Resumed(NamedTuple):
    state: TrainState
    epoch: int
    history: History
    stopping: Any  # the saved early-stopping state, if any
    run: str  # the run's id, carried over (a new one for a checkpoint written before run ids)
    path: Path | str  # the file resumed from (IN_MEMORY for a Result)
    meta: Any = None  # the checkpoint's meta, checked (a sweep reads its own fields there)
    sweep: Any = None  # a sweep checkpoint's own arrays (see Writer.save's ``sweep``), None for fit's


def _saved_ema(meta: Any) -> dict[str, Any] | None:
    """The EMA settings a checkpoint records (``meta["ema"]``), or None: it kept no EMA (or predates them)."""
    ema = meta.get("ema") if isinstance(meta, dict) else None
    return ema if isinstance(ema, dict) else None


def _load(path: Path, template: TrainState, sweep: Any = None) -> ckpt.Checkpoint:
    """The checkpoint at ``path``; one that kept an EMA of the params stores ``(opt_state, ema)`` in its
    optimizer-state section (read with the params as the EMA's template), which comes back as it is.

    ``sweep``: for :func:`jreg.sweep`, ``sweep(path, meta) -> template`` of the sweep's own arrays, which checks
    the header's ``meta["sweep"]`` first (it raises :class:`JregError` for a checkpoint of another sweep); the
    section then holds ``(that, arrays)``. A sweep's checkpoint is refused to fit and fit's to a sweep."""
    meta = _header_meta(path)
    if meta is not None:  # what decides the template (ema, sweep) is checked before it is used
        ckpt.check_run_meta(meta, path)
    opt_state = template.opt_state
    if _saved_ema(meta) is not None:
        opt_state = (template.opt_state, template.params)
    swept = isinstance(meta, dict) and "sweep" in meta
    if swept and sweep is None:
        raise JregError(f"resume: {path} was written by jreg.sweep (K models at once); resume it with jreg.sweep")
    if sweep is not None and isinstance(meta, dict):
        if not swept:
            raise JregError(f"resume: {path} was written by jreg.fit (one model), not by jreg.sweep")
        opt_state = (opt_state, sweep(path, meta["sweep"]))
    return load_state(path, template.params, opt_state, template.model_state)


def _from_snapshot(snapshot: Snapshot, sweep: Any) -> ckpt.Checkpoint:
    """The in-memory run as :func:`_load` reads a file: a sweep's result only to a sweep, a fit's only to fit."""
    meta = snapshot.meta
    swept = "sweep" in meta
    if swept and sweep is None:
        raise JregError(
            "resume: that result was returned by jreg.sweep (K models at once); continue it with jreg.sweep"
        )
    if sweep is not None:
        if not swept:
            raise JregError("resume: that result was returned by jreg.fit (one model), not by jreg.sweep")
        sweep(IN_MEMORY, meta["sweep"])  # the checks: this sweep's K, hyperparameters and early stopping
    return snapshot.checkpoint()


def _newest_valid(folder: Path, template: TrainState, sweep: Any = None) -> tuple[Path, ckpt.Checkpoint]:
    """The newest checkpoint in ``folder`` that can be read, skipping (with a warning) damaged ones.

    Only damage is skipped (a file that cannot be read at all); a readable file
    that does not fit this run is an error, as it would be named explicitly.
    """
    found = numbered(folder)
    if not found:
        raise JregError(f"resume: no checkpoint (ckpt-*.npz) in {folder}")
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(found):
        try:
            loaded = _load(path, template, sweep)
        except ckpt.CheckpointError as exc:
            damage = _damage(path)
            if damage is None:
                raise
            skipped.append((path, str(exc)))
            continue
        for bad, why in skipped:
            warnings.warn(
                f"resume: skipped {bad.name}, which cannot be read ({why}); resuming from {path.name} instead, "
                f"the newest valid checkpoint in {folder}",
                JregWarning,
                stacklevel=3,
            )
        return path, loaded
    tried = "; ".join(f"{path.name}: {why}" for path, why in skipped)
    raise ckpt.CheckpointError(f"resume: no valid checkpoint in {folder}; tried, newest first: {tried}")


def _check_measured_alike(
    meta: dict[str, Any], path: Any, batch_size: int, cost_convention: str, streamed: bool
) -> None:
    """Refuse a checkpoint whose history was measured otherwise than this run measures: another cost convention,
    batch size, or kind of data (a stream or arrays in memory)."""
    saved_convention = meta.get("cost_convention", "jreg")
    if saved_convention != cost_convention:
        raise JregError(
            f"resume: {path} measured its costs with cost_convention={saved_convention!r}, this run with "
            f"{cost_convention!r}; one history cannot mix them (give Evaluation(cost_convention="
            f"{saved_convention!r}) to continue it)"
        )
    if meta.get("batch_size", batch_size) != batch_size:
        raise JregError(f"resume: batch_size {batch_size} differs from the run's {meta['batch_size']} ({path})")
    if bool(meta.get("streamed", False)) != streamed:
        was, now = ("a stream", "in-memory data") if not streamed else ("in-memory data", "a stream")
        raise JregError(
            f"resume: {path} was trained on {was}, this run on {now}; the data order and the step keys would "
            "differ, so it cannot continue that run (resume it with the same kind of train=)"
        )


def _check_ema(path: Any, saved_ema: dict[str, Any] | None, ema: dict[str, Any] | None) -> None:
    """Refuse a checkpoint whose EMA setting (kept or not, ``evaluate``, ``decay``) is not this run's."""
    if (saved_ema is None) != (ema is None):
        kept = "kept an EMA of the params" if saved_ema is not None else "kept no EMA of the params"
        wants = "keeps one (ema=jreg.EMA(...))" if ema is not None else "keeps none"
        raise JregError(f"resume: {path} {kept}, but this run {wants}; resume it with the same ema= setting")
    if ema is not None and saved_ema is not None and saved_ema.get("evaluate") != ema["evaluate"]:
        raise JregError(
            f"resume: {path} measured its history with EMA.evaluate={saved_ema.get('evaluate')!r}, this run with "
            f"{ema['evaluate']!r}; one history cannot mix figures of the live and the averaged params"
        )
    if ema is not None and saved_ema is not None and saved_ema.get("decay") != ema["decay"]:
        raise JregError(
            f"resume: {path} averaged the params with EMA.decay={saved_ema.get('decay')!r}, this run with "
            f"{ema['decay']!r}; the average would not continue bit for bit (resume with the same decay)"
        )


def resume(
    resume: Any,
    template: TrainState,
    key: Any,
    batch_size: int,
    epochs: int,
    steps_per_epoch: int,
    cost_convention: str = "jreg",
    ema: dict[str, Any] | None = None,
    sweep: Any = None,
    streamed: bool = False,
) -> Resumed:
    """The run a checkpoint file, or the newest valid one in a folder, holds.

    ``cost_convention`` is the resuming run's: it must be the one the checkpointed history was measured with
    (files written before it was recorded were measured the jreg way), else the history and early stopping
    would compare costs of two conventions. ``ema`` is the resuming run's :meth:`jreg.EMA.meta` (None: no EMA):
    a run with an EMA resumes only from a checkpoint that kept one (and measured with it as this run does),
    and the EMA continues bit for bit; a run without one only from a checkpoint without one. ``sweep``: see
    :func:`_load` (the sweep's arrays come back in ``Resumed.sweep``). ``streamed``: the
    resuming run trains on a stream; a streamed run resumes only a streamed run's checkpoint and an in-memory run
    only an in-memory one (their data orders and step keys differ, so the continuation would not be the run's)."""
    check_resume(resume)
    if isinstance(resume, Snapshot):  # a Result's run, in memory: read as its last checkpoint would be
        path, loaded = IN_MEMORY, _from_snapshot(resume, sweep)
    elif is_folder_of_checkpoints(path := Path(resume)):  # a folder of checkpoints, not one orbax checkpoint
        path, loaded = _newest_valid(path, template, sweep)
    else:  # a checkpoint named explicitly (a file, or an orbax folder): exactly that one, no fallback
        loaded = _load(path, template, sweep)
    if loaded.key is None or not np.array_equal(key_bits(loaded.key), key_bits(key)):
        raise JregError(f"resume: key differs from the one {path} was trained with; pass the run's key to continue it")
    if (template.model_state is None) != (loaded.model_state is None):
        has = "holds" if loaded.model_state is not None else "holds no"
        raise JregError(f"resume: {path} {has} model state, but this run's objective does not match it")
    meta = ckpt.check_run_meta(loaded.meta, path, loaded.step)
    _check_measured_alike(meta, path, batch_size, cost_convention, streamed)
    epoch = int(loaded.step or 0)
    if epoch > epochs:
        raise JregError(f"resume: {path} is at epoch {epoch}, beyond epochs={epochs}")
    history = History.from_dicts(meta.get("history"), meta.get("history_epochs"))
    saved_ema = _saved_ema(meta)
    opt_state, ema_params, arrays = loaded.opt_state, None, None
    if sweep is not None:
        opt_state, arrays = opt_state
    if saved_ema is not None:
        opt_state, ema_params = opt_state
    _check_ema(path, saved_ema, ema)
    history.ema = ema
    step = meta.get("global_step")
    step = epoch * steps_per_epoch if step is None else int(step)
    state = TrainState(loaded.params, opt_state, loaded.model_state, jnp.asarray(step, jnp.int32), None, ema_params)
    run = meta.get("run")
    run = run if isinstance(run, str) and _RUN_ID.fullmatch(run) else new_run()
    return Resumed(state, epoch, history, meta.get("early_stopping"), run, path, meta, arrays)


def load_best(
    where: Path | None, params: Params, model_state: ModelState, best_epoch: int, run: str | None = None
) -> tuple[Params, ModelState]:
    """The best params (and model state) of epoch ``best_epoch`` (1-based) from ``best.npz`` beside the checkpoints."""
    path = None if where is None else where / BEST
    if path is None or not path.exists():
        raise JregError(
            f"resume: restore_best needs the best params, saved as best.npz beside the checkpoints; none in {where}"
        )
    loaded = ckpt.load(path, params=params, model_state=model_state)
    saved_run = loaded.meta.get("run") if isinstance(loaded.meta, dict) else None
    if run is not None and saved_run is not None and saved_run != run:
        raise JregError(
            f"resume: {path} belongs to another run ({saved_run}) than the checkpoint resumed from ({run}); "
            "resume without restore_best, or put the run's own best.npz back"
        )
    if loaded.step != best_epoch:
        raise JregError(
            f"resume: {path} holds the best params of epoch {loaded.step}, but the checkpoint resumed from records "
            f"its best at epoch {best_epoch} (best.npz was overwritten by a later part of the run); resume from the "
            "newest checkpoint, or without restore_best"
        )
    return loaded.params, loaded.model_state
