"""Regularization in the optimizer, when that is what you want: proximal steps and decoupled weight decay,
as optax transformations that compose with any optimizer, and ``lambda_max`` for L1 grids.

The default in jreg is the coupled form: the penalty is part of the objective
and its gradient joins the data gradient. The forms here apply the
regularizer *after* the optimizer's step instead:

* :func:`proximal` ``(penalty, learning_rate)``: ``w <- prox_{η R}(w + Δ)``, where Δ
  is the optimizer's update. With ``optax.sgd(η)`` before it this is proximal
  gradient descent (ISTA): for ``l1(λ)`` soft-thresholding at ``ηλ``, which
  leaves exact zeros, unlike the subgradient of ``|w|`` in the objective.
* :func:`decoupled_weight_decay` ``(optimizer, c, learning_rate)``: the
  optimizer's update plus ``-η c w``: AdamW for Adam, and exactly coupled
  ``l2(c)`` for plain SGD. It puts the decay after the optimizer itself, so
  the ``chain(sgd(η), add_decayed_weights(c))`` mistake (which adds ``+c w``
  unscaled and makes weights *grow*) cannot happen. ``mode=`` picks how the
  decay follows the learning-rate schedule: ``"lr"`` (``η_t c w``, the
  default), ``"independent"`` (``(η_t/η_max) c w``), ``"corrected"`` (AdamC,
  ``(η_t²/η_max) c w``) or ``"cautious"`` (``η_t c w`` only where the update
  moves the weight toward zero).
* :func:`unit_norm` ``(groups)``: after the step, every selected unit's weights
  are projected back onto the unit sphere (nGPT).
* :func:`shrink_perturb` ``(shrink, noise, every, key)``: every ``every`` steps,
  ``w <- λ w + σ ε`` (Shrink & Perturb).

With Adam, a proximal step still thresholds at ``ηλ`` while Adam's own step
per coordinate is about ``η`` whatever the gradient's scale: a weight is zeroed
when Adam's move leaves it within ``ηλ`` of zero. That is a heuristic, not the
proximal method of the Adam-preconditioned problem (whose threshold would be
``ηλ / sqrt(v_i)`` per coordinate); ``tests/test_optim.py`` checks this behaviour.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._checks import check_key, check_nonnegative_scalar, check_optimizer, check_positive_int, is_concrete
from ._errors import JregError, JregTypeError
from ._tree import path_str
from .penalties import Mask, Penalty, _check_groups, _unit_norms, mask_tree

LearningRate = float | jax.Array | Callable[[jax.Array], jax.Array]
DecayMode = Literal["lr", "independent", "corrected", "cautious"]
DECAY_MODES: tuple[str, ...] = ("lr", "independent", "corrected", "cautious")


class ScheduleState(NamedTuple):
    """The step count, for learning-rate schedules."""

    count: jax.Array


def _count_init(params: Any) -> ScheduleState:
    del params
    return ScheduleState(jnp.zeros((), jnp.int32))


def _rate(learning_rate: LearningRate, count: jax.Array) -> jax.Array:
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _check_rate(learning_rate: Any) -> None:
    if not callable(learning_rate):
        check_nonnegative_scalar(learning_rate, "learning_rate")


#: while :func:`applied_proximal` runs: the penalties that :func:`proximal` steps applied (traced or not)
_APPLIED: contextvars.ContextVar[list[Penalty] | None] = contextvars.ContextVar("jreg_applied", default=None)


@contextlib.contextmanager
def applied_proximal() -> Iterator[list[Penalty]]:
    """Collect the penalties of the :func:`proximal` steps that run (or are traced) inside the block.

    How jreg tells what an opaque optax chain regularizes: it traces one
    ``optimizer.update`` (``jax.eval_shape``, nothing computed) inside the block.
    """
    seen: list[Penalty] = []
    token = _APPLIED.set(seen)
    try:
        yield seen
    finally:
        _APPLIED.reset(token)


def proximal(penalty: Penalty, learning_rate: LearningRate) -> optax.GradientTransformation:
    """An optax transformation that applies ``penalty``'s proximal map after the preceding step.

    Put it last: ``optax.chain(optax.sgd(η), jreg.proximal(jreg.penalties.l1(λ), η))``
    is proximal SGD. The new params are ``prox_{η R}(params + updates)``, with
    ``η = learning_rate`` (a number, possibly traced, or an optax schedule of
    the step count); the transformation returns the update that lands there.
    Needs ``params`` in ``update`` (optax passes them through ``chain``).
    Coefficient schedules in ``penalty`` are evaluated at the same step count.
    Leave the penalty *out* of the objective when you use this: jreg's front ends
    warn (:class:`jreg.JregWarning`) when the objective holds a term of the same
    kind on the same leaves.
    """
    if not isinstance(penalty, Penalty):
        raise JregTypeError(f"penalty must be a jreg Penalty (with proximal maps), got {type(penalty).__name__}")
    for name, t in zip(penalty.names(), penalty.terms):
        if t.prox is None:
            raise JregError(f"penalty term {name!r} has no proximal map; give term(..., prox=...) one")
    _check_rate(learning_rate)

    def update(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
        if params is None:
            raise JregError("jreg.proximal needs params: call update(updates, state, params)")
        seen = _APPLIED.get()
        if seen is not None and all(p is not penalty for p in seen):
            seen.append(penalty)
        stepped = optax.apply_updates(params, updates)
        proxed = penalty.prox(stepped, _rate(learning_rate, state.count), step=state.count)
        new_updates = jax.tree.map(lambda new, old: (new - old).astype(old.dtype), proxed, params)
        return new_updates, ScheduleState(optax.safe_increment(state.count))

    return optax.GradientTransformation(_count_init, update)


def _check_positive_scalar(value: Any, name: str) -> None:
    """A concrete ``value`` must be a finite real scalar > 0 (traced values pass)."""
    try:
        check_nonnegative_scalar(value, name)
    except JregTypeError:
        raise
    except JregError as exc:  # the same check, said for > 0
        raise JregError(str(exc).replace(">= 0", "> 0")) from None
    if is_concrete(value) and float(value) == 0:
        raise JregError(f"{name} must be > 0, got {value!r}")


def _decay_peak(mode: str, learning_rate: LearningRate, peak: Any) -> Any:
    """``η_max`` for the modes that divide by it; ``None`` for the others (which refuse a ``peak=``)."""
    if not isinstance(mode, str) or mode not in DECAY_MODES:
        raise JregError(f"mode must be one of {', '.join(repr(m) for m in DECAY_MODES)}, got {mode!r}")
    if mode in ("lr", "cautious"):
        if peak is not None:
            raise JregError(
                f"peak= is used only by mode='independent' or mode='corrected'; mode={mode!r} decays by "
                "learning_rate itself (leave peak out)"
            )
        return None
    if peak is None:
        if callable(learning_rate):
            raise JregError(
                f"mode={mode!r} with a learning-rate schedule needs peak=, the schedule's peak value η_max "
                "(jreg cannot read it from a schedule); for a constant learning_rate it is the rate itself"
            )
        peak = learning_rate
        _check_positive_scalar(peak, "peak (the constant learning_rate, taken as η_max)")
        return peak
    _check_positive_scalar(peak, "peak")
    return peak


def decoupled_weight_decay(
    optimizer: optax.GradientTransformation,
    c: Any,
    learning_rate: LearningRate,
    *,
    mask: Mask = None,
    mode: DecayMode = "lr",
    peak: Any = None,
) -> optax.GradientTransformation:
    """``optimizer``'s update ``u`` plus a decay ``-s_t c w`` on the masked leaves (default: weight matrices).

    ``η_t = learning_rate`` (a number or an optax schedule of the step count
    ``t``, counted from 0 as optax does). ``mode`` sets the decay ``s_t c w``:

    * ``"lr"`` (default): ``w <- w + u - η_t c w``. The decay scales with the
      learning rate, as in optax's ``adamw`` and PyTorch's ``AdamW``:
      ``decoupled_weight_decay(optax.adam(η), c, η)`` is AdamW with
      ``weight_decay=c``, and ``decoupled_weight_decay(optax.sgd(η), c, η)`` is
      exactly SGD on the objective with ``l2(c)``.
    * ``"independent"``: ``w <- w + u - (η_t/η_max) c w``: the decay follows the
      schedule's multiplier only, not the peak learning rate (the AdamW paper's
      form, Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization";
      Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
      training instabilities"; Kosson et al. 2025). Then ``c`` is the decay per
      step at the peak, and tuning ``η`` does not change it.
    * ``"corrected"``: ``w <- w + u - (η_t²/η_max) c w`` (AdamC: Defazio et al.
      2025, "Why Gradients Rapidly Increase Near the End of Training"): the
      coefficient is ``c_t = c η_t/η_max``, applied as AdamW applies it
      (``η_t c_t``), so that the steady-state norm of normalized layers' weights,
      which goes as ``sqrt(η_t / c_t)``, holds as the learning rate decays. At
      the peak it is AdamW; below, it decays less. The paper applies it to
      layers followed by a normalization: choose them with ``mask``.
    * ``"cautious"``: ``w <- w + u - η_t c 1[u w <= 0] w`` per coordinate
      (Chen et al. 2025, "Cautious Weight Decay"). In the paper,
      ``x <- x - η_t (d + λ 1[d x >= 0] x)`` with ``d`` the optimizer's descent
      direction (Adam's ``m̂/(sqrt(v̂)+ε)``, the gradient for SGD); here ``u =
      -η_t d`` is what the optimizer adds to ``w``, so the decay acts where
      ``u`` and the decay push the same way (toward zero), or ``u`` is 0.

    ``η_max`` (modes ``"independent"`` and ``"corrected"``) is ``peak=``, the
    schedule's peak value; with a constant ``learning_rate`` it defaults to the
    rate itself (so ``"independent"`` decays ``c w`` each step). A schedule
    without ``peak=`` is refused (jreg cannot read a schedule's peak), and so is
    ``peak=`` with the modes that do not use it. ``c`` and ``peak`` may be traced
    (swept with ``jax.vmap``).
    """
    check_optimizer(optimizer)
    check_nonnegative_scalar(c, "c")
    _check_rate(learning_rate)
    eta_max = _decay_peak(mode, learning_rate, peak)

    def decayed(u: jax.Array, w: jax.Array, rate: jax.Array) -> jax.Array:
        if mode == "lr":
            return (u - rate * c * w).astype(u.dtype)  # unchanged from before modes existed
        if mode == "independent":
            return (u - (rate / eta_max) * c * w).astype(u.dtype)
        if mode == "corrected":
            return (u - (rate * rate / eta_max) * c * w).astype(u.dtype)
        return (u - jnp.where(u * w <= 0, rate * c * w, 0)).astype(u.dtype)  # cautious

    def update(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
        if params is None:
            raise JregError("decoupled weight decay needs params: call update(updates, state, params)")
        flags = mask_tree(params, mask)
        rate = _rate(learning_rate, state.count)
        updates = jax.tree.map(lambda u, w, on: decayed(u, w, rate) if on else u, updates, params, flags)
        return updates, ScheduleState(optax.safe_increment(state.count))

    return optax.chain(optimizer, optax.GradientTransformation(_count_init, update))


def _selected(params: Any, mask: Mask, what: str, *, min_ndim: int = 0) -> list[bool]:
    """The mask's flags in flattening order; a selected leaf of rank below ``min_ndim`` is a JregError."""
    flags = jax.tree.leaves(mask_tree(params, mask))
    for (path, leaf), on in zip(jax.tree_util.tree_flatten_with_path(params)[0], flags):
        if on and jnp.ndim(leaf) < min_ndim:
            raise JregError(
                f"{what}: leaf {path_str(path)!r} of shape {tuple(jnp.shape(leaf))} is selected but has no "
                f"rows and columns (rank {jnp.ndim(leaf)} < {min_ndim}); leave it out with mask="
            )
    return flags


def unit_norm(groups: str = "columns", *, mask: Mask = None, eps: float = 1e-12) -> optax.GradientTransformation:
    """An optax transformation that puts each selected unit's weights back on the unit sphere after the step.

    Chain it after the optimizer: ``optax.chain(optax.adam(η), jreg.unit_norm())``.
    The new params are ``project(w + u)`` with ``project(v)_unit = v_unit /
    max(||v_unit||_2, eps)``: every unit has norm exactly 1 (the equality form
    of :func:`jreg.penalties.max_norm`, as in nGPT: Loshchilov et al. 2025,
    "nGPT: Normalized Transformer with Representation Learning on the
    Hypersphere", which renormalizes its matrices after each step). The
    transformation returns the update ``project(w + u) - w`` that lands there.
    ``groups`` as in ``max_norm``: ``"columns"`` (one unit per output unit, the
    last axis: each column of a ``(n_in, n_out)`` matrix) or ``"rows"`` (per
    input unit, the second-to-last axis); a kernel's other axes belong to the
    unit. A unit of norm below ``eps`` is divided by ``eps`` (an all-zero unit
    stays zero: it has no direction). ``mask`` selects the leaves (default:
    weight matrices); a selected leaf of rank < 2 is refused. Needs ``params``.
    """
    _check_groups(groups)
    _check_positive_scalar(eps, "eps")

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        if params is None:
            raise JregError("jreg.unit_norm needs params: call update(updates, state, params)")
        flags = _selected(params, mask, "unit_norm", min_ndim=2)

        def project(u: jax.Array, w: jax.Array, on: bool) -> jax.Array:
            if not on:
                return u
            v = w + u
            norms = _unit_norms(v, groups)
            return (v / jnp.maximum(norms, eps) - w).astype(u.dtype)

        treedef = jax.tree.structure(params)
        out = [project(u, w, on) for u, w, on in zip(treedef.flatten_up_to(updates), jax.tree.leaves(params), flags)]
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def shrink_perturb(
    shrink: Any, noise: Any, every: int, key: jax.Array, *, mask: Mask = None
) -> optax.GradientTransformation:
    """Every ``every`` steps, the params after the step become ``λ w + σ ε``, ``ε ~ N(0, 1)`` (Shrink & Perturb).

    Ash & Adams 2020, "On Warm-Starting Neural Network Training": shrinking
    the weights toward zero and adding a little noise restores the ability to
    generalize that warm-started training loses. Chain it after the optimizer:
    ``optax.chain(optax.sgd(η), jreg.shrink_perturb(0.4, 1e-3, 1000, key))``.
    With ``t`` the step count (from 0), after step ``t`` with ``(t + 1) %
    every == 0`` the new params are ``λ (w + u) + σ ε`` on the selected
    leaves (``u`` the optimizer's update; default mask: weight matrices);
    at every other step the update passes unchanged. ``λ = shrink`` and ``σ =
    noise`` are >= 0 and may be traced (swept with ``jax.vmap``). The noise is
    deterministic: leaf ``i`` (in flattening order) draws from
    ``fold_in(fold_in(key, t + 1), i)``, so a run repeats exactly. State: the
    step count.
    """
    check_nonnegative_scalar(shrink, "shrink")
    check_nonnegative_scalar(noise, "noise")
    every = check_positive_int(every, "every")
    key = check_key(key, "key")

    def update(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
        if params is None:
            raise JregError("jreg.shrink_perturb needs params: call update(updates, state, params)")
        flags = _selected(params, mask, "shrink_perturb")
        step = optax.safe_increment(state.count)
        treedef = jax.tree.structure(params)
        us, ws = treedef.flatten_up_to(updates), jax.tree.leaves(params)

        def reset(us: list[jax.Array]) -> list[jax.Array]:
            at = jax.random.fold_in(key, step)
            out = []
            for i, (u, w, on) in enumerate(zip(us, ws, flags)):
                if on:
                    eps = jax.random.normal(jax.random.fold_in(at, i), jnp.shape(w), jnp.result_type(w))
                    u = (shrink * (w + u) + noise * eps - w).astype(u.dtype)
                out.append(u)
            return out

        if is_concrete(step):  # outside jit: a Python branch (an eager lax.cond would compile each step)
            new = reset(us) if int(step) % every == 0 else list(us)
        else:
            new = jax.lax.cond(step % every == 0, reset, lambda us: list(us), list(us))
        return jax.tree.unflatten(treedef, new), ScheduleState(step)

    return optax.GradientTransformation(_count_init, update)


def lambda_max(objective: Callable[..., Any], params: Any, batch: tuple[Any, Any], *, mask: Mask = None) -> jax.Array:
    """The smallest L1 coefficient at which all masked weights are zero: the top of an L1 grid.

    With every masked leaf set to zero (the rest as given), zero is a
    stationary point of ``objective + l1(c)`` exactly when ``c >=
    max |dJ/dw|`` over the masked weights: below it, the proximal step moves
    some weight off zero. ``objective`` is the data objective (no L1 in it);
    ``batch`` the data the grid is for (usually the whole training set).
    For a network this is a local statement (the objective is not convex).
    """
    flags = mask_tree(params, mask)
    zeroed = jax.tree.map(lambda w, on: jnp.zeros_like(w) if on else w, params, flags)
    grads = jax.grad(lambda p: objective(p, batch)[0])(zeroed)
    picked = [jnp.max(jnp.abs(g)) for g, on in zip(jax.tree.leaves(grads), jax.tree.leaves(flags)) if on]
    if not picked:
        raise JregError("lambda_max: the mask selects no leaf of params")
    return jnp.max(jnp.stack(picked))
