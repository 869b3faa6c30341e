"""The training state as one record: what changes from step to step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._types import ModelState, OptState, Params


class TrainState(NamedTuple):
    """Everything a training step changes, as one pytree (Flax's ``TrainState``, without the functions).

    Attributes:
        params: the differentiated parameters.
        opt_state: the optimizer's state.
        model_state: non-differentiated model state (BatchNorm statistics...), or None.
        step: the global step count (int32; the step the next update takes), or
            None when nothing needs it (a bare :func:`jreg.make_epoch` call without ``step``).
        lr_scale: early stopping's learning-rate scale (float32) multiplying every
            update, or None when no schedule cuts it.
        ema: the exponential moving average of the params (:class:`jreg.EMA`),
            a tree like ``params``, or None when none is kept.
    """

    params: Params
    opt_state: OptState
    model_state: ModelState = None
    step: jax.Array | None = None
    lr_scale: jax.Array | None = None
    ema: Params | None = None

    @classmethod
    def create(
        cls,
        optimizer: optax.GradientTransformation,
        params: Params,
        model_state: ModelState = None,
        *,
        opt_state: OptState = None,
        step: Any = 0,
        lr_scale: Any = None,
        ema: bool = False,
    ) -> TrainState:
        """A fresh state: ``optimizer.init(params)`` unless ``opt_state`` is given; with ``ema``, the EMA starts
        at a copy of ``params``."""
        return cls(
            params,
            copy(optimizer.init(params)) if opt_state is None else opt_state,  # leaves may alias (lbfgs)
            model_state,
            None if step is None else jnp.asarray(step, jnp.int32),
            None if lr_scale is None else jnp.asarray(lr_scale, jnp.float32),
            copy(params) if ema else None,
        )


def copy(tree: Any) -> Any:
    """Fresh device buffers for every array leaf (so a compiled epoch may donate them)."""
    return jax.tree.map(jnp.array, tree)
