"""What fit and sweep settle before any compilation: checked data, the epoch plan, the series to measure."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

from .._errors import JregError, JregTypeError
from .._tree import path_str
from .._types import Batch, ModelState, Params
from ..metrics import as_metrics
from . import calls, validate
from .config import Evaluation, as_evaluation
from .epoch import data_size
from .monitor import Monitor, default_metrics, make_monitor
from .plan import EpochPlan, check_partial_batch, make_plan
from .state import TrainState


@dataclasses.dataclass(frozen=True)
class Setup:
    train: Batch
    evaluation: Batch | None
    model_state: ModelState  # as arrays
    plan: EpochPlan
    monitor: Monitor
    schedule: Evaluation  # when to measure (``every``)


def check_params(params: Params, name: str = "params") -> None:
    """Params must be a pytree of floating-point arrays (what ``jax.grad`` can differentiate)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if not flat:
        raise JregError(f"{name} holds no arrays")
    for path, leaf in flat:
        where = path_str(path) or "<root>"
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise JregTypeError(
                f"{name}: leaf {where!r} is {type(leaf).__name__}, not an array; an Equinox module goes in as "
                "eqx.partition(model, eqx.is_inexact_array)[0], with apply combining it with the static part"
            )
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise JregTypeError(
                f"{name}: leaf {where!r} must be floating point to be trained, got {leaf.dtype}{list(leaf.shape)}"
            )


def check_model_state(objective: Callable[..., Any], model_state: ModelState) -> ModelState:
    """The model state as arrays, after checking that the objective wants one exactly when it is given."""
    stateful = calls.is_stateful(objective)
    if stateful and model_state is None:
        raise JregError(
            "the objective carries model state (its model's apply takes state=): pass model_state= "
            "(e.g. Flax's {'batch_stats': variables['batch_stats']}, or Equinox's eqx.nn.State)"
        )
    if not stateful and model_state is not None:
        raise JregError("model_state was given, but the objective carries no state (its apply takes no state=)")
    return calls.as_model_state(model_state)


def prepare(
    objective: Callable[..., Any],
    params: Params,
    model_state: ModelState,
    train: Any,
    evaluation: Any,
    *,
    batch_size: int,
    key: Any,
    partial_batch: str,
    monitor: Iterable[str] | str | None,
) -> Setup:
    """Check the data and the objective on it (real shapes, ``train`` or ``evaluation`` named); pick the series."""
    check_partial_batch(partial_batch)
    schedule = as_evaluation(evaluation)
    check_params(params)
    model_state = check_model_state(objective, model_state)
    train = validate.check_data(train, "train")
    held_out = None if schedule.data is None else validate.check_data(schedule.data, "evaluation")
    plan = make_plan(data_size(train), batch_size, partial_batch)
    probe_state = TrainState(params, None, model_state, jnp.asarray(0, jnp.int32))
    outputs = validate.probe(objective, probe_state, train, "train", key)
    targets = validate.targets_of(objective, train)
    validate.check_labels(targets, outputs, "train")
    if held_out is not None:
        eval_outputs = validate.probe(objective, probe_state, held_out, "evaluation", key)
        validate.check_labels(validate.targets_of(objective, held_out), eval_outputs, "evaluation")
    classes = validate.are_classes(targets, outputs)
    metrics = default_metrics(objective, classes) if schedule.metrics is None else as_metrics(schedule.metrics)
    chosen = make_monitor(
        monitor,
        objective,
        metrics,
        classes=classes,
        has_evaluation=held_out is not None,
        batch_size=schedule.batch_size,
        smallest=plan.batch_size,
    )
    return Setup(train, held_out, model_state, plan, chosen, schedule)
