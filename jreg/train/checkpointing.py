"""Checkpoints during a run and resuming from them: the training state, the epoch, the key and the history.

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

A run whose arrays span several processes (a mesh over ``jax.distributed``)
writes ``ckpt-<epoch>.orbax`` folders instead, with orbax-checkpoint
(:mod:`jreg.train.distributed_checkpoint`), under the same rules; the choice is
made in one place, :func:`save_state` (and :func:`load_state` when reading).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint as ckpt
from .. import io
from .._checks import check_path
from .._errors import JregError, JregTypeError, JregWarning
from .._types import ModelState, Params
from . import distributed_checkpoint as dc
from .config import Checkpointing
from .history import History
from .state import TrainState

_NUMBERED = re.compile(r"ckpt-([0-9]+)\.(?:npz|orbax)")
_RUN_ID = re.compile(r"[0-9a-f]{32}")
BEST = "best.npz"


def new_run() -> str:
    """A fresh run id (``uuid4().hex``)."""
    return uuid.uuid4().hex


def numbered(folder: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``ckpt-<epoch>.npz`` entry in ``folder``, oldest first by the epoch number."""
    found = []
    for path in folder.glob("ckpt-*"):
        match = _NUMBERED.fullmatch(path.name)
        if match:
            found.append((int(match[1]), path))
    return sorted(found, key=lambda item: (item[0], item[1].name))


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


def _same_folder(resume: Path, folder: Path) -> bool:
    """Whether ``resume`` is ``folder`` or a file inside it."""
    where = resume if resume.is_dir() else resume.parent
    try:
        return os.path.samefile(where, folder)
    except OSError:
        return False


def _listing(names: list[str]) -> str:
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]} ({len(names)} files)"


def check_folder(checkpoint: Checkpointing, resume: Any, argument: str = "checkpoint") -> None:
    """Refuse a checkpoint folder that already holds checkpoints, unless this run resumes from that folder.

    Nothing is read, written or deleted; other files in the folder do not count.
    """
    folder = checkpoint.folder
    if not folder.is_dir():
        return
    try:
        held = sorted((p.name for p in [*folder.glob("ckpt-*.npz"), *folder.glob("ckpt-*.orbax")]), key=_sort_key)
    except OSError as exc:
        raise JregError(f"{argument}: cannot read the folder {folder} ({exc.strerror or exc})") from exc
    held += [BEST] if (folder / BEST).exists() or (folder / BEST).is_symlink() else []  # a dangling link too
    if not held or (isinstance(resume, (str, os.PathLike)) and _same_folder(Path(resume), folder)):
        return
    raise JregError(
        f"{argument}: the folder {folder} already holds checkpoints ({_listing(held)}); a run never writes into "
        f"another run's folder. Pass resume={str(folder)!r} to continue that run there, or checkpoint into a new "
        "or empty folder"
    )


def _sort_key(name: str) -> tuple[int, str]:
    match = _NUMBERED.fullmatch(name)
    return (int(match[1]) if match else -1, name)


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

    def ours(self, path: Path) -> bool:
        """Whether ``path`` is a regular file (an orbax checkpoint's folder) of this run."""
        if path.is_symlink() or not (path.is_dir() if _is_orbax(path) else path.is_file()):
            return False
        signature = _signature(path)
        if path.name in self.written and signature is not None and self.written[path.name] == signature:
            return True
        return run_of(path) == self.run

    def adopt(self, path: Path) -> None:
        """Count ``path`` as this run's (a ``best.npz`` the resumed run was restored from)."""
        self.written[path.name] = _signature(path)

    def check_ahead(self, start: int, epochs: int) -> None:
        """Before training: refuse if a checkpoint this run would write exists and is not this run's, or if the
        folder holds this run's checkpoints of epochs after ``start`` (resuming from an older one would branch
        the run: its later files would be overwritten with other content, or outlive the new ones)."""
        present = [(e, p) for e, p in numbered(self.folder) if e > start]  # what is there, not every epoch to come
        later = [p.name for _, p in present if self.ours(p)]
        if later:
            raise JregError(
                f"checkpoint: {self.folder} holds later checkpoints of this run ({_listing(later)}) than the epoch "
                f"{start} resumed from; continuing from there would mix two branches of the run in one folder. "
                "Resume from the newest checkpoint (resume=<the folder>), or checkpoint into a new folder"
            )
        for e, path in present:  # a file this run would write (its exact name, at an epoch it saves) is not its own
            if (
                e <= epochs
                and path.name in (f"ckpt-{e:06d}.npz", f"ckpt-{e:06d}.orbax")
                and self.config.due(e - 1, epochs)
            ):
                raise self._foreign(path)

    def _foreign(self, path: Path) -> JregError:
        if path.is_symlink() or not (path.is_dir() if _is_orbax(path) else path.is_file()):
            why = "is not a plain file"
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
        if (path.exists() or path.is_symlink()) and not self.ours(path):
            raise self._foreign(path)
        write()
        self.written[path.name] = _signature(path)

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
    ) -> None:
        """Write ``ckpt-<epoch>.npz`` (``.orbax`` across processes) atomically; keep the run's newest ``keep``.

        ``streamed``: the run trains on a stream (recorded as ``meta["streamed"]``; see :func:`resume`).
        ``sweep``: ``(meta, arrays)`` of a :func:`jreg.sweep` checkpoint (``meta["sweep"]`` and the arrays that
        travel beside the optimizer state; see :mod:`jreg.train.sweep_checkpoint`)."""
        arrays, meta = payload(state, key, history, batch_size, stopping_state, streamed, self.run, sweep)
        self.clean_temps()
        path = self.folder / f"ckpt-{epoch:06d}{dc.SUFFIX if dc.needed(arrays) else '.npz'}"
        self._publish(path, lambda: save_state(path, *arrays, step=epoch, key=key, meta=meta))
        mine = [p for e, p in numbered(self.folder) if e <= epoch and self.ours(p)]  # the file just written is last
        for old in mine[: -self.config.keep]:
            _remove(old)
            self.written.pop(old.name, None)

    def save_best(self, params: Params, model_state: ModelState, epoch: int, key: Any) -> None:
        path = self.folder / BEST
        meta = {"best": True, "run": self.run}
        self._publish(path, lambda: ckpt.save(path, params, model_state=model_state, step=epoch, key=key, meta=meta))


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


IN_MEMORY = "the jreg.Result passed as resume="


def _is_orbax(path: Path) -> bool:
    return path.suffix == dc.SUFFIX


def save_state(path: Path, params: Params, opt_state: Any, model_state: ModelState, **fields: Any) -> None:
    """Write one checkpoint: a ``.npz`` file (:func:`jreg.save`), or, for a path ending in ``.orbax`` (arrays
    spanning processes), an orbax folder written by every process together (``fields``: step, key, meta)."""
    if _is_orbax(path):
        dc.save(path, params, opt_state=opt_state, model_state=model_state, **fields)
    else:
        ckpt.save(path, params, opt_state=opt_state, model_state=model_state, **fields)


def load_state(path: Path, params: Params, opt_state: Any, model_state: ModelState) -> ckpt.Checkpoint:
    """Read one checkpoint written by :func:`save_state`, its arrays laid out as the templates'."""
    read = dc.load if _is_orbax(path) else ckpt.load
    return read(path, params=params, opt_state=opt_state, model_state=model_state)


def _remove(path: Path) -> None:
    """Delete one of the run's checkpoints; an orbax folder by the first process only (they share the folder)."""
    if not _is_orbax(path):
        path.unlink(missing_ok=True)
    elif jax.process_index() == 0:
        shutil.rmtree(path, ignore_errors=True)


def _is_checkpoint_name(name: str) -> bool:
    return name == BEST or _NUMBERED.fullmatch(name) is not None


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
    elif (path := Path(resume)).is_dir() and not _is_orbax(path):  # a folder of checkpoints, not one orbax one
        path, loaded = _newest_valid(path, template, sweep)
    else:  # a file named explicitly: exactly that one, no fallback
        loaded = _load(path, template, sweep)
    if loaded.key is None or not np.array_equal(key_bits(loaded.key), key_bits(key)):
        raise JregError(f"resume: key differs from the one {path} was trained with; pass the run's key to continue it")
    if (template.model_state is None) != (loaded.model_state is None):
        has = "holds" if loaded.model_state is not None else "holds no"
        raise JregError(f"resume: {path} {has} model state, but this run's objective does not match it")
    meta = ckpt.check_run_meta(loaded.meta, path, loaded.step)
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
