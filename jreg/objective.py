"""The regularized objective ``J(params) = mean_x C(apply(params, x), y) + R(params)``.

The data term and the penalty are separate pure functions and the objective is
their sum, so ``jax.grad(J)`` adds the penalty's gradient (``c * w`` for
``l2(c)``) straight onto the weights while the output error ``dC/da`` is
untouched: the penalty depends on the weights, not on the activations.

Two kinds of regularizer do depend on the data, and the objective owns them too:
an *activity* penalty on the hidden activations the model returns with
``apply(params, x, intermediates=True)``, and *input* penalties on the
derivatives of the model or the loss with respect to ``x``
(:func:`jreg.penalties.input_gradient`, :func:`jreg.penalties.jacobian_norm`;
double backprop). Stochastic models (dropout, noise) get the step's key:
``objective(params, batch, key=key)`` is the training objective,
``objective(params, batch)`` the deterministic evaluation one.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import _signature
from ._errors import JregError, JregTypeError
from .penalties import InputPenalty, Penalty
from .selectors import everything

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
    """``objective(params, batch, *, key=None, step=None) -> (total, parts)``; see :func:`objective`.

    Attributes:
        apply: the model's ``apply(params, x, *, key=None, intermediates=False)``
            (the keywords are optional: a plain ``apply(params, x)`` works when
            neither dropout/noise nor an activity penalty is used).
        loss: the per-example cost ``loss(outputs, targets) -> (batch,)``.
        penalty: a :class:`jreg.penalties.Penalty`, any ``penalty(params) -> scalar``, or ``None``.
        activity: a :class:`~jreg.penalties.Penalty` on the model's intermediates, or ``None``.
        input_penalty: a tuple of :class:`~jreg.penalties.InputPenalty`.
    """

    apply: Callable[..., Any]
    loss: Callable[[jax.Array, Any], jax.Array]
    penalty: Callable[[Params], jax.Array] | None = None
    activity: Penalty | None = None
    input_penalty: tuple[InputPenalty, ...] = ()

    def _forward(self, params: Params, x: jax.Array, key: jax.Array | None) -> tuple[Any, Any]:
        """``(outputs, intermediates or None)`` in training mode when ``key`` is given."""
        if self.activity is None:
            return _signature.call(self.apply, params, x, key=key), None
        out = _signature.call(self.apply, params, x, key=key, intermediates=True)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise JregError(
                "an activity penalty needs apply(params, x, intermediates=True) to return (outputs, intermediates); "
                f"got {type(out).__name__}"
            )
        return out

    def _mean_loss(self, outputs: Any, y: Any, n: int) -> jax.Array:
        per_example = self.loss(outputs, y)
        if jnp.ndim(per_example) != 1 or per_example.shape[0] != n:
            raise JregError(f"loss must return one value per example, shape ({n},), got {jnp.shape(per_example)}")
        return jnp.mean(per_example)

    def data_cost(self, params: Params, batch: Batch, *, key: jax.Array | None = None) -> jax.Array:
        """The mean per-example cost over the batch, without any penalty."""
        x, y = _check_batch(batch)
        return self._mean_loss(_forward_outputs(self.apply, params, key, x), y, x.shape[0])

    def penalty_parts(self, params: Params, *, step: Any = None) -> dict[str, jax.Array]:
        """``{"penalty": R(params), <term name>: <term value>, ...}``: the penalty on the params only."""
        if self.penalty is None:
            return {"penalty": jnp.zeros((), jnp.result_type(*jax.tree_util.tree_leaves(params)))}
        if isinstance(self.penalty, Penalty):
            terms = self.penalty.parts(params, step=step)
            return {"penalty": functools.reduce(operator.add, terms.values()), **terms}
        value = _signature.call(self.penalty, params, step=step)
        if jnp.ndim(value) != 0:
            raise JregError(f"penalty must return a scalar, got shape {jnp.shape(value)}")
        return {"penalty": value}

    def __call__(
        self, params: Params, batch: Batch, *, key: jax.Array | None = None, step: Any = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        x, y = _check_batch(batch)
        outputs, hidden = self._forward(params, x, key)
        data = self._mean_loss(outputs, y, x.shape[0])
        parts = self.penalty_parts(params, step=step)
        regularizers = [parts["penalty"]]
        if self.activity is not None:
            # mean over the examples of the per-example penalty (for l1/l2: penalty(batch) / batch size)
            for name, value in self.activity.parts(hidden, step=step).items():
                parts[f"activity_{name}"] = value / x.shape[0]
                regularizers.append(parts[f"activity_{name}"])
        for i, term in enumerate(self.input_penalty):
            forward = functools.partial(_forward_outputs, self.apply, params, key)
            sub_key = None if key is None else jax.random.fold_in(key, i + 1)
            parts[term.name] = term(forward, self.loss, x, y, key=sub_key, step=step)
            regularizers.append(parts[term.name])
        parts["penalty"] = functools.reduce(operator.add, regularizers)
        return data + parts["penalty"], {"data": data, **parts}


def _forward_outputs(apply: Callable[..., Any], params: Params, key: jax.Array | None, x: jax.Array) -> Any:
    return _signature.call(apply, params, x, key=key)


def _activity_penalty(activity: Any) -> Penalty:
    if not isinstance(activity, Penalty):
        raise JregTypeError(f"activity must be a jreg Penalty on the intermediates, got {type(activity).__name__}")
    # the default mask (weight matrices) means nothing for activations: there it selects every intermediate
    terms = tuple(dataclasses.replace(t, mask=everything()) if t.mask is None else t for t in activity.terms)
    return Penalty(terms)


def _input_penalties(input_penalty: Any) -> tuple[InputPenalty, ...]:
    if input_penalty is None:
        return ()
    terms = (input_penalty,) if isinstance(input_penalty, InputPenalty) else tuple(input_penalty)
    for i, t in enumerate(terms):
        if not isinstance(t, InputPenalty):
            raise JregTypeError(
                f"input_penalty[{i}] must come from jreg.penalties.input_gradient or jacobian_norm, "
                f"got {type(t).__name__}"
            )
    return terms


def objective(
    apply: Callable[..., Any],
    loss: Callable[[jax.Array, Any], jax.Array],
    penalty: Callable[[Params], jax.Array] | None = None,
    *,
    activity: Penalty | None = None,
    input_penalty: InputPenalty | Sequence[InputPenalty] | None = None,
) -> Objective:
    """Compose model, per-example loss and regularizers into one objective.

    Returns ``f(params, batch, *, key=None, step=None) -> (total, parts)`` with
    ``batch = (x, y)`` and

    * ``total = mean_i loss(apply(params, x)_i, y_i) + penalty(params)``
      ``+ activity terms + input terms``,
    * ``parts = {"data": <mean loss>, "penalty": <all regularizers>, <term>: <value>...}``:
      one entry per term of ``penalty`` (e.g. ``"l2"``), ``"activity_<term>"``
      per activity term and one per input penalty (e.g. ``"input_gradient"``).

    Args:
        apply: the model; given ``key`` it is in training mode (dropout, noise).
        loss: per-example cost ``loss(outputs, targets) -> (batch,)``.
        penalty: on the params: a :class:`~jreg.penalties.Penalty`, any
            ``penalty(params) -> scalar`` or ``None``.
        activity: a :class:`~jreg.penalties.Penalty` on the intermediates
            ``apply(params, x, intermediates=True)`` returns (jreg's MLP: the
            hidden activations). Its value is divided by the batch size, so
            for ``l1(c)`` it is ``c * mean_i sum_j |a_ij|`` (Keras' activity
            regularizer); terms without a mask act on every intermediate.
        input_penalty: one or several of :func:`jreg.penalties.input_gradient`,
            :func:`jreg.penalties.jacobian_norm`: penalties on derivatives
            with respect to the inputs, differentiated by double backprop.

    Keywords of the returned function: ``key`` (a ``jax.random`` key: training
    mode, passed to ``apply``; without it, evaluation mode) and ``step`` (the
    global step, for coefficient schedules). ``jax.grad`` of
    ``lambda p: f(p, batch, key=k, step=s)[0]`` is the gradient of the
    regularized cost; :func:`jreg.make_step` uses exactly that.
    """
    for name, fn in (("apply", apply), ("loss", loss)):
        if not callable(fn):
            raise JregTypeError(f"{name} must be callable, got {fn!r}")
    if penalty is not None and not callable(penalty):
        raise JregTypeError(f"penalty must be a jreg Penalty, a function of params, or None; got {penalty!r}")
    act = None if activity is None else _activity_penalty(activity)
    if act is not None and not _signature.accepts(apply, "intermediates"):
        raise JregError(
            "activity needs a model whose apply takes intermediates=True and returns (outputs, intermediates), "
            "as jreg.mlp's does"
        )
    inputs = _input_penalties(input_penalty)
    names = ["data", "penalty"]
    names += penalty.names() if isinstance(penalty, Penalty) else []
    names += [f"activity_{n}" for n in act.names()] if act is not None else []
    names += [t.name for t in inputs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise JregError(f"the objective's parts would have duplicate names {clash}; give the terms distinct name=")
    return Objective(apply, loss, penalty, act, inputs)
