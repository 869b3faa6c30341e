"""``ensemble``: the K members of a sweep's result as one model averaging their outputs (a bagged ensemble).

How jreg knows a classifier: the objective's loss. A softmax loss (:func:`jreg.losses.softmax_cross_entropy`,
``log_likelihood``) turns each member's logits into probabilities with a softmax, a sigmoid loss
(``cross_entropy``, ``sigmoid_cross_entropy``) with a sigmoid; the ensemble averages those probabilities
and its accuracy is the arg-max of the average against the labels (one-hot rows or integer labels). Any
other loss (quadratic, a user's) averages the raw outputs, as a regression ensemble does. ``output=``
overrides the rule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses
from .._errors import JregError, JregTypeError
from ..metrics import accuracy as accuracy_metric
from ..objective import Objective
from .engine import Build
from .inputs import check_data
from .result import Result

OUTPUTS = ("auto", "softmax", "sigmoid", "raw")
_SOFTMAX = {losses.softmax_cross_entropy, losses.log_likelihood}
_SIGMOID = {losses.sigmoid_cross_entropy, losses.cross_entropy}


def output_kind(objective: Any) -> str:
    """``"softmax"``, ``"sigmoid"`` or ``"raw"``: how an objective's outputs become what the ensemble averages
    (from its loss; a :func:`jreg.losses.weighted` or label-smoothed loss is looked into)."""
    seen, loss = 0, getattr(objective, "loss", None)
    while loss is not None and seen < 4:
        if loss in _SOFTMAX:
            return "softmax"
        if loss in _SIGMOID:
            return "sigmoid"
        cells = [c.cell_contents for c in (getattr(loss, "__closure__", None) or ())]
        loss, seen = next((v for v in cells if callable(v) and not isinstance(v, type)), None), seen + 1
    return "raw"


class Ensemble:
    """``ens(x)``: the average of the K members' outputs (probabilities for a classifier); see :func:`ensemble`."""

    def __init__(self, objective: Objective, params: Any, model_state: Any, kind: str, members: np.ndarray):
        self.objective, self.params, self.model_state, self.kind = objective, params, model_state, kind
        self.members = members
        self._predict = jax.jit(self._average)

    def _average(self, params: Any, model_state: Any, x: Any) -> jax.Array:
        def one(p, s):
            out, _ = self.objective.predict(p, x, state=s, train=False)
            if self.kind == "softmax":
                return jax.nn.softmax(out, axis=-1)
            return jax.nn.sigmoid(out) if self.kind == "sigmoid" else out

        return jnp.mean(jax.vmap(one)(params, model_state), axis=0)

    def __call__(self, x: Any) -> jax.Array:
        """The members' average output on inputs ``x`` (evaluation mode)."""
        return self._predict(self.params, self.model_state, x)

    def evaluate(self, data: Any, *, batch_size: int | None = None) -> dict[str, float]:
        """``{"accuracy": ..., "cost": ...}`` of the ensemble on held-out ``data`` (a batch like the training
        data). The cost is the mean of the objective's loss on the averaged output, taken in the members'
        output space: for a classifier the log of the averaged probabilities as logits (softmax: the
        cross-entropy of the average; sigmoid: its logit), else the averaged raw outputs. No penalty (the
        ensemble has no single params). ``accuracy`` only for class targets."""
        data = check_data(data, "data")
        x, y = self.objective.inputs_targets(data)
        n = jax.tree.leaves(x)[0].shape[0]
        size = n if batch_size is None else int(batch_size)
        outs = [self(jax.tree.map(lambda a, i=i: a[i : i + size], x)) for i in range(0, n, size)]
        avg = jnp.concatenate(outs)
        out: dict[str, float] = {"cost": float(jnp.mean(self.objective.loss(_as_outputs(avg, self.kind), y)))}
        if self.kind in ("softmax", "sigmoid") or _are_labels(y):
            plain = y[0] if getattr(self.objective.loss, "weighted_targets", False) is True else y
            out["accuracy"] = float(jnp.mean(accuracy_metric(avg, plain)))
        return out

    def __repr__(self) -> str:
        return f"Ensemble(members={len(self.members)}, output={self.kind!r})"


def _as_outputs(avg: jax.Array, kind: str) -> jax.Array:
    """The averaged probabilities as outputs the loss takes (logits), so that the loss is that of the average."""
    tiny = jnp.finfo(avg.dtype).tiny
    if kind == "softmax":
        return jnp.log(jnp.maximum(avg, tiny))
    if kind == "sigmoid":
        p = jnp.clip(avg, tiny, 1 - jnp.finfo(avg.dtype).eps)
        return jnp.log(p) - jnp.log1p(-p)
    return avg


def _are_labels(y: Any) -> bool:
    return hasattr(y, "dtype") and jnp.issubdtype(y.dtype, jnp.integer)


def ensemble(
    result: Result, build: Build | None = None, *, members: Any = None, output: str = "auto", objective: Any = None
) -> Ensemble:
    """The K members of a sweep's ``result`` as one model: ``ens(x)`` averages their outputs.

    For a classifier (a softmax or sigmoid loss, see the module docstring) the average is of probabilities,
    softmax / sigmoid of each member's logits; else of the raw outputs. ``ens.evaluate((x, y))`` gives the
    ensemble's accuracy and cost on held-out data. A bagged ensemble is the result of ``jreg.sweep(...,
    resample="bootstrap")``; any sweep's result works (members differing in seeds, in ``lmbda``...).

    Args:
        result: a K-model :class:`jreg.Result` (a sweep's, a cross-validation's).
        build: the sweep's ``build``: the objective (its ``apply`` and ``loss``) comes from ``build`` of the
            first member's hyperparameters. Or give ``objective=`` directly (a :func:`jreg.objective`).
        members: which members to average (indices or a boolean mask; default every member that did not
            diverge).
        output: ``"auto"`` (from the loss), ``"softmax"``, ``"sigmoid"`` or ``"raw"``.
    """
    if not isinstance(result, Result) or result.models is None:
        raise JregTypeError(f"ensemble: result must be a K-model jreg.Result (a sweep's), got {type(result).__name__}")
    if output not in OUTPUTS:
        raise JregError(f"ensemble: output must be one of {OUTPUTS}, got {output!r}")
    if objective is None:
        if build is None or not callable(build):
            raise JregTypeError("ensemble: pass the sweep's build (ensemble(result, build)) or objective=...")
        hp = {k: jnp.asarray(v[0]) for k, v in (result.hparams or {}).items()}
        objective = build(hp)[0]
    if not isinstance(objective, Objective):
        raise JregTypeError(
            "ensemble: the objective must be one from jreg.objective (its apply gives the outputs), got "
            f"{type(objective).__name__}"
        )
    chosen = _members(result, members)
    take = lambda tree: jax.tree.map(lambda a: a[chosen], tree)  # noqa: E731
    kind = output_kind(objective) if output == "auto" else output
    return Ensemble(objective, take(result.params), take(result.model_state), kind, chosen)


def _members(result: Result, members: Any) -> np.ndarray:
    models = int(result.models or 0)
    if members is None:
        chosen = np.asarray([i for i in range(models) if i not in result.history.diverged], np.int64)
    else:
        a = np.asarray(members)
        if a.size == 0:
            a = a.astype(np.int64).reshape(-1)
        if a.dtype == bool:
            if a.shape != (models,):
                raise JregError(f"ensemble: a boolean members mask must have shape ({models},), got {a.shape}")
            a = np.flatnonzero(a)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or (a.size and (a.min() < 0 or a.max() >= models)):
            raise JregError(f"ensemble: members must be indices in [0, {models}) or a boolean mask, got {members!r}")
        chosen = a.astype(np.int64)
    if not chosen.size:
        raise JregError("ensemble: no member to average (every member diverged, or members= is empty)")
    return chosen
