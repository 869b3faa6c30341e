"""Which series a run measures after each epoch, and the compiled function that measures them.

Series names: ``epoch_loss``, the mean mini-batch objective during the
epoch (taken from the training steps themselves, whose loss the divergence
guard computes anyway); ``evaluation_cost`` and one ``evaluation_<metric>`` per
metric (by default ``accuracy`` when the targets are classes) on the held-out
data; ``training_cost`` (with its parts ``training_data``,
``training_penalty``, ``training_<term>``) and one ``training_<metric>`` per
metric on the whole training set.

The default (``monitor=None``) is :func:`default_series`: ``epoch_loss`` and,
with held-out data, every evaluation series, the same names whether the
training data are in memory or streamed. The training-set series take a
second pass over the training set after every epoch (for a small network as
long as a third of the epoch), so they are measured only when ``monitor=``
names them (:data:`NETWORK2` names network2.py's four series); a stream, which
is not held, refuses them.

Costs follow the :class:`jreg.Evaluation`'s ``cost_convention``: the
objective as it is (``"jreg"``), or network2.py's ``total_cost``, whose
penalty is scaled to the size of the set measured (``"network2"``: the
params' penalty times ``n_train / len(set)``; see :mod:`jreg.conventions`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp

from .._errors import JregError
from .._types import Batch, Metrics, ModelState, Params
from ..conventions import penalty_scale
from ..metrics import Metric, unweighted
from ..metrics import accuracy as accuracy_metric
from ..objective import Objective
from .evaluate import MEMORY_BUDGET, evaluate, evaluate_view
from .inputs import data_size

EPOCH_LOSS = "epoch_loss"
#: network2.py's four series (its ``monitor_*`` flags): ``fit(..., monitor=jreg.train.NETWORK2)``.
NETWORK2 = ("training_cost", "training_accuracy", "evaluation_cost", "evaluation_accuracy")
SIDES = ("training", "evaluation")


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
    # what the run could measure, for the hints of series it does not (Monitor.fix)
    has_evaluation: bool = False
    streamed: bool = False
    classes: bool = False
    objective_metrics: bool = True  # the objective is one from jreg.objective (metrics need its apply)
    default_metrics: bool = True  # Evaluation(default_metrics=...): the default metrics were kept

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
        self,
        objective: Callable[..., Any],
        params: Params,
        model_state: ModelState,
        train: Batch,
        evaluation,
        step,
        views: dict[str, Any] | None = None,
    ) -> Metrics:
        """The wanted figures on the training data and on the held-out data, in evaluation mode.

        ``views``: one member's own examples (per-member data, :mod:`jreg.train.members`): ``{"training":
        index | (index, weight) | None, "evaluation": the same}``, a side with a view measured on
        ``train[index]`` (an ``index`` alone: with :func:`evaluate`'s arithmetic; padded with ``weight`` 0:
        each example on its own, ``views["n_train"]`` then the member's training-set size)."""
        out: Metrics = {}
        for prefix, data in (("training", train), ("evaluation", evaluation)):
            cost, metrics = self.on(prefix)
            view = None if views is None else views.get(prefix)
            if view is not None and (cost or metrics):
                out.update(self._measure_view(objective, params, model_state, train, view, views, step, prefix))
                continue
            if data is None or not (cost or metrics):
                continue
            out.update(
                evaluate(
                    objective,
                    params,
                    model_state,
                    data,
                    **self._options(cost, metrics, step, prefix),
                    penalty_scale=self.penalty_scale(data) if cost else None,
                )
            )
        return out

    def _measure_view(self, objective, params, model_state, train, view, views, step, prefix) -> Metrics:
        """One side measured on one member's own examples (exact weighted means; its own sizes)."""
        cost, metrics = self.on(prefix)
        if not isinstance(view, tuple):  # one size: the member's set measured as fit measures it
            n_train = self.n_train if views.get("training") is None else int(views["training"].shape[0])
            scale = None
            if cost and self.cost_convention != "jreg":  # network2: n_train / len(set), this member's sizes
                scale = penalty_scale(self.cost_convention, n_train, int(view.shape[0]))
            return evaluate(
                objective,
                params,
                model_state,
                train,
                **self._options(cost, metrics, step, prefix),
                penalty_scale=scale,
                index=view,
            )
        scale = None
        if cost and self.cost_convention != "jreg":  # network2: n_train / len(set), this member's sizes
            scale = views["n_train"] / jnp.sum(view[1])
        return evaluate_view(
            objective,
            params,
            model_state,
            train,
            view[0],
            view[1],
            **self._options(cost, metrics, step, prefix),
            penalty_scale=scale,
        )

    def _options(self, cost: bool, metrics: Any, step: Any, prefix: str) -> dict[str, Any]:
        """The keywords every evaluation of one side (``prefix``) shares, whatever data it measures."""
        return dict(cost=cost, parts=prefix == "training", metrics=metrics, batch_size=self.batch_size,
                    smallest=self.smallest, memory=self.memory, step=step, prefix=f"{prefix}_")  # fmt: skip

    def penalty_scale(self, data: Batch) -> float | None:
        """The factor on the params' penalty in a cost on ``data`` (``None``: none, the objective as it is)."""
        if self.cost_convention == "jreg":
            return None
        return penalty_scale(self.cost_convention, self.n_train, data_size(data, "evaluation data"))

    def fix(self, name: str) -> str:
        """Why series ``name`` is not measured in this run, and what measures it (for error messages)."""
        side, _, what = name.partition("_")
        if name in self.wanted:
            return f"{name!r} is measured"
        if side == "evaluation" and not self.has_evaluation:
            return "evaluation data is needed: pass held-out data, evaluation=(x_val, y_val)"
        if side == "training" and self.streamed:
            return (
                "it is measured on the whole training set, which a stream does not hold; watch "
                f"{EPOCH_LOSS!r} (the mean training objective over each epoch) or an evaluation series instead"
            )
        if side in SIDES and what not in ("cost", *self.metrics):
            return self.missing_metric(what)
        if side in SIDES or name == EPOCH_LOSS:
            asked = sorted(self.wanted | {name})
            return f"monitor= leaves it out; ask for it: monitor={asked}"
        return f"there is no such series; this run can measure {sorted(self.available)}"

    def missing_metric(self, what: str) -> str:
        """Why metric ``what`` is not one of this run's, and how to measure it."""
        ask = f"give it: Evaluation(data, metrics={{{what!r}: f}})"
        if what == "accuracy" and not self.objective_metrics:
            return "accuracy needs an objective from jreg.objective (its apply gives the outputs)"
        if what == "accuracy" and self.classes and not self.default_metrics:
            return (
                "Evaluation(default_metrics=False) dropped the default accuracy; keep it with "
                "default_metrics=True (metrics= then adds to it)"
            )
        if what == "accuracy" and not self.classes:
            return f"the targets are not classes (integer labels or one-hot rows), so accuracy is not measured; {ask}"
        return f"{what!r} is not one of this run's metrics {sorted(self.metrics)}; {ask}"

    @property
    def available(self) -> frozenset[str]:
        """Every series this run could measure."""
        sides = [
            s for s in SIDES if (s != "training" or not self.streamed) and (s != "evaluation" or self.has_evaluation)
        ]
        return frozenset({EPOCH_LOSS} | {f"{p}_{m}" for p in sides for m in ("cost", *self.metrics)})

    def shown(self, values: dict[str, Any]) -> list[str]:
        """The series a progress line shows: the running loss, then network2.py's order (costs and metrics, not
        parts)."""
        names = [EPOCH_LOSS] + [f"{p}_{m}" for p in SIDES for m in ("cost", *self.metrics)]
        return [n for n in names if n in values]


def weighted_targets(objective: Any) -> bool:
    """Whether the objective's targets are ``(targets, weights)`` pairs (a :func:`jreg.losses.weighted` loss)."""
    return isinstance(objective, Objective) and getattr(objective.loss, "weighted_targets", False) is True


def default_metrics(objective: Any, classes: bool) -> dict[str, Metric]:
    """Accuracy for classification (on the plain targets of a weighted loss); nothing otherwise."""
    if not (isinstance(objective, Objective) and classes):
        return {}
    return {"accuracy": Metric(unweighted(accuracy_metric) if weighted_targets(objective) else accuracy_metric)}


def default_series(metrics: Iterable[str], has_evaluation: bool) -> tuple[str, ...]:
    """What ``monitor=None`` measures: ``epoch_loss`` and, with held-out data, every evaluation series.

    The same for in-memory and streamed training data; the training-set series are measured only when asked.
    """
    return (EPOCH_LOSS, *((f"evaluation_{m}" for m in ("cost", *metrics)) if has_evaluation else ()))


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
    streamed: bool = False,
    defaults: bool = True,
    given: Iterable[str] = (),
) -> Monitor:
    """Resolve ``fit``'s ``monitor=`` against what this run can measure; a clear error otherwise.

    ``streamed``: the training data are a stream (no training-set series); ``defaults``: the default metrics
    were kept (``Evaluation.default_metrics``), for the hints; ``given``: the names of the metrics the user gave
    (``Evaluation.metrics``), which the default monitoring would leave unmeasured without evaluation data.
    """
    _check_objective(objective, metrics, cost_convention, n_train)
    options = dict(
        cost_convention=cost_convention,
        n_train=n_train,
        has_evaluation=has_evaluation,
        streamed=streamed,
        classes=classes,
        objective_metrics=isinstance(objective, Objective),
        default_metrics=defaults,
    )
    given = sorted(given)
    if monitor is None and given and not has_evaluation:
        asked = [EPOCH_LOSS, *(f"training_{m}" for m in given)]
        raise JregError(
            f"Evaluation(metrics=...) gives {given} but no evaluation data, and the default monitoring measures "
            "metrics on the evaluation data only (on the whole training set they take a second pass over it "
            f"after every epoch); pass held-out data, Evaluation((x_val, y_val), metrics=...), or ask for the "
            f"training-set series: monitor={asked}"
        )
    if monitor is None:
        return Monitor(frozenset(default_series(metrics, has_evaluation)), metrics, batch_size, smallest, **options)
    wanted = _wanted(monitor, metrics)
    probe = Monitor(frozenset(), metrics, batch_size, smallest, **options)
    missing = sorted(wanted - probe.available)
    if missing:
        raise JregError(f"monitor asks for {missing}, but {probe.fix(missing[0])}")
    return Monitor(frozenset(wanted), metrics, batch_size, smallest, **options)


def _check_objective(objective: Any, metrics: dict[str, Metric], cost_convention: str, n_train: int | None) -> None:
    """Metrics and a cost convention other than jreg's need a :func:`jreg.objective` (and the latter a size)."""
    if metrics and not isinstance(objective, Objective):
        raise JregError("metrics need an objective from jreg.objective (its apply gives the outputs)")
    if cost_convention != "jreg" and not isinstance(objective, Objective):
        raise JregError(
            f"cost_convention={cost_convention!r} rescales the penalty on the params, which only an objective "
            "from jreg.objective tells apart from the data cost; use cost_convention='jreg' with this objective"
        )
    if cost_convention != "jreg" and n_train is None:
        raise JregError(f"cost_convention={cost_convention!r} needs the training set's size")


def _wanted(monitor: Iterable[str] | str, metrics: dict[str, Metric]) -> set[str]:
    """The series ``monitor=`` names, each a known one."""
    if isinstance(monitor, str):
        monitor = (monitor,)
    try:
        wanted = set(monitor)
    except TypeError as exc:
        raise JregError(f"monitor must be a sequence of series names, got {monitor!r}") from exc
    if not all(isinstance(name, str) for name in wanted):
        raise JregError(f"monitor must be a sequence of series names (str), got {monitor!r}")
    known = set(NETWORK2) | {EPOCH_LOSS} | {f"{p}_{m}" for p in SIDES for m in metrics}
    unknown = wanted - known
    if unknown:
        raise JregError(f"monitor must name some of {sorted(known)}, got unknown {sorted(unknown)}")
    return wanted
