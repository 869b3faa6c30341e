"""Sizes before work for the front ends: what fit and a K-model run (sweep, path, PBT) are about to allocate,
from shapes alone, checked against the memory they may use (:mod:`jreg._memory`) before anything is allocated.

The parts counted are those certainly allocated, so the estimate is a lower bound of the run's peak and never
refuses a run that fits: the params of K models, their gradients, their optimizer state (``jax.eval_shape`` of
``optimizer.init``), the EMA copy, the best-params copy kept for ``restore_best``, the largest single value
computed on one training or evaluation batch (traced, nothing computed) and a stream's prefetched chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np

from .. import _memory
from .._types import Params
from ..objective import Objective
from .inputs import data_size
from .setup import Setup
from .state import TrainState
from .validate import _outputs


def spec(tree: Any) -> Any:
    """``tree`` as ``jax.ShapeDtypeStruct`` leaves (its arrays' shapes and dtypes; nothing copied)."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) if hasattr(a, "shape") else a, tree
    )


def init_spec(init: Callable[[jax.Array], Params]) -> Any:
    """The shapes ``init(key)`` would give (``jax.eval_shape``), or ``None`` when it cannot be traced."""
    try:
        return jax.eval_shape(init, jax.random.key(0))
    except Exception:  # noqa: BLE001 - an init that needs concrete values: its own call reports any error
        return None


def state_parts(optimizer: Any, params: Any, models: int | None, *, ema: bool = False, best: bool = False) -> list:
    """The train state's :class:`jreg._memory.Part` s: params, gradients, optimizer state, the EMA and best
    copies, for one model's ``params`` (arrays or shapes) times ``models`` (``None``: fit's one)."""
    k, of = (1, "") if models is None else (models, f" of {models} models")
    params = spec(params)
    parts = [_memory.tree_part(f"params{of}", params, k), _memory.tree_part(f"gradients{of}", params, k)]
    try:
        opt = jax.eval_shape(optimizer.init, params)
    except Exception:  # noqa: BLE001 - an optimizer that cannot init on these params says so itself later
        opt = None
    parts.append(_memory.tree_part(f"optimizer state{of}", opt, k))
    if ema:
        parts.append(_memory.tree_part(f"EMA copy{of}", params, k))
    if best:
        parts.append(_memory.tree_part(f"best-params copy{of} (restore_best)", params, k))
    if models is None:
        return parts
    return [p if p.shape is None else p._replace(shape=(models, *p.shape)) for p in parts]  # stacked: (K, ...)


def _largest_value(jaxpr: Any) -> tuple[int, Any]:
    """``(bytes, aval)`` of the largest value a jaxpr computes, sub-jaxprs included."""
    found: tuple[int, Any] = (0, None)
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = var.aval
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                found = max(found, (_memory.array_bytes(aval.shape, aval.dtype), aval), key=lambda f: f[0])
        for sub in jax_core.jaxprs_in_params(eqn.params):
            found = max(found, _largest_value(sub), key=lambda f: f[0])
    return found


def batch_part(objective: Any, params: Any, model_state: Any, data: Any, rows: int, what: str) -> list:
    """The largest single value the model computes on a batch of ``rows`` examples of ``data`` (traced)."""
    if data is None or not isinstance(objective, Objective):
        return []
    rows = min(rows, data_size(data))
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((rows, *np.shape(a)[1:]), jnp.result_type(a)), data)
    state = TrainState(spec(params), None, spec(model_state), jax.ShapeDtypeStruct((), jnp.int32))
    try:
        traced = jax.make_jaxpr(lambda s, b: _outputs(objective, s, b))(state, batch)
    except Exception:  # noqa: BLE001 - the probes before have traced the same call: nothing to add
        return []
    size, aval = _largest_value(traced.jaxpr)
    if aval is None:
        return []
    return [_memory.Part(f"largest value computed on {what} of {rows} examples", size, tuple(aval.shape),
                         str(aval.dtype))]  # fmt: skip


def data_parts(objective: Any, params: Any, model_state: Any, setup: Setup) -> list:
    """What the data add: one training batch's and one evaluation batch's largest value, a stream's prefetch."""
    batches = batch_part(objective, params, model_state, setup.train, setup.plan.batch_size, "a training batch")
    rows = setup.monitor.batch_size or setup.plan.batch_size  # an automatic evaluation batch is at least this
    batches += batch_part(objective, params, model_state, setup.evaluation, rows, "an evaluation batch")
    parts = [max(batches, key=lambda p: p.bytes)] if batches else []  # one after the other: the larger counts
    feed = setup.feed
    if feed is not None:
        one = _memory.tree_part("", spec(feed.first))
        parts.append(
            _memory.Part(
                f"stream prefetch ({feed.prefetch} chunks of {feed.chunk} batches)",
                one.bytes * feed.prefetch * feed.chunk,
                None if one.shape is None else (feed.prefetch, feed.chunk, *one.shape),
                one.dtype,
            )
        )
    return parts


def one_model(params: Any, stacked: bool) -> Any:
    """The shapes of one model's params: ``params`` itself, or a stacked tree without its leading axis."""
    if not stacked:
        return spec(params)
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], jnp.result_type(a)) if np.ndim(a) else spec(a), params
    )


check = _memory.check
