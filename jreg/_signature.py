"""Which optional keyword arguments a user's function takes (``key``, ``step``, ``intermediates``).

Only a parameter with that exact name counts: a ``**kwargs`` catch-all does not
(Flax's ``Module.apply(variables, *args, **kwargs)`` forwards everything to the
module, which would then receive a ``key`` it never asked for).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


@functools.lru_cache(maxsize=512)
def _kwargs_of(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: positional use only
        return frozenset()
    return frozenset(n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """True when ``fn`` has a parameter ``name`` that can be passed by keyword."""
    try:
        return name in _kwargs_of(fn)
    except TypeError:  # an unhashable callable
        return name in _kwargs_of.__wrapped__(fn)


def call(fn: Callable[..., Any], *args: Any, **optional: Any) -> Any:
    """``fn(*args, **kw)`` with only those optional keywords that are not None and that ``fn`` takes."""
    kw = {k: v for k, v in optional.items() if v is not None and accepts(fn, k)}
    return fn(*args, **kw)
