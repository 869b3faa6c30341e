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
from ._checks import check_key, framework_params_advice
from ._errors import JregError, JregTypeError
from ._types import Batch, ModelState, Params
from .penalties import InputPenalty, OutputPenalty, Penalty
from .selectors import everything

SPLIT_HINT = "or give jreg.objective a split= function that takes your batch apart into (inputs, targets)"


def _check_batch(batch: Any, name: str = "batch") -> tuple[Any, Any]:
    """The default split: ``batch`` must be a pair ``(x, y)`` of arrays with the same leading axis."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = type(batch).__name__ + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise JregTypeError(f"{name} must be a pair (x, y), {SPLIT_HINT}; got {what}")
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


def _batch_size(tree: Any) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves or not getattr(leaves[0], "ndim", 0):
        raise JregError(f"the model's inputs must be arrays with a leading batch axis, got {type(tree).__name__}")
    return leaves[0].shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """``objective(params, batch, *, key=None, step=None, state=None, train=None)``; see :func:`objective`.

    Returns ``(total, parts)``, or ``(total, parts, new_state)`` for a stateful model.

    Attributes:
        apply: the model's ``apply(params, x, *, key=None, intermediates=False)``
            (the keywords are optional: a plain ``apply(params, x)`` works when
            neither dropout/noise nor an activity penalty is used). A stateful
            model's ``apply`` also takes ``state=`` (and, if it likes, ``train=``)
            and returns ``(outputs, new_state)``.
        loss: the per-example cost ``loss(outputs, targets) -> (batch,)``.
        penalty: a :class:`jreg.penalties.Penalty`, any ``penalty(params) -> scalar``, or ``None``.
        activity: a :class:`~jreg.penalties.Penalty` on the model's intermediates, or ``None``.
        input_penalty: a tuple of :class:`~jreg.penalties.InputPenalty`.
        split: ``split(batch) -> (inputs, targets)``, or ``None`` for ``(x, y)`` pairs.
        output_penalty: a tuple of :class:`~jreg.penalties.OutputPenalty` (``z_loss``) on the outputs.
    """

    apply: Callable[..., Any]
    loss: Callable[[jax.Array, Any], jax.Array]
    penalty: Callable[[Params], jax.Array] | None = None
    activity: Penalty | None = None
    input_penalty: tuple[InputPenalty, ...] = ()
    split: Callable[[Batch], tuple[Any, Any]] | None = None
    output_penalty: tuple[OutputPenalty, ...] = ()

    @property
    def stateful(self) -> bool:
        """True when the model carries state: its ``apply`` takes a ``state`` keyword."""
        return _signature.accepts(self.apply, "state")

    def inputs_targets(self, batch: Batch, name: str = "batch") -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch: the pair itself, or what ``split`` makes of it."""
        if self.split is None:
            return _check_batch(batch, name)
        out = self.split(batch)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise JregTypeError(f"split must return a pair (inputs, targets), got {type(out).__name__}")
        return out

    def predict(
        self,
        params: Params,
        inputs: Any,
        *,
        key: jax.Array | None = None,
        state: ModelState = None,
        train: bool | None = None,
        intermediates: bool = False,
    ) -> tuple[Any, ModelState]:
        """``(outputs, new_state)`` (``((outputs, intermediates), new_state)`` when asked).

        Training mode when ``train`` is True, or, when ``train`` is None, when a
        ``key`` is given. A stateless model's state stays ``None``; a stateful
        model's ``apply`` gets ``state=`` and ``train=`` and returns the new state.
        """
        train = key is not None if train is None else train
        optional = dict(key=key, intermediates=True if intermediates else None)
        if not self.stateful:
            if state is not None:
                raise JregError(
                    "a model state was given, but the model's apply has no state parameter; a stateful model's "
                    "apply(params, x, *, state, train=...) returns (outputs, new_state)"
                )
            return _signature.call(self.apply, params, inputs, train=train, **optional), None
        if state is None:
            raise JregError(
                "the model carries state (its apply takes state=): pass the initial state, e.g. "
                "jreg.fit(..., model_state=state) or objective(params, batch, state=state)"
            )
        out = _signature.call(self.apply, params, inputs, state=state, train=train, **optional)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise JregError(f"a stateful model's apply must return (outputs, new_state), got {type(out).__name__}")
        return out

    def _mean_loss(self, outputs: Any, y: Any, n: int) -> jax.Array:
        per_example = self.loss(outputs, y)
        if jnp.ndim(per_example) != 1 or per_example.shape[0] != n:
            raise JregError(f"loss must return one value per example, shape ({n},), got {jnp.shape(per_example)}")
        return jnp.mean(per_example)

    def data_cost(
        self, params: Params, batch: Batch, *, key: jax.Array | None = None, state: ModelState = None
    ) -> jax.Array:
        """The mean per-example cost over the batch, without any penalty."""
        x, y = self.inputs_targets(batch)
        outputs, _ = self.predict(params, x, key=key, state=state)
        return self._mean_loss(outputs, y, _batch_size(x))

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

    def batch_parts(
        self,
        params: Params,
        batch: Batch,
        *,
        key: jax.Array | None = None,
        step: Any = None,
        state: ModelState = None,
        train: bool | None = None,
    ) -> tuple[dict[str, jax.Array], Any, ModelState]:
        """The parts that depend on the batch, each a mean over its examples, with the outputs and new state.

        ``({"data": ..., <output penalty>: ..., "activity_<term>": ..., <input penalty>: ...}, outputs, new_state)``.
        A data set's figure is the size-weighted mean of these over its batches,
        plus :meth:`penalty_parts` once: that is how jreg evaluates in batches.
        """
        x, y = self.inputs_targets(batch)
        n = _batch_size(x)
        if n == 0:
            raise JregError("the batch is empty: it must hold at least one example")
        if self.input_penalty and not hasattr(x, "shape"):
            raise JregTypeError(
                "input penalties differentiate with respect to the inputs, which must then be one array; "
                f"got {type(x).__name__}"
            )
        result, new_state = self.predict(
            params, x, key=key, state=state, train=train, intermediates=self.activity is not None
        )
        if self.activity is not None:
            if not (isinstance(result, tuple) and len(result) == 2):
                raise JregError(
                    "an activity penalty needs apply(params, x, intermediates=True) to return "
                    f"(outputs, intermediates); got {type(result).__name__}"
                )
            outputs, hidden = result
        else:
            outputs, hidden = result, None
        parts = {"data": self._mean_loss(outputs, y, n)}
        for term in self.output_penalty:  # on the outputs the loss saw: no second forward pass
            parts[term.name] = term(outputs, step=step)
        if self.activity is not None:
            # mean over the examples of the per-example penalty (for l1/l2: penalty(batch) / batch size)
            for name, value in self.activity.parts(hidden, step=step).items():
                parts[f"activity_{name}"] = value / n

        def forward(inputs: Any) -> Any:  # the model as a function of its inputs, for the input penalties
            return self.predict(params, inputs, key=key, state=state, train=train)[0]

        for i, term in enumerate(self.input_penalty):
            sub_key = None if key is None else jax.random.fold_in(key, i + 1)
            parts[term.name] = term(forward, self.loss, x, y, key=sub_key, step=step)
        return parts, outputs, new_state

    def __call__(
        self,
        params: Params,
        batch: Batch,
        *,
        key: jax.Array | None = None,
        step: Any = None,
        state: ModelState = None,
        train: bool | None = None,
    ) -> Any:
        if key is not None:
            check_key(key)
        try:
            batch_parts, _, new_state = self.batch_parts(params, batch, key=key, step=step, state=state, train=train)
            total, parts = combine(batch_parts, self.penalty_parts(params, step=step))
        except Exception as exc:  # a framework's model object as params: say what to do (looked at only on failure)
            advice = framework_params_advice(params)
            if advice is None:
                raise
            raise JregTypeError(f"params: {advice}") from exc
        return (total, parts, new_state) if self.stateful else (total, parts)


def combine(batch_parts: dict[str, jax.Array], penalty_parts: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
    """``(total, parts)`` from :meth:`Objective.batch_parts` and :meth:`Objective.penalty_parts`.

    ``parts = {"data", "penalty" (every regularizer), <param terms>, <activity and input terms>}``.
    """
    data = batch_parts["data"]
    others = {k: v for k, v in batch_parts.items() if k != "data"}
    parts = {"data": data, **penalty_parts, **others}
    parts["penalty"] = functools.reduce(operator.add, [penalty_parts["penalty"], *others.values()])
    return data + parts["penalty"], parts


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


def _output_penalties(output_penalty: Any) -> tuple[OutputPenalty, ...]:
    if output_penalty is None:
        return ()
    if isinstance(output_penalty, OutputPenalty):
        terms: tuple[Any, ...] = (output_penalty,)
    elif isinstance(output_penalty, (list, tuple)):
        terms = tuple(output_penalty)
    else:
        raise JregTypeError(
            "output_penalty must be an OutputPenalty (jreg.penalties.z_loss) or a list of them, "
            f"got {type(output_penalty).__name__}"
        )
    for i, t in enumerate(terms):
        if not isinstance(t, OutputPenalty):
            raise JregTypeError(
                f"output_penalty[{i}] must come from jreg.penalties.z_loss (an OutputPenalty), got {type(t).__name__}"
            )
    return terms


def objective(
    apply: Callable[..., Any],
    loss: Callable[[jax.Array, Any], jax.Array],
    penalty: Callable[[Params], jax.Array] | None = None,
    *,
    activity: Penalty | None = None,
    input_penalty: InputPenalty | Sequence[InputPenalty] | None = None,
    split: Callable[[Batch], tuple[Any, Any]] | None = None,
    output_penalty: OutputPenalty | Sequence[OutputPenalty] | None = None,
) -> Objective:
    """Compose model, per-example loss and regularizers into one objective.

    Returns ``f(params, batch, *, key=None, step=None, state=None, train=None) -> (total, parts)``
    (``(total, parts, new_state)`` for a stateful model) with ``batch = (x, y)``
    (or any batch, with ``split``) and

    * ``total = mean_i loss(apply(params, x)_i, y_i) + penalty(params)``
      ``+ output terms + activity terms + input terms``,
    * ``parts = {"data": <mean loss>, "penalty": <all regularizers>, <term>: <value>...}``:
      one entry per term of ``penalty`` (e.g. ``"l2"``), ``"activity_<term>"``
      per activity term, one per output penalty (``"z_loss"``) and one per input
      penalty (e.g. ``"input_gradient"``).

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
        split: ``split(batch) -> (inputs, targets)`` for batches that are not
            ``(x, y)`` pairs: dicts with sample weights or masks, several
            inputs... ``inputs`` go to ``apply``, ``targets`` to ``loss`` and to
            the metrics (any pytrees; e.g. ``lambda b: (b["image"], (b["label"],
            b["weight"]))`` with :func:`jreg.losses.weighted`).
        output_penalty: one or several :class:`~jreg.penalties.OutputPenalty`
            (:func:`jreg.penalties.z_loss`): penalties on the model's outputs,
            each a mean over the examples, computed on the same forward pass as
            the data term.

    Stateful models (BatchNorm running statistics, counters): when ``apply``
    takes a ``state`` keyword, the objective needs ``state=`` and returns the
    new state third. ``apply(params, x, *, state, train, key=None)`` must
    return ``(outputs, new_state)``: in training mode (``train=True``) the
    updated state, in evaluation mode the state unchanged (jreg discards what
    evaluation returns in any case). ``train`` defaults to "a key was given".

    Keywords of the returned function: ``key`` (a ``jax.random`` key: training
    mode, passed to ``apply``; without it, evaluation mode), ``step`` (the
    global step, for coefficient schedules), ``state`` (a stateful model's
    state) and ``train`` (the mode, when it should not follow the key).
    jreg passes ``train`` to an ``apply`` that has a ``train`` parameter. ``jax.grad`` of
    ``lambda p: f(p, batch, key=k, step=s)[0]`` is the gradient of the
    regularized cost; :func:`jreg.make_step` uses exactly that.
    """
    for name, fn in (("apply", apply), ("loss", loss)):
        if not callable(fn):
            raise JregTypeError(f"{name} must be callable, got {fn!r}")
    if split is not None and not callable(split):
        raise JregTypeError(f"split must be a function split(batch) -> (inputs, targets), got {split!r}")
    if penalty is not None and not callable(penalty):
        raise JregTypeError(f"penalty must be a jreg Penalty, a function of params, or None; got {penalty!r}")
    act = None if activity is None else _activity_penalty(activity)
    if act is not None and not _signature.accepts(apply, "intermediates"):
        raise JregError(
            "activity needs a model whose apply takes intermediates=True and returns (outputs, intermediates), "
            "as jreg.mlp's does"
        )
    inputs = _input_penalties(input_penalty)
    outputs = _output_penalties(output_penalty)
    names = ["data", "penalty"]
    names += penalty.names() if isinstance(penalty, Penalty) else []
    names += [f"activity_{n}" for n in act.names()] if act is not None else []
    names += [t.name for t in inputs]
    names += [t.name for t in outputs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise JregError(f"the objective's parts would have duplicate names {clash}; give the terms distinct name=")
    return Objective(apply, loss, penalty, act, inputs, split, outputs)
