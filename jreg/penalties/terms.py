"""The penalty algebra: a :class:`Term` (one formula over the masked leaves), a :class:`Penalty` (a sum of terms that
adds, scales and has a proximal map), :func:`term` for your own formula and :func:`sum`."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete
from .._errors import JregError, JregTypeError
from ..selectors import is_array
from .coefficients import ByPath, ByShape, Center, _at_step, _check_coefficient, is_schedule
from .masks import Mask, Params, _broadcast, _flatten, _selection


def _fits(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """True when ``shape`` broadcasts to exactly ``target``."""
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _add(values: Any) -> jax.Array:
    """Sum without the ``0 +`` that ``builtins.sum`` starts with (one op fewer in every step)."""
    return functools.reduce(operator.add, values)


@dataclasses.dataclass(frozen=True, eq=False)
class Term:
    """One penalty formula ``f(leaf, *coefficients) -> scalar`` over the masked leaves.

    Attributes:
        name: the key this term's value gets in the objective's ``parts``.
        fn: ``fn(leaf, *coefs) -> scalar``, each coefficient already resolved for that leaf.
        coefs: the coefficient specs (scalar, params-prefix pytree, :class:`ByPath`, :class:`ByShape`,
            schedule, or a :class:`Center`, which ``fn`` receives per leaf as an array or ``None``).
        mask: which leaves the term touches (see :mod:`jreg.penalties`).
        scale: a multiplier from scaling the penalty (``2 * l2(c)``).
        prox: optional proximal map ``prox(leaf, t, *coefs) -> leaf`` of ``t * fn(., *coefs)``:
            ``argmin_v  fn(v, *coefs) * t + 1/2 ||v - leaf||^2``.
        kind: which catalog penalty made the term (``"l1"``, ``"l2"``, ``"elastic_net"``, ``"group_lasso"``),
            ``None`` for one made with :func:`term`: what :func:`jreg.regularization_path` reads to find a
            strength's ``λ_max``, and what tells the same penalty in an objective and in :func:`jreg.proximal`.
        groups: the group lasso's ``groups`` (``"columns"`` or ``"rows"``); ``None`` for other kinds.
    """

    name: str
    fn: Callable[..., jax.Array]
    coefs: tuple[Any, ...]
    mask: Mask = None
    scale: Any = 1.0
    prox: Callable[..., jax.Array] | None = None
    kind: str | None = None
    groups: str | None = None

    @property
    def scheduled(self) -> bool:
        """True when a coefficient is a function of the step."""
        return any(is_schedule(c) for c in self.coefs)

    def coefficients_at(self, step: Any) -> tuple[Any, ...]:
        """The coefficients with every schedule evaluated at ``step``."""
        return _at_step(self.name, self.coefs, step)

    def resolve(self, params: Params, step: Any = None, *, unresolved: bool = False) -> list[tuple[str, Any, tuple]]:
        """``(path, leaf, coefficients)`` for every leaf this term touches, schedules evaluated at ``step``
        (or, with ``unresolved=True``, left as they are)."""
        names, leaves, _ = _flatten(params)
        chosen = _selection(self.mask, params, self.name)
        per_coef = []
        for c in self.coefs if unresolved else self.coefficients_at(step):
            if is_schedule(c):
                per_coef.append([c] * len(names))
            elif isinstance(c, ByPath):
                per_coef.append([c.resolve(n) for n in names])
            elif isinstance(c, ByShape):
                values = [c.resolve(n, leaf) if on else None for n, leaf, on in zip(names, leaves, chosen)]
                for n, v, on in zip(names, values, chosen):
                    if on:
                        _check_coefficient(v, f"{self.name}: {c.label} coefficient for leaf {n!r}")
                per_coef.append(values)
            elif isinstance(c, Center):
                per_coef.append(c.per_leaf(params, self.name))
            else:
                per_coef.append(_broadcast(c, params, f"{self.name}: coefficient"))
        picked = []
        for i, (n, leaf, on) in enumerate(zip(names, leaves, chosen)):
            if not on:
                continue
            if not is_array(leaf) or not jnp.issubdtype(leaf.dtype, jnp.inexact):
                raise JregTypeError(
                    f"{self.name}: the mask selects leaf {n!r} of dtype {getattr(leaf, 'dtype', type(leaf).__name__)}, "
                    "but only floating-point leaves can be penalized"
                )
            coefs = tuple(pc[i] for pc in per_coef)
            for spec, c in zip(self.coefs, coefs):
                if is_schedule(c):
                    continue
                if isinstance(spec, Center):
                    if c is not None and not _fits(np.shape(c), np.shape(leaf)):
                        raise JregError(
                            f"{self.name}: the center for leaf {n!r} has shape {np.shape(c)}, which does not "
                            f"match the leaf's shape {np.shape(leaf)}"
                        ) from None
                    continue
                try:
                    np.broadcast_shapes(np.shape(c), np.shape(leaf))
                except ValueError:
                    raise JregError(
                        f"{self.name}: the coefficient for leaf {n!r} has shape {np.shape(c)}, which does not "
                        f"broadcast against the leaf's shape {np.shape(leaf)}"
                    ) from None
            picked.append((n, leaf, coefs))
        if not picked:
            raise JregError(
                f"penalty {self.name!r} selects no leaf of params (paths: {names}); "
                "pass a mask (glob pattern, predicate or pytree of bools) that selects the leaves to penalize"
            )
        return picked

    def __call__(self, params: Params, step: Any = None) -> jax.Array:
        total = _add(self.fn(leaf, *cs) for _, leaf, cs in self.resolve(params, step))
        unit = isinstance(self.scale, (int, float)) and self.scale == 1
        return total if unit else self.scale * total


class Penalty:
    """A sum of :class:`Term` objects; call it on params to get the scalar penalty.

    ``penalty(params)`` is the total; ``penalty.parts(params)`` the value of
    each term by name. Penalties add with ``+`` (and ``sum``) and scale with
    ``*`` or ``/`` by a non-negative scalar.
    """

    __slots__ = ("terms", "__weakref__")

    def __init__(self, terms: tuple[Term, ...]):
        self.terms = tuple(terms)

    def names(self) -> list[str]:
        """Unique term names, in order: repeated names get ``_2``, ``_3``... suffixes."""
        seen: dict[str, int] = {}
        out = []
        for t in self.terms:
            seen[t.name] = seen.get(t.name, 0) + 1
            out.append(t.name if seen[t.name] == 1 else f"{t.name}_{seen[t.name]}")
        return out

    @property
    def scheduled(self) -> bool:
        """True when some coefficient is a schedule (a function of the step)."""
        return any(t.scheduled for t in self.terms)

    def parts(self, params: Params, *, step: Any = None) -> dict[str, jax.Array]:
        """The value of each term, keyed by :meth:`names`; ``step`` evaluates coefficient schedules."""
        return {n: t(params, step) for n, t in zip(self.names(), self.terms)}

    def __call__(self, params: Params, *, step: Any = None) -> jax.Array:
        return _add(self.parts(params, step=step).values())

    def prox(self, params: Params, t: Any, *, step: Any = None) -> Params:
        """The proximal map of ``t * R``: ``argmin_v  t R(v) + 1/2 ||v - params||^2``, leaf by leaf.

        Each term maps the leaves it selects (soft-thresholding for ``l1``,
        shrinking for ``l2``, both for ``elastic_net``); other leaves pass
        through. Two terms on the same leaf are refused: the prox of a sum is
        not the composition of the proxes (use ``elastic_net`` for L1 + L2).
        """
        names, leaves, treedef = _flatten(params)
        index = {n: i for i, n in enumerate(names)}
        out = list(leaves)
        owner: dict[str, str] = {}
        for name, t_ in zip(self.names(), self.terms):
            if t_.prox is None:
                raise JregError(f"penalty term {name!r} has no proximal map; give term(..., prox=...) one")
            for path, leaf, coefs in t_.resolve(params, step):
                if path in owner:
                    raise JregError(
                        f"terms {owner[path]!r} and {name!r} both touch leaf {path!r}: the proximal map of a sum "
                        "is not the composition of the maps; use one term per leaf (elastic_net for L1 + L2)"
                    )
                owner[path] = name
                out[index[path]] = t_.prox(leaf, t * t_.scale, *coefs)
        return jax.tree_util.tree_unflatten(treedef, out)

    def __add__(self, other: Any) -> Penalty:
        if isinstance(other, Penalty):
            return Penalty(self.terms + other.terms)
        if isinstance(other, (int, float)) and other == 0:  # builtin sum() starts from 0
            return self
        return NotImplemented

    __radd__ = __add__

    def __mul__(self, factor: Any) -> Penalty:
        if isinstance(factor, Penalty):
            return NotImplemented
        _check_coefficient(factor, "penalty scale factor")
        return Penalty(tuple(dataclasses.replace(t, scale=t.scale * factor) for t in self.terms))

    __rmul__ = __mul__

    def __truediv__(self, divisor: Any) -> Penalty:
        _check_coefficient(divisor, "penalty divisor")
        if is_concrete(divisor) and np.all(np.asarray(divisor) == 0):
            raise JregError("penalty divisor must be > 0, got 0")
        return self * (1.0 / divisor)

    def __repr__(self) -> str:
        inner = " + ".join(f"{n}(mask={t.mask!r}, scale={t.scale!r})" for n, t in zip(self.names(), self.terms))
        return f"Penalty({inner})"


def term(
    fn: Callable[..., jax.Array],
    *coefs: Any,
    mask: Mask = None,
    name: str = "penalty",
    prox: Callable[..., jax.Array] | None = None,
) -> Penalty:
    """A penalty from your own per-leaf formula ``fn(leaf, *coefs) -> scalar``.

    Example: ``term(lambda w, c: c * jnp.sum(w ** 4), 1e-3, name="l4")``.
    Coefficients follow the same rules (and checks) as :func:`l2`'s. ``prox``,
    if given, is the proximal map ``prox(leaf, t, *coefs)`` of ``t * fn``
    (used by :meth:`Penalty.prox` and :func:`jreg.proximal`).
    """
    if not callable(fn):
        raise JregTypeError(f"fn must be callable fn(leaf, *coefs) -> scalar, got {fn!r}")
    if prox is not None and not callable(prox):
        raise JregTypeError(f"prox must be callable prox(leaf, t, *coefs) -> leaf, got {prox!r}")
    if not isinstance(name, str) or not name or name in ("data", "penalty", "loss"):
        raise JregError(f"name must be a non-empty str other than 'data', 'penalty' or 'loss', got {name!r}")
    numbered = len([c for c in coefs if not isinstance(c, Center)]) > 1  # a center is not a numbered coefficient
    for i, c in enumerate(coefs):
        _check_coefficient(c, f"{name}: coefficient {i}" if numbered else f"{name}: coefficient")
    return Penalty((Term(name, fn, tuple(coefs), mask, prox=prox),))


def sum(*penalties: Penalty) -> Penalty:  # noqa: A001 - public name asked for: jreg.penalties.sum
    """The sum of several penalties (same as ``p1 + p2 + ...``)."""
    if len(penalties) == 1 and not isinstance(penalties[0], Penalty):
        penalties = tuple(penalties[0])  # sum([p1, p2]) too
    for i, p in enumerate(penalties):
        if not isinstance(p, Penalty):
            raise JregTypeError(f"penalties[{i}] must be a jreg Penalty, got {type(p).__name__}")
    return Penalty(tuple(t for p in penalties for t in p.terms))
