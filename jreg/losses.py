"""Per-example costs ``C(outputs, targets) -> (batch,)``.

Each loss returns one value per example (the objective averages them over the
batch). ``targets`` may be integer class labels of shape ``(batch,)`` or
float targets (one-hot, or soft) of shape ``(batch, classes)``; anything
else raises a :class:`jreg.JregError` naming the expected shapes.

Integer labels are checked against ``[0, classes)`` whenever their values are
known (outside ``jit``). Inside ``jit`` they cannot be checked, so an
out-of-range label makes that example's loss NaN rather than silently zero.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import is_concrete
from ._errors import JregError, JregTypeError


def one_hot(labels: Any, classes: int, dtype: Any = jnp.float32) -> jax.Array:
    """Integer labels ``(N,)`` -> one-hot targets ``(N, classes)``, checking the range."""
    labels = _as_array(labels, "labels")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise JregTypeError(f"labels must be integers, got dtype {labels.dtype}")
    _check_label_range(labels, classes, "labels")
    return jax.nn.one_hot(labels, classes, dtype=dtype)


def _as_array(x: Any, name: str) -> Any:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    try:
        return jnp.asarray(x)
    except TypeError as exc:
        raise JregTypeError(f"{name} must be an array, got {type(x).__name__}") from exc


def _check_label_range(labels: Any, classes: int, name: str) -> None:
    if is_concrete(labels) and labels.size:
        values = np.asarray(labels)
        lo, hi = values.min(), values.max()
        if lo < 0 or hi >= classes:
            raise JregError(f"{name} must lie in [0, {classes}) to match {classes} outputs, got values in [{lo}, {hi}]")


def targets_like(outputs: Any, targets: Any, name: str = "targets") -> tuple[jax.Array, jax.Array]:
    """Validate ``targets`` against ``outputs (batch, classes)``; return ``(one_hot_targets, valid)``.

    ``valid`` is a boolean ``(batch,)`` array, False only for integer labels
    outside ``[0, classes)`` seen under ``jit`` (where they cannot raise).
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
                f"{name} given as integer labels must have shape {batch_shape} (one label per example), "
                f"got {tuple(targets.shape)}; one-hot targets must be float with shape {tuple(outputs.shape)}"
            )
        _check_label_range(targets, classes, name)
        valid = (targets >= 0) & (targets < classes)
        return jax.nn.one_hot(targets, classes, dtype=outputs.dtype), valid
    if jnp.issubdtype(targets.dtype, jnp.floating):
        if tuple(targets.shape) != tuple(outputs.shape):
            raise JregError(
                f"{name} given as float (one-hot) targets must have shape {tuple(outputs.shape)} to match the "
                f"outputs, got {tuple(targets.shape)}; integer labels must have shape {batch_shape}"
            )
        return targets.astype(outputs.dtype), jnp.ones(batch_shape, dtype=bool)
    raise JregTypeError(
        f"{name} must be integer labels of shape {batch_shape} or float one-hot targets of shape "
        f"{tuple(outputs.shape)}, got dtype {targets.dtype}"
    )


def _check_outputs(outputs: Any, name: str) -> None:
    if not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise JregTypeError(f"{name} must be floating point, got dtype {outputs.dtype}")


def _nan_where_invalid(loss: jax.Array, valid: jax.Array) -> jax.Array:
    return jnp.where(valid, loss, jnp.nan)


def cross_entropy(logits: jax.Array, targets: Any) -> jax.Array:
    """Nielsen's cross-entropy for sigmoid outputs, per example, from logits.

    ``C = sum_j [ -y_j ln sigma(z_j) - (1 - y_j) ln(1 - sigma(z_j)) ]``, computed
    as ``sum_j [ softplus(z_j) - y_j z_j ]``, which is exact and finite for any
    ``z`` (the naive form gives ``0 * ln 0 = NaN`` once ``sigma(z)`` rounds to 1).
    Its gradient is ``dC/dz = sigma(z) - y``: the book's ``delta = a - y``.

    Args:
        logits: ``(batch, classes)`` pre-activations ``z`` of the output layer.
        targets: integer labels ``(batch,)`` or targets in [0, 1] ``(batch, classes)``.

    Returns:
        ``(batch,)`` costs.
    """
    _check_outputs(logits, "logits")
    y, valid = targets_like(logits, targets)
    loss = jnp.sum(jax.nn.softplus(logits) - y * logits, axis=-1)
    return _nan_where_invalid(loss, valid)


def quadratic(outputs: jax.Array, targets: Any) -> jax.Array:
    """The quadratic cost ``C = 1/2 ||a - y||^2`` per example.

    ``outputs`` are the activations ``a`` the cost is measured on: for the
    book's network use ``mlp(..., output_activation=jax.nn.sigmoid)``.
    """
    _check_outputs(outputs, "outputs")
    y, valid = targets_like(outputs, targets)
    loss = 0.5 * jnp.sum((outputs - y) ** 2, axis=-1)
    return _nan_where_invalid(loss, valid)


def log_likelihood(logits: jax.Array, targets: Any) -> jax.Array:
    """Negative log-likelihood of a softmax output layer, per example, from logits.

    ``C = -ln softmax(z)_y = logsumexp(z) - z_y`` for integer labels, and
    ``-sum_j y_j ln softmax(z)_j`` for one-hot or soft targets.
    """
    _check_outputs(logits, "logits")
    y, valid = targets_like(logits, targets)
    loss = -jnp.sum(y * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return _nan_where_invalid(loss, valid)


def labels_of(targets: Any) -> jax.Array:
    """Integer class labels from integer labels ``(N,)`` or one-hot targets ``(N, classes)``."""
    targets = _as_array(targets, "targets")
    if jnp.issubdtype(targets.dtype, jnp.integer):
        return targets
    if targets.ndim < 1:
        raise JregError("targets must be labels (N,) or one-hot targets (N, classes), got a scalar")
    return jnp.argmax(targets, axis=-1)


def smooth_labels(outputs: jax.Array, targets: Any, alpha: Any) -> jax.Array:
    """Label smoothing: ``(1 - alpha) * one_hot(targets) + alpha / classes`` for outputs ``(batch, classes)``.

    ``targets`` are integer labels or float targets (smoothed the same way);
    ``alpha`` in ``[0, 1)``, possibly traced.
    """
    from ._checks import check_nonnegative_scalar

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
    from ._checks import check_nonnegative_scalar

    check_nonnegative_scalar(alpha, "alpha")
    if is_concrete(alpha) and float(np.asarray(alpha)) >= 1:
        raise JregError(f"alpha must be in [0, 1), got {float(np.asarray(alpha))}")

    def smoothed_loss(outputs: jax.Array, targets: Any) -> jax.Array:
        return loss(outputs, smooth_labels(outputs, targets, alpha))

    return smoothed_loss
