"""A stream's place inside an epoch, for mid-epoch checkpoints (:class:`jreg.Checkpointing` ``every_steps``): which
iterators can save it (``get_state()`` / ``set_state()``: grain's ``DatasetIterator`` and ``DataLoader``
iterators), how their state is stored in a checkpoint's JSON ``meta`` and checked when it is read back (the rules in
:mod:`jreg.train.stream`'s docstring, "Mid-epoch checkpoints").

A position is ``{"epoch": epochs done, "step": steps run of the next epoch, "rows": the examples they trained on,
"loss_sum": their summed loss (one a model in a sweep), "iterator": the iterator's state}``, the iterator's state
stored as ``{"kind": "json", "value": state}`` (a grain dataset iterator's dict) or ``{"kind": "bytes", "value":
base64}`` (a grain ``DataLoader`` iterator's JSON bytes). Its fields are checked by
:func:`jreg.checkpoint.meta.check_stream_position`; the iterator's state, against the live iterator's, here.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from ..._errors import JregError, JregTypeError
from ...checkpoint.common import CheckpointError, Fields

#: What an iterator needs for mid-epoch checkpoints.
METHODS = ("get_state", "set_state")
#: The deepest iterator state compared (grain's nest a few levels: one a transformation).
MAX_DEPTH = 64


def stateful(it: Any) -> bool:
    """Whether the iterator ``it`` can save and restore its position (``get_state()`` and ``set_state(state)``)."""
    return all(callable(getattr(it, name, None)) for name in METHODS)


def not_stateful(it: Any, where: str) -> JregError:
    """The error for a source whose iterator cannot save its position, saying what to pass instead."""
    return JregTypeError(
        f"{where}: the stream's iterator ({type(it).__module__}.{type(it).__qualname__}) has no get_state() and "
        "set_state(), so its position inside an epoch cannot be saved; pass a grain.MapDataset, grain.IterDataset or "
        "grain.DataLoader (or a callable epoch -> one of them, or any iterable whose iterator has get_state() and "
        "set_state()), or drop every_steps (checkpoints then come at the ends of epochs)"
    )


def encode(state: Any, where: str) -> dict[str, Any]:
    """The iterator's state as a checkpoint's JSON stores it (a copy: the iterator may change it afterwards)."""
    if isinstance(state, (bytes, bytearray)):
        return {"kind": "bytes", "value": base64.b64encode(bytes(state)).decode("ascii")}
    try:
        return {"kind": "json", "value": json.loads(json.dumps(state, allow_nan=False, default=_scalar))}
    except (TypeError, ValueError, RecursionError) as exc:
        raise JregTypeError(
            f"{where}: the stream's iterator state ({type(state).__name__}) cannot be stored in a checkpoint: it must "
            f"be bytes or JSON (dicts of str keys, lists, strings, finite numbers, booleans, None); {exc}"
        ) from exc


def _scalar(value: Any) -> Any:
    """A NumPy scalar in a state (``np.int64(3)``) as the Python number it holds; anything else is not JSON."""
    if isinstance(value, np.generic) and np.ndim(value) == 0 and isinstance(value.item(), (int, float, bool)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def decode(encoded: dict[str, Any], fields: Fields) -> Any:
    """The state :func:`encode` stored (fields checked by :func:`jreg.checkpoint.meta.check_stream_position`)."""
    if encoded["kind"] == "json":
        return encoded["value"]
    try:
        return base64.b64decode(encoded["value"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise fields.fail("stream_position.iterator.value", "must be base64", encoded["value"]) from exc


def check_like(saved: Any, fresh: Any, fields: Fields, field: str, depth: int = 0) -> None:
    """Refuse a saved state that is not shaped as the live iterator's (``fresh``): the same keys, at every level,
    and values of the same kinds (null matching any: a field may be unset at the start), naming the first field
    that differs."""
    if depth > MAX_DEPTH:
        raise fields.fail(field, f"nests deeper than {MAX_DEPTH} levels, which no iterator state here does")
    if saved is None or fresh is None:
        return
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            raise fields.fail(field, "must be an object, as this run's iterator state is", saved)
        if set(saved) != set(fresh):
            missing, extra = sorted(set(fresh) - set(saved)), sorted(set(saved) - set(fresh))
            raise fields.fail(
                field,
                f"must hold the keys of this run's iterator state {sorted(fresh)} (missing {missing}, extra {extra}): "
                "was it written by another pipeline?",
            )
        for name in fresh:
            check_like(saved[name], fresh[name], fields, f"{field}.{name}", depth + 1)
    elif isinstance(fresh, list):
        if not isinstance(saved, list):
            raise fields.fail(field, "must be a list, as this run's iterator state is", saved)
        if fresh:
            for i, value in enumerate(saved):
                check_like(value, fresh[min(i, len(fresh) - 1)], fields, f"{field}[{i}]", depth + 1)
    elif _kind(saved) != _kind(fresh):
        raise fields.fail(field, f"must be {_kind(fresh)}, as this run's iterator state is", saved)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def restore(it: Any, position: dict[str, Any], where: str) -> None:
    """Put the freshly opened iterator ``it`` where ``position`` (a checkpoint's, read from ``where``) left it.

    The stored state must be of the kind the iterator's own is (bytes or JSON), shaped as it is
    (:func:`check_like`), and accepted by ``set_state``; anything else is a :class:`CheckpointError` naming the
    field, with the iterator's own exception as its ``__cause__``."""
    fields = Fields(where, "meta ")
    field = "stream_position.iterator"
    try:
        fresh = encode(it.get_state(), "resume")
    except JregError as exc:
        raise CheckpointError(f"{where}: resume: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a user's iterator failing
        raise CheckpointError(
            f"{where}: resume: the stream's iterator's get_state() raised {type(exc).__name__}: {exc}"
        ) from exc
    saved = position["iterator"]
    if saved["kind"] != fresh["kind"]:
        raise fields.fail(
            f"{field}.kind",
            f"must be {fresh['kind']!r}, as this run's iterator state is: another source?",
            saved["kind"],
        )
    if saved["kind"] == "json":
        check_like(saved["value"], fresh["value"], fields, f"{field}.value")
    state = decode(saved, fields)
    try:
        it.set_state(state)
    except Exception as exc:  # noqa: BLE001 - the iterator refuses the state: it was not saved by this pipeline
        raise CheckpointError(
            f"{where}: meta '{field}' was refused by the stream's iterator ({type(exc).__name__}: {exc}): a "
            "checkpoint of another pipeline, or a damaged one; resume with the source the run was trained on"
        ) from exc
