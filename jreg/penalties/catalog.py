"""The catalog of penalties on the params: :func:`l2`, :func:`l1`, :func:`elastic_net` (each optionally centered),
and the structured ones: :func:`group_lasso`, :func:`max_norm`, :func:`nuclear_norm`, :func:`spectral_norm`,
:func:`spectral_target`, :func:`orthogonality`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_nonnegative_scalar, check_positive_int, is_concrete
from .._errors import JregError, JregTypeError
from .coefficients import ByPath, ByShape, Center, is_schedule
from .masks import Mask
from .prox import _centered_prox, _prox_elastic, _prox_l1, _prox_l2
from .terms import Penalty, term


def _weighted_sum(c: Any, values: jax.Array) -> jax.Array:
    """``sum(c * values)``; a scalar ``c`` is factored out of the sum (one fewer full-size op per step)."""
    return c * jnp.sum(values) if jnp.ndim(c) == 0 else jnp.sum(c * values)


def _l2(w: jax.Array, c: Any) -> jax.Array:
    return 0.5 * _weighted_sum(c, jnp.square(w))


def _l1(w: jax.Array, c: Any) -> jax.Array:
    return _weighted_sum(c, jnp.abs(w))


def _elastic(w: jax.Array, c1: Any, c2: Any) -> jax.Array:
    return _l1(w, c1) + _l2(w, c2)


def _centered(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``fn(w - w0, *coefs)``: the formula moved to the center ``w0`` (the last resolved coefficient;
    ``None`` for a leaf without one)."""

    def centered(w: jax.Array, *args: Any) -> jax.Array:
        *coefs, w0 = args
        return fn(w if w0 is None else w - jnp.asarray(w0, w.dtype), *coefs)

    return centered


def _kind(penalty: Penalty, kind: str, groups: str | None = None) -> Penalty:
    """``penalty`` with its terms marked as the catalog's ``kind`` (see :attr:`Term.kind`)."""
    return Penalty(tuple(dataclasses.replace(t, kind=kind, groups=groups) for t in penalty.terms))


def _term_maybe_centered(fn, prox, coefs, center, mask, name, kind) -> Penalty:
    if center is None:
        return _kind(term(fn, *coefs, mask=mask, name=name, prox=prox), kind)
    if isinstance(center, (Center, ByPath, ByShape)) or is_schedule(center):
        raise JregTypeError(f"center must be a pytree of arrays matching params, got {type(center).__name__}")
    centered = term(_centered(fn), *coefs, Center(center), mask=mask, name=name, prox=_centered_prox(prox))
    return _kind(centered, kind)


def l2(c: Any, *, mask: Mask = None, name: str = "l2", center: Any = None) -> Penalty:
    """``R = c/2 * sum w^2`` over the masked leaves; adds ``c * w`` to their gradient.

    Proximal map of ``t R``: ``w / (1 + t c)``.

    Nielsen's ``lambda/(2n) * sum_w w^2`` is ``l2(lambda / n)`` with ``n`` the
    size of the training set. With plain SGD at learning rate ``eta`` the step
    becomes ``w <- (1 - eta*c) w - eta * grad C0`` (weight decay).

    ``center=params0`` gives L2-init (Kumar et al. 2023, "Maintaining Plasticity in
    Continual Learning via Regenerative Regularization"): ``R = c/2 * sum (w - w0)^2``,
    gradient ``c (w - w0)``, proximal map ``(w + t c w0) / (1 + t c)``. The paper writes
    ``lambda * ||theta - theta0||^2``: that is ``l2(2 * lambda, center=params0)``. ``center`` is
    a pytree with the structure of params, or a prefix of it (``None`` inside it: no center for
    that subtree; a number: the same center for every entry, e.g. ``1.0`` for normalization
    scales); each entry must broadcast to its leaf's shape without changing it.
    """
    return _term_maybe_centered(_l2, _prox_l2, (c,), center, mask, name, "l2")


def l1(c: Any, *, mask: Mask = None, name: str = "l1", center: Any = None) -> Penalty:
    """``R = c * sum |w|`` over the masked leaves; adds ``c * sign(w)`` to their gradient.

    Proximal map of ``t R``: soft-thresholding at ``t c``, which sets small weights exactly to zero.
    With ``center=params0`` (as :func:`l2`'s): ``R = c * sum |w - w0|``, proximal map
    ``w0 + soft_threshold(w - w0, t c)`` (weights snap exactly back to ``w0``).
    """
    return _term_maybe_centered(_l1, _prox_l1, (c,), center, mask, name, "l1")


def elastic_net(c1: Any, c2: Any, *, mask: Mask = None, name: str = "elastic_net", center: Any = None) -> Penalty:
    """``R = c1 * sum |w| + c2/2 * sum w^2`` over the masked leaves (``l1(c1) + l2(c2)`` as one term).

    Proximal map of ``t R``: ``soft_threshold(w, t c1) / (1 + t c2)``. With ``center=params0``
    (as :func:`l2`'s) both parts measure ``w - w0`` and the map is ``w0 + prox(w - w0)``.
    """
    return _term_maybe_centered(_elastic, _prox_elastic, (c1, c2), center, mask, name, "elastic_net")


# --------------------------------------------------------------------------- structured penalties


def _unit_norms(w: jax.Array, groups: str) -> jax.Array:
    """L2 norm of each unit's weights: ``"columns"`` (one per output unit, last axis) or ``"rows"`` (one per
    input unit, the second-to-last axis); every other axis (a kernel's spatial ones) is part of the group."""
    axis = w.ndim - 1 if groups == "columns" else w.ndim - 2
    others = tuple(a for a in range(w.ndim) if a != axis)
    # sqrt with a safe gradient at 0: d/dw ||w|| is undefined there; use the subgradient 0
    sq = jnp.sum(jnp.square(w), axis=others, keepdims=True)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


def _check_groups(groups: str) -> str:
    if groups not in ("columns", "rows"):
        raise JregError(
            f"groups must be 'columns' (one group per output unit) or 'rows' (per input unit), got {groups!r}"
        )
    return groups


def group_lasso(c: Any, *, groups: str = "columns", mask: Mask = None, name: str = "group_lasso") -> Penalty:
    """``R = c * sum_units ||w_unit||_2``: drives whole units to zero (group sparsity).

    For a weight matrix ``(n_in, n_out)``, ``groups="columns"`` makes one group of
    each output unit's incoming weights (removing hidden units of this layer);
    ``groups="rows"`` one of each input unit's outgoing weights (removing inputs).
    Proximal map of ``t R``: ``w_unit * max(0, 1 - t c / ||w_unit||)`` (block soft-thresholding).
    """
    _check_groups(groups)

    def fn(w, c):
        return c * jnp.sum(_unit_norms(w, groups))

    def prox(w, t, c):
        norms = _unit_norms(w, groups)
        factor = jnp.maximum(0.0, 1.0 - t * c / jnp.where(norms > 0, norms, 1.0))
        return w * jnp.where(norms > 0, factor, 0.0)

    return _kind(term(fn, c, mask=mask, name=name, prox=prox), "group_lasso", groups)


def max_norm(c: Any, *, groups: str = "columns", mask: Mask = None, name: str = "max_norm") -> Penalty:
    """The constraint ``||w_unit||_2 <= c`` for every unit (Srebro & Shraibman; dropout papers' max-norm).

    A constraint, not a cost: its value in the objective is 0 and it adds no
    gradient. Enforce it with :func:`jreg.proximal`, whose map here is the
    projection ``w_unit * min(1, c / ||w_unit||)``.
    """
    _check_groups(groups)

    def fn(w, c):
        return jnp.zeros((), w.dtype)

    def prox(w, t, c):
        del t  # a projection does not depend on the step size
        norms = _unit_norms(w, groups)
        return w * jnp.minimum(1.0, c / jnp.where(norms > 0, norms, 1.0))

    return term(fn, c, mask=mask, name=name, prox=prox)


def nuclear_norm(c: Any, *, mask: Mask = None, name: str = "nuclear_norm") -> Penalty:
    """``R = c * sum_i sigma_i(W)`` (sum of singular values) for each 2-D weight: favours low rank.

    Proximal map of ``t R``: soft-threshold the singular values at ``t c``.
    The gradient ``U V^T`` needs distinct nonzero singular values (as any
    SVD derivative). ``W`` is the leaf as a matrix ``(everything else, output units)`` (a vector ``(n,)`` the
    row ``(1, n)``, a scalar ``1 x 1``); an empty one (an axis of size 0) has no singular value: ``R = 0``.
    """

    def fn(w, c):
        return c * jnp.sum(jnp.linalg.svd(_svd_matrix(w), compute_uv=False)).astype(w.dtype)

    def prox(w, t, c):
        u, s, vt = jnp.linalg.svd(_svd_matrix(w), full_matrices=False)
        return ((u * jnp.maximum(s - t * c, 0.0)) @ vt).reshape(w.shape).astype(w.dtype)

    return term(fn, c, mask=mask, name=name, prox=prox)


def _matrix(w: jax.Array) -> jax.Array:
    """A kernel as a matrix ``(everything else, output units)``: a vector ``(n,)`` is the row ``(1, n)``, a scalar
    the ``1 x 1`` matrix, and a leaf with a zero-size axis an empty matrix (``(3, 0)`` stays ``(3, 0)``: the rows are
    counted, not inferred, since ``reshape(-1, 0)`` cannot infer them)."""
    if w.ndim == 0:
        return w.reshape(1, 1)
    return w.reshape(math.prod(w.shape[:-1]), w.shape[-1])


def _svd_matrix(w: jax.Array) -> jax.Array:
    """:func:`_matrix` in a dtype XLA's SVD takes: float16, bfloat16 and float8 kernels go up to float32.

    The SVD of the rounded weights is then exact to float32 precision; the
    results are cast back to the weights' dtype by the callers.
    """
    m = _matrix(w)
    if jnp.issubdtype(m.dtype, jnp.floating) and jnp.finfo(m.dtype).bits < 32:
        return m.astype(jnp.float32)
    return m


def spectral_norm(c: Any, *, iterations: int = 20, mask: Mask = None, name: str = "spectral_norm") -> Penalty:
    """``R = c/2 * sigma_max(W)^2`` for each weight (Yoshida & Miyato 2017), ``sigma_max`` by power iteration.

    ``iterations`` power-iteration steps from a fixed start vector (so the value
    is deterministic and differentiable through the iterations); ``W`` is a
    kernel flattened to ``(everything else, output units)`` (a vector ``(n,)`` the row ``(1, n)``, a scalar
    ``1 x 1``). An empty ``W`` (an axis of size 0) is the zero map: ``sigma_max = 0``, ``R = 0``.
    """
    iterations = check_positive_int(iterations, "iterations")

    def fn(w, c):
        sigma = _sigma_max(w, iterations)
        return 0.5 * c * sigma**2

    return term(fn, c, mask=mask, name=name)


def _sigma_max(w: jax.Array, iterations: int) -> jax.Array:
    """``sigma_max`` of :func:`_matrix` ``(w)`` by ``iterations`` power-iteration steps from a fixed start."""
    m = _matrix(w)
    v = jnp.ones((m.shape[1],), m.dtype) / jnp.sqrt(m.shape[1])
    for _ in range(iterations):
        u = m @ v
        u = u / (jnp.linalg.norm(u) + 1e-12)
        v = m.T @ u
        v = v / (jnp.linalg.norm(v) + 1e-12)
    return u @ m @ v


def spectral_target(
    c: Any,
    target: Any = 1.0,
    *,
    exponent: float = 1.0,
    iterations: int = 20,
    mask: Mask = None,
    name: str = "spectral_target",
) -> Penalty:
    """``R = c * (sigma_max(W)^k - target)^2`` for each weight: pulls the largest singular value toward
    ``target`` (default 1) from both sides; ``k = exponent`` (default 1).

    Spectral regularization for continual learning (Lewandowski et al. 2025, "Learning
    Continually by Spectral Regularization", ICLR): keeping each layer's ``sigma_max`` near 1
    sustains the trainability the network had at initialization. The paper's regularizer is
    ``lambda * sum_layers (sigma_max(W_l)^k - 1)^2``; ``exponent`` is its ``k`` (the paper also
    pulls biases toward 0: add ``l2(c, mask="*/b")`` for that). Unlike :func:`spectral_norm`
    (``c/2 * sigma_max^2``, toward 0), there is no ``1/2``: this follows the paper's form.

    ``sigma_max`` is computed exactly as :func:`spectral_norm` does: ``iterations``
    power-iteration steps from a fixed start vector, differentiated through, on the kernel
    flattened to ``(everything else, output units)``. ``target`` is a coefficient like ``c``
    (finite, ``>= 0``; a scalar, per-leaf pytree, :func:`by_path` or traced). On an empty ``W`` (an axis of
    size 0: the zero map, ``sigma_max = 0``) ``R = c * target^2``, a constant with no gradient.
    """
    iterations = check_positive_int(iterations, "iterations")
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float, np.integer, np.floating)):
        raise JregTypeError(f"exponent must be a real number, got {type(exponent).__name__}")
    if not (np.isfinite(exponent) and exponent > 0):
        raise JregError(f"exponent must be finite and > 0, got {exponent}")
    exponent = float(exponent)
    if is_concrete(target) and not isinstance(target, (ByPath, ByShape)) and np.ndim(target) == 0:
        check_nonnegative_scalar(target, f"{name}: target")

    def fn(w, c, target):
        sigma = _sigma_max(w, iterations)
        return c * jnp.square((sigma if exponent == 1.0 else sigma**exponent) - target)

    return term(fn, c, target, mask=mask, name=name)


def orthogonality(c: Any, *, mask: Mask = None, name: str = "orthogonality") -> Penalty:
    """``R = c * ||W^T W - I||_F^2`` for each weight ``W`` (kernels flattened to ``(.., n_out)``):
    pushes the output units' weight vectors toward an orthonormal set.

    A layer with no inputs, ``(0, n_out)``, gives ``c * n_out`` (``n_out`` empty weight vectors, none of norm 1,
    a constant with no gradient); one with no output units, ``(n_in, 0)``, gives 0."""

    def fn(w, c):
        m = _matrix(w)
        gram = m.T @ m
        return c * jnp.sum(jnp.square(gram - jnp.eye(gram.shape[0], dtype=m.dtype)))

    return term(fn, c, mask=mask, name=name)
