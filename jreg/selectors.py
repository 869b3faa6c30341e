"""Selectors: which leaves of a params pytree a penalty touches.

A selector is a predicate over ``(path, leaf)``, usable wherever jreg takes a
``mask``; selectors combine with ``&``, ``|`` and ``~``::

    from jreg import selectors as S
    S.weights()                                  # the default: weight matrices and kernels
    S.path("layers/[12]/*") & S.name("kernel")   # kernels of layers 1 and 2
    S.rank(min=2) & ~S.name("embedding")
    S.dtype("float") | S.name("scale")

Paths join the keys from the root with ``/`` (``"0/w"``, ``"params/Dense_0/kernel"``,
``"layers/1/weight"``); see :func:`jreg.penalties.paths`. A leaf's *name* is the
last key of its path, except that a trailing ``value`` (Flax NNX's
``Variable.value``) is skipped, so NNX's ``l1/kernel/value`` is named ``kernel``.
Leaves that are not arrays (an Equinox module's activation function, say) are
never selected.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from ._errors import JregError, JregTypeError

#: Leaf names that are never weights: biases and normalization parameters (Flax, Haiku, Equinox, PyTorch-style).
NOT_WEIGHTS = ("b", "bias", "scale", "offset", "gamma", "beta", "running_mean", "running_var")


def leaf_name(path: str) -> str:
    """The leaf's name: the last key of its path (skipping NNX's trailing ``value``)."""
    keys = path.split("/")
    if len(keys) > 1 and keys[-1] == "value":
        return keys[-2]
    return keys[-1]


def is_array(leaf: Any) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


class Selector:
    """A named predicate ``(path, leaf) -> bool`` that composes with ``&``, ``|``, ``~``."""

    __slots__ = ("_fn", "description")

    def __init__(self, fn: Callable[[str, Any], bool], description: str):
        self._fn = fn
        self.description = description

    def __call__(self, path: str, leaf: Any) -> bool:
        return bool(is_array(leaf) and self._fn(path, leaf))

    def __and__(self, other: Selector) -> Selector:
        other = _as_selector(other)
        return Selector(lambda p, x: self(p, x) and other(p, x), f"({self.description} & {other.description})")

    def __or__(self, other: Selector) -> Selector:
        other = _as_selector(other)
        return Selector(lambda p, x: self(p, x) or other(p, x), f"({self.description} | {other.description})")

    def __invert__(self) -> Selector:
        return Selector(lambda p, x: not self(p, x), f"~{self.description}")

    def __repr__(self) -> str:
        return self.description


def _as_selector(other: Any) -> Selector:
    if isinstance(other, Selector):
        return other
    if isinstance(other, str):
        return path(other)
    raise JregTypeError(f"selectors combine with selectors (or glob strings), got {other!r}")


def path(*patterns: str) -> Selector:
    """Leaves whose path matches any of the glob ``patterns`` (``*`` matches across ``/`` too)."""
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise JregTypeError(f"path needs glob pattern strings, got {patterns!r}")
    return Selector(lambda p, x: any(fnmatch.fnmatchcase(p, pat) for pat in patterns), f"path{patterns!r}")


def name(*names: str) -> Selector:
    """Leaves whose name (:func:`leaf_name`) is one of ``names``, e.g. ``name("w", "kernel", "weight")``."""
    if not names or not all(isinstance(n, str) for n in names):
        raise JregTypeError(f"name needs leaf names (str), got {names!r}")
    return Selector(lambda p, x: leaf_name(p) in names, f"name{names!r}")


def rank(min: int | None = None, max: int | None = None) -> Selector:  # noqa: A002 - reads well at call sites
    """Leaves with ``min <= ndim <= max`` (either bound may be omitted)."""
    if min is None and max is None:
        raise JregError("rank needs min= or max=")
    lo = -1 if min is None else min
    hi = 10**9 if max is None else max
    return Selector(lambda p, x: lo <= jnp.ndim(x) <= hi, f"rank(min={min}, max={max})")


def dtype(*kinds: Any) -> Selector:
    """Leaves of the given dtypes: ``"float"`` (any floating), ``"int"``, ``"complex"``, or concrete dtypes."""
    families = {"float": jnp.floating, "int": jnp.integer, "complex": jnp.complexfloating, "inexact": jnp.inexact}
    resolved = []
    for k in kinds:
        if isinstance(k, str) and k in families:
            resolved.append(families[k])
        else:
            try:
                resolved.append(jnp.dtype(k))
            except TypeError as exc:
                raise JregTypeError(f"dtype: {k!r} is not a dtype or one of {sorted(families)}") from exc
    if not resolved:
        raise JregError("dtype needs at least one dtype or family")
    return Selector(lambda p, x: any(jnp.issubdtype(x.dtype, d) for d in resolved), f"dtype{kinds!r}")


def everything() -> Selector:
    """Every array leaf."""
    return Selector(lambda p, x: True, "everything()")


def weights() -> Selector:
    """The default: floating-point leaves of rank >= 2 (weight matrices, kernels, embeddings), except those
    named like biases or normalization parameters (:data:`NOT_WEIGHTS`)."""
    sel = dtype("float") & rank(min=2) & ~name(*NOT_WEIGHTS)
    sel.description = "weights()"
    return sel
