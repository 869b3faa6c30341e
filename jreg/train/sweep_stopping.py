"""Early stopping in :func:`jreg.sweep`: each model's patience state on the device, no loop over the models.

The rule is :class:`jreg.EarlyStopping`'s (what :func:`jreg.fit` applies on
the host), here applied to K models at once by one small jitted function
right after each measured epoch: the state is a few ``(K,)`` arrays
(:class:`PerModel`), the best params a copy of the stacked params kept with
``where(improved, params, best)`` (only with ``restore_best``), and a
stopped model leaves the sweep's ``alive`` flags, so the compiled epoch
freezes it exactly as it freezes a diverged one.

Learning-rate cuts (Nielsen's schedule) count cuts per model; the scale
after ``c`` cuts is looked up in a table computed on the host the way
:meth:`jreg.EarlyStopping.update` computes it (float64 products, then
float32), so the scales and the epoch a schedule stops at are fit's exactly.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import JregError
from ..stopping import EarlyStopping
from .state import TrainState

#: the most learning-rate cuts a sweep's schedule may take before it stops (the table's length)
MAX_CUTS = 100_000


class PerModel(NamedTuple):
    """Each model's early-stopping state, ``(K,)`` arrays (0-based epochs, -1: none yet)."""

    best: jax.Array  # float32, the best monitored value (NaN before the first)
    best_epoch: jax.Array  # int32
    wait: jax.Array  # int32, measurements since the best (or since the last cut)
    cuts: jax.Array  # int32, learning-rate cuts so far
    stopped: jax.Array  # int32, the epoch the model stopped at


def scale_table(rule: EarlyStopping) -> np.ndarray:
    """``table[c]``: the learning-rate scale after ``c`` cuts (float32), up to the cut that stops the run.

    The scales are those :meth:`jreg.EarlyStopping.update` reaches (float64 products of ``lr_factor``); the
    last entry is the one the run stops at. ``[1.0]`` without ``lr_factor``.
    """
    scales = [1.0]
    if rule.lr_factor is None:
        return np.asarray(scales, np.float32)
    limit = float(rule.min_lr_scale) * (1 + 1e-12)
    while scales[-1] > limit:
        if len(scales) > MAX_CUTS:
            raise JregError(
                f"early_stopping: lr_factor={rule.lr_factor} and min_lr_scale={rule.min_lr_scale} take more than "
                f"{MAX_CUTS} learning-rate cuts before the schedule stops; jreg.sweep keeps a table of the scales: "
                "use a smaller lr_factor or a larger min_lr_scale"
            )
        scales.append(scales[-1] * float(rule.lr_factor))
    return np.asarray(scales, np.float32)


def reason(rule: EarlyStopping, every: int) -> str:
    """Why a model stopped, in :meth:`jreg.EarlyStopping.update`'s words (and fit's, with ``every > 1``)."""
    if rule.lr_factor is None:
        text = f"no improvement in {rule.monitor} for {rule.patience} epochs"
    else:
        state: dict[str, Any] = {"best": 0.0, "best_epoch": 0, "wait": 0, "lr_scale": 1.0, "stopped": None}
        while state["stopped"] is None:  # the words fit's rule says when it stops (the final scale in them)
            state["wait"] = rule.patience - 1
            state, _ = rule.update(state, 1, -math.inf if rule.maximize else math.inf)
        text = state["stopped"]
    if every > 1:
        text = text.replace(f"{rule.patience} epochs", f"{rule.patience} measurements (every {every} epochs)")
    return text


class SweepStopper:
    """Early stopping for K models: the initial state, the jitted update, and what the history records."""

    def __init__(self, rule: EarlyStopping, models: int, every: int, returned_ema: bool):
        self.rule, self.models, self.every = rule, models, every
        self.returned_ema = returned_ema  # the best params are the EMA's (EMA(returned=True))
        self.table = scale_table(rule)
        self.scaled = rule.lr_factor is not None
        self.reason = reason(rule, every)
        self.advance = jax.jit(self._advance, donate_argnums=(0, 1))

    def initial(self) -> PerModel:
        k = self.models
        minus = jnp.full((k,), -1, jnp.int32)
        return PerModel(jnp.full((k,), jnp.nan, jnp.float32), minus, jnp.zeros((k,), jnp.int32), minus * 0, minus + 0)

    def kept(self, state: TrainState) -> Any:
        """What the best params are taken from: ``(params or EMA, model_state)``."""
        return (state.ema if self.returned_ema else state.params, state.model_state)

    def initial_best(self, state: TrainState) -> Any:
        """The best params' buffer (one copy of the stacked params; model state too), or None without restore_best."""
        return jax.tree.map(jnp.copy, self.kept(state)) if self.rule.restore_best else None

    def lr_scale(self, per: PerModel) -> jax.Array | None:
        """Each model's learning-rate scale (``(K,)`` float32), or None without ``lr_factor``."""
        return jnp.asarray(self.table)[per.cuts] if self.scaled else None

    def _advance(self, per: PerModel, best: Any, kept: Any, value: jax.Array, alive: jax.Array, epoch: Any):
        """``(per, best, alive, lr_scale)`` after epoch ``epoch``'s monitored ``value`` (``(K,)``) for the models
        alive; ``kept`` is :meth:`kept` of the epoch's state (the best params are taken from it)."""
        rule = self.rule
        value = value.astype(jnp.float32)
        delta = jnp.float32(rule.min_delta)
        better = value > per.best + delta if rule.maximize else value < per.best - delta
        improved = alive & ~jnp.isnan(value) & ((per.best_epoch < 0) | better)
        wait = jnp.where(improved, 0, jnp.where(alive, per.wait + 1, per.wait))
        fire = alive & ~improved & (wait >= rule.patience)
        cuts = per.cuts
        if self.scaled:
            cuts = cuts + fire.astype(jnp.int32)
            wait = jnp.where(fire, 0, wait)
            stop = fire & (cuts >= len(self.table) - 1)
        else:
            stop = fire
        per = PerModel(
            jnp.where(improved, value, per.best),
            jnp.where(improved, epoch, per.best_epoch).astype(jnp.int32),
            wait.astype(jnp.int32),
            cuts,
            jnp.where(stop, epoch, per.stopped).astype(jnp.int32),
        )
        if best is not None:

            def keep(b: jax.Array, n: jax.Array) -> jax.Array:
                return jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)), n, b)

            best = jax.tree.map(keep, best, kept)
        return per, best, alive & ~stop, self.lr_scale(per)

    def record(self, per: Any, i: int) -> dict[str, Any]:
        """``history.stopped[i]`` (fit's ``history.stopped`` fields) from the host copy of the state."""
        best_epoch = int(per.best_epoch[i])
        return {
            "epochs": int(per.stopped[i]) + 1,
            "reason": self.reason,
            "best_epoch": None if best_epoch < 0 else best_epoch + 1,
            "best": None if best_epoch < 0 else float(per.best[i]),
            "monitor": self.rule.monitor,
        }

    def result(self, best: Any, per: PerModel, final: Any) -> Any:
        """Each model's best ``(params, model_state)`` where it had a best epoch, else its final ones."""
        if best is None:
            return final
        has = per.best_epoch >= 0
        return jax.tree.map(lambda b, f: jnp.where(has.reshape((-1,) + (1,) * (f.ndim - 1)), b, f), best, final)
