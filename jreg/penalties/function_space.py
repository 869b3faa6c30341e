"""Penalties on the function rather than the params: input penalties (derivatives with respect to the inputs:
:func:`input_gradient`, :func:`jacobian_norm`) and output penalties (:func:`z_loss`). They go into
:func:`jreg.objective`'s ``input_penalty`` and ``output_penalty``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_nonnegative_scalar, check_positive_int
from .._errors import JregError
from .coefficients import _at_step, is_schedule

# --------------------------------------------------------------------------- input penalties


@dataclasses.dataclass(frozen=True, eq=False)
class InputPenalty:
    """A penalty on derivatives with respect to the inputs; goes into :func:`jreg.objective`'s ``input_penalty``.

    ``fn(forward, loss, x, y, key, c) -> scalar`` where ``forward(x) -> outputs``
    is the model with its params bound (in training mode when the objective has
    a key: the same dropout mask as the data term). Its gradient with respect
    to the params needs the derivative of a derivative: ``jax.grad`` of the
    objective differentiates through it (double backprop).
    """

    name: str
    fn: Callable[..., jax.Array]
    c: Any

    def __call__(self, forward: Callable[..., Any], loss: Callable[..., Any], x: Any, y: Any, *, key=None, step=None):
        shape = getattr(x, "shape", None)
        if shape is not None and (len(shape) == 0 or shape[0] == 0):
            # a mean over the batch's examples: none (or no batch axis) leaves it undefined (it would be NaN);
            # an objective refuses an empty batch before it gets here, a direct call is refused here
            raise JregError(
                f"{self.name}: x (the inputs) must have a leading batch axis holding at least one example, "
                f"got shape {tuple(shape)}"
            )
        (c,) = _at_step(self.name, (self.c,), step)
        return self.fn(forward, loss, x, y, key, c)


def _input_penalty(c: Any, name: str, fn: Callable[..., jax.Array]) -> InputPenalty:
    if not isinstance(name, str) or not name or name in ("data", "penalty", "loss"):
        raise JregError(f"name must be a non-empty str other than 'data', 'penalty' or 'loss', got {name!r}")
    if not is_schedule(c):
        check_nonnegative_scalar(c, f"{name}: coefficient")
    return InputPenalty(name, fn, c)


def input_gradient(c: Any, *, name: str = "input_gradient") -> InputPenalty:
    """Double backpropagation (Drucker & LeCun 1992): ``R = c/2 * mean_i ||dC_i/dx_i||^2``.

    ``C_i`` is example ``i``'s cost and ``x_i`` its input; the gradient is that
    of ``sum_i C_i`` with respect to the batch of inputs, which gives each
    example its own gradient as long as the model treats examples independently
    (no batch normalization in training mode). ``c`` is a non-negative scalar
    (possibly traced) or a schedule of the step.
    """

    def fn(forward, loss, x, y, key, c):
        del key
        g = jax.grad(lambda xx: jnp.sum(loss(forward(xx), y)))(x)
        return 0.5 * c * jnp.sum(jnp.square(g)) / x.shape[0]

    return _input_penalty(c, name, fn)


def jacobian_norm(c: Any, *, projections: int | None = None, name: str = "jacobian_norm") -> InputPenalty:
    """``R = c/2 * mean_i ||J_i||_F^2`` with ``J_i = d apply(params, x)_i / d x_i`` (Hoffman et al. 2019).

    The Jacobian of the model's outputs (logits for jreg's MLP) with respect to
    each example's input. With ``projections=None`` it is exact: one
    vector-Jacobian product per output. With ``projections=m`` it is the
    unbiased estimate ``mean_{v ~ N(0, I)} ||v^T J_i||^2`` from ``m`` random
    projections drawn from the step's key (cheaper for many outputs); without
    a key (evaluation) the exact value is used.
    """
    if projections is not None:
        projections = check_positive_int(projections, "projections")

    def fn(forward, loss, x, y, key, c):
        del loss, y
        out, vjp = jax.vjp(forward, x)
        per_example = out.shape[1:]
        if projections is None or key is None:
            n = int(np.prod(per_example))
            basis = jnp.eye(n, dtype=out.dtype).reshape((n, 1) + per_example)
            vs = jnp.broadcast_to(basis, (n,) + out.shape)
            count = 1
        else:
            vs = jax.random.normal(key, (projections,) + out.shape, out.dtype)
            count = projections
        rows = jax.vmap(lambda v: vjp(v)[0])(vs)
        return 0.5 * c * jnp.sum(jnp.square(rows)) / (count * x.shape[0])

    return _input_penalty(c, name, fn)


# --------------------------------------------------------------------------- output penalties


@dataclasses.dataclass(frozen=True, eq=False)
class OutputPenalty:
    """A penalty on the model's outputs; goes into :func:`jreg.objective`'s ``output_penalty``.

    ``fn(outputs, c) -> scalar``, a mean over the batch's examples (so evaluating in batches
    weights it by batch size like the data term). The objective passes the very outputs the
    loss sees (same forward pass, same dropout mask) and reports the value in ``parts`` under
    ``name``.
    """

    name: str
    fn: Callable[..., jax.Array]
    c: Any

    def __call__(self, outputs: Any, *, step: Any = None) -> jax.Array:
        (c,) = _at_step(self.name, (self.c,), step)
        return self.fn(outputs, c)


def z_loss(c: Any, *, name: str = "z_loss") -> OutputPenalty:
    """The output z-loss ``R = c * mean_i (log sum_j exp z_ij)^2`` on the logits ``z`` (the softmax's
    log-normalizer ``log Z``, pushed toward 0).

    PaLM (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways") uses
    ``c = 1e-4`` for training stability; ST-MoE's router z-loss (Zoph et al. 2022) is the
    same formula on router logits. ``log Z`` is over the last axis; the mean is over every
    other axis (examples, and positions for ``(batch, sequence, vocabulary)`` logits). Low-
    precision logits are reduced in float32 and the result cast back. ``c`` is a non-negative
    scalar (possibly traced, for :func:`jreg.sweep`) or a schedule of the step.
    Use it as ``jreg.objective(apply, loss, output_penalty=z_loss(1e-4))``.
    """

    def fn(z, c):
        if not hasattr(z, "ndim") or z.ndim < 2 or not jnp.issubdtype(z.dtype, jnp.floating):
            what = f"shape {tuple(z.shape)} dtype {z.dtype}" if hasattr(z, "ndim") else type(z).__name__
            raise JregError(f"{name}: the model's outputs must be floating logits (batch, ..., classes), got {what}")
        if z.size == 0:  # log Z of no classes is -inf, a mean over no examples NaN: neither is a penalty
            raise JregError(
                f"{name}: the model's outputs (logits) of shape {tuple(z.shape)} have an axis of size 0: z_loss needs "
                "at least one example and one class"
            )
        wide = z.astype(jnp.float32) if jnp.finfo(z.dtype).bits < 32 else z
        log_z = jax.nn.logsumexp(wide, axis=-1)
        return (c * jnp.mean(jnp.square(log_z))).astype(z.dtype)

    if not isinstance(name, str) or not name or name in ("data", "penalty", "loss"):
        raise JregError(f"name must be a non-empty str other than 'data', 'penalty' or 'loss', got {name!r}")
    if not is_schedule(c):
        check_nonnegative_scalar(c, f"{name}: coefficient")
    return OutputPenalty(name, fn, c)
