"""Evaluation in mini-batches: the objective's cost and named metrics on a whole data set.

A data set is cut into evaluation batches of ``batch_size`` examples (the
last one smaller) and ``lax.scan`` runs over them inside the compiled
program, so memory is bounded by one evaluation batch, not the data set.
Every figure combines exactly (up to float rounding) into the full-batch one:

* the objective's batch-dependent parts (the mean loss, activity and input
  penalties: each a mean over examples) are weighted by batch size and
  divided by ``n``; the penalty on the params is computed once;
* a plain ``f(params, batch) -> (total, parts)`` objective has its total and
  parts weighted likewise (correct whenever each part is a mean over the
  batch or does not depend on it, as jreg's objectives are);
* metrics reduce as :mod:`jreg.metrics` documents.

Evaluation runs in evaluation mode: no key, ``train=False``, and a stateful
model's state is read, never updated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np

from .. import _signature, conventions
from .._checks import check_positive_int
from .._errors import JregError, JregTypeError
from .._types import Batch, Metrics, ModelState, Params
from ..metrics import Metric, as_metrics
from ..metrics import accuracy as metric_accuracy
from ..objective import Objective, _check_batch, combine
from . import calls
from .inputs import check_data, data_size

#: The automatic evaluation batch holds at most about this many bytes of intermediate values.
MEMORY_BUDGET = 64 * 2**20

#: ``chunk(params, model_state, batch, step) -> {name: (value, "mean" | "sum")}``
Chunk = Callable[[Params, ModelState, Batch, Any], dict[str, tuple[jax.Array, str]]]


def _metric_value(name: str, metric: Metric, outputs: Any, targets: Any, batch: Batch, n: int) -> tuple[Any, str]:
    try:
        values = _signature.call(metric.fn, outputs, targets, batch=batch)
    except JregError as exc:
        raise type(exc)(f"metric {name!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a user's metric failing: say which one
        raise JregError(f"metric {name!r} fails on outputs {jnp.shape(outputs)}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(values, "dtype") and not isinstance(values, (int, float)):
        raise JregTypeError(f"metric {name!r} must return an array, got {type(values).__name__}")
    if not (jnp.issubdtype(jnp.result_type(values), jnp.number) or jnp.result_type(values) == jnp.bool_):
        raise JregTypeError(f"metric {name!r} must return numbers, got dtype {jnp.result_type(values)}")
    shape = jnp.shape(values)
    if shape == (n,):
        reduced = jnp.mean(values) if metric.reduction == "mean" else jnp.sum(values)
    elif shape == ():
        reduced = values
    else:
        raise JregError(
            f"metric {name!r} must return one value per example, shape ({n},), or one scalar per batch; got {shape}"
        )
    return jnp.asarray(reduced, jnp.float32), metric.reduction


def make_chunk(objective: Callable[..., Any], *, cost: bool, metrics: Mapping[str, Metric]) -> Chunk:
    """The figures of one evaluation batch: means (to weight by size) or sums, by name."""
    metrics = as_metrics(metrics)

    def chunk(params, model_state, batch, step):
        n = data_size(batch, "evaluation batch")
        out: dict[str, tuple[Any, str]] = {}
        if isinstance(objective, Objective):
            parts, outputs, _ = objective.batch_parts(params, batch, step=step, state=model_state, train=False)
            if cost:
                out.update({f"part:{k}": (v, "mean") for k, v in parts.items()})
            if metrics:
                _, targets = objective.inputs_targets(batch)
                for name, metric in metrics.items():
                    out[f"metric:{name}"] = _metric_value(name, metric, outputs, targets, batch, n)
            return out
        if metrics:
            raise JregError("metrics need an objective from jreg.objective (its apply gives the outputs)")
        total, parts, _ = calls.call(objective, params, model_state, batch, step=step, train=False)
        out["cost"] = (total, "mean")
        out.update({f"part:{k}": (v, "mean") for k, v in parts.items()})
        return out

    return chunk


def _aval_bytes(aval: Any) -> int:
    try:
        return int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
    except (AttributeError, TypeError):  # key arrays and other abstract values: count nothing
        return 0


def _intermediate_bytes(jaxpr: Any) -> int:
    """The bytes of every value a jaxpr computes, sub-jaxprs included (an upper bound of what is live at once)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += sum(_aval_bytes(v.aval) for v in eqn.outvars)
        total += sum(_intermediate_bytes(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
    return total


def auto_batch_size(
    chunk: Chunk, params, model_state, data: Batch, step, smallest: int = 1, memory: int = MEMORY_BUDGET
) -> int:
    """The evaluation batch size whose intermediate values fit in ``memory`` bytes, at least ``smallest``.

    The bytes per example come from tracing one evaluation batch of 1 and of 2
    examples (``jax.make_jaxpr``: nothing is computed) and summing the sizes of
    every value computed; the difference is what one more example costs.
    """
    n = data_size(data, "evaluation data")

    def spec(a):
        return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))

    def traced_bytes(k: int) -> int:
        batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((k, *a.shape[1:]), a.dtype), data)
        figures = jax.make_jaxpr(lambda p, s, t, b: {name: v for name, (v, _) in chunk(p, s, b, t).items()})
        return _intermediate_bytes(figures(*jax.tree.map(spec, (params, model_state, step)), batch).jaxpr)

    if n == 1:
        return 1
    one, two = traced_bytes(1), traced_bytes(2)
    per_example = max(two - one, 1) if two > one else max(one, 1)
    return max(1, min(n, max(smallest, memory // per_example)))


def over_batches(
    chunk: Chunk,
    params,
    model_state,
    data: Batch,
    step,
    batch_size: int | None,
    smallest: int = 1,
    memory: int = MEMORY_BUDGET,
    index: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Run ``chunk`` over ``data`` in evaluation batches and combine: means weighted by size, sums added.

    ``batch_size=None`` picks it from the memory budget (:func:`auto_batch_size`). ``index``: evaluate the
    examples ``data[index]`` (one member's fold, per-member data), each evaluation batch gathered as it is
    used: the same arithmetic as on ``data[index]`` itself, without holding it.
    """
    if index is not None:
        data = _Gathered(data, index)
    n = data_size(data, "evaluation data") if index is None else int(index.shape[0])
    if batch_size is None:
        shapes = data if index is None else jax.tree.map(lambda a: jax.ShapeDtypeStruct((n, *a.shape[1:]), a.dtype),
                                                         data.data)  # fmt: skip
        batch_size = auto_batch_size(chunk, params, model_state, shapes, step, smallest, memory)
    size = min(batch_size, n)
    full, rest = divmod(n, size)
    if full == 1 and not rest:  # one batch: its figures are the data set's
        return {k: v for k, (v, _) in chunk(params, model_state, _rows(data, 0, n), step).items()}
    kinds: dict[str, str] = {}

    def weighted(batch: Batch, count: int) -> dict[str, jax.Array]:
        figures = chunk(params, model_state, batch, step)
        kinds.update({k: kind for k, (_, kind) in figures.items()})
        return {k: v * count if kind == "mean" else v for k, (v, kind) in figures.items()}

    def body(acc, i):
        return jax.tree.map(jnp.add, acc, weighted(_slice(data, i * size, size), size)), None

    first = _rows(data, 0, size)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(lambda b: weighted(b, size), first))
    sums, _ = jax.lax.scan(body, zeros, jnp.arange(full))
    if rest:
        sums = jax.tree.map(jnp.add, sums, weighted(_rows(data, full * size, n), rest))
    return {k: v / n if kinds[k] == "mean" else v for k, v in sums.items()}


class _Gathered:
    """``data[index]`` not taken yet: its batches are gathered one at a time (:func:`over_batches`)."""

    def __init__(self, data: Batch, index: jax.Array):
        self.data, self.index = data, index


def _rows(data: Any, start: int, stop: int) -> Batch:
    """Examples ``start:stop`` (static bounds) of ``data``, gathered when it is a :class:`_Gathered`."""
    if isinstance(data, _Gathered):
        return jax.tree.map(lambda a: a[data.index[start:stop]], data.data)
    if start == 0 and stop == data_size(data, "evaluation data"):
        return data
    return jax.tree.map(lambda a: a[start:stop], data)


def _slice(data: Any, start: Any, size: int) -> Batch:
    """``size`` examples from the traced ``start``, gathered when ``data`` is a :class:`_Gathered`."""
    if isinstance(data, _Gathered):
        idx = jax.lax.dynamic_slice_in_dim(data.index, start, size)
        return jax.tree.map(lambda a: a[idx], data.data)
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), data)


def evaluate(
    objective: Callable[..., Any],
    params: Params,
    model_state: ModelState,
    data: Batch,
    *,
    cost: bool,
    parts: bool = False,
    metrics: Mapping[str, Metric] | None = None,
    batch_size: int | None = None,
    smallest: int = 1,
    memory: int = MEMORY_BUDGET,
    step: Any = None,
    prefix: str = "",
    penalty_scale: float | None = None,
    index: jax.Array | None = None,
) -> Metrics:
    """``{prefix + "cost": ..., prefix + <part>: ..., prefix + <metric>: ...}`` on a whole data set
    (``index``: on ``data[index]``, gathered batch by batch).

    ``batch_size``: examples per evaluation batch; ``None`` picks the largest
    that keeps the batch's intermediate values within ``memory`` bytes
    (:data:`MEMORY_BUDGET`; a sweep of K models gives each 1/K of it), but at
    least ``smallest`` (e.g. the training batch size).

    ``penalty_scale``: a factor on the penalty on the params (the
    ``"network2"`` cost convention: ``n_train / len(data)``, from
    :func:`jreg.conventions.penalty_scale`); ``None`` leaves the objective as it is.
    """
    metrics = as_metrics(metrics)
    if not cost and not metrics:
        return {}
    chunk = make_chunk(objective, cost=cost, metrics=metrics)
    sums = over_batches(chunk, params, model_state, data, step, batch_size, smallest, memory, index)
    return _figures(objective, sums, params, step, cost, parts, prefix, penalty_scale)


def _figures(objective, sums, params, step, cost: bool, parts: bool, prefix: str, penalty_scale) -> Metrics:
    """The named figures from the combined chunk sums: the cost (the params' penalty added once), its parts
    (when asked), the metrics."""
    out: Metrics = {}
    if cost:
        batch_parts = {k[5:]: v for k, v in sums.items() if k.startswith("part:")}
        if isinstance(objective, Objective):
            on_params = objective.penalty_parts(params, step=step)
            if penalty_scale is not None:
                on_params = {k: v * jnp.asarray(penalty_scale, jnp.result_type(v)) for k, v in on_params.items()}
            total, all_parts = combine(batch_parts, on_params)
        else:
            if penalty_scale is not None:
                raise JregError("a cost convention other than 'jreg' needs an objective from jreg.objective")
            total, all_parts = sums["cost"], batch_parts
        out[f"{prefix}cost"] = total
        if parts:
            out.update({f"{prefix}{k}": v for k, v in all_parts.items()})
    out.update({f"{prefix}{k[7:]}": v for k, v in sums.items() if k.startswith("metric:")})
    return out


def evaluate_view(
    objective: Callable[..., Any],
    params: Params,
    model_state: ModelState,
    data: Batch,
    index: jax.Array,
    weight: jax.Array,
    *,
    cost: bool,
    parts: bool = False,
    metrics: Mapping[str, Metric] | None = None,
    batch_size: int | None = None,
    smallest: int = 1,
    memory: int = MEMORY_BUDGET,
    step: Any = None,
    prefix: str = "",
    penalty_scale: Any = None,
) -> Metrics:
    """:func:`evaluate` on the examples ``data[index]`` weighted by ``weight`` (1 for a real example, 0 for
    padding): one member's held-out fold or out-of-bag set, padded to the largest member's (per-member data,
    :mod:`jreg.train.members`).

    Each evaluation batch of ``index`` is gathered inside the program and its figures are taken per example
    (the objective ``vmap``-ed over batches of one), then summed with the weights: the means are exact over the
    real examples whatever the padding. A metric that returns one scalar per batch is therefore taken per
    example here. ``penalty_scale`` may be traced (each member's own ``n_train / len(set)``).
    """
    metrics = as_metrics(metrics)
    if not cost and not metrics:
        return {}
    chunk = make_chunk(objective, cost=cost, metrics=metrics)
    width = int(index.shape[0])
    if batch_size is None:
        batch_size = auto_batch_size(chunk, params, model_state, data, step, smallest, memory)
    size = min(batch_size, width)
    chunks = -(-width // size)
    index = jnp.pad(index, (0, chunks * size - width))
    weight = jnp.pad(weight, (0, chunks * size - width))
    kinds: dict[str, str] = {}

    def one(example: Batch) -> dict[str, jax.Array]:
        figures = chunk(params, model_state, jax.tree.map(lambda a: a[None], example), step)
        kinds.update({k: kind for k, (_, kind) in figures.items()})
        return {k: v for k, (v, _) in figures.items()}

    def body(acc, i):
        idx = jax.lax.dynamic_slice_in_dim(index, i * size, size)
        w = jax.lax.dynamic_slice_in_dim(weight, i * size, size)
        values = jax.vmap(one)(take_rows(data, idx))
        summed = {k: jnp.sum(jnp.where(w > 0, v, 0).astype(v.dtype)) for k, v in values.items()}
        return jax.tree.map(jnp.add, acc, summed), None

    shapes = jax.eval_shape(lambda: {k: jnp.sum(v) for k, v in jax.vmap(one)(take_rows(data, index[:size])).items()})
    sums, _ = jax.lax.scan(body, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), jnp.arange(chunks))
    count = jnp.sum(weight)
    sums = {k: v / count if kinds[k] == "mean" else v for k, v in sums.items()}
    return _figures(objective, sums, params, step, cost, parts, prefix, penalty_scale)


def take_rows(data: Batch, idx: jax.Array) -> Batch:
    return jax.tree.map(lambda a: a[idx], data)


def accuracy(
    apply: Callable[..., Any], params: Params, data: tuple[Any, Any], *, model_state: ModelState = None
) -> jax.Array:
    """Fraction of examples whose largest output is the true class, in evaluation mode.

    ``data = (x, y)`` with integer labels ``y (N,)`` or one-hot targets ``(N, classes)``.
    A stateful model's ``apply`` (one with a ``state`` parameter) needs
    ``model_state=``; it is called with ``train=False``.
    """
    if not callable(apply):
        raise JregTypeError(f"apply must be callable apply(params, x), got {apply!r}")
    x, y = _check_batch(data, "data")
    if _signature.accepts(apply, "state"):
        if model_state is None:
            raise JregError("this apply takes state=: pass the model's state as model_state=")
        outputs = _signature.call(apply, params, x, state=model_state, train=False)[0]
    else:
        outputs = apply(params, x)
    return jnp.mean(metric_accuracy(outputs, y))


def total_cost(
    objective: Callable[..., Any],
    params: Params,
    data: Any,
    *,
    step: Any = None,
    model_state: ModelState = None,
    batch_size: int | None = None,
    cost_convention: str = "jreg",
    n_train: int | None = None,
) -> jax.Array:
    """The objective's total on ``data`` in evaluation mode: mean cost over all of it plus the penalty.

    ``step`` evaluates coefficient schedules (needed only when a penalty has
    one); ``model_state`` is a stateful model's state (read only);
    ``batch_size`` evaluates in batches of that many examples (bounded memory;
    the same figure up to float rounding), default all at once.

    ``cost_convention``: ``"jreg"`` (default) is the objective as it is.
    ``"network2"`` is network2.py's ``total_cost(data, lmbda)``, whose penalty
    is ``0.5·(λ/len(data))·Σw²``: with the objective's ``l2(λ/n_train)``, the
    penalty on the params times ``n_train / len(data)``. It needs ``n_train=``,
    the size of the training set the objective's penalty was scaled for, and
    an objective from :func:`jreg.objective` (see :mod:`jreg.conventions`).
    """
    calls.check_objective(objective)
    conventions.check_cost_convention(cost_convention)
    if cost_convention == "jreg" and n_train is not None:
        raise JregError("n_train= is used only with cost_convention='network2' (jreg's convention needs no size)")
    data = check_data(data, "data")
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    if cost_convention == "network2":
        if n_train is None:
            raise JregError("cost_convention='network2' needs n_train=, the training set's size (the n of l2(λ/n))")
        n_train = check_positive_int(n_train, "n_train")
        if not isinstance(objective, Objective):
            raise JregError(
                "cost_convention='network2' rescales the penalty on the params, which only an objective from "
                "jreg.objective tells apart from the data cost"
            )
        n = data_size(data, "data")
        scale = conventions.penalty_scale(cost_convention, n_train, n)
        return evaluate(
            objective, params, model_state, data, cost=True, batch_size=batch_size or n, step=step, penalty_scale=scale
        )["cost"]
    if batch_size is None:
        return calls.call(objective, params, model_state, data, step=step, train=False)[0]
    return evaluate(objective, params, model_state, data, cost=True, batch_size=batch_size, step=step)["cost"]
