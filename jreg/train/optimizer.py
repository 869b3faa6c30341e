"""What jreg hands an optax optimizer beyond ``(updates, state, params)``, and which params it evaluates.

**Extra arguments.** optax's :class:`optax.GradientTransformationExtraArgs` takes keyword arguments
after ``params`` (``update(updates, state, params=None, **extra_args)``; a transformation that needs
one names it keyword-only, ``*, value``, and ignores the others; :func:`optax.chain` passes every extra
argument to each member). jreg supplies three, from the training step:

* ``value``: the objective's total on the step's mini-batch at the current params (the scalar the
  gradient is of, penalties included; what ``epoch_loss`` averages);
* ``grad``: that gradient (the ``updates`` the optimizer receives, before any transformation);
* ``value_fn``: ``params -> value`` on the same mini-batch with the same model state, key and step (a
  stateful model's new state is dropped): what a line search (:func:`optax.lbfgs`,
  :func:`optax.scale_by_zoom_linesearch`) evaluates at trial points.

An ``ExtraArgs`` transformation whose ``update`` takes ``**extra_args`` gets all three (an ordinary
optimizer ignores them and compiles to the same program); any other gets those of the three its
``update`` names. An ``update`` that requires another keyword argument (``*, loss``) is refused
before any work by :func:`check`, naming it.

**Schedule-free evaluation.** :func:`optax.contrib.schedule_free` trains at interpolated points ``y``
and keeps the sequence ``z``; the point to evaluate and to return is ``x``
(:func:`optax.contrib.schedule_free_eval_params`). jreg's rule: when the optimizer state holds exactly
one :class:`optax.contrib.ScheduleFreeState` (anywhere: inside a chain, ``inject_hyperparams``,
``apply_if_finite``), the monitored series, early stopping's best params, the checkpoints' best params
and ``Result.params`` use :func:`evaluated_params`, i.e. ``x``; the training state (and so checkpoints
of it and ``resume=``) keeps the live ``y``. A :class:`jreg.EMA` whose params are evaluated or returned
takes precedence (it averages ``y``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .._checks import check_optimizer
from .._errors import JregError
from .._types import Batch, OptState, Params
from . import calls
from .state import TrainState

#: the extra arguments jreg supplies, by optax's names
SUPPLIED = ("value", "grad", "value_fn")


def _signature(optimizer: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(optimizer.update)
    except (TypeError, ValueError):  # a callable without a signature: called with the three arguments only
        return None


def _beyond_params(sig: inspect.Signature) -> list[inspect.Parameter]:
    """The parameters of ``update`` after ``(updates, state, params)``, variadic ones left out."""
    named = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    positional = [p for p in named if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p for p in named if p not in positional[:3]]


def wanted(optimizer: Any) -> tuple[str, ...]:
    """The extra arguments (of :data:`SUPPLIED`) jreg passes to ``optimizer.update``; ``()`` for an ordinary
    ``GradientTransformation``."""
    sig = _signature(optimizer)
    if sig is None:
        return SUPPLIED if isinstance(optimizer, optax.GradientTransformationExtraArgs) else ()
    open_ended = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    if open_ended and isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return SUPPLIED
    names = {p.name for p in _beyond_params(sig)}
    return tuple(n for n in SUPPLIED if n in names)


def missing(optimizer: Any) -> list[str]:
    """The keyword arguments ``optimizer.update`` requires that jreg does not supply (by its signature)."""
    sig = _signature(optimizer)
    if sig is None:
        return []
    return [p.name for p in _beyond_params(sig) if p.default is p.empty and p.name not in SUPPLIED]


def unsupplied_message(names: list[str], name: str = "optimizer") -> str:
    listed = ", ".join(f"{n}=" for n in names)
    return (
        f"{name}: its update requires {listed}, which jreg cannot supply; jreg passes "
        f"value= (the mini-batch objective), grad= (its gradient) and value_fn= (the mini-batch objective as a "
        "function of params) to an optax GradientTransformationExtraArgs: wrap the transformation so that it "
        "takes one of those, or compute the argument inside it"
    )


def check(optimizer: Any, name: str = "optimizer") -> None:
    """An optax transformation (not a ``flax.nnx.Optimizer``) whose ``update`` requires no argument jreg cannot
    supply; else a jreg error naming the argument (before any work)."""
    check_optimizer(optimizer, name)
    names = missing(optimizer)
    if names:
        raise JregError(unsupplied_message(names, name))


_MISSING = re.compile(r"missing \d+ required (?:keyword-only |positional )?arguments?: (.*)$")


def missing_in(exc: BaseException) -> list[str]:
    """The argument names of a ``TypeError("... missing 1 required keyword-only argument: 'loss'")`` raised by an
    optimizer's update (a member of a chain that asks for an argument jreg does not supply), else ``[]``."""
    if not isinstance(exc, TypeError):
        return []
    found = _MISSING.search(str(exc))
    if found is None:
        return []
    names = re.findall(r"'([^']+)'", found.group(1))
    return [n for n in names if n not in SUPPLIED]


def value_fn(objective: Callable[..., Any], state: TrainState, batch: Batch, key: Any) -> Callable[[Params], Any]:
    """``params -> total``: the training-mode objective on ``batch`` with ``state``'s model state and step."""
    loss = calls.train_loss(objective)

    def fn(params: Params) -> Any:
        return loss(params, state.model_state, batch, key, state.step)[0]

    return fn


def arguments(
    names: tuple[str, ...],
    grads: Params,
    value: Any,
    objective: Callable[..., Any] | None,
    state: TrainState,
    batch: Batch,
    key: Any,
) -> dict[str, Any]:
    """The keyword arguments ``names`` for one step's ``optimizer.update``."""
    out: dict[str, Any] = {}
    if "value" in names:
        if value is None:
            raise JregError("the optimizer's update takes value= (the mini-batch objective): pass it to apply")
        out["value"] = value
    if "grad" in names:
        out["grad"] = grads
    if "value_fn" in names:
        if objective is None:
            raise JregError("the optimizer's update takes value_fn=: build apply_fn with the objective")
        out["value_fn"] = value_fn(objective, state, batch, key)
    return out


def placeholders(optimizer: Any, params: Params) -> dict[str, Any]:
    """Stand-in extra arguments (a zero value and gradient, a constant ``value_fn``) for tracing
    ``optimizer.update`` outside a training step (only shapes matter there)."""
    names = wanted(optimizer)
    zeros = jax.tree.map(jnp.zeros_like, params)
    out = {"value": jnp.zeros((), jnp.float32), "grad": zeros, "value_fn": lambda p: jnp.zeros((), jnp.float32)}
    return {n: out[n] for n in names}


# -- schedule-free -----------------------------------------------------------------------------------------


def _is_schedule_free(node: Any) -> bool:
    return isinstance(node, optax.contrib.ScheduleFreeState)


def schedule_free_state(opt_state: OptState) -> Any:
    """The one :class:`optax.contrib.ScheduleFreeState` in ``opt_state``, or None (none, or several: then which
    one holds the evaluation point is not jreg's to guess)."""
    found = [n for n in jax.tree.leaves(opt_state, is_leaf=_is_schedule_free) if _is_schedule_free(n)]
    return found[0] if len(found) == 1 else None


def is_schedule_free(opt_state: OptState) -> bool:
    return schedule_free_state(opt_state) is not None


def evaluated_params(params: Params, opt_state: OptState, *, stacked: bool = False) -> Params:
    """``params`` as evaluated: :func:`optax.contrib.schedule_free_eval_params` when ``opt_state`` is a
    schedule-free optimizer's, else ``params`` themselves. ``stacked``: K models along a leading axis."""
    found = schedule_free_state(opt_state)
    if found is None:
        return params

    def one(sf: Any, p: Params) -> Params:
        out = optax.contrib.schedule_free_eval_params(sf, p)
        return jax.tree.map(lambda a, b: a.astype(b.dtype), out, p)

    return jax.vmap(one)(found, params) if stacked else one(found, params)


def state_params(state: TrainState, ema: bool = False, *, stacked: bool = False) -> Params:
    """The params a state is evaluated at, or returned with: the EMA when ``ema`` (:class:`jreg.EMA`'s
    ``evaluate`` or ``returned``), else :func:`evaluated_params` of the live params."""
    if ema and state.ema is not None:
        return state.ema
    return evaluated_params(state.params, state.opt_state, stacked=stacked)


__all__ = ["SUPPLIED", "check", "evaluated_params", "is_schedule_free", "state_params", "wanted"]
