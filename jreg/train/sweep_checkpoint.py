"""Checkpoints of :func:`jreg.sweep`: fit's files and folder rules, with the sweep's own state beside them.

A sweep checkpoint is a ``ckpt-<epoch>.npz`` written by
:class:`jreg.train.checkpoint_folder.Writer` (atomic, with the run's id, pruning
only its own files): the stacked params, optimizer state (and EMA) and model
state in fit's sections, and beside the optimizer state the sweep's arrays:
each model's step count, its ``alive`` flag, the history's series as
``(K, measurements)`` arrays, the per-model early-stopping state and, with
``restore_best``, each model's best params. ``meta["sweep"]`` records K, the
hyperparameters (a resume with others is refused), which models diverged or
stopped and when, and the epochs each series was measured at.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint as ckpt
from .._errors import JregError
from ..checkpoint.common import Fields
from ..stopping import PerModel
from . import checkpoint_folder
from . import resume as resuming
from .early_stopping import SweepStopper
from .history import History
from .loop import Hook, Run
from .state import TrainState

_DTYPES = ("float32", "float64")
_MODEL = re.compile(r"[0-9]{1,9}")  # a model's number as a JSON key (ASCII digits only: int() takes others too)


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: each event's fields as :func:`pack` writes them, and what each must be (the history and the loop read them)
_EVENTS = {
    "diverged": {
        "epoch": lambda v: _whole(v, 1),
        "step": lambda v: v is None or _whole(v, 1),
        "quantity": lambda v: isinstance(v, str),
    },
    "stopped": {
        "epochs": lambda v: _whole(v, 1),
        "reason": lambda v: isinstance(v, str),
        "best_epoch": lambda v: v is None or _whole(v, 1),
        "best": lambda v: v is None or _real(v),
        "monitor": lambda v: isinstance(v, str),
    },
}


def _event_ok(field: str, event: Any) -> bool:
    rules = _EVENTS[field]
    return isinstance(event, dict) and set(event) == set(rules) and all(ok(event[k]) for k, ok in rules.items())


def _numbers(values: Any) -> list[Any]:
    return np.asarray(values).tolist()


def _shown(hp: Any) -> str:
    """Hyperparameters as the sweep holds them (float32 values printed short)."""
    try:
        return "{" + ", ".join(f"{k!r}: [{', '.join(f'{np.float32(v):g}' for v in vs)}]" for k, vs in hp.items()) + "}"
    except (AttributeError, TypeError, ValueError):  # a damaged record: shown as it is
        return repr(hp)[:200]


def _events(events: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(i): dict(v) for i, v in events.items()}


def pack(
    hp: dict[str, Any],
    state: TrainState,
    alive: Any,
    history: History,
    stopper: SweepStopper | None,
    per: PerModel | None,
    best: Any,
    data: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta["sweep"], arrays)`` for :meth:`Writer.save`'s ``sweep``; ``data``: the members' data
    (:func:`jreg.train.members.meta`: order, resample, what made the index sets and their digest)."""
    names = list(history.series)
    meta = {
        "data": dict(SHARED_DATA if data is None else data),
        "models": int(np.shape(alive)[0]),
        "hparams": {k: _numbers(v) for k, v in hp.items()},
        "diverged": _events(history.diverged),
        "stopped": _events(history.stopped),
        "history_epochs": history.epochs_dict(),
        "history_dtypes": {k: str(history[k].dtype) for k in names},
        "early_stopping": per is not None,
        "restore_best": best is not None,
    }
    arrays: dict[str, Any] = {"step": state.step, "alive": alive, "history": {k: history[k] for k in names}}
    if per is not None:
        arrays["stopping"] = per._asdict()
    if best is not None:
        arrays["best"] = best
    return meta, arrays


def _bad(path: Path, field: str, what: str, value: Any) -> ckpt.CheckpointError:
    """The shared field error (:class:`jreg.checkpoint.common.Fields`) for ``meta["sweep"][field]``."""
    return Fields(f"resume: {path}", "meta ").fail(f"sweep.{field}" if field else "sweep", what, value)


#: the data of a sweep without per-member data (and of checkpoints written before it was recorded)
SHARED_DATA = {"order": "shared", "resample": None, "kind": "shared", "digest": None}


def template(
    hp: dict[str, Any],
    models: int,
    stopper: SweepStopper | None,
    kept: Any,
    epochs_done: Any = None,
    data: dict[str, Any] | None = None,
) -> Any:
    """``sweep(path, meta) -> template`` for :func:`jreg.train.resume.resume`: checks that the checkpoint
    is this sweep's (K, the hyperparameters, early stopping), then says what arrays it holds."""

    def read(path: Path, meta: Any) -> dict[str, Any]:
        if not isinstance(meta, dict):
            raise _bad(path, "", "must be an object", meta)
        with_stopping = _check_same_sweep(path, meta, hp, models, stopper)
        _check_same_data(path, meta.get("data", SHARED_DATA), SHARED_DATA if data is None else data)
        at, dtypes = meta.get("history_epochs"), meta.get("history_dtypes")
        if not isinstance(at, dict):
            raise _bad(path, "history_epochs", "must be an object of named lists of epochs", at)
        ckpt.check_history(None, at, f"resume: {path}: meta 'sweep'")
        if not isinstance(dtypes, dict) or set(dtypes) != set(at) or not set(dtypes.values()) <= set(_DTYPES):
            raise _bad(path, "history_dtypes", f"must give each series' dtype, one of {_DTYPES}", dtypes)
        for field in ("diverged", "stopped"):
            events = meta.get(field)
            if not isinstance(events, dict) or not all(
                _MODEL.fullmatch(k) and int(k) < models and _event_ok(field, v) for k, v in events.items()
            ):
                raise _bad(
                    path,
                    field,
                    f"must map model numbers below {models} to objects with {sorted(_EVENTS[field])}",
                    events,
                )
        if set(meta["diverged"]) & set(meta["stopped"]):
            raise _bad(path, "stopped", "names a model that also diverged", meta["stopped"])
        out: dict[str, Any] = {
            "step": np.zeros((models,), np.int32),
            "alive": np.zeros((models,), bool),
            "history": {k: np.zeros((models, len(at[k])), dtypes[k]) for k in at},
        }
        if with_stopping:
            out["stopping"] = {
                f: np.zeros((models,), np.float32 if f == "best" else np.int32) for f in PerModel._fields
            }
        if meta.get("restore_best") is True:
            out["best"] = kept
        return out

    return read


def _check_same_sweep(
    path: Path, meta: dict[str, Any], hp: dict[str, Any], models: int, stopper: SweepStopper | None
) -> bool:
    """Refuse a checkpoint of another sweep (K, the hyperparameters, early stopping); whether it was saved with
    early stopping."""
    saved = meta.get("models")
    if saved != models:
        raise JregError(
            f"resume: {path} is a sweep of {saved} models, this sweep has {models} (hparams of another length); "
            "resume it with the same hparams"
        )
    saved_hp = meta.get("hparams")
    mine = {k: _numbers(v) for k, v in hp.items()}
    if not isinstance(saved_hp, dict) or saved_hp != mine:
        raise JregError(
            f"resume: {path} trained hparams={_shown(saved_hp)}, this sweep hparams={_shown(mine)}; "
            "a sweep resumes only with the hyperparameters it was started with"
        )
    with_stopping = meta.get("early_stopping") is True
    if stopper is not None and not with_stopping:
        raise JregError(
            f"resume: {path} was saved without early stopping, so its early-stopping state is unknown; resume "
            "it without early_stopping, or start the sweep again"
        )
    if stopper is not None and stopper.rule.restore_best and meta.get("restore_best") is not True:
        raise JregError(
            f"resume: {path} kept no best params (it ran without restore_best); resume it without "
            "restore_best, or start the sweep again"
        )
    return with_stopping


def _check_same_data(path: Path, saved: Any, mine: dict[str, Any]) -> None:
    """Refuse a checkpoint whose members trained on other data: another data order, resampling, folds."""
    if saved == mine:
        return
    if not isinstance(saved, dict):
        raise _bad(path, "data", "must be an object (order, resample, kind, digest)", saved)

    def shown(d: dict[str, Any]) -> str:
        return f"data_order={d.get('order')!r}, resample={d.get('resample')!r}, index sets {d.get('kind')!r}"

    same = all(saved.get(k) == mine.get(k) for k in ("order", "resample", "kind"))
    what = "other index sets (other folds or samples)" if same else shown(saved)
    raise JregError(
        f"resume: {path} trained its members with {what}, this sweep with {shown(mine)}; a sweep resumes only "
        "with the per-member data it was started with (the same data_order, resample, folds and key)"
    )


def unpack(
    arrays: dict[str, Any],
    meta: dict[str, Any],
    stopper: SweepStopper | None,
    history: History,
    epoch: int,
    path: Path,
) -> tuple[Any, Any, PerModel | None, Any]:
    """``(step, alive, per, best)`` from a checkpoint's sweep arrays; fills ``history`` (series, events).

    ``epoch``: the checkpoint's; the history and the events it records may not lie beyond it."""
    at = meta["history_epochs"]
    ckpt.check_history(None, at, f"resume: {path}: meta 'sweep'", epoch)
    for field, name in (("diverged", "epoch"), ("stopped", "epochs")):
        if any(v[name] > epoch for v in meta[field].values()):
            raise _bad(path, field, f"names an epoch beyond the checkpoint's ({epoch})", meta[field])
    for name, values in arrays["history"].items():
        values = np.asarray(values)
        history.series[name] = [values[:, j] for j in range(values.shape[1])]
        history.at[name] = [int(e) for e in at[name]]
    history.diverged = {int(k): dict(v) for k, v in meta["diverged"].items()}
    history.stopped = {int(k): dict(v) for k, v in meta["stopped"].items()}
    per = best = None
    if stopper is not None:
        saved = {f: np.asarray(arrays["stopping"][f]) for f in PerModel._fields}
        bounds = {  # each field's range: the loop indexes the scale table with cuts (JAX would clamp silently)
            "best_epoch": (-1, epoch - 1),
            "stopped": (-1, epoch - 1),
            "wait": (0, epoch),
            "cuts": (0, len(stopper.table) - 1),
        }
        for f, (low, high) in bounds.items():
            if saved[f].size and (saved[f].min() < low or saved[f].max() > high):
                raise _bad(path, f"stopping.{f}", f"must lie in [{low}, {high}]", saved[f].tolist())
        if np.isinf(saved["best"]).any():
            raise _bad(path, "stopping.best", "must be finite or NaN (no best yet)", saved["best"].tolist())
        per = PerModel(**{f: jnp.asarray(v) for f, v in saved.items()})
        best = arrays.get("best") if stopper.rule.restore_best else None
        if best is not None:
            best = jax.tree.map(jnp.array, best)
    return jnp.asarray(arrays["step"], jnp.int32), jnp.asarray(arrays["alive"], bool), per, best


def checkpointer(
    writer: checkpoint_folder.Writer,
    key: Any,
    batch_size: int,
    hp: Any,
    track: Any,
    streamed: bool,
    data: dict[str, Any] | None = None,
) -> Hook:
    """The sweep's last hook: a checkpoint when due (``track``: early stopping's per-model state; ``data``: the
    members' data, :func:`jreg.train.members.meta`)."""

    def hook(run: Run) -> None:
        if writer.config.due(run.epoch, run.epochs) or run.stop:
            history: History = run.history
            packed = pack(hp, run.state, run.alive, history, track.stopper, track.per, track.best, data)
            writer.save(run.state, run.epoch + 1, key, history, batch_size, None, streamed, sweep=packed)

    return hook


def resumed(resume, state, hp, models, setup, key, batch_size, epochs, ema, track, history, data=None):
    """``(state, alive, first epoch, run id, resumed)`` of the sweep ``resume`` points at (``resumed``:
    :func:`jreg.train.resume.resume`'s record, whose meta and path a mid-epoch resume reads); ``track`` (early
    stopping's per-model state) and ``history`` filled; ``data``: the members' data, which the checkpoint's must
    be."""
    stopper = track.stopper
    kept = (state.params, state.model_state) if stopper is None else stopper.kept(state)  # best params' template
    resumed = resuming.resume(
        resume,
        state,
        key,
        batch_size,
        epochs,
        setup.plan.steps,
        setup.monitor.cost_convention,
        None if ema is None else ema.meta(),
        sweep=template(hp, models, stopper, kept, data=data),
        streamed=setup.feed is not None,
    )
    step, alive, per, best = unpack(resumed.sweep, resumed.meta["sweep"], stopper, history, resumed.epoch, resumed.path)
    loaded = resumed.state._replace(step=step)
    if stopper is None and history.stopped:  # resumed without early stopping: as fit, the stopped models go on
        alive = alive.at[np.asarray(sorted(history.stopped))].set(True)
        history.stopped = {}
    if stopper is not None:
        track.per, track.best = per, best if best is not None else track.best
        loaded = loaded._replace(lr_scale=stopper.lr_scale(per))
    return loaded, alive, resumed.epoch, resumed.run, resumed
