"""The run state :func:`jreg.fit` keeps in a checkpoint's ``meta``, checked where it is read back on resume."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._errors import JregTypeError
from ..conventions import COST_CONVENTIONS
from .common import CheckpointError, Fields, _is_float, _short

# ``load`` returns ``meta`` as saved (any JSON): it is the user's. The fields jreg.fit writes there and reads back on
# resume are checked where they are read, by these functions, with the checks every format shares (Fields).

STOPPING_FIELDS = ("best", "best_epoch", "wait", "lr_scale", "stopped")
#: A run's id (``uuid4().hex``), as ``meta["run"]`` records it.
RUN_ID = r"[0-9a-f]{32}"
#: The smallest learning-rate scale a checkpoint may record: the smallest normal float32 (the scale multiplies
#: every update as a float32; a real run's is ``lr_factor**cuts``, at least its ``min_lr_scale`` times a factor).
MIN_LR_SCALE = 2.0**-126


def _fields(where: str) -> Fields:
    return Fields(where, "meta ")


def check_history(series: Any, epochs: Any, where: str, epochs_done: int | None = None) -> None:
    """Check a saved history: ``{name: [number or None, ...]}`` and ``{name: [1-based epochs, increasing]}``.

    ``epochs`` may be None (files written before it existed); ``epochs_done``, when given, bounds the epochs.
    Raises :class:`CheckpointError` starting with ``where`` and naming the field.
    """
    fields = _fields(where)
    if series is not None:
        if not isinstance(series, dict) or not all(isinstance(k, str) for k in series):
            raise fields.fail("history", "must be an object of named series", series)
        for name, values in series.items():
            if not isinstance(values, list) or not all(v is None or _is_float(v) for v in values):
                raise fields.fail(f"history.{name}", "must be a list of numbers (within float range) or nulls", values)
            if epochs_done is not None and epochs is None and len(values) > epochs_done:
                raise fields.fail(f"history.{name}", f"has more values than the {epochs_done} epochs run", values)
    if epochs is None:
        return
    if not isinstance(epochs, dict) or not all(isinstance(k, str) for k in epochs):
        raise fields.fail("history_epochs", "must be an object of named lists of epochs", epochs)
    for name, at in epochs.items():
        field = f"history_epochs.{name}"
        fields.integers(at, field, low=1)
        if any(b <= a for a, b in zip(at, at[1:])):
            raise fields.fail(field, "must increase", at)
        if epochs_done is not None and at and at[-1] > epochs_done:
            raise fields.fail(field, f"goes beyond the {epochs_done} epochs run", at)
        if isinstance(series, dict) and name in series and len(series[name]) != len(at):
            raise fields.fail(field, f"must give one epoch for each of the {len(series[name])} values", at)


def check_stopping_state(state: Any, where: str, epochs_done: int | None = None) -> dict[str, Any]:
    """Check a saved early-stopping state (:meth:`jreg.EarlyStopping.initial_state`'s fields); return it.

    ``best`` and ``best_epoch`` (0-based, before ``epochs_done`` when given) are both null or both set, ``best`` a
    number a float holds (not NaN), ``wait`` a non-negative integer (at most ``epochs_done``), ``lr_scale`` a number
    in ``[2**-126, 1]`` (it only ever falls from 1; below, float32 makes it 0), ``stopped`` null or the reason the run
    stopped.
    """
    fields, field = _fields(where), "early_stopping"
    fields.obj(state, field, STOPPING_FIELDS)
    best, best_epoch, wait, scale, stopped = (state[k] for k in STOPPING_FIELDS)
    fields.number(best, f"{field}.best", null=True)
    fields.integer(best_epoch, f"{field}.best_epoch", low=0, null=True)
    if (best is None) != (best_epoch is None):
        raise fields.fail(f"{field}.best_epoch", "must be null exactly when 'best' is", best_epoch)
    if best_epoch is not None and epochs_done is not None and best_epoch >= epochs_done:
        raise fields.fail(f"{field}.best_epoch", f"must be an epoch before the {epochs_done} run", best_epoch)
    fields.integer(wait, f"{field}.wait", low=0)
    if epochs_done is not None and wait > epochs_done:
        raise fields.fail(f"{field}.wait", f"must be at most the {epochs_done} epochs run", wait)
    fields.number(scale, f"{field}.lr_scale", low=MIN_LR_SCALE, high=1.0)
    fields.string(stopped, f"{field}.stopped", null=True)
    return state


#: The fields of a mid-epoch checkpoint's ``meta["stream_position"]`` (:class:`jreg.Checkpointing` ``every_steps``).
POSITION_FIELDS = ("epoch", "step", "rows", "loss_sum", "iterator")
#: How an iterator's state is stored: ``{"kind": "json", "value": <the state>}`` or ``{"kind": "bytes", "value":
#: <base64>}`` (a grain ``DataLoader``'s state is bytes).
ITERATOR_KINDS = ("json", "bytes")


def check_stream_position(position: Any, where: str, epochs_done: int | None = None) -> dict[str, Any]:
    """Check a mid-epoch checkpoint's place in its stream (``meta["stream_position"]``); return it.

    ``epoch`` is the epochs completed (the checkpoint's own epoch, ``epochs_done``, when given), ``step`` the steps
    run of the next epoch (a positive integer below ``2**31``), ``rows`` the examples they trained on (a
    non-negative integer), ``loss_sum`` their summed training loss (a finite number; a list of them, one a model, for
    a sweep) and ``iterator`` the source's iterator state (``{"kind": "json" | "bytes", "value": ...}``; its value is
    checked against the live iterator where the run resumes, :mod:`jreg.train.stream.position`). Raises
    :class:`CheckpointError` starting with ``where`` and naming the field.
    """
    fields, field = _fields(where), "stream_position"
    fields.obj(position, field, POSITION_FIELDS)
    fields.integer(position["epoch"], f"{field}.epoch", low=0, high=2**31)
    if epochs_done is not None and position["epoch"] != epochs_done:
        raise fields.fail(f"{field}.epoch", f"must be the checkpoint's epoch, {epochs_done}", position["epoch"])
    fields.integer(position["step"], f"{field}.step", low=1, high=2**31)
    fields.integer(position["rows"], f"{field}.rows", low=0, high=2**62)
    sums = position["loss_sum"]
    for i, value in enumerate(sums if isinstance(sums, list) else [sums]):
        name = f"{field}.loss_sum" + (f"[{i}]" if isinstance(sums, list) else "")
        if not _is_float(value) or not np.isfinite(float(value)):
            raise fields.fail(name, "must be a finite number (a list of them for a sweep)", value)
    iterator = fields.obj(position["iterator"], f"{field}.iterator", ("kind", "value"))
    fields.string(iterator["kind"], f"{field}.iterator.kind", choices=ITERATOR_KINDS)
    if iterator["kind"] == "bytes":
        fields.string(iterator["value"], f"{field}.iterator.value", pattern=r"[A-Za-z0-9+/]*={0,2}", rule="base64")
    return position


def check_run_meta(meta: Any, path: str | os.PathLike[str], step: int | None = None) -> dict[str, Any]:
    """The ``meta`` of a checkpoint :func:`jreg.fit` wrote, checked before a resume reads it; returns it (a dict).

    Checks, each only when present (older files lack some): ``history`` and ``history_epochs``
    (:func:`check_history`), ``batch_size`` (a positive integer), ``global_step`` (null or an integer in
    ``[0, 2**31)``, the step counter's range), ``early_stopping`` (:func:`check_stopping_state`), ``run`` (a run id,
    32 lowercase hex digits), ``cost_convention`` (one of :data:`jreg.conventions.COST_CONVENTIONS`), ``streamed``
    (a boolean), ``stream_position`` (a mid-epoch checkpoint's, :func:`check_stream_position`) and ``ema`` (null or
    an object: ``decay`` a number in ``[0, 1)`` or an hparams name, ``evaluate``
    and ``returned`` booleans); ``step`` (the checkpoint's epoch) bounds the epochs they name. ``None`` gives ``{}``.
    Other fields are the user's (or a sweep's, ``sweep``, checked by :mod:`jreg.train.sweep_checkpoint`) and are
    not looked at. Raises :class:`CheckpointError` naming ``path`` and the field.
    """
    where = str(path)
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0):
        raise JregTypeError(f"step must be None or a non-negative int (the checkpoint's epoch), got {step!r}")
    step = None if step is None else int(step)
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: meta must be an object (a checkpoint jreg.fit wrote), got {_short(meta)}")
    fields = _fields(where)
    check_history(meta.get("history"), meta.get("history_epochs"), where, step)
    if "batch_size" in meta:
        fields.integer(meta["batch_size"], "batch_size", low=1)
    fields.integer(meta.get("global_step"), "global_step", low=0, high=2**31, null=True)
    if meta.get("early_stopping") is not None:
        check_stopping_state(meta["early_stopping"], where, step)
    if "run" in meta:
        fields.string(meta["run"], "run", pattern=RUN_ID, rule="a run id (32 lowercase hex digits)")
    if "cost_convention" in meta:
        fields.string(meta["cost_convention"], "cost_convention", choices=COST_CONVENTIONS)
    if "streamed" in meta:
        fields.boolean(meta["streamed"], "streamed")
    if "stream_position" in meta:
        if meta.get("streamed") is not True:
            raise fields.fail("stream_position", "belongs only to a checkpoint of a streamed run ('streamed': true)")
        check_stream_position(meta["stream_position"], where, step)
    ema = fields.obj(meta.get("ema"), "ema", null=True)
    if ema is not None:
        decay = ema.get("decay", 0.0)
        if not (isinstance(decay, str) and decay) and not (_is_float(decay) and 0 <= decay < 1):
            raise fields.fail("ema.decay", "must be a number in [0, 1) or the name of an hparams entry", decay)
        for name in ("evaluate", "returned"):
            if name in ema:
                fields.boolean(ema[name], f"ema.{name}")
    return meta
