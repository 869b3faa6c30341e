"""Which optional keyword arguments a user's function takes (``key``, ``step``, ``intermediates``).

Only a parameter with that exact name counts: a ``**kwargs`` catch-all does not
(Flax's ``Module.apply(variables, *args, **kwargs)`` forwards everything to the
module, which would then receive a ``key`` it never asked for).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

# Weakly keyed: a function built inside a traced program (an objective closing over a sweep's traced
# hyperparameters) must not be kept alive by this cache, or the tracers it closes over leak.
_CACHE: weakref.WeakKeyDictionary[Callable[..., Any], frozenset[str]] = weakref.WeakKeyDictionary()


def _parameters(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: positional use only
        return frozenset()
    return frozenset(n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _kwargs_of(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        return _CACHE[fn]
    except (KeyError, TypeError):  # not seen yet, or not weakly referenceable / hashable
        pass
    names = _parameters(fn)
    try:
        _CACHE[fn] = names
    except TypeError:  # not weakly referenceable (a builtin) or unhashable: computed each time
        pass
    return names


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """True when ``fn`` has a parameter ``name`` that can be passed by keyword."""
    return name in _kwargs_of(fn)


def call(fn: Callable[..., Any], *args: Any, **optional: Any) -> Any:
    """``fn(*args, **kw)`` with only those optional keywords that are not None and that ``fn`` takes."""
    kw = {k: v for k, v in optional.items() if v is not None and accepts(fn, k)}
    return fn(*args, **kw)
