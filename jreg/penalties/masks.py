"""Masks: which leaves of a params pytree a penalty touches (the rules in :mod:`jreg.penalties`)."""

from __future__ import annotations

import fnmatch
from typing import Any

import jax
import numpy as np

from .._checks import is_concrete
from .._errors import JregError, JregTypeError
from .._tree import path_str
from .._tree import paths as paths  # public: jreg.penalties.paths
from ..selectors import is_array, weights

_DEFAULT = weights()

Params = Any
Mask = Any  # None | str | Callable[[str, Array], bool] | pytree of bools


def is_weight(path: str, leaf: Any) -> bool:
    """The default mask, :func:`jreg.selectors.weights`: floating-point leaves of rank >= 2, not named
    like biases or normalization parameters."""
    return _DEFAULT(path, leaf)


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
