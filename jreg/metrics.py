"""Metrics: named figures measured on whole data sets after an epoch.

A metric is a function ``metric(outputs, targets) -> values`` with the
signature of a loss (every jreg loss is a metric too). ``outputs`` are the
model's outputs in evaluation mode, ``targets`` what the objective's ``split``
gives (``y`` for an ``(x, y)`` batch); a metric that declares a ``batch``
keyword also gets the whole batch (``metric(outputs, targets, batch=...)``),
for sample weights, masks or the inputs.

What it returns sets how the evaluation batches combine (the *reduction*):

* per-example values ``(batch,)``: their mean over every example of the data
  set (``reduction="mean"``, the default) or their sum (``"sum"``); exact
  whatever the evaluation batch size;
* one scalar per batch: the mean over batches weighted by their sizes
  (``"mean"``; equal to the data set's figure when the scalar is itself a mean
  over the batch) or the sum over batches (``"sum"``). A scalar metric that is
  not a mean (a median, an AUC) depends on the evaluation batch size.

Wrap a function in :class:`Metric` to choose the reduction; a plain function
means ``"mean"``. With a weighted loss (targets ``(y, w)``, :func:`jreg.losses.weighted`),
:func:`unweighted` gives a metric the plain targets ``y``. Built in: :func:`accuracy` (class labels or one-hot
targets), :func:`top_k_accuracy`, :func:`mse`, :func:`mae`. There is no RMSE:
the square root of a mean does not combine over batches; take the square
root of the ``mse`` series.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import check_positive_int
from ._errors import JregError, JregTypeError
from .losses import _as_array, _check_outputs, _values_like, labels_of, targets_like

REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric function and how its values combine over a data set (see the module docstring).

    Attributes:
        fn: ``fn(outputs, targets) -> (batch,) or scalar`` (optionally ``batch=`` too).
        reduction: ``"mean"`` or ``"sum"``.
    """

    fn: Callable[..., Any]
    reduction: str = "mean"

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise JregTypeError(f"a metric must be a function metric(outputs, targets), got {self.fn!r}")
        if self.reduction not in REDUCTIONS:
            raise JregError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")


def as_metrics(metrics: Any, what: str = "metrics") -> dict[str, Metric]:
    """``{name: Metric}`` from a mapping of names to functions or :class:`Metric` objects."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise JregTypeError(
            f"{what} must be a mapping from names to metric functions, e.g. {{'mse': jreg.metrics.mse}}; "
            f"got {type(metrics).__name__}"
        )
    out = {}
    for name, fn in metrics.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise JregError(f"{what}: names must be identifiers such as 'mse' (they become series names), got {name!r}")
        if name == "cost":
            raise JregError(f"{what}: 'cost' is the objective's own series; give the metric another name")
        out[name] = fn if isinstance(fn, Metric) else Metric(fn)
    return out


def unweighted(metric: Callable[..., Any]) -> Callable[..., Any]:
    """``metric`` for targets given as ``(targets, weights)`` (:func:`jreg.losses.weighted`): it sees ``targets``.

    Example: ``Evaluation(metrics={"mse": unweighted(mse)})`` with a weighted loss.
    """
    fn = metric.fn if isinstance(metric, Metric) else metric
    if not callable(fn):
        raise JregTypeError(f"metric must be a function metric(outputs, targets), got {metric!r}")

    def on_targets(outputs: jax.Array, targets: Any) -> jax.Array:
        if not (isinstance(targets, (tuple, list)) and len(targets) == 2):
            raise JregTypeError(f"unweighted: targets must be a pair (targets, weights), got {type(targets).__name__}")
        return fn(outputs, targets[0])

    return Metric(on_targets, metric.reduction) if isinstance(metric, Metric) else on_targets


def _per_example_mean(values: jax.Array) -> jax.Array:
    return jnp.mean(values, axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values


def _outputs(outputs: Any) -> jax.Array:
    outputs = _as_array(outputs, "outputs")
    _check_outputs(outputs, "outputs")
    return outputs


def _check_values_per_example(outputs: jax.Array, metric: str) -> None:
    """A metric averages each example's values: outputs with an axis of size 0 after the batch axis hold none
    (``(N, 0)``, ``(N, 0, classes)``), and a mean over no values is undefined (it would be NaN). A batch of 0
    examples is fine: it gives ``(0,)`` values."""
    if 0 in tuple(outputs.shape[1:]):
        raise JregError(
            f"{metric}: outputs of shape {tuple(outputs.shape)} hold no value per example (an axis of size 0 after "
            "the batch axis), and the mean over no values is undefined"
        )


def accuracy(outputs: jax.Array, targets: Any) -> jax.Array:
    """1.0 where the largest output is the true class, else 0.0, per example.

    ``targets``: integer labels ``(batch,)`` or one-hot (or soft) targets ``(batch, classes)``.
    Outputs with more axes (``(batch, positions, classes)``) give each example
    the fraction of its positions that are right.
    """
    outputs = _outputs(outputs)
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        raise JregError(f"accuracy needs outputs (batch, classes) with at least 2 classes, got {tuple(outputs.shape)}")
    _check_values_per_example(outputs, "accuracy")
    targets_like(outputs, targets)  # shape and range checks
    return _per_example_mean((jnp.argmax(outputs, axis=-1) == labels_of(targets)).astype(jnp.float32))


def top_k_accuracy(k: int) -> Callable[[jax.Array, Any], jax.Array]:
    """A metric: 1.0 where the true class is among the ``k`` largest outputs, per example."""
    k = check_positive_int(k, "k")

    def top_k(outputs: jax.Array, targets: Any) -> jax.Array:
        outputs = _outputs(outputs)
        if outputs.ndim < 2:
            raise JregError(f"top_k_accuracy needs outputs (batch, classes), got {tuple(outputs.shape)}")
        if k > outputs.shape[-1]:
            raise JregError(f"top_k_accuracy: k must be at most the number of classes {outputs.shape[-1]}, got {k}")
        _check_values_per_example(outputs, "top_k_accuracy")
        targets_like(outputs, targets)
        _, best = jax.lax.top_k(outputs, k)
        return _per_example_mean(jnp.any(best == labels_of(targets)[..., None], axis=-1).astype(jnp.float32))

    return top_k


def mse(outputs: jax.Array, targets: Any) -> jax.Array:
    """Mean squared error per example, ``mean_j (a_j - y_j)^2``; its mean over examples is the usual MSE.

    Targets as for :func:`jreg.losses.quadratic`: float values of the outputs'
    shape (``(N,)`` fits outputs ``(N, 1)``), or integer labels (one-hot).
    """
    outputs = _outputs(outputs)
    _check_values_per_example(outputs, "mse")
    y, _ = _values_like(outputs, targets)
    return _per_example_mean((outputs - y) ** 2)


def mae(outputs: jax.Array, targets: Any) -> jax.Array:
    """Mean absolute error per example, ``mean_j |a_j - y_j|``; targets as for :func:`mse`."""
    outputs = _outputs(outputs)
    _check_values_per_example(outputs, "mae")
    y, _ = _values_like(outputs, targets)
    return _per_example_mean(jnp.abs(outputs - y))


__all__ = ["Metric", "accuracy", "as_metrics", "mae", "mse", "top_k_accuracy", "unweighted"]
