"""The run state :func:`jreg.fit` keeps in a checkpoint's ``meta``, checked where it is read back on resume."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .._errors import JregTypeError
from .common import CheckpointError, _is_int, _is_number, _short

# ``load`` returns ``meta`` as saved (any JSON): it is the user's. The fields jreg.fit writes there and reads back on
# resume are checked where they are read, by these functions.

STOPPING_FIELDS = ("best", "best_epoch", "wait", "lr_scale", "stopped")


def _run_field(where: str, field: str, what: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{where}: meta {field!r} {what}, got {_short(value)}")


def _is_float(value: Any) -> bool:
    """A number that a float holds (NaN and infinity included, as an unguarded monitored value may be)."""
    if not _is_number(value):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def check_history(series: Any, epochs: Any, where: str, epochs_done: int | None = None) -> None:
    """Check a saved history: ``{name: [number or None, ...]}`` and ``{name: [1-based epochs, increasing]}``.

    ``epochs`` may be None (files written before it existed); ``epochs_done``, when given, bounds the epochs.
    Raises :class:`CheckpointError` starting with ``where`` and naming the field.
    """
    if series is not None:
        if not isinstance(series, dict) or not all(isinstance(k, str) for k in series):
            raise _run_field(where, "history", "must be an object of named series", series)
        for name, values in series.items():
            if not isinstance(values, list) or not all(v is None or _is_float(v) for v in values):
                raise _run_field(
                    where, f"history.{name}", "must be a list of numbers (within float range) or nulls", values
                )
            if epochs_done is not None and epochs is None and len(values) > epochs_done:
                raise _run_field(where, f"history.{name}", f"has more values than the {epochs_done} epochs run", values)
    if epochs is None:
        return
    if not isinstance(epochs, dict) or not all(isinstance(k, str) for k in epochs):
        raise _run_field(where, "history_epochs", "must be an object of named lists of epochs", epochs)
    for name, at in epochs.items():
        field = f"history_epochs.{name}"
        if not isinstance(at, list) or not all(_is_int(e) and e >= 1 for e in at):
            raise _run_field(where, field, "must be a list of positive integers", at)
        if any(b <= a for a, b in zip(at, at[1:])):
            raise _run_field(where, field, "must increase", at)
        if epochs_done is not None and at and at[-1] > epochs_done:
            raise _run_field(where, field, f"goes beyond the {epochs_done} epochs run", at)
        if isinstance(series, dict) and name in series and len(series[name]) != len(at):
            raise _run_field(where, field, f"must give one epoch for each of the {len(series[name])} values", at)


def check_stopping_state(state: Any, where: str, epochs_done: int | None = None) -> dict[str, Any]:
    """Check a saved early-stopping state (:meth:`jreg.EarlyStopping.initial_state`'s fields); return it.

    ``best`` and ``best_epoch`` (0-based, before ``epochs_done`` when given) are both null or both set, ``wait`` a
    non-negative integer, ``lr_scale`` a positive finite number, ``stopped`` null or the reason the run stopped.
    """
    field = "early_stopping"
    if not isinstance(state, dict) or not set(STOPPING_FIELDS) <= set(state):
        raise _run_field(where, field, f"must be an object with {list(STOPPING_FIELDS)}", state)
    best, best_epoch, wait, scale, stopped = (state[k] for k in STOPPING_FIELDS)
    if best is not None and (not _is_number(best) or math.isnan(best)):
        raise _run_field(where, f"{field}.best", "must be a number or null", best)
    if best_epoch is not None and (not _is_int(best_epoch) or best_epoch < 0):
        raise _run_field(where, f"{field}.best_epoch", "must be a non-negative integer or null", best_epoch)
    if (best is None) != (best_epoch is None):
        raise _run_field(where, f"{field}.best_epoch", "must be null exactly when 'best' is", best_epoch)
    if best_epoch is not None and epochs_done is not None and best_epoch >= epochs_done:
        raise _run_field(where, f"{field}.best_epoch", f"must be an epoch before the {epochs_done} run", best_epoch)
    if not _is_int(wait) or wait < 0:
        raise _run_field(where, f"{field}.wait", "must be a non-negative integer", wait)
    if not _is_number(scale) or not 0 < scale < math.inf:
        raise _run_field(where, f"{field}.lr_scale", "must be a positive finite number", scale)
    if stopped is not None and not isinstance(stopped, str):
        raise _run_field(where, f"{field}.stopped", "must be null or a string", stopped)
    return state


def check_run_meta(meta: Any, path: str | os.PathLike[str], step: int | None = None) -> dict[str, Any]:
    """The ``meta`` of a checkpoint :func:`jreg.fit` wrote, checked before a resume reads it; returns it (a dict).

    Checks ``history`` and ``history_epochs`` (:func:`check_history`), ``batch_size`` (a positive integer),
    ``global_step`` (null or an integer in ``[0, 2**31)``, the step counter's range) and ``early_stopping``
    (:func:`check_stopping_state`), each only when present (older files lack some); ``step`` (the checkpoint's
    epoch) bounds the epochs they name. ``None`` gives ``{}``. Other fields are the user's and are not looked at.
    Raises :class:`CheckpointError` naming ``path`` and the field.
    """
    where = str(path)
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0):
        raise JregTypeError(f"step must be None or a non-negative int (the checkpoint's epoch), got {step!r}")
    step = None if step is None else int(step)
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: meta must be an object (a checkpoint jreg.fit wrote), got {_short(meta)}")
    check_history(meta.get("history"), meta.get("history_epochs"), where, step)
    batch_size = meta.get("batch_size")
    if "batch_size" in meta and (not _is_int(batch_size) or batch_size < 1):
        raise _run_field(where, "batch_size", "must be a positive integer", batch_size)
    global_step = meta.get("global_step")
    if global_step is not None and (not _is_int(global_step) or not 0 <= global_step < 2**31):
        raise _run_field(where, "global_step", "must be null or an integer in [0, 2**31)", global_step)
    if meta.get("early_stopping") is not None:
        check_stopping_state(meta["early_stopping"], where, step)
    return meta
