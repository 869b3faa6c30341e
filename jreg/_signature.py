"""Which optional keyword arguments a user's function takes (``key``, ``step``, ``intermediates``).

Only a parameter with that exact name counts: a ``**kwargs`` catch-all does not
(Flax's ``Module.apply(variables, *args, **kwargs)`` forwards everything to the
module, which would then receive a ``key`` it never asked for).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ._errors import JregTypeError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T", bound=type)

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


# --------------------------------------------------------------------------- jreg's own front ends

#: the fix a missing required argument's error tells, by name
HINTS = {
    "key": "pass a JAX PRNG key, e.g. key=jax.random.key(0) (it seeds the shuffles and dropout)",
    "epochs": "pass the number of passes over the training data, e.g. epochs=30",
    "batch_size": "pass the number of examples per mini-batch, e.g. batch_size=10",
    "hparams": "pass {name: K values}, one value per model, e.g. hparams={'lmbda': [0.0, 0.1]}",
    "explore": "pass {name: factors} for the hyperparameters to perturb, e.g. explore={'lmbda': (0.8, 1.25)}",
    "every": "pass how many epochs go between two exploit steps, e.g. every=5",
}


def unexpected(function: str, unknown: Iterable[str], names: Iterable[str]) -> str:
    """``f() got unexpected keyword argument(s) [...]``, with ``did you mean 'epochs'?`` for near misses."""
    unknown, names = sorted(unknown), sorted(names)
    message = f"{function}() got unexpected keyword argument(s) {unknown}"
    close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
    guesses = [(k, m[0]) for k, m in close.items() if m]
    if len(guesses) == 1 and len(unknown) == 1:
        return f"{message}: did you mean {guesses[0][1]!r}?"
    if guesses:
        return f"{message}: did you mean " + ", ".join(f"{m!r} (for {k!r})" for k, m in guesses) + "?"
    return f"{message}; its keyword arguments are {', '.join(names)}"


def checked(function: str, passthrough: Iterable[str] = ()) -> Callable[[F], F]:
    """Check a call's arguments against ``fn``'s signature before it runs, as jreg errors.

    A misspelt keyword is a :class:`jreg.JregTypeError` that names ``function`` and the closest real keyword
    (``did you mean 'epochs'?``); a missing required argument one that names it and how to give it
    (:data:`HINTS`). Names in ``passthrough`` (older or unsupported keywords that the function reports
    itself) reach its ``**kwargs``. ``inspect.signature`` of the result is ``fn``'s.
    """
    passthrough = frozenset(passthrough)

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        keywords = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
        required = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
        shown = [p.name for p in positional if p.name != "self"]  # a dataclass's __init__
        offset = len(positional) - len(shown)
        usage = ", ".join(
            [p.name if p.default is p.empty else f"{p.name}=..." for p in positional if p.name != "self"]
            + (["*", *(f"{n}=..." for n in required), "..."] if required else [])
        )

        def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            unknown = [k for k in kwargs if k not in keywords and k not in passthrough]
            if unknown:
                raise JregTypeError(unexpected(function, unknown, keywords - {"self"}))
            if len(args) > len(positional) and not varargs:
                raise JregTypeError(
                    f"{function}() takes {len(shown)} positional argument(s) ({', '.join(shown)}) but "
                    f"{len(args) - offset} were given; pass the others by keyword"
                    + (f" ({', '.join(f'{n}=' for n in required)}...)" if required else "")
                )
            twice = [p.name for p in positional[: len(args)] if p.name in kwargs]
            if twice:
                raise JregTypeError(f"{function}() got {twice[0]!r} twice, by position and as {twice[0]}=")
            absent = [p.name for p in positional[len(args) :] if p.default is p.empty and p.name not in kwargs]
            if absent:
                raise JregTypeError(
                    f"{function}() is missing the argument(s) {', '.join(absent)}: call {function}({usage})"
                )
            missing = [n for n in required if n not in kwargs]
            if missing:
                raise JregTypeError(
                    f"{function}(): "
                    + "; ".join(f"{n}= is required: {HINTS.get(n, 'give it by keyword')}" for n in missing)
                )

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check(args, kwargs)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def checked_init(cls: T) -> T:
    """:func:`checked` for a dataclass's constructor: ``Evaluation(evry=2)`` says ``did you mean 'every'?``."""
    cls.__init__ = checked(cls.__name__)(cls.__init__)  # type: ignore[misc]
    return cls
