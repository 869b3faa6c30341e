"""How the engine calls a user's objective, whatever its kind.

Three kinds of objective reach the engine:

* a :class:`jreg.Objective` (from :func:`jreg.objective`), stateless or
  stateful (its ``apply`` takes ``state=``);
* any ``f(params, batch, *, key=None, step=None) -> (total, parts)``;
* a stateful ``f(params, batch, *, state, train=..., key=None, step=None) ->
  (total, parts, new_state)`` (any function with a ``state`` parameter).

``key``, ``step`` and ``train`` reach a function only if it names them
(:mod:`jreg._signature`). This module turns all of them into one training
call and says what each supports; nothing else in the engine looks at a
signature.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _signature
from .._errors import JregError, JregTypeError
from .._tree import path_str
from .._types import Batch, ModelState, Params
from ..objective import Objective

#: ``loss(params, model_state, batch, key, step) -> (total, (parts, new_model_state))``
TrainLoss = Callable[[Params, ModelState, Batch, Any, Any], tuple[jax.Array, tuple[dict, ModelState]]]


def check_objective(objective: Any) -> None:
    if not callable(objective):
        raise JregTypeError(f"objective must be callable f(params, batch) -> (total, parts), got {objective!r}")


def is_stateful(objective: Callable[..., Any]) -> bool:
    """Whether the objective carries model state (and returns the new state third)."""
    if isinstance(objective, Objective):
        return objective.stateful
    return _signature.accepts(objective, "state")


def takes_key(objective: Callable[..., Any]) -> bool:
    """Whether the objective takes a ``key`` (then every training step gets a fresh one)."""
    return _signature.accepts(objective, "key")


def check_state_given(stateful: bool, model_state: Any) -> None:
    """A model state must be given exactly when the objective carries one."""
    if stateful and model_state is None:
        raise JregError(
            "the objective carries model state (its model's apply takes state=): pass model_state= "
            "(e.g. Flax's {'batch_stats': variables['batch_stats']}, or Equinox's eqx.nn.State)"
        )
    if not stateful and model_state is not None:
        raise JregError("model_state was given, but the objective carries no state (its apply takes no state=)")


def as_model_state(model_state: Any, name: str = "model_state") -> Any:
    """``model_state`` with every leaf a (strongly typed) array, or a jreg error naming the leaf.

    Strong types matter: a Python ``1`` would otherwise become a weakly typed
    int that a training step turns into a different type than it came in as.
    """
    if model_state is None:
        return None
    if all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(model_state)):
        return model_state  # already arrays (the fast path for a training loop)
    flat, treedef = jax.tree_util.tree_flatten_with_path(model_state)
    leaves = []
    for path, leaf in flat:
        where = path_str(path) or "<root>"
        if isinstance(leaf, (str, bytes)) or not (hasattr(leaf, "dtype") or isinstance(leaf, (bool, int, float))):
            raise JregTypeError(f"{name}: leaf {where!r} must be an array, got {type(leaf).__name__}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
                leaves.append(jnp.asarray(arr, dtype=jax.dtypes.canonicalize_dtype(arr.dtype)))
        except (TypeError, ValueError, OverflowError) as exc:
            raise JregTypeError(f"{name}: leaf {where!r} is not a usable array ({exc})") from exc
        if not (jnp.issubdtype(leaves[-1].dtype, jnp.number) or leaves[-1].dtype == bool):
            raise JregTypeError(f"{name}: leaf {where!r} must hold numbers, got dtype {leaves[-1].dtype}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def check_state_roundtrip(before: Any, after: Any, name: str = "model_state") -> None:
    """A training step must give back the state in the structure, shapes and dtypes it got (it is a scan carry)."""
    if jax.tree.structure(before) != jax.tree.structure(after):
        raise JregError(
            f"the model's apply returned a new state whose structure {jax.tree.structure(after)} differs from "
            f"the state it was given, {jax.tree.structure(before)}"
        )
    flat = jax.tree_util.tree_flatten_with_path(before)[0]
    for (path, old), new in zip(flat, jax.tree.leaves(after)):
        if tuple(jnp.shape(old)) != tuple(jnp.shape(new)) or jnp.result_type(old) != jnp.result_type(new):
            raise JregError(
                f"{name} leaf {path_str(path)!r} goes into apply as {jnp.result_type(old)}{list(jnp.shape(old))} "
                f"but comes back as {jnp.result_type(new)}{list(jnp.shape(new))}; the new state must keep each "
                "leaf's shape and dtype"
            )


def _unpack(out: Any, stateful: bool) -> tuple[Any, Any, Any]:
    size = 3 if stateful else 2
    want = "(total, parts, new_state)" if stateful else "(total, parts)"
    if not (isinstance(out, tuple) and len(out) == size):
        raise JregError(f"the objective must return {want}, got {type(out).__name__}")
    if not isinstance(out[1], Mapping) or not all(isinstance(k, str) for k in out[1]):
        raise JregTypeError(f"the objective must return {want} with parts a dict of named values, got {out[1]!r}")
    if jnp.ndim(out[0]) != 0:
        raise JregError(f"the objective's total must be a scalar, got shape {jnp.shape(out[0])}")
    return out if stateful else (*out, None)


def call(
    objective: Callable[..., Any],
    params: Params,
    model_state: ModelState,
    batch: Batch,
    *,
    key: Any = None,
    step: Any = None,
    train: bool,
) -> tuple[jax.Array, dict[str, jax.Array], ModelState]:
    """``(total, parts, new_model_state)`` in training or evaluation mode (the state passes through if stateless)."""
    if is_stateful(objective):
        out = _signature.call(objective, params, batch, key=key, step=step, state=model_state, train=train)
        return _unpack(out, True)
    if model_state is not None:
        raise JregError(
            "model_state was given, but the objective carries no state: its model's apply has no state parameter"
        )
    total, parts, _ = _unpack(_signature.call(objective, params, batch, key=key, step=step), False)
    return total, parts, model_state


def train_loss(objective: Callable[..., Any]) -> TrainLoss:
    """The training-mode loss ``(params, model_state, batch, key, step) -> (total, (parts, new_state))``."""

    def loss(params, model_state, batch, key, step):
        total, parts, new_state = call(objective, params, model_state, batch, key=key, step=step, train=True)
        return total, (parts, new_state)

    return loss
