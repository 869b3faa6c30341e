"""Which series a run measures after each epoch, and the compiled function that measures them.

Series names: ``training_cost`` (with its parts ``training_data``,
``training_penalty``, ``training_<term>``) and ``evaluation_cost``; one
``training_<metric>`` and ``evaluation_<metric>`` per metric (by default
``accuracy`` when the targets are classes); and ``epoch_loss``, the mean
mini-batch objective during the epoch (opt-in: it needs the loss value at
every step).

Costs follow the :class:`jreg.Evaluation`'s ``cost_convention``: the
objective as it is (``"jreg"``), or network2.py's ``total_cost``, whose
penalty is scaled to the size of the set measured (``"network2"``: the
params' penalty times ``n_train / len(set)``; see :mod:`jreg.conventions`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from .._errors import JregError
from .._types import Batch, Metrics, ModelState, Params
from ..conventions import penalty_scale
from ..metrics import Metric, unweighted
from ..metrics import accuracy as accuracy_metric
from ..objective import Objective
from .evaluate import MEMORY_BUDGET, evaluate
from .inputs import data_size

EPOCH_LOSS = "epoch_loss"
#: network2.py's four series (``monitor_*`` flags), the default for classification.
NETWORK2 = ("training_cost", "training_accuracy", "evaluation_cost", "evaluation_accuracy")


@dataclasses.dataclass(frozen=True)
class Monitor:
    """The series to measure (``wanted``), the metrics behind them, and the evaluation batch size."""

    wanted: frozenset[str]
    metrics: dict[str, Metric]
    batch_size: int | None  # None: from the memory budget
    smallest: int = 1  # the automatic evaluation batch is at least this (the training batch size)
    memory: int = MEMORY_BUDGET  # the automatic evaluation batch's budget (a sweep's models share one)
    cost_convention: str = "jreg"  # how a cost counts the params' penalty (jreg.conventions.COST_CONVENTIONS)
    n_train: int | None = None  # the training set's size, for cost_convention="network2"

    @property
    def epoch_loss(self) -> bool:
        return EPOCH_LOSS in self.wanted

    def on(self, prefix: str) -> tuple[bool, dict[str, Metric]]:
        """``(cost wanted, metrics wanted)`` on the ``training`` or ``evaluation`` data."""
        return f"{prefix}_cost" in self.wanted, {
            k: m for k, m in self.metrics.items() if f"{prefix}_{k}" in self.wanted
        }

    def guarded(self, name: str) -> bool:
        """Whether a non-finite value of series ``name`` counts as divergence (costs and losses; not metrics)."""
        return not any(name == f"{p}_{m}" for p in ("training", "evaluation") for m in self.metrics)

    def measure(
        self, objective: Callable[..., Any], params: Params, model_state: ModelState, train: Batch, evaluation, step
    ) -> Metrics:
        """The wanted figures on the training data and on the held-out data, in evaluation mode."""
        out: Metrics = {}
        for prefix, data in (("training", train), ("evaluation", evaluation)):
            cost, metrics = self.on(prefix)
            if data is None or not (cost or metrics):
                continue
            out.update(
                evaluate(
                    objective,
                    params,
                    model_state,
                    data,
                    cost=cost,
                    parts=prefix == "training",
                    metrics=metrics,
                    batch_size=self.batch_size,
                    smallest=self.smallest,
                    memory=self.memory,
                    step=step,
                    prefix=f"{prefix}_",
                    penalty_scale=self.penalty_scale(data) if cost else None,
                )
            )
        return out

    def penalty_scale(self, data: Batch) -> float | None:
        """The factor on the params' penalty in a cost on ``data`` (``None``: none, the objective as it is)."""
        if self.cost_convention == "jreg":
            return None
        return penalty_scale(self.cost_convention, self.n_train, data_size(data, "evaluation data"))

    def shown(self, values: dict[str, Any]) -> list[str]:
        """The series a progress line shows, in network2.py's order (costs and metrics, not parts)."""
        names = [f"{p}_{m}" for p in ("training", "evaluation") for m in ("cost", *self.metrics)] + [EPOCH_LOSS]
        return [n for n in names if n in values]


def weighted_targets(objective: Any) -> bool:
    """Whether the objective's targets are ``(targets, weights)`` pairs (a :func:`jreg.losses.weighted` loss)."""
    return isinstance(objective, Objective) and getattr(objective.loss, "weighted_targets", False) is True


def default_metrics(objective: Any, classes: bool) -> dict[str, Metric]:
    """Accuracy for classification (on the plain targets of a weighted loss); nothing otherwise."""
    if not (isinstance(objective, Objective) and classes):
        return {}
    return {"accuracy": Metric(unweighted(accuracy_metric) if weighted_targets(objective) else accuracy_metric)}


def make_monitor(
    monitor: Iterable[str] | str | None,
    objective: Any,
    metrics: dict[str, Metric],
    *,
    classes: bool,
    has_evaluation: bool,
    batch_size: int | None,
    smallest: int = 1,
    cost_convention: str = "jreg",
    n_train: int | None = None,
) -> Monitor:
    """Resolve ``fit``'s ``monitor=`` against what this run can measure; a clear error otherwise."""
    if metrics and not isinstance(objective, Objective):
        raise JregError("metrics need an objective from jreg.objective (its apply gives the outputs)")
    if cost_convention != "jreg" and not isinstance(objective, Objective):
        raise JregError(
            f"cost_convention={cost_convention!r} rescales the penalty on the params, which only an objective "
            "from jreg.objective tells apart from the data cost; use cost_convention='jreg' with this objective"
        )
    if cost_convention != "jreg" and n_train is None:
        raise JregError(f"cost_convention={cost_convention!r} needs the training set's size")
    options = dict(cost_convention=cost_convention, n_train=n_train)
    sides = ("training", "evaluation") if has_evaluation else ("training",)
    available = {f"{p}_{m}" for p in sides for m in ("cost", *metrics)}
    if monitor is None:
        return Monitor(frozenset(available), metrics, batch_size, smallest, **options)
    if isinstance(monitor, str):
        monitor = (monitor,)
    try:
        wanted = set(monitor)
    except TypeError as exc:
        raise JregError(f"monitor must be a sequence of series names, got {monitor!r}") from exc
    if not all(isinstance(name, str) for name in wanted):
        raise JregError(f"monitor must be a sequence of series names (str), got {monitor!r}")
    known = set(NETWORK2) | {EPOCH_LOSS} | {f"{p}_{m}" for p in ("training", "evaluation") for m in metrics}
    unknown = wanted - known
    if unknown:
        raise JregError(f"monitor must name some of {sorted(known)}, got unknown {sorted(unknown)}")
    missing = wanted - available - {EPOCH_LOSS}
    if missing:
        if not has_evaluation and any(m.startswith("evaluation_") for m in missing):
            why = "evaluation data is needed"
        elif not isinstance(objective, Objective):
            why = "accuracy needs an objective from jreg.objective"
        elif not classes:
            why = "the targets are not classes (integer labels or one-hot rows); give metrics to measure others"
        else:
            why = "no such metric was given"
        raise JregError(f"monitor asks for {sorted(missing)}, but {why}")
    return Monitor(frozenset(wanted), metrics, batch_size, smallest, **options)
