"""The divergence guard: non-finite training is caught once per epoch, inside the compiled program.

After each epoch the program checks, in one reduction, that the new params
and the guarded figures (costs and their parts, the epoch's running loss; not
user metrics) are all finite, and that no value of the optimizer state or the
model state *became* non-finite (a state may hold an infinity on purpose, as
optax's ``reduce_on_plateau`` starts its best value at ``inf``). If not, it
returns the epoch's *input* state instead (per model in a sweep, where a
model once diverged stays frozen). Only then, on the host and outside the hot
path, :func:`locate` replays that epoch step by step with the same gradient
and update functions the compiled epoch ran, to name the exact step and
quantity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._errors import JregError
from .._tree import all_finite, inexact_leaves, none_became_non_finite
from .._types import Batch, ModelState, OptState, Params
from .epoch import take
from .plan import EpochPlan
from .state import TrainState
from .step import apply_fn, gradient_fn


class DivergenceError(JregError):
    """Training produced NaN or infinity (or broke a :class:`jreg.Guard` rule). ``params``/``opt_state``/
    ``model_state`` are the last finite ones (with a rule broken: the last epoch's within the limit).

    Attributes: ``epoch`` (0-based), ``step`` (0-based within the epoch, or None
    when only a monitored cost went bad, or a rule was broken), ``quantity`` (what went bad first),
    ``params``, ``opt_state``, ``model_state``, ``history`` (the epochs completed before), ``rule``
    (``"max_loss"`` or ``"max_ratio"``: the :class:`jreg.Guard` rule the epoch broke; None for NaN or infinity).
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        step: int | None,
        quantity: str,
        params: Params,
        opt_state: OptState,
        history: Any,
        model_state: ModelState = None,
        rule: str | None = None,
    ):
        super().__init__(message)
        self.epoch, self.step, self.quantity, self.rule = epoch, step, quantity, rule
        self.params, self.opt_state, self.model_state, self.history = params, opt_state, model_state, history


def check(
    old: TrainState,
    new: TrainState,
    figures: list[jax.Array],
    alive: jax.Array | None = None,
    over: jax.Array | None = None,
):
    """``(state, ok, alive)``: the new state where it and the figures are finite (and the model alive), else the old.

    ``alive`` (None for a single run) freezes a model for good once it diverged. ``over`` (None without a
    :class:`jreg.Guard`): whether the epoch's running loss broke the guard's limit, which fails the check too.
    """
    ok = all_finite((new.params, new.ema), figures)  # the EMA of the params too, when one is kept
    ok &= none_became_non_finite((old.opt_state, old.model_state), (new.opt_state, new.model_state))
    if over is not None:
        ok &= ~over
    keep = ok if alive is None else ok & alive
    state = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)
    return state, ok, (None if alive is None else keep)


def _first_bad(tree: Any, before: Any = None) -> str | None:
    """The path of the first leaf with a non-finite value (that was finite in ``before``, when given)."""
    leaves = inexact_leaves(tree)
    olds = [None] * len(leaves) if before is None else [leaf for _, leaf in inexact_leaves(before)]
    for (path, leaf), old in zip(leaves, olds):
        fresh = ~jnp.isfinite(leaf) if old is None else ~jnp.isfinite(leaf) & jnp.isfinite(old)
        if bool(jnp.any(fresh)):
            return path
    return None


def locate(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    plan: EpochPlan,
    state: TrainState,
    data: Batch,
    key: jax.Array,
    keyed: bool,
    ema_decay: Any = None,
) -> tuple[int, str, TrainState] | None:
    """Replay one epoch from ``state``: ``(step, quantity, state before that step)``, or None if it stays finite.

    ``ema_decay``: the decay of the EMA of the params (:class:`jreg.EMA`), which the replay updates as training did.
    """
    keys = plan.step_keys(key) if keyed else None
    steps = ((take(data, idx), None if keys is None else keys[i]) for i, idx in enumerate(plan.batches(key)))
    return locate_steps(objective, optimizer, state, steps, ema_decay)


def locate_steps(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    state: TrainState,
    steps: Iterable[tuple[Batch, Any]],
    ema_decay: Any = None,
    first: int = 0,
) -> tuple[int, str, TrainState] | None:
    """Replay ``(batch, key)`` steps from ``state``: ``(step, quantity, state before it)``, or None if all stay finite.

    Steps are numbered from ``first`` (a streamed epoch replays one chunk of it, :mod:`jreg.train.stream`).
    """
    grad = jax.jit(gradient_fn(objective, with_value=True))
    apply = jax.jit(apply_fn(optimizer, ema_decay=ema_decay, objective=objective))
    for i, (batch, step_key) in enumerate(steps, start=first):
        grads, metrics, model_state = grad(state, batch, step_key)
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            return i, f"the loss became {loss}", state
        bad = _first_bad(grads)
        if bad is not None:
            return i, f"the gradient of {bad!r} became non-finite", state
        new = apply(state, grads, model_state, metrics["loss"], batch, step_key)
        bad = _first_bad(new.params)
        if bad is not None:
            return i, f"the update made {bad!r} non-finite", state
        bad = None if new.ema is None else _first_bad(new.ema)
        if bad is not None:
            return i, f"the EMA of the params {bad!r} became non-finite", state
        for what, old, tree in (
            ("optimizer state", state.opt_state, new.opt_state),
            ("model state", state.model_state, new.model_state),
        ):
            bad = _first_bad(tree, old)
            if bad is not None:
                return i, f"the {what} {bad!r} became non-finite", state
        state = new
    return None


def describe(found: tuple[int, str, Any] | None, values: dict[str, Any], epoch: int, epochs: int) -> tuple:
    """``(step or None, quantity, where)`` for a message, from :func:`locate`'s result or the figures."""
    if found is not None:
        step, quantity, _ = found
        return step, quantity, f"epoch {epoch + 1} of {epochs}, step {step + 1}"
    bad = sorted(k for k, v in values.items() if not np.all(np.isfinite(v)))
    quantity = f"the monitored {', '.join(bad)} became non-finite" if bad else "a value became non-finite"
    return None, quantity, f"after epoch {epoch + 1} of {epochs}"


ADVICE = (
    "A smaller learning rate usually helps (with an L2 coefficient c, plain SGD is unstable once "
    "learning rate * c > 2)."
)
