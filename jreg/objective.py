"""The regularized objective ``J(params) = mean_x C(apply(params, x), y) + R(params)``.

The data term and the penalty are separate pure functions and the objective is
their sum, so ``jax.grad(J)`` adds the penalty's gradient (``c * w`` for
``l2(c)``) straight onto the weights while the output error ``dC/da`` is
untouched: the penalty depends on the weights, not on the activations.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._errors import JregError, JregTypeError
from .penalties import Penalty

Params = Any
Batch = tuple[Any, Any]


def _check_batch(batch: Any, name: str = "batch") -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise JregTypeError(f"{name} must be a pair (x, y), got {type(batch).__name__}")
    x, y = batch
    for arg, arr in (("x", x), ("y", y)):
        if not hasattr(arr, "shape"):
            raise JregTypeError(f"{name}: {arg} must be an array, got {type(arr).__name__}")
        if arr.ndim == 0:
            raise JregError(f"{name}: {arg} must have a leading batch axis, got a scalar")
    if x.shape[0] != y.shape[0]:
        raise JregError(
            f"{name}: x and y must hold the same number of examples, got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    return x, y


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """``objective(params, batch) -> (total, parts)``; see :func:`objective`.

    Attributes:
        apply: the model's ``apply(params, x) -> outputs``.
        loss: the per-example cost ``loss(outputs, targets) -> (batch,)``.
        penalty: a :class:`jreg.penalties.Penalty`, any ``penalty(params) -> scalar``, or ``None``.
    """

    apply: Callable[[Params, jax.Array], jax.Array]
    loss: Callable[[jax.Array, Any], jax.Array]
    penalty: Callable[[Params], jax.Array] | None = None

    def data_cost(self, params: Params, batch: Batch) -> jax.Array:
        """The mean per-example cost over the batch, without the penalty."""
        x, y = _check_batch(batch)
        outputs = self.apply(params, x)
        per_example = self.loss(outputs, y)
        if jnp.ndim(per_example) != 1 or per_example.shape[0] != x.shape[0]:
            raise JregError(
                f"loss must return one value per example, shape ({x.shape[0]},), got {jnp.shape(per_example)}"
            )
        return jnp.mean(per_example)

    def penalty_parts(self, params: Params) -> dict[str, jax.Array]:
        """``{"penalty": R(params), <term name>: <term value>, ...}``."""
        if self.penalty is None:
            return {"penalty": jnp.zeros((), jnp.result_type(*jax.tree_util.tree_leaves(params)))}
        if isinstance(self.penalty, Penalty):
            terms = self.penalty.parts(params)
            return {"penalty": functools.reduce(operator.add, terms.values()), **terms}
        value = self.penalty(params)
        if jnp.ndim(value) != 0:
            raise JregError(f"penalty must return a scalar, got shape {jnp.shape(value)}")
        return {"penalty": value}

    def __call__(self, params: Params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        data = self.data_cost(params, batch)
        pen = self.penalty_parts(params)
        total = data + pen["penalty"]
        return total, {"data": data, **pen}


def objective(
    apply: Callable[[Params, jax.Array], jax.Array],
    loss: Callable[[jax.Array, Any], jax.Array],
    penalty: Callable[[Params], jax.Array] | None = None,
) -> Objective:
    """Compose model, per-example loss and penalty into one objective.

    Returns ``f(params, batch) -> (total, parts)`` with ``batch = (x, y)`` and

    * ``total = mean_i loss(apply(params, x)_i, y_i) + penalty(params)``,
    * ``parts = {"data": <mean loss>, "penalty": <penalty>, <term>: <value>...}``
      (one entry per term of a :class:`~jreg.penalties.Penalty`, e.g. ``"l2"``).

    ``jax.grad`` of ``lambda p: f(p, batch)[0]`` is the gradient of the
    regularized cost; :func:`jreg.make_step` uses exactly that.
    """
    for name, fn in (("apply", apply), ("loss", loss)):
        if not callable(fn):
            raise JregTypeError(f"{name} must be callable, got {fn!r}")
    if penalty is not None and not callable(penalty):
        raise JregTypeError(f"penalty must be a jreg Penalty, a function of params, or None; got {penalty!r}")
    return Objective(apply, loss, penalty)
