r"""Penalties: pure functions of the params that return a scalar.

A :class:`Penalty` is a sum of *terms*. Each term applies one formula to the
leaves of a params pytree that its ``mask`` selects, with a coefficient that
may differ per leaf::

    R(params) = sum_terms  scale * sum_{selected leaves w}  f(w, c_w)

Conventions (stated once, used everywhere):

* ``l2(c)``          ``R = c/2 * sum w^2``      so Nielsen's ``lambda/(2n) * sum w^2`` is ``l2(lambda / n)``
                     and the gradient it adds is ``c * w``.
* ``l1(c)``          ``R = c * sum |w|``
* ``elastic_net(c1, c2)``  ``R = c1 * sum |w| + c2/2 * sum w^2``
* ``center=params0`` (all three): the same formula of ``w - w0`` (L2-init: ``c/2 * sum (w - w0)^2``).

**Masks** choose the leaves (the same rules for every term):

* ``None`` (default): weight matrices and kernels only
  (:func:`jreg.selectors.weights`: floating-point leaves with ``ndim >= 2`` not
  named like biases or normalization parameters); biases, scales and scalars
  are left alone.
* a selector from :mod:`jreg.selectors` (``S.name("kernel") & S.path("layers/[12]/*")``).
* a glob pattern ``str`` over the leaf's path, e.g. ``"*/w"`` or ``"1/*"``.
  A path joins the keys from the root with ``/``: jreg's MLP has ``"0/w"``,
  ``"0/b"``, ``"1/w"``...; a Flax dict ``"params/Dense_0/kernel"``; a NamedTuple
  field by its name. :func:`paths` lists them for any params.
* a predicate ``mask(path, leaf) -> bool``.
* a pytree of bools with the structure of params (or a prefix of it, e.g.
  ``[True, False]`` for a two-layer MLP).

**Coefficients** are a scalar (Python number or 0-d array, possibly traced,
so ``jax.vmap`` over the strength works), a pytree with the structure of
params or a prefix of it (``[1e-4, 1e-3]`` gives each MLP layer its own), a
:func:`by_path` mapping from glob patterns to values, a :func:`by_shape` rule of
the leaf's shape (:func:`width_scaled`: ``base * fan_in^exponent``), or arrays
that broadcast against a leaf. Concrete coefficients must be finite and ``>= 0``.

**Schedules.** A coefficient may also be a function of the training step,
``c(step) -> scalar`` (any optax schedule, e.g.
``optax.linear_schedule(0.0, 1e-3, 5000)`` to warm a penalty up). The step is
the global mini-batch count from 0, the same count optax's learning-rate
schedules see; :func:`jreg.fit` and :func:`jreg.make_epoch` pass it, and a
penalty with a schedule called without ``step=`` raises an error rather than
guess. ``step`` may be traced, so a schedule never recompiles anything.

Penalties add (``l1(a) + l2(b)`` or :func:`sum`) and scale (``0.5 * l2(c)``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_nonnegative_scalar, is_concrete
from ._errors import JregError, JregTypeError
from ._tree import path_str
from ._tree import paths as paths  # public: jreg.penalties.paths
from .selectors import is_array, weights

_DEFAULT = weights()

Params = Any
Mask = Any  # None | str | Callable[[str, Array], bool] | pytree of bools


# --------------------------------------------------------------------------- paths


def is_weight(path: str, leaf: Any) -> bool:
    """The default mask, :func:`jreg.selectors.weights`: floating-point leaves of rank >= 2, not named
    like biases or normalization parameters."""
    return _DEFAULT(path, leaf)


@dataclasses.dataclass(frozen=True)
class ByPath:
    """A coefficient given per leaf by glob patterns over paths; see :func:`by_path`."""

    mapping: Mapping[str, Any]
    default: Any = 0.0

    def resolve(self, path: str) -> Any:
        for pattern, value in self.mapping.items():
            if fnmatch.fnmatchcase(path, pattern):
                return value
        return self.default


def by_path(mapping: Mapping[str, Any], default: Any = 0.0) -> ByPath:
    """A per-leaf coefficient from glob patterns: the first pattern matching a leaf's path wins.

    ``l2(by_path({"0/w": 1e-4, "1/*": 1e-3}))`` gives each layer its own
    strength; leaves that match no pattern get ``default``.
    """
    if not isinstance(mapping, Mapping) or not all(isinstance(k, str) for k in mapping):
        raise JregTypeError(f"by_path needs a mapping from path patterns (str) to coefficients, got {mapping!r}")
    return ByPath(dict(mapping), default)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True, eq=False)
class ByShape:
    """A coefficient given per leaf by a rule over the leaf's shape; see :func:`by_shape`."""

    rule: Callable[[tuple[int, ...]], Any]
    label: str = "by_shape"

    def resolve(self, path: str, leaf: Any) -> Any:
        shape = tuple(int(d) for d in np.shape(leaf))
        try:
            value = self.rule(shape)
        except JregError:
            raise
        except Exception as exc:  # a user's rule: name the leaf it failed on
            raise JregError(
                f"{self.label}: the rule failed for leaf {path!r} of shape {shape}: {type(exc).__name__}: {exc}"
            ) from exc
        if value is None or isinstance(value, (str, bytes)):
            raise JregTypeError(f"{self.label}: the rule must return a number for leaf {path!r}, got {value!r}")
        if isinstance(value, (int, float, np.number)) and not abs(float(value)) <= _FLOAT32_MAX:  # NaN fails too
            raise JregError(f"{self.label}: the coefficient for leaf {path!r} is not finite in float32 (got {value!r})")
        return value


def by_shape(rule: Callable[[tuple[int, ...]], Any]) -> ByShape:
    """A per-leaf coefficient computed from each leaf's shape: ``c_leaf = rule(leaf.shape)``.

    Plugs in wherever a coefficient is accepted, like :func:`by_path`
    (``l2(by_shape(lambda s: 1e-4 * s[0] if len(s) > 1 else 0.0))``). Concrete
    values the rule returns are checked like any coefficient (finite, ``>= 0``);
    traced ones (a swept strength) pass. :func:`describe` shows each leaf's value.
    """
    if not callable(rule) or isinstance(rule, (ByPath, ByShape)):
        raise JregTypeError(f"by_shape needs a rule(shape) -> coefficient, got {rule!r}")
    return ByShape(rule)


def fan_in(shape: tuple[int, ...]) -> int:
    """The fan-in of a weight in jreg's ``(n_in, n_out)`` layout: the product of all axes but the last.

    A matrix ``(n_in, n_out)`` gives ``n_in``; a convolution kernel ``(h, w, c_in, c_out)`` gives
    ``h * w * c_in`` (what :func:`jreg.initializers` scale by).
    """
    return int(np.prod(shape[:-1])) if len(shape) >= 2 else 1


def width_scaled(base: Any, exponent: float = 1.0, *, vectors: Any = 0.0) -> ByShape:
    """Width-aware per-leaf coefficients: ``c_leaf = base * fan_in^exponent`` for leaves of rank >= 2,
    ``vectors`` for the others (biases, scales, scalars).

    ``fan_in`` is :func:`fan_in`: ``w.shape[0]`` for a matrix in jreg's ``(n_in, n_out)`` layout.
    Under muP (Yang et al. 2022, "Tensor Programs V: Tuning Large Neural Networks via
    Zero-Shot Hyperparameter Transfer") the hidden layers' Adam learning rate scales as
    ``1/fan_in``; keeping the per-step shrinkage ``eta * c`` of a weight decay width-independent
    then needs ``c ∝ fan_in`` (``exponent=1``, the default; Wang & Aitchison 2024, "How to set
    AdamW's weight decay as you scale model and dataset size"). Other exponents (``0.5``, ``-1``)
    express other parametrizations; ``exponent=0`` is a plain ``base``.

    ``base`` and ``vectors`` are non-negative scalars (``base`` may be traced, so ``jax.vmap``
    sweeps it); ``exponent`` a finite real number. Example: ``l2(width_scaled(1e-6))``.
    """
    check_nonnegative_scalar(base, "width_scaled: base")
    check_nonnegative_scalar(vectors, "width_scaled: vectors")
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float, np.integer, np.floating)):
        raise JregTypeError(f"width_scaled: exponent must be a real number, got {type(exponent).__name__}")
    if not np.isfinite(exponent):
        raise JregError(f"width_scaled: exponent must be finite, got {exponent}")
    exponent = float(exponent)

    def rule(shape: tuple[int, ...]) -> Any:
        if len(shape) < 2:
            return vectors
        try:
            scale = float(fan_in(shape)) ** exponent
        except OverflowError:
            scale = float("inf")
        if not scale <= _FLOAT32_MAX:
            raise JregError(f"width_scaled: fan_in^exponent = {fan_in(shape)}^{exponent:g} overflows float32")
        return base * scale

    return ByShape(rule, f"width_scaled(exponent={exponent:g})")


@dataclasses.dataclass(frozen=True, eq=False)
class Center:
    """The reference point of a centered penalty (``l2(c, center=params0)``): a pytree matching params
    (or a prefix of it; ``None`` in it means "no center" for that subtree)."""

    tree: Any

    def check(self) -> None:
        """Concrete entries must be finite real numbers (traced ones pass)."""
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.tree)[0]:
            where = f" at {path_str(path)!r}" if path else ""
            if not (is_array(leaf) or isinstance(leaf, (int, float, np.number))) or isinstance(leaf, bool):
                raise JregTypeError(f"center must hold arrays or numbers, got {type(leaf).__name__}{where}")
            if not is_concrete(leaf):
                continue
            arr = np.asarray(leaf)
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise JregTypeError(f"center must be real, got dtype {arr.dtype}{where}")
            if not np.all(np.isfinite(arr)):
                raise JregError(f"center must be finite, got NaN or inf{where}")

    def per_leaf(self, params: Params, what: str) -> list[Any]:
        """The center of every leaf of ``params`` (``None``: no center)."""
        try:
            full = jax.tree.broadcast(self.tree, params, is_leaf=lambda x: x is None)
        except (ValueError, TypeError) as exc:
            raise JregError(
                f"{what}: center must be a pytree with the structure of params (or a prefix of it); "
                f"params has structure {jax.tree_util.tree_structure(params)}, "
                f"center has {jax.tree_util.tree_structure(self.tree)}"
            ) from exc
        return jax.tree_util.tree_leaves(full, is_leaf=lambda x: x is None)


def _flatten(params: Params) -> tuple[list[str], list[Any], Any]:
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    return [path_str(p) for p, _ in leaves_with_paths], [leaf for _, leaf in leaves_with_paths], treedef


def _broadcast(prefix: Any, params: Params, what: str) -> list[Any]:
    """Leaves of ``prefix`` broadcast to every leaf of ``params``."""
    try:
        return jax.tree_util.tree_leaves(jax.tree.broadcast(prefix, params))
    except (ValueError, TypeError) as exc:
        raise JregError(
            f"{what} must be a scalar or a pytree with the structure of params (or a prefix of it); "
            f"params has structure {jax.tree_util.tree_structure(params)}, got {prefix!r}"
        ) from exc


def _selection(mask: Mask, params: Params, what: str) -> list[bool]:
    names, leaves, _ = _flatten(params)
    if mask is None:
        return [is_weight(n, leaf) for n, leaf in zip(names, leaves)]
    if isinstance(mask, str):
        return [is_array(leaf) and fnmatch.fnmatchcase(n, mask) for n, leaf in zip(names, leaves)]
    if callable(mask):
        chosen = []
        for n, leaf in zip(names, leaves):
            if not is_array(leaf):  # an Equinox activation function, say: never a penalty's target
                chosen.append(False)
                continue
            c = mask(n, leaf)
            if not isinstance(c, (bool, np.bool_)):
                raise JregTypeError(
                    f"{what}: a mask predicate must return a Python bool for each (path, leaf), "
                    f"got {type(c).__name__} for path {n!r}"
                )
            chosen.append(bool(c))
        return chosen
    flags = _broadcast(mask, params, f"{what}: mask")
    out = []
    for n, f in zip(names, flags):
        if not isinstance(f, (bool, np.bool_)) and not (is_concrete(f) and np.asarray(f).dtype == bool):
            raise JregTypeError(f"{what}: a mask pytree must hold booleans, got {f!r} at path {n!r}")
        out.append(bool(f))
    return out


def mask_tree(params: Params, mask: Mask = None) -> Any:
    """The mask as a pytree of bools shaped like ``params``.

    Useful to give optax the same leaves as a penalty, e.g.
    ``optax.add_decayed_weights(c, mask=lambda p: mask_tree(p))``.
    """
    flags = _selection(mask, params, "mask_tree")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flags)


def is_schedule(value: Any) -> bool:
    """A coefficient given as a function of the step (an optax schedule, say)."""
    return callable(value) and not isinstance(value, (ByPath, ByShape, Center)) and not hasattr(value, "shape")


def _check_coefficient(value: Any, label: str) -> None:
    """Concrete coefficient entries must be finite and >= 0 (traced ones pass)."""
    if is_schedule(value):
        return  # checked on each value it returns
    if isinstance(value, ByShape):
        return  # checked on each value it gives, in Term.resolve
    if isinstance(value, Center):
        value.check()
        return
    if isinstance(value, ByPath):
        for pattern, v in value.mapping.items():
            _check_coefficient(v, f"{label}[{pattern!r}]")
        _check_coefficient(value.default, f"{label} (by_path default)")
        return
    for leaf in jax.tree_util.tree_leaves(value):
        if not is_concrete(leaf):
            continue
        if hasattr(leaf, "shape") and np.ndim(leaf) > 0:
            arr = np.asarray(leaf)
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise JregTypeError(f"{label} must be real, got dtype {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise JregError(f"{label} must be finite, got an array holding NaN or inf")
            if np.any(arr < 0):
                raise JregError(f"{label} must be >= 0, got an array with minimum {arr.min()}")
        else:
            check_nonnegative_scalar(leaf, label)


# --------------------------------------------------------------------------- terms


def _fits(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """True when ``shape`` broadcasts to exactly ``target``."""
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _add(values: Any) -> jax.Array:
    """Sum without the ``0 +`` that ``builtins.sum`` starts with (one op fewer in every step)."""
    return functools.reduce(operator.add, values)


def _at_step(name: str, coefs: tuple[Any, ...], step: Any) -> tuple[Any, ...]:
    """``coefs`` with every schedule evaluated at ``step`` (checked like a constant when concrete)."""
    out = []
    for i, c in enumerate(coefs):
        if is_schedule(c):
            if step is None:
                raise JregError(
                    f"penalty {name!r}: coefficient {i} is a schedule of the training step; call the "
                    "penalty (or objective) with step=<global step>, as jreg.fit and jreg.make_epoch do"
                )
            c = c(step)
            if jnp.ndim(c) != 0:
                raise JregError(f"penalty {name!r}: schedule {i} must return a scalar, got {jnp.shape(c)}")
            _check_coefficient(c, f"{name}: schedule {i}")
        out.append(c)
    return tuple(out)


@dataclasses.dataclass(frozen=True, eq=False)
class Term:
    """One penalty formula ``f(leaf, *coefficients) -> scalar`` over the masked leaves.

    Attributes:
        name: the key this term's value gets in the objective's ``parts``.
        fn: ``fn(leaf, *coefs) -> scalar``, each coefficient already resolved for that leaf.
        coefs: the coefficient specs (scalar, params-prefix pytree, :class:`ByPath`, :class:`ByShape`,
            schedule, or a :class:`Center`, which ``fn`` receives per leaf as an array or ``None``).
        mask: which leaves the term touches (see the module docstring).
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


def _weighted_sum(c: Any, values: jax.Array) -> jax.Array:
    """``sum(c * values)``; a scalar ``c`` is factored out of the sum (one fewer full-size op per step)."""
    return c * jnp.sum(values) if jnp.ndim(c) == 0 else jnp.sum(c * values)


def _l2(w: jax.Array, c: Any) -> jax.Array:
    return 0.5 * _weighted_sum(c, jnp.square(w))


def _l1(w: jax.Array, c: Any) -> jax.Array:
    return _weighted_sum(c, jnp.abs(w))


def _elastic(w: jax.Array, c1: Any, c2: Any) -> jax.Array:
    return _l1(w, c1) + _l2(w, c2)


def soft_threshold(w: jax.Array, threshold: Any) -> jax.Array:
    """``sign(w) * max(|w| - threshold, 0)``: the proximal map of ``threshold * ||w||_1``; exact zeros."""
    return jnp.sign(w) * jnp.maximum(jnp.abs(w) - threshold, 0.0)


def _prox_l2(w: jax.Array, t: Any, c: Any) -> jax.Array:
    return w / (1.0 + t * c)


def _prox_l1(w: jax.Array, t: Any, c: Any) -> jax.Array:
    return soft_threshold(w, t * c)


def _prox_elastic(w: jax.Array, t: Any, c1: Any, c2: Any) -> jax.Array:
    return soft_threshold(w, t * c1) / (1.0 + t * c2)


def _centered(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``fn(w - w0, *coefs)``: the formula moved to the center ``w0`` (the last resolved coefficient;
    ``None`` for a leaf without one)."""

    def centered(w: jax.Array, *args: Any) -> jax.Array:
        *coefs, w0 = args
        return fn(w if w0 is None else w - jnp.asarray(w0, w.dtype), *coefs)

    return centered


def _centered_prox(prox: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """The proximal map of ``v -> f(v - w0)``: ``w0 + prox_f(w - w0)``."""

    def centered(w: jax.Array, t: Any, *args: Any) -> jax.Array:
        *coefs, w0 = args
        if w0 is None:
            return prox(w, t, *coefs)
        w0 = jnp.asarray(w0, w.dtype)
        return (w0 + prox(w - w0, t, *coefs)).astype(w.dtype)

    return centered


def _kind(penalty: Penalty, kind: str, groups: str | None = None) -> Penalty:
    """``penalty`` with its terms marked as the catalog's ``kind`` (see :attr:`Term.kind`)."""
    return Penalty(tuple(dataclasses.replace(t, kind=kind, groups=groups) for t in penalty.terms))


def _term_maybe_centered(fn, prox, coefs, center, mask, name, kind) -> Penalty:
    if center is None:
        return _kind(term(fn, *coefs, mask=mask, name=name, prox=prox), kind)
    if isinstance(center, (Center, ByPath, ByShape)) or is_schedule(center):
        raise JregTypeError(f"center must be a pytree of arrays matching params, got {type(center).__name__}")
    centered = term(_centered(fn), *coefs, Center(center), mask=mask, name=name, prox=_centered_prox(prox))
    return _kind(centered, kind)


def l2(c: Any, *, mask: Mask = None, name: str = "l2", center: Any = None) -> Penalty:
    """``R = c/2 * sum w^2`` over the masked leaves; adds ``c * w`` to their gradient.

    Proximal map of ``t R``: ``w / (1 + t c)``.

    Nielsen's ``lambda/(2n) * sum_w w^2`` is ``l2(lambda / n)`` with ``n`` the
    size of the training set. With plain SGD at learning rate ``eta`` the step
    becomes ``w <- (1 - eta*c) w - eta * grad C0`` (weight decay).

    ``center=params0`` gives L2-init (Kumar et al. 2023, "Maintaining Plasticity in
    Continual Learning via Regenerative Regularization"): ``R = c/2 * sum (w - w0)^2``,
    gradient ``c (w - w0)``, proximal map ``(w + t c w0) / (1 + t c)``. The paper writes
    ``lambda * ||theta - theta0||^2``: that is ``l2(2 * lambda, center=params0)``. ``center`` is
    a pytree with the structure of params, or a prefix of it (``None`` inside it: no center for
    that subtree; a number: the same center for every entry, e.g. ``1.0`` for normalization
    scales); each entry must broadcast to its leaf's shape without changing it.
    """
    return _term_maybe_centered(_l2, _prox_l2, (c,), center, mask, name, "l2")


def l1(c: Any, *, mask: Mask = None, name: str = "l1", center: Any = None) -> Penalty:
    """``R = c * sum |w|`` over the masked leaves; adds ``c * sign(w)`` to their gradient.

    Proximal map of ``t R``: soft-thresholding at ``t c``, which sets small weights exactly to zero.
    With ``center=params0`` (as :func:`l2`'s): ``R = c * sum |w - w0|``, proximal map
    ``w0 + soft_threshold(w - w0, t c)`` (weights snap exactly back to ``w0``).
    """
    return _term_maybe_centered(_l1, _prox_l1, (c,), center, mask, name, "l1")


def elastic_net(c1: Any, c2: Any, *, mask: Mask = None, name: str = "elastic_net", center: Any = None) -> Penalty:
    """``R = c1 * sum |w| + c2/2 * sum w^2`` over the masked leaves (``l1(c1) + l2(c2)`` as one term).

    Proximal map of ``t R``: ``soft_threshold(w, t c1) / (1 + t c2)``. With ``center=params0``
    (as :func:`l2`'s) both parts measure ``w - w0`` and the map is ``w0 + prox(w - w0)``.
    """
    return _term_maybe_centered(_elastic, _prox_elastic, (c1, c2), center, mask, name, "elastic_net")


def sum(*penalties: Penalty) -> Penalty:  # noqa: A001 - public name asked for: jreg.penalties.sum
    """The sum of several penalties (same as ``p1 + p2 + ...``)."""
    if len(penalties) == 1 and not isinstance(penalties[0], Penalty):
        penalties = tuple(penalties[0])  # sum([p1, p2]) too
    for i, p in enumerate(penalties):
        if not isinstance(p, Penalty):
            raise JregTypeError(f"penalties[{i}] must be a jreg Penalty, got {type(p).__name__}")
    return Penalty(tuple(t for p in penalties for t in p.terms))


# --------------------------------------------------------------------------- the catalog: structured penalties


def _unit_norms(w: jax.Array, groups: str) -> jax.Array:
    """L2 norm of each unit's weights: ``"columns"`` (one per output unit, last axis) or ``"rows"`` (one per
    input unit, the second-to-last axis); every other axis (a kernel's spatial ones) is part of the group."""
    axis = w.ndim - 1 if groups == "columns" else w.ndim - 2
    others = tuple(a for a in range(w.ndim) if a != axis)
    # sqrt with a safe gradient at 0: d/dw ||w|| is undefined there; use the subgradient 0
    sq = jnp.sum(jnp.square(w), axis=others, keepdims=True)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


def _check_groups(groups: str) -> str:
    if groups not in ("columns", "rows"):
        raise JregError(
            f"groups must be 'columns' (one group per output unit) or 'rows' (per input unit), got {groups!r}"
        )
    return groups


def group_lasso(c: Any, *, groups: str = "columns", mask: Mask = None, name: str = "group_lasso") -> Penalty:
    """``R = c * sum_units ||w_unit||_2``: drives whole units to zero (group sparsity).

    For a weight matrix ``(n_in, n_out)``, ``groups="columns"`` makes one group of
    each output unit's incoming weights (removing hidden units of this layer);
    ``groups="rows"`` one of each input unit's outgoing weights (removing inputs).
    Proximal map of ``t R``: ``w_unit * max(0, 1 - t c / ||w_unit||)`` (block soft-thresholding).
    """
    _check_groups(groups)

    def fn(w, c):
        return c * jnp.sum(_unit_norms(w, groups))

    def prox(w, t, c):
        norms = _unit_norms(w, groups)
        factor = jnp.maximum(0.0, 1.0 - t * c / jnp.where(norms > 0, norms, 1.0))
        return w * jnp.where(norms > 0, factor, 0.0)

    return _kind(term(fn, c, mask=mask, name=name, prox=prox), "group_lasso", groups)


def max_norm(c: Any, *, groups: str = "columns", mask: Mask = None, name: str = "max_norm") -> Penalty:
    """The constraint ``||w_unit||_2 <= c`` for every unit (Srebro & Shraibman; dropout papers' max-norm).

    A constraint, not a cost: its value in the objective is 0 and it adds no
    gradient. Enforce it with :func:`jreg.proximal`, whose map here is the
    projection ``w_unit * min(1, c / ||w_unit||)``.
    """
    _check_groups(groups)

    def fn(w, c):
        return jnp.zeros((), w.dtype)

    def prox(w, t, c):
        del t  # a projection does not depend on the step size
        norms = _unit_norms(w, groups)
        return w * jnp.minimum(1.0, c / jnp.where(norms > 0, norms, 1.0))

    return term(fn, c, mask=mask, name=name, prox=prox)


def nuclear_norm(c: Any, *, mask: Mask = None, name: str = "nuclear_norm") -> Penalty:
    """``R = c * sum_i sigma_i(W)`` (sum of singular values) for each 2-D weight: favours low rank.

    Proximal map of ``t R``: soft-threshold the singular values at ``t c``.
    The gradient ``U V^T`` needs distinct nonzero singular values (as any
    SVD derivative).
    """

    def fn(w, c):
        return c * jnp.sum(jnp.linalg.svd(_svd_matrix(w), compute_uv=False)).astype(w.dtype)

    def prox(w, t, c):
        u, s, vt = jnp.linalg.svd(_svd_matrix(w), full_matrices=False)
        return ((u * jnp.maximum(s - t * c, 0.0)) @ vt).reshape(w.shape).astype(w.dtype)

    return term(fn, c, mask=mask, name=name, prox=prox)


def _matrix(w: jax.Array) -> jax.Array:
    """A kernel as a matrix ``(everything else, output units)``."""
    return w.reshape(-1, w.shape[-1])


def _svd_matrix(w: jax.Array) -> jax.Array:
    """:func:`_matrix` in a dtype XLA's SVD takes: float16, bfloat16 and float8 kernels go up to float32.

    The SVD of the rounded weights is then exact to float32 precision; the
    results are cast back to the weights' dtype by the callers.
    """
    m = _matrix(w)
    if jnp.issubdtype(m.dtype, jnp.floating) and jnp.finfo(m.dtype).bits < 32:
        return m.astype(jnp.float32)
    return m


def spectral_norm(c: Any, *, iterations: int = 20, mask: Mask = None, name: str = "spectral_norm") -> Penalty:
    """``R = c/2 * sigma_max(W)^2`` for each weight (Yoshida & Miyato 2017), ``sigma_max`` by power iteration.

    ``iterations`` power-iteration steps from a fixed start vector (so the value
    is deterministic and differentiable through the iterations); ``W`` is a
    kernel flattened to ``(everything else, output units)``.
    """
    from ._checks import check_positive_int

    iterations = check_positive_int(iterations, "iterations")

    def fn(w, c):
        sigma = _sigma_max(w, iterations)
        return 0.5 * c * sigma**2

    return term(fn, c, mask=mask, name=name)


def _sigma_max(w: jax.Array, iterations: int) -> jax.Array:
    """``sigma_max`` of :func:`_matrix` ``(w)`` by ``iterations`` power-iteration steps from a fixed start."""
    m = _matrix(w)
    v = jnp.ones((m.shape[1],), m.dtype) / jnp.sqrt(m.shape[1])
    for _ in range(iterations):
        u = m @ v
        u = u / (jnp.linalg.norm(u) + 1e-12)
        v = m.T @ u
        v = v / (jnp.linalg.norm(v) + 1e-12)
    return u @ m @ v


def spectral_target(
    c: Any,
    target: Any = 1.0,
    *,
    exponent: float = 1.0,
    iterations: int = 20,
    mask: Mask = None,
    name: str = "spectral_target",
) -> Penalty:
    """``R = c * (sigma_max(W)^k - target)^2`` for each weight: pulls the largest singular value toward
    ``target`` (default 1) from both sides; ``k = exponent`` (default 1).

    Spectral regularization for continual learning (Lewandowski et al. 2025, "Learning
    Continually by Spectral Regularization", ICLR): keeping each layer's ``sigma_max`` near 1
    sustains the trainability the network had at initialization. The paper's regularizer is
    ``lambda * sum_layers (sigma_max(W_l)^k - 1)^2``; ``exponent`` is its ``k`` (the paper also
    pulls biases toward 0: add ``l2(c, mask="*/b")`` for that). Unlike :func:`spectral_norm`
    (``c/2 * sigma_max^2``, toward 0), there is no ``1/2``: this follows the paper's form.

    ``sigma_max`` is computed exactly as :func:`spectral_norm` does: ``iterations``
    power-iteration steps from a fixed start vector, differentiated through, on the kernel
    flattened to ``(everything else, output units)``. ``target`` is a coefficient like ``c``
    (finite, ``>= 0``; a scalar, per-leaf pytree, :func:`by_path` or traced).
    """
    from ._checks import check_positive_int

    iterations = check_positive_int(iterations, "iterations")
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float, np.integer, np.floating)):
        raise JregTypeError(f"exponent must be a real number, got {type(exponent).__name__}")
    if not (np.isfinite(exponent) and exponent > 0):
        raise JregError(f"exponent must be finite and > 0, got {exponent}")
    exponent = float(exponent)
    if is_concrete(target) and not isinstance(target, (ByPath, ByShape)) and np.ndim(target) == 0:
        check_nonnegative_scalar(target, f"{name}: target")

    def fn(w, c, target):
        sigma = _sigma_max(w, iterations)
        return c * jnp.square((sigma if exponent == 1.0 else sigma**exponent) - target)

    return term(fn, c, target, mask=mask, name=name)


def orthogonality(c: Any, *, mask: Mask = None, name: str = "orthogonality") -> Penalty:
    """``R = c * ||W^T W - I||_F^2`` for each weight ``W`` (kernels flattened to ``(.., n_out)``):
    pushes the output units' weight vectors toward an orthonormal set."""

    def fn(w, c):
        m = _matrix(w)
        gram = m.T @ m
        return c * jnp.sum(jnp.square(gram - jnp.eye(gram.shape[0], dtype=m.dtype)))

    return term(fn, c, mask=mask, name=name)


# --------------------------------------------------------------------------- input penalties (function space)


@dataclasses.dataclass(frozen=True, eq=False)
class InputPenalty:
    """A penalty on derivatives with respect to the inputs; goes into :func:`jreg.objective`'s ``input_penalty``.

    ``fn(forward, loss, x, y, key, c) -> scalar`` where ``forward(x) -> outputs``
    is the model with its params bound (in training mode when the objective has
    a key: the same dropout mask as the data term). Its gradient with respect
    to the params needs the derivative of a derivative: ``jax.grad`` of the
    objective differentiates through it (double backprop).
    """

    name: str
    fn: Callable[..., jax.Array]
    c: Any

    def __call__(self, forward: Callable[..., Any], loss: Callable[..., Any], x: Any, y: Any, *, key=None, step=None):
        (c,) = _at_step(self.name, (self.c,), step)
        return self.fn(forward, loss, x, y, key, c)


def _input_penalty(c: Any, name: str, fn: Callable[..., jax.Array]) -> InputPenalty:
    if not isinstance(name, str) or not name or name in ("data", "penalty", "loss"):
        raise JregError(f"name must be a non-empty str other than 'data', 'penalty' or 'loss', got {name!r}")
    if not is_schedule(c):
        check_nonnegative_scalar(c, f"{name}: coefficient")
    return InputPenalty(name, fn, c)


def input_gradient(c: Any, *, name: str = "input_gradient") -> InputPenalty:
    """Double backpropagation (Drucker & LeCun 1992): ``R = c/2 * mean_i ||dC_i/dx_i||^2``.

    ``C_i`` is example ``i``'s cost and ``x_i`` its input; the gradient is that
    of ``sum_i C_i`` with respect to the batch of inputs, which gives each
    example its own gradient as long as the model treats examples independently
    (no batch normalization in training mode). ``c`` is a non-negative scalar
    (possibly traced) or a schedule of the step.
    """

    def fn(forward, loss, x, y, key, c):
        del key
        g = jax.grad(lambda xx: jnp.sum(loss(forward(xx), y)))(x)
        return 0.5 * c * jnp.sum(jnp.square(g)) / x.shape[0]

    return _input_penalty(c, name, fn)


def jacobian_norm(c: Any, *, projections: int | None = None, name: str = "jacobian_norm") -> InputPenalty:
    """``R = c/2 * mean_i ||J_i||_F^2`` with ``J_i = d apply(params, x)_i / d x_i`` (Hoffman et al. 2019).

    The Jacobian of the model's outputs (logits for jreg's MLP) with respect to
    each example's input. With ``projections=None`` it is exact: one
    vector-Jacobian product per output. With ``projections=m`` it is the
    unbiased estimate ``mean_{v ~ N(0, I)} ||v^T J_i||^2`` from ``m`` random
    projections drawn from the step's key (cheaper for many outputs); without
    a key (evaluation) the exact value is used.
    """
    if projections is not None:
        from ._checks import check_positive_int

        projections = check_positive_int(projections, "projections")

    def fn(forward, loss, x, y, key, c):
        del loss, y
        out, vjp = jax.vjp(forward, x)
        per_example = out.shape[1:]
        if projections is None or key is None:
            n = int(np.prod(per_example))
            basis = jnp.eye(n, dtype=out.dtype).reshape((n, 1) + per_example)
            vs = jnp.broadcast_to(basis, (n,) + out.shape)
            count = 1
        else:
            vs = jax.random.normal(key, (projections,) + out.shape, out.dtype)
            count = projections
        rows = jax.vmap(lambda v: vjp(v)[0])(vs)
        return 0.5 * c * jnp.sum(jnp.square(rows)) / (count * x.shape[0])

    return _input_penalty(c, name, fn)


# --------------------------------------------------------------------------- output penalties


@dataclasses.dataclass(frozen=True, eq=False)
class OutputPenalty:
    """A penalty on the model's outputs; goes into :func:`jreg.objective`'s ``output_penalty``.

    ``fn(outputs, c) -> scalar``, a mean over the batch's examples (so evaluating in batches
    weights it by batch size like the data term). The objective passes the very outputs the
    loss sees (same forward pass, same dropout mask) and reports the value in ``parts`` under
    ``name``.
    """

    name: str
    fn: Callable[..., jax.Array]
    c: Any

    def __call__(self, outputs: Any, *, step: Any = None) -> jax.Array:
        (c,) = _at_step(self.name, (self.c,), step)
        return self.fn(outputs, c)


def z_loss(c: Any, *, name: str = "z_loss") -> OutputPenalty:
    """The output z-loss ``R = c * mean_i (log sum_j exp z_ij)^2`` on the logits ``z`` (the softmax's
    log-normalizer ``log Z``, pushed toward 0).

    PaLM (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways") uses
    ``c = 1e-4`` for training stability; ST-MoE's router z-loss (Zoph et al. 2022) is the
    same formula on router logits. ``log Z`` is over the last axis; the mean is over every
    other axis (examples, and positions for ``(batch, sequence, vocabulary)`` logits). Low-
    precision logits are reduced in float32 and the result cast back. ``c`` is a non-negative
    scalar (possibly traced, for :func:`jreg.sweep`) or a schedule of the step.
    Use it as ``jreg.objective(apply, loss, output_penalty=z_loss(1e-4))``.
    """

    def fn(z, c):
        if not hasattr(z, "ndim") or z.ndim < 2 or not jnp.issubdtype(z.dtype, jnp.floating):
            what = f"shape {tuple(z.shape)} dtype {z.dtype}" if hasattr(z, "ndim") else type(z).__name__
            raise JregError(f"{name}: the model's outputs must be floating logits (batch, ..., classes), got {what}")
        wide = z.astype(jnp.float32) if jnp.finfo(z.dtype).bits < 32 else z
        log_z = jax.nn.logsumexp(wide, axis=-1)
        return (c * jnp.mean(jnp.square(log_z))).astype(z.dtype)

    if not isinstance(name, str) or not name or name in ("data", "penalty", "loss"):
        raise JregError(f"name must be a non-empty str other than 'data', 'penalty' or 'loss', got {name!r}")
    if not is_schedule(c):
        check_nonnegative_scalar(c, f"{name}: coefficient")
    return OutputPenalty(name, fn, c)


# --------------------------------------------------------------------------- describe


class Description(list):
    """What :func:`describe` returns: one dict per (term, leaf) it touches, plus the untouched leaves;
    ``str()`` of it is a table."""

    untouched: list[tuple[str, tuple[int, ...]]]

    def __str__(self) -> str:
        head = f"{'term':<16} {'leaf':<34} {'shape':<16} {'dtype':<9} coefficients"
        lines = [head, "-" * len(head)]
        for r in self:
            lines.append(f"{r['term']:<16} {r['path']:<34} {str(r['shape']):<16} {r['dtype']:<9} {r['coefficients']}")
        if self.untouched:
            lines.append("not penalized: " + ", ".join(f"{p} {s}" for p, s in self.untouched))
        return "\n".join(lines)


def _show(c: Any) -> str:
    if is_schedule(c):
        return "schedule(step)"
    if not is_concrete(c):
        return "traced"
    arr = np.asarray(c)
    return f"{arr.item():g}" if arr.ndim == 0 else f"array{arr.shape}"


def _show_center(c: Any) -> str:
    if c is None:
        return "center=0"
    if not is_concrete(c):
        return "center=traced"
    arr = np.asarray(c)
    return f"center={arr.item():g}" if arr.ndim == 0 else f"center=array{arr.shape}"


def describe(penalty: Penalty, params: Params) -> Description:
    """Which leaves each term of ``penalty`` touches, with shapes, dtypes and coefficients.

    ``print(jreg.describe(penalty, params))`` shows a table, ending with the
    leaves no term touches, so a penalty that silently misses a layer is visible.
    """
    if not isinstance(penalty, Penalty):
        raise JregTypeError(f"penalty must be a jreg Penalty, got {type(penalty).__name__}")
    out = Description()
    touched = set()
    for term_name, t in zip(penalty.names(), penalty.terms):
        for p, leaf, coefs in t.resolve(params, unresolved=True):
            touched.add(p)
            scale = "" if isinstance(t.scale, (int, float)) and t.scale == 1 else f" x {_show(t.scale)}"
            out.append(
                {
                    "term": term_name,
                    "path": p,
                    "shape": tuple(np.shape(leaf)),
                    "dtype": str(leaf.dtype),
                    "coefficients": ", ".join(
                        _show_center(c) if isinstance(spec, Center) else _show(c) for spec, c in zip(t.coefs, coefs)
                    )
                    + scale,
                }
            )
    names, leaves, _ = _flatten(params)
    out.untouched = [
        (n, tuple(np.shape(leaf))) for n, leaf in zip(names, leaves) if is_array(leaf) and n not in touched
    ]
    return out
