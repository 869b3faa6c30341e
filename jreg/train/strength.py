"""Which jreg penalties a build's hyperparameter scales and where, their ``λ_max``, and a penalty applied twice.

A build's optimizer is an opaque optax chain: what its :func:`jreg.proximal`
steps apply is seen by tracing one ``optimizer.update`` (``jax.eval_shape``,
nothing computed) while :func:`jreg.optim.applied_proximal` collects their
penalties. Which terms a hyperparameter ``hp[strength]`` scales is seen by
building twice, at ``hp[strength] = 1`` and ``2``, and comparing each term's
coefficients (and scale); a term whose single scalar coefficient doubles is
``factor · hp[strength]``, which converts a ``λ_max`` into the hyperparameter's
units (``l1(hp["lmbda"] / n)`` gets ``n · λ_max``).

A term of the same kind (:attr:`jreg.penalties.Term.kind`) in the objective
and in a proximal step, on the same leaves, acts twice per step (its gradient,
then its proximal map): :func:`warn_twice` says so with a
:class:`jreg.JregWarning`, from :func:`jreg.train.setup.prepare`, which every
front end runs before any training.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import JregError, JregWarning
from ..objective import Objective
from ..optim import applied_proximal
from ..penalties import ByPath, ByShape, Center, Penalty, Term, is_schedule, mask_tree
from . import optimizer as optimizer_

#: the kinds with a strength at which they zero every selected weight (``λ_max``)
KINDS_WITH_TOP = ("l1", "group_lasso")
_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("jreg_quiet_twice", default=False)


@dataclasses.dataclass(frozen=True)
class Use:
    """A penalty term that ``hp[strength]`` scales: where, its name, and ``coefficient = factor · hp[strength]``
    (``factor`` None when the coefficient is not one scalar proportional to the strength)."""

    where: str  # "the objective" or "jreg.proximal"
    name: str
    term: Term
    factor: float | None

    @property
    def label(self) -> str:
        return f"{self.term.kind or 'custom'} term {self.name!r} in {self.where}"


def terms_of(objective: Any, optimizer: Any, params: Any) -> tuple[list[tuple[str, Term]], list[tuple[str, Term]]]:
    """``(name, term)`` of the objective's jreg penalty, and of the penalties ``jreg.proximal`` applies."""
    ours = _objective_terms(objective)
    with applied_proximal() as seen:
        try:
            jax.eval_shape(
                lambda p: optimizer.update(
                    jax.tree.map(jnp.zeros_like, p), optimizer.init(p), p, **optimizer_.placeholders(optimizer, p)
                ),
                params,
            )
        except Exception:  # noqa: BLE001 - a failing optimizer is named by the training's own checks
            pass
    return ours, [(n, t) for p in seen for n, t in zip(p.names(), p.terms)]


def _objective_terms(objective: Any) -> list[tuple[str, Term]]:
    penalty = objective.penalty if isinstance(objective, Objective) else None
    return list(zip(penalty.names(), penalty.terms)) if isinstance(penalty, Penalty) else []


Build = Callable[[Any], tuple[Any, Any]]  # build(hp) -> (objective, optimizer), as jreg.train.engine.Build


def built(build: Build, values: dict[str, float], why: str) -> tuple[Any, Any]:
    try:
        return build(values)
    except JregError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's build failing: a missing hyperparameter, say
        raise JregError(
            f"build({values}) fails ({type(exc).__name__}: {exc}), called {why}; give its other hyperparameters "
            "in hparams="
        ) from exc


def uses(build: Build, strength: str, fixed: Mapping[str, float], params: Any) -> list[Use]:
    """The jreg penalty terms ``hp[strength]`` scales, in the objective and in ``jreg.proximal``."""
    why = f"to find which penalty hp[{strength!r}] scales"
    one, two = (terms_of(*built(build, {strength: s, **fixed}, why), params) for s in (1.0, 2.0))
    found = []
    for where, a_terms, b_terms in zip(("the objective", "jreg.proximal"), one, two):
        if len(a_terms) != len(b_terms):
            raise JregError(f"build: hp[{strength!r}] changes how many penalty terms {where} holds; give top= a number")
        for (name, a), (_, b) in zip(a_terms, b_terms):
            if _differ(a, b):
                fa, fb = _factor(a), _factor(b)
                linear = fa is not None and fb is not None and fa > 0 and np.isclose(fb, 2 * fa, rtol=1e-5)
                found.append(Use(where, name, a, fa if linear else None))
    return found


def _comparable(c: Any) -> Any:
    if isinstance(c, (Center, ByPath, ByShape)):
        return None
    try:
        return np.asarray(c(0) if is_schedule(c) else c, np.float64)
    except Exception:  # noqa: BLE001 - a coefficient that cannot be read as numbers is left out of the comparison
        return None


def _differ(a: Term, b: Term) -> bool:
    pairs = list(zip((*a.coefs, a.scale), (*b.coefs, b.scale)))
    for x, y in ((_comparable(x), _comparable(y)) for x, y in pairs):
        if x is not None and y is not None and (x.shape != y.shape or not np.array_equal(x, y)):
            return True
    return False


def _factor(t: Term) -> float | None:
    if not t.coefs or any(isinstance(c, Center) for c in t.coefs):
        return None
    c, scale = _comparable(t.coefs[0]), _comparable(t.scale)
    if c is None or scale is None or c.ndim or scale.ndim or is_schedule(t.coefs[0]):
        return None
    return float(c * scale)


def top(found: list[Use], requested: Any, strength: str, objective: Any, params: Any, batch: Any, mask: Any) -> float:
    """``λ_max`` in ``hp[strength]``'s units: the smallest strength at which every term ``found`` (L1 or group
    lasso) keeps all its weights at zero, at ``params`` with those weights zeroed; ``objective()`` gives the
    build's objective at strength 0 (its gradient on the whole ``batch``); ``mask`` replaces the terms' masks."""
    advice = "give top= a number, the strongest strength"
    if not found:
        raise JregError(
            f"top: hp[{strength!r}] scales no jreg penalty of the build (neither a term of the objective's penalty "
            f"nor one that jreg.proximal applies), so jreg cannot compute its λ_max; {advice}"
        )
    bad = [u.label for u in found if u.term.kind not in KINDS_WITH_TOP or u.factor is None]
    if bad:
        raise JregError(
            f"top: hp[{strength!r}] scales {', '.join(bad)}, which has no λ_max (only an L1 or group-lasso term "
            f"whose one coefficient is proportional to the strength, without center=, does); {advice}"
        )
    if isinstance(requested, str) and any(u.term.kind != requested for u in found):
        raise JregError(
            f"top={requested!r}, but hp[{strength!r}] scales {', '.join(u.label for u in found)}: leave top out "
            "(the λ_max of the build's penalty is used) or give a number"
        )
    flags = [jax.tree.leaves(mask_tree(params, u.term.mask if mask is None else mask)) for u in found]
    union = [any(f) for f in zip(*flags)]
    leaves, treedef = jax.tree.flatten(params)
    zeroed = jax.tree.unflatten(treedef, [jnp.zeros_like(w) if on else w for w, on in zip(leaves, union)])
    objective = objective()
    try:
        grads = jax.tree.leaves(jax.grad(lambda p: objective(p, batch)[0])(zeroed))
    except Exception as exc:  # noqa: BLE001 - a stateful objective, say: it needs a given top
        raise JregError(
            f"top: the objective of build({{{strength!r}: 0}}) cannot be called as objective(params, train) "
            f"({type(exc).__name__}: {exc}); give top= a number"
        ) from exc
    return max(_largest(u, grads, f) / u.factor for u, f in zip(found, flags))


def _largest(use: Use, grads: list[jax.Array], flags: list[bool]) -> float:
    """The largest |gradient| (L1) or unit gradient norm (group lasso) over the term's leaves."""
    picked = [g for g, on in zip(grads, flags) if on]
    if use.term.kind == "l1":
        return float(max(jnp.max(jnp.abs(g)) for g in picked)) if picked else 0.0
    if not picked or any(g.ndim < 2 for g in picked):
        raise JregError(f"top: the {use.label} must select weight leaves of rank >= 2 (or give top= a number)")
    axis = -1 if use.term.groups == "columns" else -2
    units = [jnp.moveaxis(g, axis, -1).reshape(-1, g.shape[axis]) for g in picked]  # (rest, units)
    return float(max(jnp.max(jnp.sqrt(jnp.sum(jnp.square(u), axis=0))) for u in units))


def leaves_of(t: Term, params: Any) -> set[str]:
    try:
        return {path for path, _, _ in t.resolve(params, unresolved=True)}
    except JregError:
        return set()


def twice(objective: Any, proxed: list[Penalty], params: Any) -> list[str]:
    """The objective's penalty terms that a ``jreg.proximal`` step applies again (same kind, shared leaves)."""
    ours = _objective_terms(objective)
    theirs = [(n, t) for p in proxed for n, t in zip(p.names(), p.terms)]
    out = []
    for name, ot in ours:
        for _, pt in theirs:
            same = (ot.kind is not None and (ot.kind, ot.groups) == (pt.kind, pt.groups)) or ot.fn is pt.fn
            shared = sorted(leaves_of(ot, params) & leaves_of(pt, params)) if same else []
            if shared:
                out.append(f"{ot.kind or 'custom'} term {name!r} on {shared}")
                break
    return out


def warn_twice(objective: Any, proxed: list[Penalty], params: Any) -> None:
    """A :class:`jreg.JregWarning` when the objective and a ``jreg.proximal`` step apply the same penalty."""
    found = [] if _QUIET.get() else twice(objective, proxed, params)
    if found:
        warnings.warn(
            f"the objective's {'; '.join(found)} is applied by jreg.proximal too: each step adds its gradient and "
            "then applies its proximal map, so the penalty acts twice (about twice its strength); keep it in one "
            "place: jreg.proximal for exact zeros (an optimizer without it), or the objective",
            JregWarning,
            stacklevel=2,
        )


def warn_strength_twice(found: list[Use], strength: str) -> bool:
    """A :class:`jreg.JregWarning` when ``hp[strength]`` scales terms both in the objective and in a proximal
    step; whether it warned."""
    places = {u.where for u in found}
    if len(places) < 2:
        return False
    warnings.warn(
        f"hp[{strength!r}] is applied both in the objective and in jreg.proximal "
        f"({', '.join(u.label for u in found)}): each step adds the penalty's gradient and then applies its "
        "proximal map, so every strength of the path acts about twice; keep the penalty in one place "
        "(jreg.proximal for exact zeros)",
        JregWarning,
        stacklevel=3,
    )
    return True


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No :func:`warn_twice` inside the block (a caller that has said it already, in its own words)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)
