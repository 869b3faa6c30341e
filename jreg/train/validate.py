"""Checks that run before any training: arguments, data, and the objective against the data's real shapes.

Everything here runs once, on the host, before the first compilation, so a
bad input fails in well under a second with a :class:`jreg.JregError` that
names the argument (``train`` or ``evaluation``), what was expected and what
came; shape errors are found by tracing the objective abstractly
(``jax.eval_shape``) on the data's full shapes, so they quote those shapes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite, check_key, check_positive_int
from .._errors import JregError, JregTypeError
from .._tree import path_str
from .._types import Batch
from ..objective import Objective
from . import calls
from .state import TrainState


def check_loop_args(epochs: Any, batch_size: Any, key: Any, callback: Any) -> tuple[int, int]:
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_key(key)
    if callback is not None and not callable(callback):
        raise JregTypeError(f"callback must be callable callback(epoch, metrics), got {callback!r}")
    return epochs, batch_size


def _labels(data: Any) -> list[str]:
    flat = jax.tree_util.tree_flatten_with_path(data)[0]
    if isinstance(data, (tuple, list)) and len(data) == 2 and len(flat) == 2:
        return ["x", "y"]
    return [path_str(p) or "data" for p, _ in flat]


def check_data(data: Any, name: str) -> Batch:
    """``data`` as device arrays after checking it: arrays sharing a non-empty leading axis, finite floats."""
    if data is None:
        raise JregTypeError(f"{name} must be data: a pair (x, y) or a pytree of arrays, got None")
    leaves, treedef = jax.tree.flatten(data)
    if not leaves:
        raise JregError(f"{name} holds no arrays")
    labels = _labels(data)
    for label, leaf in zip(labels, leaves):
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise JregTypeError(f"{name}: {label} must be an array, got {type(leaf).__name__}")
        if len(leaf.shape) == 0:
            raise JregError(f"{name}: {label} must have a leading batch axis, got a scalar")
        if not (np.issubdtype(leaf.dtype, np.number) or leaf.dtype == bool) or np.issubdtype(
            leaf.dtype, np.complexfloating
        ):
            raise JregTypeError(f"{name}: {label} must hold real numbers, got dtype {leaf.dtype}")
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


def _shapes(data: Any) -> str:
    return ", ".join(f"{label} {tuple(leaf.shape)}" for label, leaf in zip(_labels(data), jax.tree.leaves(data)))


def _named(exc: Exception, name: str, data: Any) -> JregError:
    """``exc`` as a jreg error that says which data it came from (and its shapes, for a foreign error)."""
    message = str(exc)
    if isinstance(exc, JregError):
        text = message if message.startswith(f"{name}") else f"{name}: {message}"
        try:
            return type(exc)(text)
        except TypeError:  # an error class with a richer constructor
            return JregError(text)
    return JregError(f"{name}: the objective fails on data of shapes {_shapes(data)}: {type(exc).__name__}: {message}")


def probe(
    objective: Callable[..., Any], state: TrainState, data: Batch, name: str, key: Any
) -> jax.ShapeDtypeStruct | None:
    """Trace the objective on the data's full shapes, in training and evaluation mode; the outputs' shape.

    Nothing is computed (``jax.eval_shape``). Returns the model's outputs (for a
    :class:`jreg.Objective`) as a shape, else None.
    """
    keyed = calls.takes_key(objective)
    try:
        if isinstance(objective, Objective):
            objective.inputs_targets(data, name)
        _, _, new_state = jax.eval_shape(
            lambda s, b, k: calls.call(objective, s.params, s.model_state, b, key=k, step=s.step, train=True),
            state,
            data,
            key if keyed else None,
        )
        if state.model_state is not None:
            calls.check_state_roundtrip(state.model_state, new_state)
        jax.eval_shape(
            lambda s, b: calls.call(objective, s.params, s.model_state, b, step=s.step, train=False), state, data
        )
        if not isinstance(objective, Objective):
            return None
        outputs = jax.eval_shape(
            lambda s, b: objective.predict(s.params, objective.inputs_targets(b)[0], state=s.model_state, train=False)[
                0
            ],
            state,
            data,
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes a jreg error naming the data
        raise _named(exc, name, data) from exc
    return outputs if isinstance(outputs, jax.ShapeDtypeStruct) else None


def targets_of(objective: Callable[..., Any], data: Batch) -> Any:
    """The concrete targets of a data set (what the loss and the metrics see), or None for a plain objective."""
    return objective.inputs_targets(data)[1] if isinstance(objective, Objective) else None


def check_labels(targets: Any, outputs: jax.ShapeDtypeStruct | None, name: str) -> None:
    """Integer class labels must lie in ``[0, classes)`` for the model's ``classes`` outputs."""
    if outputs is None or not _are_labels(targets, outputs):
        return
    labels = np.asarray(targets)
    lo, hi, classes = int(labels.min()), int(labels.max()), outputs.shape[-1]
    if lo < 0 or hi >= classes:
        raise JregError(
            f"{name}: labels must lie in [0, {classes}) for a model with {classes} outputs, got values in [{lo}, {hi}]"
        )


def _are_labels(targets: Any, outputs: jax.ShapeDtypeStruct) -> bool:
    return (
        hasattr(targets, "dtype")
        and jnp.issubdtype(targets.dtype, jnp.integer)
        and len(outputs.shape) >= 2
        and tuple(targets.shape) == tuple(outputs.shape[:-1])
    )


def are_classes(targets: Any, outputs: jax.ShapeDtypeStruct | None) -> bool:
    """Whether the targets are classes: integer labels, or float rows in [0, 1] summing to 1, over >= 2 outputs."""
    if outputs is None or len(outputs.shape) < 2 or outputs.shape[-1] < 2 or not hasattr(targets, "dtype"):
        return False
    if _are_labels(targets, outputs):
        return True
    if not jnp.issubdtype(targets.dtype, jnp.floating) or tuple(targets.shape) != tuple(outputs.shape):
        return False
    y = np.asarray(targets, np.float64)
    return bool(np.all((y >= 0) & (y <= 1)) and np.allclose(y.sum(axis=-1), 1.0, atol=1e-3))
