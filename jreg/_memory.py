"""Sizes before work: what a run is about to allocate, from shapes alone, against the memory it may use.

A :class:`Part` is one thing a front end is about to allocate (the params of K models, their optimizer state,
an EMA copy...): a name, the shape of its largest array (the culprit an error names) and its bytes. :func:`check`
adds the parts and raises a :class:`~jreg.JregError` before anything is allocated when the sum exceeds
:func:`limit`: the device's memory (``device.memory_stats()["bytes_limit"]`` on a GPU or TPU, summed over the
local devices), the host's physical memory on a CPU (capped by a cgroup limit), or ``JREG_MEMORY_LIMIT``.

The estimate counts only what is certainly allocated, so it is a lower bound of a run's peak: it never refuses
a run that fits, and refuses one whose parts alone cannot.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from ._errors import JregError

#: the environment variable that sets the limit: bytes (``8000000000``) or with a unit (``8GiB``, ``500MB``);
#: ``off`` (or ``none``) turns the check off
ENV = "JREG_MEMORY_LIMIT"

_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_UNITS.update({f"{u}B": v for u, v in _UNITS.items() if u not in ("", "B")})
_UNITS.update({f"{u}IB": 1024 ** (i + 1) for i, u in enumerate("KMGTP")})


class Part(NamedTuple):
    """One thing about to be allocated: ``what`` (e.g. ``"optimizer state of 64 models"``), the shape and dtype
    of its largest array (``shape``, ``dtype``; ``None`` when it has none) and its total ``bytes``."""

    what: str
    bytes: int
    shape: tuple[int, ...] | None = None
    dtype: str | None = None


def human(n: float) -> str:
    """Bytes in binary units: ``"512 B"``, ``"1.5 KiB"``, ``"291.2 TiB"``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int | None:
    """``JREG_MEMORY_LIMIT``'s value as bytes, or ``None`` for ``off``/``none``; a bad value is a JregError."""
    cleaned = text.strip().upper().replace(" ", "")
    if cleaned in ("OFF", "NONE"):
        return None
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:E[0-9]+)?)([A-Z]*)", cleaned)
    if match is None or match.group(2) not in _UNITS:
        raise JregError(
            f"{ENV}={text!r} is not a size: give bytes (8000000000) or a number with a unit (8GiB, 500MB), or off"
        )
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise JregError(f"{ENV}={text!r} must be a positive size (or off)")
    return int(value)


def _host_memory() -> int | None:
    """The host's physical memory, capped by a cgroup (v2 or v1) memory limit; ``None`` when unknown."""
    total = None
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or 2**62):
            total = int(text)
    return total if total and total > 0 else None


def limit() -> tuple[int | None, str]:
    """``(bytes, where)``: the memory a run may use and what it is (``None``: no known limit, nothing refused)."""
    text = os.environ.get(ENV)
    if text is not None and text.strip():
        return parse_size(text), f"the limit {ENV}={text.strip()}"
    import jax

    try:
        devices = jax.local_devices()
    except Exception:  # noqa: BLE001 - no backend at all: nothing to compare with
        return None, "unknown"
    if devices and devices[0].platform != "cpu":
        limits = []
        for device in devices:
            try:
                stats = device.memory_stats() or {}
            except Exception:  # noqa: BLE001 - a backend without memory statistics
                stats = {}
            limits.append(stats.get("bytes_limit"))
        if limits and all(isinstance(v, int) and v > 0 for v in limits):
            kind = devices[0].device_kind
            return sum(limits), f"the memory of {len(limits)} {kind} device(s)"
        return None, "unknown"
    return _host_memory(), "this machine's memory"


def array_bytes(shape: Iterable[int], dtype: Any) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (exact integers: no overflow for absurd shapes)."""
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:  # a PRNG key dtype and other extended dtypes
        itemsize = getattr(dtype, "itemsize", 0) or 8
    return math.prod(int(d) for d in shape) * itemsize


def tree_part(what: str, tree: Any, copies: int = 1) -> Part:
    """A :class:`Part` for ``copies`` copies of a pytree of arrays or ``jax.ShapeDtypeStruct`` (shapes only)."""
    import jax

    leaves = [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape") and hasattr(leaf, "dtype")]
    if not leaves:
        return Part(what, 0)
    sizes = [array_bytes(leaf.shape, leaf.dtype) for leaf in leaves]
    big = leaves[int(np.argmax(sizes))]
    return Part(what, sum(sizes) * copies, tuple(int(d) for d in big.shape), str(big.dtype))


def check(parts: Iterable[Part], who: str) -> None:
    """Raise a JregError, before any allocation, when the ``parts`` together exceed :func:`limit`.

    The message is one line: ``who`` (the call refused), the total, the largest part with the shape of its
    largest array, the limit and what it is, and how to change it.
    """
    parts = [p for p in parts if p.bytes > 0]
    total = sum(p.bytes for p in parts)
    if not parts:
        return
    allowed, where = limit()
    if allowed is None or total <= allowed:
        return
    culprit = max(parts, key=lambda p: p.bytes)
    shape = "" if culprit.shape is None else f", its largest array of shape {culprit.shape} {culprit.dtype}"
    listed = ", ".join(f"{p.what} {human(p.bytes)}" for p in parts)
    others = "" if len(parts) == 1 else f" (all {len(parts)} parts: {listed})"
    raise JregError(
        f"{who} needs at least {human(total)}, over {where} ({human(allowed)}): the largest part is the "
        f"{culprit.what}, {human(culprit.bytes)}{shape}{others}; make it smaller, or set {ENV} "
        "(e.g. 64GiB, or off) if this estimate is wrong"
    )
