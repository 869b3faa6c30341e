"""What every checkpoint format shares: the format's name, its error, what :func:`load` returns, the limits a
file's header is held to, and the checks on foreign values (:class:`Fields`, :func:`read_json`), which the ``.npz``
header, the run state in its ``meta``, network2's JSON and the orbax run record all use."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import JregError, JregTypeError

FORMAT = "jreg-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(JregError):
    """A file that is not a jreg checkpoint, is truncated or corrupted, or does not fit the target."""


class Checkpoint(NamedTuple):
    """What :func:`load` returns."""

    params: Any
    opt_state: Any
    step: int | None
    key: jax.Array | None
    meta: Any
    model_state: Any = None


#: The most bytes the JSON header may declare (it lists each leaf's path, shape and dtype: ~100 bytes a leaf).
MAX_HEADER_BYTES = 64 * 2**20
#: The deepest tree description accepted (real trees nest a few levels; Python's recursion limit is 1000).
MAX_TREE_DEPTH = 200
#: The deepest ``meta`` :func:`save` writes (a container at the top is level 1): far inside what ``json`` parses.
MAX_META_DEPTH = 200
#: The most dimensions a leaf may have (NumPy's own limit).
MAX_DIMS = 64
#: The most bytes a key member may hold in files that do not record the key's shape (written before they did).
KEY_MAX_BYTES = 2**20


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeio' else 'a'} {noun}"


def _regular_file(path: Path, what: str, missing: str) -> os.stat_result:
    """``os.stat(path)`` of a regular file; a missing file, a folder, a FIFO or device is a CheckpointError."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {missing}") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path}: is a folder, not {_a(what)} file")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: is not a regular file, so not {_a(what)}")
    return info


def read_json(path: Path, what: str, limit: int, limit_name: str, missing: str) -> Any:
    """The JSON document in the file ``path``, read as foreign bytes: a regular file (never a FIFO, which would
    block), at most ``limit`` bytes (checked before reading; ``limit_name`` says where the limit is set), UTF-8,
    JSON the parser can take (nesting too deep is refused, not a ``RecursionError``). Anything else is a
    :class:`CheckpointError` starting with ``path``: ``missing`` when there is no such file, else "not a <what> (why)"
    (``what``: a noun, ``"network2 JSON model"``)."""
    info = _regular_file(path, what, missing)
    if info.st_size > limit:
        raise CheckpointError(f"{path}: {info.st_size} bytes, more than the {limit} {_a(what)} may take ({limit_name})")
    try:
        with open(path, "rb") as f:
            blob = f.read(limit + 1)  # the file may have grown since
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    if len(blob) > limit:
        raise CheckpointError(f"{path}: more than the {limit} bytes {_a(what)} may take ({limit_name})")
    return parse_json(blob, f"{path}: not {_a(what)}")


def parse_json(blob: bytes, failure: str) -> Any:
    """``blob`` as JSON; a failure (not UTF-8, not JSON, an integer of too many digits, nesting too deep for the
    parser) is a :class:`CheckpointError` "<failure> (why)"."""
    try:
        return json.loads(blob.decode())
    except RecursionError as exc:
        raise CheckpointError(f"{failure} (nested too deeply)") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError, or an integer of too many digits
        raise CheckpointError(f"{failure} ({exc})") from exc


_UNSET = object()


def _bound(n: int | float) -> str:
    """A bound as a message shows it: large powers of two as ``2**k``, the smallest normal float32 as ``2**-126``."""
    if isinstance(n, int) and n >= 2**16 and n & (n - 1) == 0:
        return f"2**{n.bit_length() - 1}"
    if isinstance(n, float) and 0 < n < 1e-3 and math.frexp(n)[0] == 0.5:
        return f"2**{math.frexp(n)[1] - 1}"
    return repr(int(n)) if isinstance(n, float) and n.is_integer() else repr(n)


def _integer_kind(low: int | None, high: int | None, plural: bool = False) -> str:
    """How an integer's range reads: "a non-negative integer", "positive integers", "an integer in [0, 2**32)"..."""
    s = "s" if plural else ""
    if high is not None:
        return f"{'' if plural else 'an '}integer{s} in [{_bound(low or 0)}, {_bound(high)})"
    if low in (0, 1):
        sign = "non-negative" if low == 0 else "positive"
        return f"{'' if plural else 'a '}{sign} integer{s}"
    return f"{'' if plural else 'an '}integer{s}" + ("" if low is None else f" >= {low}")


def _and(names: tuple[str, ...] | list[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


class Fields:
    """The field checks every checkpoint format shares: one file's fields, each checked before it is used.

    Built with the file (``path``) and how its messages start after the path (``what``: ``"not a valid jreg
    checkpoint header: "``, ``"meta "``...). Each check takes a value and its field's name (dotted, with list
    indices: ``"params.leaves[1].shape"``, ``"history.training_cost"``) and returns the value when it passes; else
    it raises :class:`CheckpointError` ``"<path>: <what>'<field>' must be <rule>, got <value>"`` (values longer than
    80 characters shortened). Values are foreign JSON: a bool is never an integer or a number, a number is one a
    float holds (an integer of 400 digits is not), no check recurses, so none can exhaust the stack or run long on
    more than the file holds.
    """

    def __init__(self, path: Any, what: str = ""):
        self.path, self.what = path, what

    def fail(self, field: str, rule: str, value: Any = _UNSET) -> CheckpointError:
        """The error for ``field`` (``""``: the document itself) breaking ``rule`` (``"must be ..."``)."""
        got = "" if value is _UNSET else f", got {_short(value)}"
        name = f"{field!r} " if field else ""
        return CheckpointError(f"{self.path}: {self.what}{name}{rule}{got}")

    def obj(self, value: Any, field: str, keys: tuple[str, ...] = (), null: bool = False) -> dict[str, Any] | None:
        """A JSON object holding at least ``keys`` (or null when ``null``)."""
        if value is None and null:
            return None
        if not isinstance(value, dict) or not set(keys) <= set(value):
            kind = "an object" + (f" with {_and(keys)}" if keys else "")
            raise self.fail(field, f"must be {'null or ' if null else ''}{kind}", value)
        return value

    def integer(
        self, value: Any, field: str, low: int | None = None, high: int | None = None, null: bool = False
    ) -> int | None:
        """An integer (never a bool) in ``[low, high)`` (either bound may be None), or null when ``null``."""
        if value is None and null:
            return None
        if not _is_int(value) or (low is not None and value < low) or (high is not None and value >= high):
            raise self.fail(field, f"must be {_integer_kind(low, high)}{' or null' if null else ''}", value)
        return value

    def number(
        self,
        value: Any,
        field: str,
        low: float | None = None,
        high: float | None = None,
        null: bool = False,
        nan: bool = False,
    ) -> float | int | None:
        """A number (never a bool) that a float holds, in ``[low, high]`` when given, NaN only when ``nan``."""
        if value is None and null:
            return None
        if not _is_float(value) or (math.isnan(value) and not nan) or not _within(value, low, high):
            if low is not None and high is not None:
                kind = f"a number in [{_bound(low)}, {_bound(high)}]"
            elif low is not None or high is not None:
                kind = f"a number {'>=' if low is not None else '<='} {_bound(low if low is not None else high)}"
            else:
                kind = "a number"
            note = "within a float's range" + ("" if nan else ", not NaN")
            raise self.fail(field, f"must be {kind}{' or null' if null else ''} ({note})", value)
        return value

    def string(
        self,
        value: Any,
        field: str,
        null: bool = False,
        choices: tuple[str, ...] = (),
        pattern: str = "",
        rule: str = "",
    ) -> str | None:
        """A string (one of ``choices``, or matching the regular expression ``pattern``, when given)."""
        if value is None and null:
            return None
        if (
            not isinstance(value, str)
            or (choices and value not in choices)
            or (pattern and re.fullmatch(pattern, value) is None)
        ):
            kind = rule or (f"one of {list(choices)}" if choices else "a string")
            raise self.fail(field, f"must be {kind}{' or null' if null else ''}", value)
        return value

    def boolean(self, value: Any, field: str, null: bool = False) -> bool | None:
        """``true`` or ``false`` (never 0 or 1), or null when ``null``."""
        if value is None and null:
            return None
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false{' or null' if null else ''}", value)
        return value

    def integers(
        self,
        value: Any,
        field: str,
        low: int | None = None,
        high: int | None = None,
        min_len: int = 0,
        max_len: int | None = None,
        null: bool = False,
    ) -> list[int] | None:
        """A list of ``min_len`` to ``max_len`` integers, each in ``[low, high)``, or null when ``null``."""
        if value is None and null:
            return None
        ok = isinstance(value, list) and min_len <= len(value) and (max_len is None or len(value) <= max_len)
        if not ok or not all(_is_int(n) and (low is None or n >= low) and (high is None or n < high) for n in value):
            if max_len is None:
                count = f"at least {min_len} " if min_len else ""
            else:
                count = f"{min_len} to {max_len} " if min_len else f"at most {max_len} "
            kind = f"a list of {count}{_integer_kind(low, high, plural=True)}"
            raise self.fail(field, f"must be {'null or ' if null else ''}{kind}", value)
        return value

    def shape(self, value: Any, field: str) -> list[int]:
        """An array's shape: a list of at most :data:`MAX_DIMS` non-negative integers."""
        return self.integers(value, field, low=0, max_len=MAX_DIMS)


def _is_float(value: Any) -> bool:
    """A number (not a bool) that a float holds: NaN and infinity included, an integer beyond float range not."""
    if not _is_number(value):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


# --------------------------------------------------------------------------- what save writes, checked before writing


def _check_step(step: Any) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0):
        raise JregError(f"step must be a non-negative int or None, got {step!r}")


def _to_numpy(leaf: Any, where: str) -> tuple[np.ndarray, str]:
    """The array to store and its dtype name (non-NumPy dtypes such as bfloat16 stored as raw bits)."""
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        raise JregTypeError(f"checkpoint: {where} is a PRNG key array; pass keys as key=, not inside a tree")
    try:
        arr = np.asarray(leaf)
    except Exception as exc:  # noqa: BLE001 - report which leaf
        raise JregTypeError(f"checkpoint: {where} is not an array ({type(leaf).__name__})") from exc
    if arr.dtype.kind not in "biufcV":  # objects, strings, bytes: nothing jax.numpy could load back
        raise JregTypeError(f"checkpoint: {where} is not a numeric array (dtype {arr.dtype}, {type(leaf).__name__})")
    name = str(arr.dtype)
    if arr.dtype.kind == "V":  # ml_dtypes (bfloat16, float8...): store the bits
        arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    return arr, name


def _check_meta_depth(meta: Any) -> None:
    """Refuse ``meta`` whose dicts and lists nest deeper than :data:`MAX_META_DEPTH` (walked without recursion)."""
    stack = [(meta, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, (list, tuple)):
            children = list(node)
        else:
            continue
        if depth >= MAX_META_DEPTH:
            raise JregTypeError(
                f"meta nests deeper than {MAX_META_DEPTH} levels (jreg.checkpoint.MAX_META_DEPTH), "
                "which jreg.load could not be sure to read back"
            )
        stack.extend((child, depth + 1) for child in children)
