"""One training step: the gradient of the objective, then the optimizer's update.

The step is two pure pieces, :func:`gradient_fn` and :func:`apply_fn`; the
compiled epoch composes them (:func:`make_update`), and the divergence replay
(:mod:`jreg.train.guard`) calls the very same two pieces one at a time to find
the first non-finite quantity. Regularization lives in the objective, never
here: any optax ``GradientTransformation`` turns ``jax.grad`` of the
regularized objective into updates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_key, check_params
from .._errors import JregError, JregTypeError
from .._signature import checked
from .._types import Batch, Metrics, ModelState, OptState, Params
from . import calls
from . import optimizer as optimizer_
from .inputs import check_leaf_types
from .state import TrainState

#: ``update(state, batch, key) -> (state, metrics)``
Update = Callable[[TrainState, Batch, Any], tuple[TrainState, Metrics]]


def gradient_fn(
    objective: Callable[..., Any], *, with_value: bool = True, rewrite: Callable[..., Any] | None = None
) -> Callable[..., Any]:
    """``grad(state, batch, key) -> (grads, metrics, new_model_state)``.

    ``metrics = {"loss": total, **parts}`` with ``with_value``; ``{}`` without
    (gradient only: XLA then drops what only the loss value needs). ``rewrite``: a transformation of the
    training loss (same signature) applied before differentiating it (a ``"wide"`` sweep's
    :func:`jreg.train.left_products.rewrite`).
    """
    loss = calls.train_loss(objective)
    if rewrite is not None:
        loss = rewrite(loss)
    value_and_grad = jax.value_and_grad(loss, has_aux=True)
    grad_only = jax.grad(loss, has_aux=True)

    def grad(state: TrainState, batch: Batch, key: Any) -> tuple[Params, Metrics, ModelState]:
        if with_value:
            (total, (parts, model_state)), grads = value_and_grad(
                state.params, state.model_state, batch, key, state.step
            )
            return grads, {"loss": total, **parts}, model_state
        grads, (_, model_state) = grad_only(state.params, state.model_state, batch, key, state.step)
        return grads, {}, model_state

    return grad


def ema_update(ema: Params, params: Params, decay: Any) -> Params:
    """``decay * ema + (1 - decay) * params`` leaf by leaf, in each leaf's dtype (:class:`jreg.EMA`)."""
    d = jnp.asarray(decay, jnp.float32)
    return jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), ema, params)


def apply_fn(
    optimizer: optax.GradientTransformation, *, ema_decay: Any = None, objective: Callable[..., Any] | None = None
) -> Callable[..., TrainState]:
    """``apply(state, grads, new_model_state, value=None, batch=None, key=None) -> state``: the optimizer's update,
    scaled by ``lr_scale``.

    With ``ema_decay`` (and ``state.ema`` set) the EMA of the params follows the new params (:func:`ema_update`).
    An optimizer that takes extra arguments (:mod:`jreg.train.optimizer`: ``value=``, ``grad=``,
    ``value_fn=``) gets them: ``value`` is the step's objective total, ``value_fn`` needs ``objective``, the
    step's ``batch`` and ``key``.
    """
    extra = optimizer_.wanted(optimizer)

    def apply(
        state: TrainState, grads: Params, model_state: ModelState, value: Any = None, batch: Any = None, key: Any = None
    ) -> TrainState:
        kwargs = optimizer_.arguments(extra, grads, value, objective, state, batch, key) if extra else {}
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **kwargs)
        if state.lr_scale is not None:  # learning-rate cuts by early stopping: every update scales with eta
            updates = jax.tree.map(lambda u: (u * state.lr_scale).astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        step = None if state.step is None else state.step + 1
        ema = state.ema
        if ema is not None and ema_decay is not None:
            ema = ema_update(ema, params, ema_decay)
        return TrainState(params, opt_state, model_state, step, state.lr_scale, ema)

    return apply


def make_update(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    with_metrics: bool = True,
    ema_decay: Any = None,
) -> Update:
    """``update(state, batch, key) -> (state, metrics)``: one step, as traced inside the compiled epoch.

    An optimizer that takes ``value=`` gets the step's objective total (computed even ``with_metrics=False``;
    the metrics are then still ``{}``).
    """
    needs_value = "value" in optimizer_.wanted(optimizer)
    grad = gradient_fn(objective, with_value=with_metrics or needs_value)
    apply = apply_fn(optimizer, ema_decay=ema_decay, objective=objective)

    def update(state: TrainState, batch: Batch, key: Any) -> tuple[TrainState, Metrics]:
        grads, metrics, model_state = grad(state, batch, key)
        new = apply(state, grads, model_state, metrics.get("loss"), batch, key)
        return new, (metrics if with_metrics else {})

    return update


@checked("make_step")
def make_step(
    objective: Callable[..., Any], optimizer: optax.GradientTransformation, *, donate: bool = False
) -> Callable[..., Any]:
    """A jitted pure step ``step(params, opt_state, batch, key=None, step=None) -> (params, opt_state, metrics)``.

    It takes ``jax.grad`` of the objective's total at ``params`` on ``batch``
    (``(x, y)``, or any batch the objective's ``split`` takes apart), lets
    ``optimizer`` turn the gradient into updates and applies them.
    ``metrics`` holds ``"loss"`` (the total before the step) and every entry
    of the objective's ``parts``.

    ``key`` (a ``jax.random`` key, a fresh one per step) puts a stochastic
    model (dropout, noise) in training mode; ``step`` (the global step count
    from 0) evaluates penalty-coefficient schedules. Both are passed on to the
    objective only if given and only if it takes them.

    A stateful model (its objective takes ``state``): call
    ``step(params, opt_state, batch, key, step, model_state=s)``; it returns
    ``(params, opt_state, model_state, metrics)`` with the state the training
    forward pass produced (BatchNorm's updated running statistics).

    Args:
        objective: ``f(params, batch) -> (total, parts)``, e.g. from :func:`jreg.objective`.
        optimizer: any optax ``GradientTransformation``; an ``ExtraArgs`` one gets ``value=`` (the loss
            before the step), ``grad=`` and ``value_fn=`` (:mod:`jreg.train.optimizer`).
        donate: donate ``params``, ``opt_state`` (and ``model_state``) to the
            step (saves memory; the arrays passed in may not be used again).
    """
    calls.check_objective(objective)
    optimizer_.check(optimizer)
    update = make_update(objective, optimizer)
    keyed, stateful = calls.takes_key(objective), calls.is_stateful(objective)

    def step(params, opt_state, batch, key=None, step=None, *, model_state=None):
        if key is not None and not keyed:
            raise JregError(
                "make_step got a key, but the objective has no key parameter, so it would train without dropout "
                "or noise; use jreg.objective, or give your objective a key=None keyword"
            )
        calls.check_state_given(stateful, model_state)
        state = TrainState(params, opt_state, model_state, step)
        state, metrics = update(state, batch, key)
        if stateful:
            return state.params, state.opt_state, state.model_state, metrics
        return state.params, state.opt_state, metrics

    jitted = jax.jit(step, donate_argnames=("params", "opt_state", "model_state") if donate else ())

    @functools.wraps(step)
    def checked(params, opt_state, batch, key=None, step=None, *, model_state=None):
        check_step_args(opt_state, key, step)
        return call_checked(jitted, params, opt_state, batch, key, step, model_state, optimizer=optimizer)

    return checked


def call_checked(
    jitted: Callable[..., Any],
    params,
    opt_state,
    data,
    key,
    step,
    model_state,
    name: str = "batch",
    optimizer: Any = None,
) -> Any:
    """``jitted(params, opt_state, data, key, step, model_state=...)``; a failure to trace caused by bad
    ``params``, by a leaf of ``data`` (called ``name``) that is no array of real numbers, or by an ``optimizer``
    whose update requires an argument jreg does not supply becomes a jreg error naming the leaf or the argument
    (checked only after a failure: the hot path pays nothing)."""
    try:
        return jitted(params, opt_state, data, key, step, model_state=calls.as_model_state(model_state))
    except JregError:
        raise
    except Exception as exc:
        explain_failure(exc, params)
        if optimizer is not None:
            explain_optimizer(exc, optimizer, params, opt_state)
        try:
            check_leaf_types(data, name)
        except JregError as bad:
            raise bad from exc
        raise


def explain_failure(exc: Exception, params: Any) -> None:
    """Raise a jreg error naming the leaf when bad ``params`` are why a step failed to trace; else return.

    Checked only after a failure, so the hot path of a training loop pays nothing: the step's own
    tracing (``jax.grad`` of integer params, a leaf that is no array) is what finds the problem.
    """
    try:
        check_params(params, finite=False)
    except JregError as bad:
        raise bad from exc


def explain_optimizer(exc: Exception, optimizer: Any, params: Any, opt_state: Any) -> None:
    """Raise a jreg error naming the argument when ``optimizer``'s update (traced alone, on shapes) requires one jreg
    does not supply (a member of a chain whose own signature takes ``**extra_args``); else return."""
    try:
        jax.eval_shape(
            lambda p, s: optimizer.update(p, s, p, **optimizer_.placeholders(optimizer, p)), params, opt_state
        )
    except Exception as own:  # noqa: BLE001 - only a missing argument is the optimizer's to explain here
        unsupplied = optimizer_.missing_in(own)
        if unsupplied:
            raise JregError(optimizer_.unsupplied_message(unsupplied)) from exc


@functools.lru_cache(maxsize=64)
def _is_typed_key(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jax.dtypes.prng_key))


def check_step_args(opt_state: Any, key: Any, step: Any) -> None:
    """The arguments beside params and batch that a step or an epoch takes: clear errors before tracing.

    Called on every step of a user's loop, so the common case (a typed key, an
    int step) takes a fast path of a few type tests.
    """
    if opt_state is None:
        raise JregTypeError("opt_state must be the optimizer's state, e.g. optimizer.init(params); got None")
    if key is not None and not (isinstance(key, jax.Array) and key.shape == () and _is_typed_key(key.dtype)):
        check_key(key)  # raw uint32 keys pass; anything else raises
    if step is None or type(step) is int:
        return
    if isinstance(step, bool) or not (
        isinstance(step, (int, np.integer)) or (hasattr(step, "dtype") and jnp.issubdtype(step.dtype, jnp.integer))
    ):
        raise JregTypeError(f"step must be the global step count (an integer), got {step!r}")
    if jnp.ndim(step) != 0:
        raise JregError(f"step must be a scalar, got shape {jnp.shape(step)}")


__all__ = ["OptState", "TrainState", "Update", "apply_fn", "ema_update", "gradient_fn", "make_step", "make_update"]
