"""Transformations of an objective: batch mixing (mixup, CutMix) and sharpness-aware minimization (SAM).

Each takes a :class:`jreg.Objective` and returns another one (a subclass), so
:func:`jreg.fit`, :func:`jreg.sweep`, :func:`jreg.make_step` and the metrics
take it unchanged. They change **training** only: the objective called with a
key (or ``train=True``) is transformed; called without one (evaluation:
training and evaluation costs, accuracy) it is the plain objective. They
compose: ``jreg.sam(jreg.with_mixup(obj, 0.2), 0.05)`` computes both SAM
passes on the same mixed batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import check_classes, check_key, check_nonnegative_scalar, is_concrete
from ._errors import JregError, JregTypeError
from ._types import Batch, ModelState, Params
from .objective import Objective
from .stochastic import check_image_shape, cutmix, mixup


def _check_objective(objective: Any, what: str) -> None:
    if not isinstance(objective, Objective):
        raise JregTypeError(
            f"{what} transforms an objective from jreg.objective (it needs its model and loss), "
            f"got {type(objective).__name__}"
        )


def _fields(objective: Objective) -> dict[str, Any]:
    return {f.name: getattr(objective, f.name) for f in dataclasses.fields(Objective)}


def _without_split(objective: Objective) -> Objective:
    """The objective taking ``(inputs, targets)`` pairs: ``split`` dropped at every level of a transformation."""
    inner = getattr(objective, "inner", None)
    if isinstance(inner, Objective):
        return dataclasses.replace(objective, split=None, inner=_without_split(inner))
    return dataclasses.replace(objective, split=None)


def _training(key: Any, train: bool | None) -> bool:
    return key is not None if train is None else bool(train)


# --- mixing -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Mixed(Objective):
    """An objective that trains on mixed batches (:func:`with_mixup`, :func:`with_cutmix`)."""

    inner: Objective | None = None
    alpha: Any = 0.0
    method: str = "mixup"
    classes: int | None = None
    shape: Any = None

    def __call__(
        self,
        params: Params,
        batch: Batch,
        *,
        key: jax.Array | None = None,
        step: Any = None,
        state: ModelState = None,
        train: bool | None = None,
    ) -> Any:
        assert self.inner is not None
        if not _training(key, train):  # evaluation: the plain objective
            return self.inner(params, batch, key=key, step=step, state=state, train=train)
        if key is None:
            raise JregError(f"{self.method} in training mode (train=True) needs the step's key= to draw the mixing")
        check_key(key)
        mine, rest = jax.random.split(key)
        x, y = self.inputs_targets(batch)
        if not hasattr(x, "shape") or not hasattr(y, "shape"):
            raise JregTypeError(
                f"{self.method} mixes one input array and one target array; got inputs {type(x).__name__} "
                f"and targets {type(y).__name__}"
            )
        classes = self.classes
        if classes is None and jnp.issubdtype(y.dtype, jnp.integer):  # the model's outputs say how many
            outputs = jax.eval_shape(lambda p, s: self.predict(p, x, state=s, train=False)[0], params, state)
            classes = outputs.shape[-1]
        if self.method == "mixup":
            xm, ym = mixup(mine, x, y, self.alpha, classes=classes)
        else:
            xm, ym = cutmix(mine, x, y, self.alpha, classes=classes, shape=self.shape)
        inner = self.inner if self.split is None else _without_split(self.inner)
        return inner(params, (xm, ym), key=rest, step=step, state=state, train=train)


def _mixed(objective: Any, alpha: Any, method: str, classes: Any, shape: Any) -> Mixed:
    name = f"with_{method}"
    _check_objective(objective, name)
    check_nonnegative_scalar(alpha, "alpha")
    if classes is not None:
        classes = check_classes(classes, "classes")
    if getattr(objective.loss, "weighted_targets", False) is True:
        raise JregError(f"{name} mixes plain targets; a weighted loss's (targets, weights) pairs are not supported")
    if shape is not None:
        shape = check_image_shape(shape)
    return Mixed(**_fields(objective), inner=objective, alpha=alpha, method=method, classes=classes, shape=shape)


def with_mixup(objective: Objective, alpha: Any, *, classes: int | None = None) -> Mixed:
    """Train ``objective`` on mixup batches (Zhang et al. 2018): :func:`jreg.stochastic.mixup` with the step's key.

    While training (a key given), each batch ``(x, y)`` becomes ``(lam x + (1 -
    lam) x[perm], lam t + (1 - lam) t[perm])``, ``lam ~ Beta(alpha, alpha)``,
    ``t`` the targets as float rows; the objective's loss then sees soft
    targets, and for jreg's cross-entropies (linear in the targets) the data
    cost is ``lam L(y) + (1 - lam) L(y[perm])``, the paper's mixed loss. The
    key is split: one half mixes, the other goes to the model (dropout).
    Without a key (evaluation, accuracy) the objective is the plain one.

    Args:
        objective: from :func:`jreg.objective` (its batch split into one input
            array and one target array; not a weighted loss).
        alpha: the Beta parameter, ``>= 0`` (0: no mixing); may be traced, so
            ``jreg.sweep`` can sweep it.
        classes: the number of classes for integer labels; by default the
            model's number of outputs.
    """
    return _mixed(objective, alpha, "mixup", classes, None)


def with_cutmix(objective: Objective, alpha: Any, *, classes: int | None = None, shape: Any = None) -> Mixed:
    """Train ``objective`` on CutMix batches (Yun et al. 2019): :func:`jreg.stochastic.cutmix` with the step's key.

    As :func:`with_mixup`, with a random box of the paired image pasted in and
    the targets mixed by the kept area. ``shape`` is the image shape for flat
    inputs: ``shape=28`` (or ``(28, 28)``) for MNIST's ``(N, 784)``.
    """
    return _mixed(objective, alpha, "cutmix", classes, shape)


# --- SAM ----------------------------------------------------------------------------------------------------------


def _global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True, eq=False)
class SAM(Objective):
    """An objective whose training gradient is the SAM gradient (:func:`sam`)."""

    inner: Objective | None = None
    rho: Any = 0.0
    penalty_in_ascent: bool = True
    eps: float = 1e-12

    def __call__(
        self,
        params: Params,
        batch: Batch,
        *,
        key: jax.Array | None = None,
        step: Any = None,
        state: ModelState = None,
        train: bool | None = None,
    ) -> Any:
        assert self.inner is not None
        inner = self.inner

        def call(p: Params) -> Any:
            return inner(p, batch, key=key, step=step, state=state, train=train)

        if not _training(key, train):
            return call(params)
        w = jax.lax.stop_gradient(params)  # nothing below is differentiated by an outer jax.grad
        rho = jnp.asarray(self.rho, jnp.result_type(*jax.tree.leaves(w)))

        def both(p: Params) -> Any:
            out = call(p)
            return (out[0], out[1]["data"]), out

        (total, _), pullback, out = jax.vjp(both, w, has_aux=True)
        one, zero = jnp.ones_like(total), jnp.zeros_like(total)
        g_total = pullback((one, zero))[0]
        if self.penalty_in_ascent:  # SAM of the whole objective J: grad J(w + rho gJ/||gJ||)
            g, value = g_total, lambda p: call(p)[0]
        else:  # SAM of the data cost L only: grad L(w + rho gL/||gL||) + grad (J - L)(w)
            g, value = pullback((zero, one))[0], lambda p: call(p)[1]["data"]
        scale = rho / (_global_norm(g) + self.eps)
        w_adv = jax.tree.map(lambda leaf, d: leaf + (scale * d).astype(leaf.dtype), w, g)
        g_adv = jax.grad(value)(w_adv)
        grad = g_adv if self.penalty_in_ascent else jax.tree.map(lambda a, b, c: a - b + c, g_total, g, g_adv)
        # value J(w), gradient `grad`: a linear surrogate around the (stopped) params
        surrogate = total + sum(
            jnp.vdot(d, p - q).astype(total.dtype)
            for d, p, q in zip(jax.tree.leaves(grad), jax.tree.leaves(params), jax.tree.leaves(w))
        )
        return (surrogate, *out[1:])


def sam(objective: Objective, rho: Any, *, penalty_in_ascent: bool = True, eps: float = 1e-12) -> SAM:
    """Sharpness-aware minimization (Foret, Kleiner, Mobahi, Neyshabur 2021, "Sharpness-Aware Minimization
    for Efficiently Improving Generalization"), as a transformation of the objective.

    While training (a key given, or ``train=True``) the returned objective's
    *gradient* is the first-order SAM gradient

        ``g = grad J(w)``,  ``e = rho * g / (||g||_2 + eps)``,  ``g_SAM = grad J(w + e)``

    (``||.||_2`` the global L2 norm over every leaf of the params; the
    dependence of ``e`` on ``w`` is dropped, the paper's approximation), so any
    optax optimizer applied to it is SAM-<optimizer>. Its *value* (the reported
    loss, and every part) is the plain objective at ``w``, ``J(w)``, not the
    perturbed one. Without a key (evaluation, accuracy) it is the plain objective.

    Args:
        objective: from :func:`jreg.objective`; any penalty, activity and
            input penalty, dropout (both passes get the same key, so the same
            dropout masks), stateful models (both passes start from the same
            state; the new state returned is the first pass's, at ``w``).
        rho: the radius, ``>= 0``; ``rho = 0`` is plain training. May be
            traced, so ``jreg.sweep`` sweeps it in one program.
        penalty_in_ascent: ``True`` (default): SAM of the whole objective
            ``J = L + R`` (every regularizer is in the ascent step and is
            evaluated at ``w + e`` in the descent step, as in the reference
            implementation, whose loss includes weight decay). ``False``: the
            paper's equation (1), sharpness of the data cost ``L`` only:
            ``e`` from ``grad L(w)``, gradient ``grad L(w + e) + grad R(w)``
            (``R = J - L``: the penalty and the activity and input terms).
        eps: added to the norm, so that a zero gradient gives ``e = 0``.

    Each training step costs two forward and two backward passes (three
    backward with ``penalty_in_ascent=False``).
    """
    _check_objective(objective, "sam")
    check_nonnegative_scalar(rho, "rho")
    if not isinstance(penalty_in_ascent, bool):
        raise JregTypeError(f"penalty_in_ascent must be True or False, got {penalty_in_ascent!r}")
    check_nonnegative_scalar(eps, "eps")
    if is_concrete(eps) and not float(eps) > 0:
        raise JregError(f"eps must be > 0, got {eps}")
    return SAM(**_fields(objective), inner=objective, rho=rho, penalty_in_ascent=penalty_in_ascent, eps=eps)


__all__ = ["SAM", "Mixed", "sam", "with_cutmix", "with_mixup"]
