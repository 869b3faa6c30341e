"""Data as the engine takes it: any pytree of arrays sharing the leading example axis, checked and sized."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite
from .._errors import JregError, JregTypeError
from .._tree import leading_size, path_str
from .._types import Batch


def data_size(data: Any, name: str = "train") -> int:
    """The shared leading size of the data's leaves (a clear error if they disagree)."""
    if not jax.tree.leaves(data):
        raise JregError(f"{name} holds no arrays")
    n = leading_size(data)
    if n is None:
        shapes = [tuple(getattr(a, "shape", ())) for a in jax.tree.leaves(data)]
        raise JregError(f"{name}: every array must have the same leading (example) axis, got shapes {shapes}")
    return n


def leaf_labels(data: Any) -> list[str]:
    flat = jax.tree_util.tree_flatten_with_path(data)[0]
    if isinstance(data, (tuple, list)) and len(data) == 2 and len(flat) == 2:
        return ["x", "y"]
    return [path_str(p) or "data" for p, _ in flat]


def check_leaf_types(data: Any, name: str) -> None:
    """Every leaf of ``data`` an array of real numbers (or booleans): no lists, strings, objects or complex."""
    for label, leaf in zip(leaf_labels(data), jax.tree.leaves(data)):
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise JregTypeError(f"{name}: {label} must be an array, got {type(leaf).__name__}")
        dtype = leaf.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            raise JregTypeError(f"{name}: {label} must hold real numbers, got PRNG keys ({dtype})")
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
            raise JregTypeError(f"{name}: {label} must hold real numbers, got dtype {dtype}")


def check_data(data: Any, name: str) -> Batch:
    """``data`` as device arrays after checking it: arrays sharing a non-empty leading axis, finite floats."""
    if data is None:
        raise JregTypeError(f"{name} must be data: a pair (x, y) or a pytree of arrays, got None")
    leaves, treedef = jax.tree.flatten(data)
    if not leaves:
        raise JregError(f"{name} holds no arrays")
    labels = leaf_labels(data)
    check_leaf_types(data, name)
    for label, leaf in zip(labels, leaves):
        if len(leaf.shape) == 0:
            raise JregError(f"{name}: {label} must have a leading batch axis, got a scalar")
    sizes = [leaf.shape[0] for leaf in leaves]
    if len(set(sizes)) > 1:
        if labels == ["x", "y"]:
            x, y = leaves
            raise JregError(
                f"{name}: x and y must hold the same number of examples, got x {tuple(x.shape)} and y {tuple(y.shape)}"
            )
        shapes = {label: tuple(leaf.shape) for label, leaf in zip(labels, leaves)}
        raise JregError(f"{name}: every array must have the same leading (example) axis, got {shapes}")
    if sizes[0] == 0:
        raise JregError(f"{name} is empty: it must hold at least one example")
    # check what training will see: a float64 value beyond float32's range becomes inf in the cast
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        leaves = [jnp.asarray(leaf) for leaf in leaves]
    for label, leaf in zip(labels, leaves):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            check_finite(leaf, f"{name}: {label}")
    return jax.tree.unflatten(treedef, leaves)
