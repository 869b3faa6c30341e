"""Which optional keyword arguments a user's function takes (``key``, ``step``, ``intermediates``)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


@functools.lru_cache(maxsize=512)
def _kwargs_of(fn: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: positional use only
        return frozenset(), False
    names = frozenset(n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """True when ``fn`` can be called with the keyword argument ``name``."""
    try:
        names, var_kw = _kwargs_of(fn)
    except TypeError:  # an unhashable callable
        names, var_kw = _kwargs_of.__wrapped__(fn)
    return name in names or var_kw


def call(fn: Callable[..., Any], *args: Any, **optional: Any) -> Any:
    """``fn(*args, **kw)`` with only those optional keywords that are not None and that ``fn`` takes."""
    kw = {k: v for k, v in optional.items() if v is not None and accepts(fn, k)}
    return fn(*args, **kw)
