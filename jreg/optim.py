"""Regularization in the optimizer, when that is what you want: proximal steps and decoupled weight decay,
as optax transformations that compose with any optimizer, and ``lambda_max`` for L1 grids.

The default in jreg is the coupled form: the penalty is part of the objective
and its gradient joins the data gradient. The forms here apply the
regularizer *after* the optimizer's step instead:

* :func:`proximal` ``(penalty, learning_rate)``: ``w <- prox_{η R}(w + Δ)``, where Δ
  is the optimizer's update. With ``optax.sgd(η)`` before it this is proximal
  gradient descent (ISTA): for ``l1(λ)`` soft-thresholding at ``ηλ``, which
  leaves exact zeros, unlike the subgradient of ``|w|`` in the objective.
* :func:`decoupled_weight_decay` ``(optimizer, c, learning_rate)``: the
  optimizer's update plus ``-η c w``: AdamW for Adam, and exactly coupled
  ``l2(c)`` for plain SGD. It puts the decay after the optimizer itself, so
  the ``chain(sgd(η), add_decayed_weights(c))`` mistake (which adds ``+c w``
  unscaled and makes weights *grow*) cannot happen.

With Adam, a proximal step still thresholds at ``ηλ`` while Adam's own step
per coordinate is about ``η`` whatever the gradient's scale: a weight is zeroed
when Adam's move leaves it within ``ηλ`` of zero. That is a heuristic, not the
proximal method of the Adam-preconditioned problem (whose threshold would be
``ηλ / sqrt(v_i)`` per coordinate); ``tests/test_optim.py`` checks this behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._checks import check_nonnegative_scalar, check_optimizer
from ._errors import JregError, JregTypeError
from .penalties import Mask, Penalty, mask_tree

LearningRate = float | jax.Array | Callable[[jax.Array], jax.Array]


class ScheduleState(NamedTuple):
    """The step count, for learning-rate schedules."""

    count: jax.Array


def _count_init(params: Any) -> ScheduleState:
    del params
    return ScheduleState(jnp.zeros((), jnp.int32))


def _rate(learning_rate: LearningRate, count: jax.Array) -> jax.Array:
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _check_rate(learning_rate: Any) -> None:
    if not callable(learning_rate):
        check_nonnegative_scalar(learning_rate, "learning_rate")


def proximal(penalty: Penalty, learning_rate: LearningRate) -> optax.GradientTransformation:
    """An optax transformation that applies ``penalty``'s proximal map after the preceding step.

    Put it last: ``optax.chain(optax.sgd(η), jreg.proximal(jreg.penalties.l1(λ), η))``
    is proximal SGD. The new params are ``prox_{η R}(params + updates)``, with
    ``η = learning_rate`` (a number, possibly traced, or an optax schedule of
    the step count); the transformation returns the update that lands there.
    Needs ``params`` in ``update`` (optax passes them through ``chain``).
    Coefficient schedules in ``penalty`` are evaluated at the same step count.
    Leave the penalty *out* of the objective when you use this.
    """
    if not isinstance(penalty, Penalty):
        raise JregTypeError(f"penalty must be a jreg Penalty (with proximal maps), got {type(penalty).__name__}")
    for name, t in zip(penalty.names(), penalty.terms):
        if t.prox is None:
            raise JregError(f"penalty term {name!r} has no proximal map; give term(..., prox=...) one")
    _check_rate(learning_rate)

    def update(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
        if params is None:
            raise JregError("jreg.proximal needs params: call update(updates, state, params)")
        stepped = optax.apply_updates(params, updates)
        proxed = penalty.prox(stepped, _rate(learning_rate, state.count), step=state.count)
        new_updates = jax.tree.map(lambda new, old: (new - old).astype(old.dtype), proxed, params)
        return new_updates, ScheduleState(optax.safe_increment(state.count))

    return optax.GradientTransformation(_count_init, update)


def decoupled_weight_decay(
    optimizer: optax.GradientTransformation, c: Any, learning_rate: LearningRate, *, mask: Mask = None
) -> optax.GradientTransformation:
    """``optimizer``'s update plus ``-η c w`` on the masked leaves (default: weight matrices): decoupled decay.

    ``η = learning_rate`` (a number or an optax schedule): the decay scales with
    it, as in optax's ``adamw`` and PyTorch's ``AdamW``. Then
    ``decoupled_weight_decay(optax.adam(η), c, η)`` is AdamW with
    ``weight_decay=c``, and ``decoupled_weight_decay(optax.sgd(η), c, η)`` is
    exactly SGD on the objective with ``l2(c)``. For the AdamW paper's
    convention (decay scaled by the schedule multiplier only) see
    :func:`jreg.conventions.convert_l2`.
    """
    check_optimizer(optimizer)
    check_nonnegative_scalar(c, "c")
    _check_rate(learning_rate)

    def update(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
        if params is None:
            raise JregError("decoupled weight decay needs params: call update(updates, state, params)")
        flags = mask_tree(params, mask)
        rate = _rate(learning_rate, state.count)
        updates = jax.tree.map(lambda u, w, on: (u - rate * c * w).astype(u.dtype) if on else u, updates, params, flags)
        return updates, ScheduleState(optax.safe_increment(state.count))

    return optax.chain(optimizer, optax.GradientTransformation(_count_init, update))


def lambda_max(objective: Callable[..., Any], params: Any, batch: tuple[Any, Any], *, mask: Mask = None) -> jax.Array:
    """The smallest L1 coefficient at which all masked weights are zero: the top of an L1 grid.

    With every masked leaf set to zero (the rest as given), zero is a
    stationary point of ``objective + l1(c)`` exactly when ``c >=
    max |dJ/dw|`` over the masked weights: below it, the proximal step moves
    some weight off zero. ``objective`` is the data objective (no L1 in it);
    ``batch`` the data the grid is for (usually the whole training set).
    For a network this is a local statement (the objective is not convex).
    """
    flags = mask_tree(params, mask)
    zeroed = jax.tree.map(lambda w, on: jnp.zeros_like(w) if on else w, params, flags)
    grads = jax.grad(lambda p: objective(p, batch)[0])(zeroed)
    picked = [jnp.max(jnp.abs(g)) for g, on in zip(jax.tree.leaves(grads), jax.tree.leaves(flags)) if on]
    if not picked:
        raise JregError("lambda_max: the mask selects no leaf of params")
    return jnp.max(jnp.stack(picked))
