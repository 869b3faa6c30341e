"""Checks that run before any training: arguments, data, and the objective against the data's real shapes.

Everything here runs once, on the host, before the first compilation, so a
bad input fails in well under a second with a :class:`jreg.JregError` that
names the argument (``train`` or ``evaluation``), what was expected and what
came; shape errors are found by tracing the objective abstractly
(``jax.eval_shape``) on the data's full shapes, so they quote those shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_key, check_positive_int
from .._errors import JregError, JregTypeError
from .._types import Batch
from ..metrics import Metric
from ..objective import Objective
from . import calls
from . import optimizer as optimizer_
from .evaluate import make_chunk
from .inputs import leaf_labels
from .state import TrainState
from .step import gradient_fn, make_update


def check_loop_args(epochs: Any, batch_size: Any, key: Any, callback: Any) -> tuple[int, int]:
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_key(key)
    if callback is not None and not callable(callback):
        raise JregTypeError(f"callback must be callable callback(epoch, metrics), got {callback!r}")
    return epochs, batch_size


def _shapes(data: Any) -> str:
    return ", ".join(f"{label} {tuple(leaf.shape)}" for label, leaf in zip(leaf_labels(data), jax.tree.leaves(data)))


def _named(exc: Exception, name: str, data: Any) -> JregError:
    """``exc`` as a jreg error that says which data it came from (and its shapes, for a foreign error)."""
    message = str(exc)
    if isinstance(exc, JregError):
        text = message if message.startswith(f"{name}") else f"{name}: {message}"
        try:
            return type(exc)(text)
        except TypeError:  # an error class with a richer constructor
            return JregError(text)
    return JregError(f"{name}: the objective fails on data of shapes {_shapes(data)}: {type(exc).__name__}: {message}")


class Probe(NamedTuple):
    """What tracing the objective on a data set's shapes tells: the model's outputs and the cost's parts."""

    outputs: jax.ShapeDtypeStruct | None  # None for a plain objective (no apply to call)
    parts: tuple[str, ...]


def probe(objective: Callable[..., Any], state: TrainState, data: Batch, name: str, key: Any) -> Probe:
    """Trace the objective on the data's full shapes, in training and evaluation mode.

    Nothing is computed (``jax.eval_shape``); any failure becomes a jreg error
    naming the data (``train`` or ``evaluation``) and quoting its shapes.
    """
    keyed = calls.takes_key(objective)
    try:
        if isinstance(objective, Objective):
            objective.inputs_targets(data, name)
        _, parts, new_state = jax.eval_shape(
            lambda s, b, k: calls.call(objective, s.params, s.model_state, b, key=k, step=s.step, train=True),
            state,
            data,
            key if keyed else None,
        )
        if state.model_state is not None:
            calls.check_state_roundtrip(state.model_state, new_state)
        jax.eval_shape(
            lambda s, b: calls.call(objective, s.params, s.model_state, b, step=s.step, train=False), state, data
        )
        outputs = None
        if isinstance(objective, Objective):
            outputs = jax.eval_shape(lambda s, b: _outputs(objective, s, b), state, data)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a jreg error naming the data
        raise _named(exc, name, data) from exc
    return Probe(outputs if isinstance(outputs, jax.ShapeDtypeStruct) else None, tuple(parts))


def _outputs(objective: Objective, state: TrainState, batch: Batch) -> Any:
    inputs, _ = objective.inputs_targets(batch)
    return objective.predict(state.params, inputs, state=state.model_state, train=False)[0]


def probe_metrics(
    objective: Callable[..., Any], metrics: dict[str, Metric], state: TrainState, data: Batch, name: str
) -> None:
    """Trace every metric on the data's full shapes (nothing computed): a bad metric fails now, named."""
    if not metrics:
        return
    chunk = make_chunk(objective, cost=False, metrics=metrics)
    try:
        jax.eval_shape(
            lambda s, b: {k: v for k, (v, _) in chunk(s.params, s.model_state, b, s.step).items()}, state, data
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes a jreg error naming the data
        raise _named(exc, name, data) from exc


def probe_update(
    objective: Callable[..., Any], optimizer: Any, state: TrainState, data: Batch, batch_size: int, key: Any
) -> None:
    """Trace one training step on a mini-batch's shapes (nothing computed): the optimizer fails now, named."""
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), data)
    update = make_update(objective, optimizer, with_metrics=False)

    def one_step(s, b, k):
        return update(TrainState(s.params, optimizer.init(s.params), s.model_state, s.step), b, k)[0]

    step_key = key if calls.takes_key(objective) else None
    try:
        jax.eval_shape(one_step, state, batch, step_key)
    except JregError as exc:
        raise _named(exc, "train", data) from exc
    except Exception as exc:  # noqa: BLE001 - whose fault: the gradient's (a model or loss that fails only in
        try:  # training mode, with a key, or backward) or the optimizer's; traced again only on a failure
            jax.eval_shape(gradient_fn(objective, with_value=False), state, batch, step_key)
        except JregError as grad_exc:
            raise _named(grad_exc, "train", data) from grad_exc
        except Exception as grad_exc:  # noqa: BLE001
            raise JregError(
                f"train: the objective's gradient fails on a training mini-batch of shapes {_shapes(batch)}: "
                f"{type(grad_exc).__name__}: {grad_exc}"
            ) from grad_exc
        unsupplied = optimizer_.missing_in(exc)
        if unsupplied:  # a member of a chain asks for an argument jreg does not supply
            raise JregError(optimizer_.unsupplied_message(unsupplied)) from exc
        raise JregError(
            f"optimizer: one training step fails on these params: {type(exc).__name__}: {exc} (jreg calls "
            "optimizer.update(grads, opt_state, params), with value=, grad= and value_fn= for an optax "
            "GradientTransformationExtraArgs)"
        ) from exc


def check_opt_state(optimizer: Any, params: Any, opt_state: Any) -> None:
    """A given ``opt_state`` must have the structure, shapes and dtypes of ``optimizer.init(params)`` (checked on
    shapes alone, before any work): another optimizer's state, a state for other params or junk is a jreg error."""
    if opt_state is None:
        return
    try:
        expected = jax.eval_shape(optimizer.init, params)
    except Exception:  # noqa: BLE001 - the optimizer's own failure is named by probe_update, with its context
        return
    want, got = jax.tree.structure(expected), jax.tree.structure(opt_state)
    hint = "pass the opt_state of a run of this optimizer on these params (result.opt_state), or leave it out"
    if want != got:
        raise JregError(
            f"opt_state does not have the structure of optimizer.init(params): expected {_brief(want)}, "
            f"got {_brief(got)}; {hint}"
        )
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    for (path, leaf), value in zip(paths, jax.tree.leaves(opt_state)):
        shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
        if shape is None or dtype is None:
            raise JregTypeError(
                f"opt_state{jax.tree_util.keystr(path)} must be an array of shape {tuple(leaf.shape)} and dtype "
                f"{leaf.dtype}, got {type(value).__name__}; {hint}"
            )
        if tuple(shape) != tuple(leaf.shape) or np.dtype(dtype) != np.dtype(leaf.dtype):
            raise JregError(
                f"opt_state{jax.tree_util.keystr(path)} must have shape {tuple(leaf.shape)} and dtype {leaf.dtype} "
                f"(as optimizer.init(params) gives), got shape {tuple(shape)} and dtype {dtype}; {hint}"
            )


def _brief(treedef: Any, most: int = 160) -> str:
    text = str(treedef)
    return text if len(text) <= most else text[: most - 3] + "..."


def check_metric_names(metrics: dict[str, Metric], parts: tuple[str, ...]) -> None:
    """A metric may not take the name of one of the cost's parts (its series would replace that part's)."""
    taken = sorted(set(metrics) & set(parts))
    if taken:
        raise JregError(
            f"metric name(s) {taken} are taken by the objective's parts (series training_{taken[0]}...); "
            f"the parts are {list(parts)}: give the metric another name"
        )


def targets_of(objective: Callable[..., Any], data: Batch) -> Any:
    """The concrete targets of a data set (without the weights of a weighted loss), or None for a plain objective."""
    if not isinstance(objective, Objective):
        return None
    targets = objective.inputs_targets(data)[1]
    weighted = getattr(objective.loss, "weighted_targets", False) is True
    return targets[0] if weighted and isinstance(targets, (tuple, list)) and len(targets) == 2 else targets


def check_labels(targets: Any, outputs: jax.ShapeDtypeStruct | None, name: str) -> None:
    """Integer class labels must lie in ``[0, classes)`` for the model's ``classes`` outputs."""
    if outputs is None or not _are_labels(targets, outputs):
        return
    labels = np.asarray(targets)
    lo, hi, classes = int(labels.min()), int(labels.max()), outputs.shape[-1]
    if lo < 0 or hi >= classes:
        raise JregError(
            f"{name}: labels must lie in [0, {classes}) for a model with {classes} outputs, got values in [{lo}, {hi}]"
        )


def _are_labels(targets: Any, outputs: jax.ShapeDtypeStruct) -> bool:
    return (
        hasattr(targets, "dtype")
        and jnp.issubdtype(targets.dtype, jnp.integer)
        and len(outputs.shape) >= 2
        and tuple(targets.shape) == tuple(outputs.shape[:-1])
    )


def are_classes(targets: Any, outputs: jax.ShapeDtypeStruct | None) -> bool:
    """Whether the targets are classes: integer labels, or float rows in [0, 1] summing to 1, over >= 2 outputs."""
    if outputs is None or len(outputs.shape) < 2 or outputs.shape[-1] < 2 or not hasattr(targets, "dtype"):
        return False
    if _are_labels(targets, outputs):
        return True
    if not jnp.issubdtype(targets.dtype, jnp.floating) or tuple(targets.shape) != tuple(outputs.shape):
        return False
    y = np.asarray(targets, np.float64)
    return bool(np.all((y >= 0) & (y <= 1)) and np.allclose(y.sum(axis=-1), 1.0, atol=1e-3))
