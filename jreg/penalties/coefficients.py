"""Coefficient rules: per-leaf coefficients (:func:`by_path`, :func:`by_shape`, :func:`width_scaled`), the center
of a centered penalty, schedules of the step, and the checks every coefficient passes (see :mod:`jreg.penalties`)."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_nonnegative_scalar, is_concrete
from .._errors import JregError, JregTypeError
from .._tree import path_str
from ..selectors import is_array
from .masks import Params


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
    sweeps it); ``exponent`` a finite real number. A leaf with ``fan_in`` 0 (``(0, n)``) holds no weight and gets 0
    (``0^exponent`` would be infinite for a negative exponent). Example: ``l2(width_scaled(1e-6))``.
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
        if fan_in(shape) == 0:  # an empty leaf: no weight for the coefficient to weigh (and 0^exponent < 0 is inf)
            return base * 0.0
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
