"""Per-example costs ``C(outputs, targets) -> (batch,)``.

Each loss returns one value per example (the objective averages them over the
batch). Classification ``targets`` may be integer class labels of shape
``(batch,)`` or float targets (one-hot, or soft) of shape ``(batch, classes)``;
regression targets (for :func:`quadratic`) are float values of the outputs'
shape, ``(batch,)`` or ``(batch, d)``, and ``(batch,)`` also fits outputs
``(batch, 1)``. Anything else raises a :class:`jreg.JregError` naming both shapes.

Which cross-entropy is which:

* :func:`softmax_cross_entropy` (the book's :func:`log_likelihood`):
  ``-sum_j y_j ln softmax(z)_j``, one class per example. This is what optax
  (``softmax_cross_entropy``) and PyTorch (``nn.CrossEntropyLoss``) call
  cross-entropy.
* :func:`sigmoid_cross_entropy` (the book's :func:`cross_entropy`):
  ``sum_j [-y_j ln s(z_j) - (1 - y_j) ln(1 - s(z_j))]``, each output an
  independent yes/no: optax's ``sigmoid_binary_cross_entropy`` summed over
  the outputs, PyTorch's ``nn.BCEWithLogitsLoss`` with ``reduction="sum"``
  per example.

``cross_entropy`` and ``log_likelihood`` keep Nielsen's names (network2.py's
``CrossEntropyCost`` is the *sigmoid* one); code coming from optax or PyTorch
should read ``softmax_cross_entropy`` where it wrote "cross-entropy".

Integer labels are checked against ``[0, classes)`` whenever their values are
known (outside ``jit``). Inside ``jit`` they cannot be checked, so an
out-of-range label makes that example's loss NaN rather than silently zero.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_classes, check_nonnegative_scalar, check_one_hot_size, is_concrete
from ._errors import JregError, JregTypeError


def one_hot(labels: Any, classes: int, dtype: Any = jnp.float32) -> jax.Array:
    """Integer labels ``(N,)`` -> one-hot targets ``(N, classes)`` of ``dtype`` (any numeric or bool dtype),
    checking the range.

    ``classes`` is a positive ``int`` (not bool) of at most ``2**31 - 1``, and
    ``labels.size * classes`` at most ``2**31`` elements (8 GiB as float32):
    a larger count is a :class:`JregError` before anything is allocated.
    """
    classes = check_classes(classes, "classes")
    labels = _as_array(labels, "labels")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise JregTypeError(f"labels must be integers, got dtype {labels.dtype}")
    try:
        resolved = jnp.dtype(dtype)
    except Exception as exc:  # noqa: BLE001 - NumPy and JAX raise TypeError or ValueError by dtype spelling
        raise JregTypeError(f"dtype must be a numeric or bool dtype such as jnp.float32, got {dtype!r}") from exc
    if not (jnp.issubdtype(resolved, jnp.number) or jnp.issubdtype(resolved, jnp.bool_)):
        raise JregTypeError(f"dtype must be a numeric or bool dtype such as jnp.float32, got {resolved}")
    check_one_hot_size(classes, labels, "classes")
    _check_label_range(labels, classes, "labels")
    return jax.nn.one_hot(labels, classes, dtype=resolved)


def _as_array(x: Any, name: str) -> Any:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    if isinstance(x, (str, bytes)):  # jnp.asarray reads some strings as a dtype spelling (',' a SyntaxError)
        raise JregTypeError(f"{name} must be an array, got {type(x).__name__} {x[:40]!r}")
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError, OverflowError) as exc:
        raise JregTypeError(f"{name} must be an array, got {type(x).__name__}") from exc


def _check_label_range(labels: Any, classes: int, name: str) -> None:
    if is_concrete(labels) and labels.size:
        values = np.asarray(labels)
        lo, hi = values.min(), values.max()
        if lo < 0 or hi >= classes:
            raise JregError(f"{name} must lie in [0, {classes}) to match {classes} outputs, got values in [{lo}, {hi}]")


def _float_targets(outputs: Any, targets: Any, name: str) -> jax.Array:
    """Float targets in the outputs' shape: the same shape, or ``(N,)`` against ``(N, 1)`` either way.

    The one reshape allowed is a trailing axis of size 1 (a regression model's
    ``Dense(1)`` against targets ``(N,)``); anything else is refused rather than
    broadcast (``(N,)`` minus ``(N, 1)`` would silently make ``(N, N)``).
    """
    out_shape, shape = tuple(outputs.shape), tuple(targets.shape)
    if shape == out_shape:
        return targets
    if len(out_shape) >= 2 and out_shape[-1] == 1 and shape == out_shape[:-1]:
        return targets[..., None]
    if len(shape) >= 2 and shape[-1] == 1 and shape[:-1] == out_shape:
        return targets[..., 0]
    raise JregError(
        f"{name} given as float (one-hot) targets must have shape {out_shape} to match the outputs {out_shape}, "
        f"got {shape}; integer labels must have shape {out_shape[:-1]}"
    )


def targets_like(outputs: Any, targets: Any, name: str = "targets") -> tuple[jax.Array, jax.Array]:
    """Validate ``targets`` against ``outputs (batch, classes)``; return ``(one_hot_targets, valid)``.

    Integer ``targets`` are class labels of shape ``outputs.shape[:-1]``; float
    targets (one-hot, soft, or per-output values) have the outputs' shape, or
    ``(N,)`` against outputs ``(N, 1)``. ``valid`` is a boolean array of the
    batch shape, False only for integer labels outside ``[0, classes)`` seen
    under ``jit`` (where they cannot raise).
    """
    outputs = _as_array(outputs, "outputs")
    targets = _as_array(targets, name)
    if outputs.ndim < 1:
        raise JregError("outputs must have shape (batch, classes), got a scalar")
    classes = outputs.shape[-1]
    batch_shape = tuple(outputs.shape[:-1])
    if jnp.issubdtype(targets.dtype, jnp.integer):
        if tuple(targets.shape) != batch_shape:
            raise JregError(
                f"{name} given as integer labels must have shape {batch_shape} (one label per example) to match "
                f"the outputs {tuple(outputs.shape)}, got {tuple(targets.shape)}; float targets must have shape "
                f"{tuple(outputs.shape)}"
            )
        _check_label_range(targets, classes, name)
        valid = (targets >= 0) & (targets < classes)
        return jax.nn.one_hot(targets, classes, dtype=outputs.dtype), valid
    if jnp.issubdtype(targets.dtype, jnp.floating):
        y = _float_targets(outputs, targets, name)
        return y.astype(outputs.dtype), jnp.ones(batch_shape, dtype=bool)
    raise JregTypeError(
        f"{name} must be integer labels of shape {batch_shape} or float one-hot targets of shape "
        f"{tuple(outputs.shape)}, got dtype {targets.dtype}"
    )


def _per_example_sum(values: jax.Array) -> jax.Array:
    """Sum over every axis but the leading (example) one: ``(N, ...) -> (N,)``."""
    return jnp.sum(values, axis=tuple(range(1, values.ndim)))


def _check_outputs(outputs: Any, name: str) -> None:
    if not hasattr(outputs, "dtype"):
        raise JregTypeError(f"{name} must be an array, got {type(outputs).__name__}")
    if not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise JregTypeError(f"{name} must be floating point, got dtype {outputs.dtype}")


def _nan_where_invalid(loss: jax.Array, valid: jax.Array) -> jax.Array:
    return jnp.where(valid, loss, jnp.nan)


def cross_entropy(logits: jax.Array, targets: Any) -> jax.Array:
    """Nielsen's cross-entropy for sigmoid outputs, per example, from logits: :func:`sigmoid_cross_entropy`.

    This is *not* the softmax cross-entropy of optax and PyTorch (that one is
    :func:`softmax_cross_entropy`, the book's :func:`log_likelihood`).

    ``C = sum_j [ -y_j ln sigma(z_j) - (1 - y_j) ln(1 - sigma(z_j)) ]``, computed
    as ``sum_j [ softplus(z_j) - y_j z_j ]``, which is exact and finite for any
    ``z`` (the naive form gives ``0 * ln 0 = NaN`` once ``sigma(z)`` rounds to 1).
    Its gradient is ``dC/dz = sigma(z) - y``: the book's ``delta = a - y``.

    Args:
        logits: ``(batch, classes)`` pre-activations ``z`` of the output layer.
        targets: integer labels ``(batch,)`` or targets in [0, 1] ``(batch, classes)``
            (several may be 1: multi-label); ``(batch,)`` floats against logits ``(batch, 1)``.

    Returns:
        ``(batch,)`` costs.
    """
    _check_outputs(logits, "logits")
    y, valid = targets_like(logits, targets)
    loss = jnp.sum(jax.nn.softplus(logits) - y * logits, axis=-1)
    return _nan_where_invalid(loss, valid)


def quadratic(outputs: jax.Array, targets: Any) -> jax.Array:
    """The quadratic cost ``C = 1/2 ||a - y||^2`` per example: classification or regression.

    ``outputs`` are the activations ``a`` the cost is measured on: for the
    book's network use ``mlp(..., output_activation=jax.nn.sigmoid)``; for
    regression, the model's raw outputs. Targets: integer class labels
    ``(N,)`` (one-hot encoded against outputs ``(N, classes)``), or float
    values of the outputs' shape: ``(N,)``, ``(N, d)``, or ``(N,)`` against
    outputs ``(N, 1)``. The sum runs over every axis but the first.
    """
    _check_outputs(outputs, "outputs")
    outputs = _as_array(outputs, "outputs")
    y, valid = _values_like(outputs, targets)
    return _nan_where_invalid(0.5 * _per_example_sum((outputs - y) ** 2), valid)


def _values_like(outputs: Any, targets: Any, name: str = "targets") -> tuple[jax.Array, jax.Array]:
    """Targets as values to compare with ``outputs`` elementwise, and the per-example validity flags."""
    targets = _as_array(targets, name)
    if outputs.ndim == 0:
        raise JregError("outputs must have a leading batch axis, got a scalar")
    if jnp.issubdtype(targets.dtype, jnp.integer) and outputs.ndim >= 2:
        y, valid = targets_like(outputs, targets, name)
        # all of an example's positions valid; not reshape(n, -1), which cannot infer its axis when n is 0
        return y, valid if valid.ndim == 1 else valid.all(axis=tuple(range(1, valid.ndim)))
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        raise JregTypeError(
            f"{name} must be float values of the outputs' shape {tuple(outputs.shape)} (or integer class labels "
            f"against outputs (batch, classes)), got dtype {targets.dtype} with shape {tuple(targets.shape)}"
        )
    y = _float_targets(outputs, targets, name)
    return y.astype(outputs.dtype), jnp.ones(outputs.shape[:1], dtype=bool)


def log_likelihood(logits: jax.Array, targets: Any) -> jax.Array:
    """Negative log-likelihood of a softmax output layer, per example, from logits: :func:`softmax_cross_entropy`.

    ``C = -ln softmax(z)_y = logsumexp(z) - z_y`` for integer labels, and
    ``-sum_j y_j ln softmax(z)_j`` for one-hot or soft targets.
    """
    _check_outputs(logits, "logits")
    y, valid = targets_like(logits, targets)
    loss = -jnp.sum(y * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return _nan_where_invalid(loss, valid)


def softmax_cross_entropy(logits: jax.Array, targets: Any) -> jax.Array:
    """Softmax cross-entropy per example, from logits: what optax and PyTorch call cross-entropy.

    ``C = logsumexp(z) - z_y`` for integer labels ``(batch,)``, and
    ``-sum_j y_j ln softmax(z)_j`` for one-hot or soft targets ``(batch, classes)``.
    The same function as Nielsen's :func:`log_likelihood`; its gradient is
    ``softmax(z) - y``.
    """
    return log_likelihood(logits, targets)


def sigmoid_cross_entropy(logits: jax.Array, targets: Any) -> jax.Array:
    """Sigmoid (binary) cross-entropy summed over the outputs, per example, from logits.

    ``C = sum_j [ -y_j ln s(z_j) - (1 - y_j) ln(1 - s(z_j)) ]`` with ``s`` the
    sigmoid: every output an independent yes/no (multi-label, or binary with
    one output and targets ``(batch,)``). optax's ``sigmoid_binary_cross_entropy``
    summed over the last axis. The same function as Nielsen's :func:`cross_entropy`.
    """
    return cross_entropy(logits, targets)


def weighted(loss: Any) -> Any:
    """``loss`` with per-example weights: targets become a pair ``(targets, weights)``.

    ``weighted(loss)(outputs, (y, w)) = w * loss(outputs, y)`` with ``w`` of shape
    ``(batch,)``, so the objective's mean over the batch is ``(1/n) sum_i w_i C_i``
    (sample weights; 0/1 weights mask examples out; normalize ``w`` yourself if
    the weights should sum to ``n``). Metrics see ``(y, w)`` too; the default
    accuracy and :func:`jreg.metrics.unweighted` take ``y`` out of the pair.
    Use it with a batch that carries the weights and a ``split``, e.g.
    ``jreg.objective(apply, weighted(softmax_cross_entropy), split=lambda b: (b["x"], (b["y"], b["w"])))``.
    """
    if not callable(loss):
        raise JregTypeError(f"loss must be a per-example loss function, got {loss!r}")

    def weighted_loss(outputs: jax.Array, targets: Any) -> jax.Array:
        if not (isinstance(targets, (tuple, list)) and len(targets) == 2):
            raise JregTypeError(
                f"a weighted loss takes targets as a pair (targets, weights), got {type(targets).__name__}"
            )
        y, w = targets
        w = _as_array(w, "weights")
        per_example = loss(outputs, y)
        if tuple(w.shape) != tuple(per_example.shape):
            raise JregError(
                f"weights must have shape {tuple(per_example.shape)} (one per example), got {tuple(w.shape)}"
            )
        if not jnp.issubdtype(w.dtype, jnp.floating) and not jnp.issubdtype(w.dtype, jnp.integer):
            raise JregTypeError(f"weights must be real numbers, got dtype {w.dtype}")
        return w.astype(per_example.dtype) * per_example

    weighted_loss.weighted_targets = True  # metrics then see the targets without the weights (jreg.metrics.unweighted)
    return weighted_loss


def labels_of(targets: Any) -> jax.Array:
    """Integer class labels from integer labels ``(N,)`` or one-hot targets ``(N, classes)``."""
    targets = _as_array(targets, "targets")
    if jnp.issubdtype(targets.dtype, jnp.integer):
        return targets
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        raise JregTypeError(
            f"targets must be integer labels (N,) or float one-hot targets (N, classes), got dtype {targets.dtype}"
        )
    if targets.ndim < 2 or targets.shape[-1] == 0:
        raise JregError(
            f"targets given as floats must be one-hot targets (N, classes) with at least one class, "
            f"got shape {tuple(targets.shape)}"
        )
    return jnp.argmax(targets, axis=-1)


def smooth_labels(outputs: jax.Array, targets: Any, alpha: Any) -> jax.Array:
    """Label smoothing: ``(1 - alpha) * one_hot(targets) + alpha / classes`` for outputs ``(batch, classes)``.

    ``targets`` are integer labels or float targets (smoothed the same way);
    ``alpha`` in ``[0, 1)``, possibly traced.
    """
    check_nonnegative_scalar(alpha, "alpha")
    if is_concrete(alpha) and float(np.asarray(alpha)) >= 1:
        raise JregError(f"alpha must be in [0, 1), got {float(np.asarray(alpha))}")
    y, valid = targets_like(outputs, targets)
    classes = outputs.shape[-1]
    smoothed = (1 - alpha) * y + alpha / classes
    return jnp.where(valid[..., None], smoothed, jnp.nan)


def label_smoothing(loss: Any, alpha: Any) -> Any:
    """``loss`` trained against smoothed targets (Szegedy et al. 2016): ``loss(outputs, smooth_labels(...))``.

    Example: ``jreg.objective(model.apply, jreg.losses.label_smoothing(jreg.losses.log_likelihood, 0.1))``.
    With ``log_likelihood`` this is the usual softmax label smoothing; with
    Nielsen's sigmoid ``cross_entropy`` every output's target becomes
    ``alpha / classes`` or ``1 - alpha + alpha / classes``.
    """
    if not callable(loss):
        raise JregTypeError(f"loss must be a per-example loss function, got {loss!r}")
    check_nonnegative_scalar(alpha, "alpha")
    if is_concrete(alpha) and float(np.asarray(alpha)) >= 1:
        raise JregError(f"alpha must be in [0, 1), got {float(np.asarray(alpha))}")

    def smoothed_loss(outputs: jax.Array, targets: Any) -> jax.Array:
        return loss(outputs, smooth_labels(outputs, targets, alpha))

    return smoothed_loss
