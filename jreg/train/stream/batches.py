"""A stream's batches checked against the first: the :class:`Spec` the first batch fixes, each later batch's
structure, shapes and dtypes, finiteness, and the cast to the training dtypes (the rules in
:mod:`jreg.train.stream`'s docstring, "Batches")."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np

from ..._errors import JregError, JregTypeError
from ..inputs import leaf_labels


def _as_numpy(leaf: Any) -> np.ndarray | None:
    if isinstance(leaf, np.ndarray):
        return leaf
    if isinstance(leaf, jax.Array) or hasattr(leaf, "__array__"):
        return np.asarray(leaf)
    return None


@dataclasses.dataclass
class Spec:
    """What the first batch fixed: the structure, each leaf's label, trailing shape and dtype."""

    treedef: Any
    labels: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[np.dtype]  # as training sees them (canonical: float64 -> float32 unless x64)
    rows: int  # the full batch's leading size (per process)
    raw: list[np.dtype] = dataclasses.field(default_factory=list)  # the first batch's own dtypes (fast check)
    container: type | None = None  # tuple or list when the first batch is one of arrays (:func:`quick`)
    full: list[tuple[int, ...]] = dataclasses.field(default_factory=list)  # a full batch's shapes


def first_batch(batch: Any, expected: int, processes: int, epoch: int) -> tuple[Any, Spec]:
    """The first batch (as NumPy, checked) and the spec it fixes; ``expected`` examples (per process)."""
    leaves, treedef = jax.tree.flatten(batch)
    labels = leaf_labels(batch)
    where = f"train (epoch {epoch + 1}, batch index 0)"
    if not leaves:
        raise JregTypeError(f"{where}: a batch must hold arrays, got {type(batch).__name__}")
    arrays = []
    for label, leaf in zip(labels, leaves):
        arr = _as_numpy(leaf)
        if arr is None:
            raise JregTypeError(f"{where}: {label} must be an array, got {type(leaf).__name__}")
        if arr.ndim == 0:
            raise JregError(f"{where}: {label} must have a leading batch axis, got a scalar")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.issubdtype(
            arr.dtype, np.complexfloating
        ):
            raise JregTypeError(f"{where}: {label} must hold real numbers, got dtype {arr.dtype}")
        arrays.append(arr)
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) > 1:
        shapes = {label: tuple(a.shape) for label, a in zip(labels, arrays)}
        raise JregError(f"{where}: every array must have the same leading (example) axis, got {shapes}")
    rows = sizes.pop()
    if rows != expected:
        per = "" if processes == 1 else f" (batch_size // {processes} processes)"
        raise JregError(
            f"{where}: the first batch must hold batch_size{per} = {expected} examples, got {rows}; "
            "pass the source's batch size as batch_size"
        )
    dtypes = [jax.dtypes.canonicalize_dtype(a.dtype) for a in arrays]
    spec = Spec(treedef, labels, [a.shape[1:] for a in arrays], dtypes, rows, [a.dtype for a in arrays])
    flat = type(batch) in (tuple, list) and all(isinstance(leaf, np.ndarray) for leaf in batch)
    spec.container = type(batch) if flat else None
    spec.full = [(rows, *shape) for shape in spec.shapes]
    arrays = cast(arrays, spec)
    check_finite([a[None] for a in arrays], spec, epoch, 0)
    return jax.tree.unflatten(treedef, arrays), spec


def cast(arrays: list[np.ndarray], spec: Spec) -> list[np.ndarray]:
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [a if a.dtype == d else a.astype(d) for a, d in zip(arrays, spec.dtypes)]


def quick(batch: Any, spec: Spec) -> list[np.ndarray] | None:
    """A later batch's leaves when it repeats the first exactly: the same container (a tuple or a list) of NumPy
    arrays with the first batch's dtypes, the full batch's shapes. None otherwise (then :func:`convert` checks it
    and names what differs). What passes here passes :func:`convert` too, with the same leaves: it is the common
    case's shortcut (no tree flattening, no conversion), not a weaker check."""
    if type(batch) is not spec.container or len(batch) != len(spec.raw):
        return None
    for leaf, full, raw in zip(batch, spec.full, spec.raw):
        if type(leaf) is not np.ndarray or leaf.shape != full or leaf.dtype != raw:
            return None
    return list(batch)


def convert(batch: Any, spec: Spec, epoch: int, index: int) -> list[np.ndarray]:
    """A later batch's leaves as NumPy, after checking them against the spec."""
    where = f"train (epoch {epoch + 1}, batch index {index})"
    leaves, treedef = jax.tree.flatten(batch)
    if treedef != spec.treedef:
        raise JregError(f"{where}: the batch's structure {treedef} differs from the first batch's {spec.treedef}")
    out = []
    for label, leaf, shape, dtype, raw in zip(spec.labels, leaves, spec.shapes, spec.dtypes, spec.raw):
        arr = _as_numpy(leaf)
        if arr is None:
            raise JregTypeError(f"{where}: {label} must be an array, got {type(leaf).__name__}")
        if arr.ndim == 0 or arr.shape[1:] != shape:
            expected = "(n, " + ", ".join(map(str, shape)) + ")" if shape else "(n,)"
            raise JregError(f"{where}: {label} has shape {tuple(arr.shape)}, the first batch's has {expected}")
        if arr.dtype != raw and jax.dtypes.canonicalize_dtype(arr.dtype) != dtype:
            raise JregTypeError(f"{where}: {label} has dtype {arr.dtype}, the first batch's has {dtype}")
        out.append(arr)
    sizes = {a.shape[0] for a in out}
    if len(sizes) > 1:
        shapes = {label: tuple(a.shape) for label, a in zip(spec.labels, out)}
        raise JregError(f"{where}: every array must have the same leading (example) axis, got {shapes}")
    rows = sizes.pop()
    if rows > spec.rows or rows == 0:
        raise JregError(f"{where}: the batch holds {rows} examples; batches hold batch_size = {spec.rows}")
    return out  # cast to the training dtypes per chunk (:meth:`Feed._chunk`)


def check_finite(stacked: list[np.ndarray], spec: Spec, epoch: int, first: int) -> None:
    for label, arr in zip(spec.labels, stacked):
        if np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
            if bad.any():
                i = int(np.argmax(bad))
                raise JregError(f"train (epoch {epoch + 1}, batch index {first + i}): {label} holds NaN or infinity")
