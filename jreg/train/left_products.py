"""The ``aᵀ·g`` weight-gradient rule for any model's dense layers: a jaxpr rewrite of the loss.

A ``"wide"`` sweep carries every stacked weight matrix with the model axis second, ``(n_in, K, n_out)``, and
vmaps each model's gradient inside the step. For ``y = a @ w`` JAX's transpose rule forms the weight
gradient as ``transpose(gᵀ · a)``: vmapped over the K models that is a ``(K·n_out, n_in)`` product which the
update then reads transposed. ``jreg.mlp`` avoids it with a custom VJP of its own (:func:`jreg.nn._dense`);
this module gives the same rule to any model (Flax linen ``Dense``, NNX ``Linear``, Equinox ``nn.Linear``,
Haiku ``Linear``, a hand-written ``x @ w``) without touching its code:

* :func:`rewrite` traces the loss with :func:`jax.make_jaxpr` (inside the wide step's ``vmap``: the
  closed-over tracers, e.g. the model's hyperparameters, become the jaxpr's consts) and evaluates the jaxpr
  with an interpreter that binds every equation as it is, except each ``dot_general`` one of whose operands
  is a *weight*: a leaf of the differentiated argument (the params), possibly through plumbing that keeps
  its layout (``convert_element_type``, ``reshape``, ``squeeze``, ``expand_dims``, a static ``slice``,
  ``copy``, ``reduce_precision``). It recurses into ``jit``/``pjit``/``closed_call`` sub-jaxprs (Equinox, Haiku and
  ``jax.numpy`` wrap products in them) when they hold such a product; custom JVP/VJP calls, scans, loops
  and conds are bound unchanged (so ``jreg.mlp``'s own rule and its results stay as they were).
* Each such product is bound through a custom VJP: the forward pass is the very same ``dot_general``
  (same dimension numbers, precision, accumulation type); the activation's cotangent is JAX's own rule
  (``g · wᵀ``, computed by ``jax.vjp`` of the product); the weight's cotangent is one ``dot_general`` of
  the layer input and ``g`` contracting the input's free dimensions, with its operands ordered so that the
  result already has the weight's layout: ``aᵀ·g`` for ``x @ W`` (Flax, Haiku, NNX: ``W`` is
  ``(n_in, n_out)``), ``g·x`` for Equinox's ``W @ x`` vmapped over examples (``W`` is ``(n_out, n_in)``,
  traced as ``dot_general(W, x_batch)`` and its output transposed). Where no order gives the weight's
  layout (a batched product whose batch axes are not the weight's leading ones), the result is transposed
  as JAX's rule does.

The values are JAX's own products summed in another order (last bits); reverse mode of any order goes
through the custom VJP. Forward-mode autodiff of the rewritten loss cannot (a custom VJP): the engine
retraces without the rule when a trace with it fails. A loss whose jaxpr holds no such product is called
as it is (bit for bit what it computed before).

``ENABLED`` (a private switch, read while tracing): ``False`` turns the rewrite off, for measuring it
(``benchmarks/frameworks_wide.py``); ``jreg.mlp``'s own rule does not depend on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Literal

#: turn the rewrite off (``False``) to measure what it buys; read at trace time
ENABLED = True

#: primitives whose output is the weight itself, in its layout (for :func:`model_axis_first`)
_SAME_LAYOUT = frozenset({"convert_element_type", "copy", "copy_p", "reduce_precision"})
#: call primitives whose sub-jaxpr the rewrite enters when it holds a weight's product
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr"}
#: primitives whose output is still "the weight" (same layout, no transpose)
_PLUMBING = frozenset(
    {"convert_element_type", "reshape", "squeeze", "expand_dims", "slice", "copy", "copy_p", "reduce_precision"}
)


def rewrite(fn: Callable[..., Any], argnum: int = 0) -> Callable[..., Any]:
    """``fn`` with every product of a leaf of argument ``argnum`` (the weights) taking its weight gradient as
    ``aᵀ·g`` (see the module docstring); ``fn`` itself when :data:`ENABLED` is off. Same signature, same
    outputs."""

    @functools.wraps(fn)
    def rewritten(*args: Any) -> Any:
        if not ENABLED:
            return fn(*args)
        closed, flags, out_tree = _trace(fn, args, argnum)
        leaves = jax.tree.leaves(args)
        if count(closed.jaxpr, flags) == 0:  # nothing to rewrite: the loss exactly as written
            return fn(*args)
        outs, _ = _evaluate(closed.jaxpr, closed.consts, leaves, flags)
        return jax.tree.unflatten(out_tree, outs)

    return rewritten


def rewritten_jaxpr(fn: Callable[..., Any], *args: Any, argnum: int = 0) -> ClosedJaxpr:
    """The jaxpr of ``rewrite(fn)(*args)`` (for tests and inspection: each rewritten product is a
    ``custom_vjp_call``)."""
    return jax.make_jaxpr(rewrite(fn, argnum))(*args)


def products(fn: Callable[..., Any], *args: Any, argnum: int = 0) -> int:
    """How many ``dot_general``\\ s of ``fn(*args)`` the rewrite takes over (weights: the leaves of ``argnum``)."""
    closed, flags, _ = _trace(fn, args, argnum)
    return count(closed.jaxpr, flags)


def model_axis_first(fn: Callable[..., Any], *args: Any, argnum: int = 0) -> list[bool]:
    """Per leaf of ``args[argnum]``: whether a ``"wide"`` sweep should carry it with the model axis first.

    True for a leaf that enters products as it is (or cast) and whose every such product contracts its
    trailing axes: an ``(n_out, n_in)`` weight used as ``W @ x`` (Equinox's ``nn.Linear``). Its weight
    gradient ``g · x`` vmapped over the models is one ``(K·n_out, n_in)`` product, already in the
    ``(K, n_out, n_in)`` layout, and the forward product reads it as ``(K·n_out, n_in)`` too: carried
    ``(n_out, K, n_in)`` instead, the step copies the gradient across the model axis. False for every other
    leaf (``x @ W`` with ``W`` ``(n_in, n_out)``: the model axis second, ``(n_in, K, n_out)``, is the layout
    of its ``aᵀ·g``; and leaves in no product).
    """
    closed, flags, _ = _trace(fn, args, argnum)
    before = flags.index(True) if any(flags) else 0
    origins = [i - before if f else None for i, f in enumerate(flags)]
    forms: dict[int, list[bool]] = {}
    _leaf_forms(closed.jaxpr, origins, forms)
    return [bool(forms.get(i)) and all(forms[i]) for i in range(sum(flags))]


def _leaf_forms(jaxpr: Any, origins: Sequence[int | None], forms: dict[int, list[bool]]) -> list[int | None]:
    """Record, per leaf, whether each product taking it as it is contracts its trailing axes; returns the
    outputs' origins."""
    env = {v: o for v, o in zip(jaxpr.invars, origins) if o is not None}
    for eqn in jaxpr.eqns:
        ins = [env.get(v) if _is_var(v) else None for v in eqn.invars]
        side = _target(eqn, [o is not None for o in ins])
        inner = _sub_jaxpr(eqn)
        if side is not None and ins[side] is not None:
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            contract, batch, ndim = (
                (lc, lb, eqn.invars[0].aval.ndim) if side == 0 else (rc, rb, eqn.invars[1].aval.ndim)
            )
            trailing = sorted(contract) == list(range(ndim - len(contract), ndim))
            forms.setdefault(ins[side], []).append(trailing and not batch and len(contract) < ndim)
        elif inner is not None and any(o is not None for o in ins):
            outs = _leaf_forms(getattr(inner, "jaxpr", inner), ins, forms)
            env.update((v, o) for v, o in zip(eqn.outvars, outs) if o is not None)
        elif eqn.primitive.name in _SAME_LAYOUT and ins and ins[0] is not None:
            env[eqn.outvars[0]] = ins[0]
    return [env.get(v) if _is_var(v) else None for v in jaxpr.outvars]


def _trace(fn: Callable[..., Any], args: tuple, argnum: int) -> tuple[Any, list[bool], Any]:
    """``(closed jaxpr of fn over the flat leaves of args, which leaves are weights, the output's treedef)``."""
    leaves, tree = jax.tree.flatten(args)
    weights = [True] * len(jax.tree.leaves(args[argnum]))
    before = len(jax.tree.leaves(args[:argnum]))
    flags = [False] * before + weights + [False] * (len(leaves) - before - len(weights))
    out_tree = []

    def flat(*xs: Any) -> list[Any]:
        out, treedef = jax.tree.flatten(fn(*jax.tree.unflatten(tree, xs)))
        out_tree.append(treedef)
        return out

    closed = jax.make_jaxpr(flat)(*leaves)
    return closed, flags, out_tree[0]


def _is_var(v: Any) -> bool:
    return not isinstance(v, Literal)


def _target(eqn: Any, flags: Sequence[bool]) -> int | None:
    """The weight operand's position (1: rhs, preferred; 0: lhs) of a ``dot_general`` the rule takes, or None."""
    if eqn.primitive.name != "dot_general" or not any(flags):
        return None
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval
    if not all(jax.numpy.issubdtype(a.dtype, jax.numpy.floating) for a in (lhs, rhs, out)):
        return None  # an int or complex product: JAX's rule
    try:
        hash(_key(eqn.params))
    except TypeError:  # a parameter this rule cannot key its custom VJP on: JAX's rule
        return None
    return 1 if flags[1] else 0


def _sub_jaxpr(eqn: Any) -> Any:
    """The ClosedJaxpr (or Jaxpr) of a call primitive the rewrite may enter, or None."""
    name = _CALLS.get(eqn.primitive.name)
    return None if name is None else eqn.params.get(name)


def _analyse(jaxpr: Any, flags: Sequence[bool]) -> tuple[int, list[bool]]:
    """``(products the rewrite takes in jaxpr, which outputs are weights)`` for inputs marked by ``flags``."""
    weights = {v for v, f in zip(jaxpr.invars, flags) if f}
    found = 0
    for eqn in jaxpr.eqns:
        marks = [_is_var(v) and v in weights for v in eqn.invars]
        if _target(eqn, marks) is not None:
            found += 1
            continue
        inner = _sub_jaxpr(eqn)
        if inner is not None and any(marks):
            n, out_marks = _analyse(getattr(inner, "jaxpr", inner), marks)
            found += n
            weights.update(v for v, m in zip(eqn.outvars, out_marks) if m)
        elif eqn.primitive.name in _PLUMBING and marks and marks[0]:
            weights.add(eqn.outvars[0])
    return found, [_is_var(v) and v in weights for v in jaxpr.outvars]


def count(jaxpr: Any, flags: Sequence[bool]) -> int:
    """How many ``dot_general``\\ s of ``jaxpr`` (sub-jaxprs of calls included) the rewrite takes."""
    return _analyse(jaxpr, flags)[0]


def _evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], flags: Sequence[bool]) -> tuple[list, list]:
    """Evaluate ``jaxpr`` as :func:`jax.core.eval_jaxpr` does, the weights' products through :func:`_product`;
    returns ``(outputs, which outputs are weights)``."""
    env: dict[Any, Any] = {}
    weights = {v for v, f in zip(jaxpr.invars, flags) if f}

    def read(v: Any) -> Any:
        return v.val if not _is_var(v) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        marks = [_is_var(v) and v in weights for v in eqn.invars]
        side = _target(eqn, marks)
        inner = _sub_jaxpr(eqn)
        if side is not None:
            outs = [_product(_key(eqn.params), side)(*ins)]
        elif inner is not None and any(marks) and count(getattr(inner, "jaxpr", inner), marks):
            sub = getattr(inner, "jaxpr", inner)
            outs, out_marks = _evaluate(sub, getattr(inner, "consts", ()), ins, marks)
            weights.update(v for v, m in zip(eqn.outvars, out_marks) if m)
        else:
            with eqn.ctx.manager:
                ans = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
            outs = ans if eqn.primitive.multiple_results else [ans]
            if eqn.primitive.name in _PLUMBING and marks and marks[0]:
                weights.add(eqn.outvars[0])
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars], [_is_var(v) and v in weights for v in jaxpr.outvars]


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


@functools.lru_cache(maxsize=512)
def _product(params_key: tuple, side: int) -> Callable[[Any, Any], Any]:
    """``dot_general(lhs, rhs, **params)`` whose operand ``side`` (0: lhs, 1: rhs) is the weight: a custom VJP
    whose weight cotangent is one product already in the weight's layout (module docstring)."""
    params = dict(params_key)
    (lc, rc), (lb, rb) = params["dimension_numbers"]

    def bind(lhs: Any, rhs: Any) -> Any:
        return lax.dot_general_p.bind(lhs, rhs, **params)

    @jax.custom_vjp
    def product(lhs: Any, rhs: Any) -> Any:
        return bind(lhs, rhs)

    def fwd(lhs: Any, rhs: Any) -> tuple[Any, tuple[Any, Any]]:
        return bind(lhs, rhs), (lhs, rhs)

    def bwd(res: tuple[Any, Any], g: Any) -> tuple[Any, Any]:
        lhs, rhs = res
        if side == 1:
            _, vjp = jax.vjp(lambda a: bind(a, rhs), lhs)  # the activation's cotangent: JAX's own rule
            (d_lhs,) = vjp(g)
            return d_lhs, _weight_gradient(lhs, g, rhs, (lc, lb), (rc, rb), 1, params)
        _, vjp = jax.vjp(lambda a: bind(lhs, a), rhs)
        (d_rhs,) = vjp(g)
        return _weight_gradient(rhs, g, lhs, (rc, rb), (lc, lb), 0, params), d_rhs

    product.defvjp(fwd, bwd)
    return product


def _weight_gradient(a: Any, g: Any, w: Any, a_dims: tuple, w_dims: tuple, side: int, params: dict) -> Any:
    """``dL/dw`` of ``dot_general`` from the other operand ``a`` and the output cotangent ``g``: one
    ``dot_general`` contracting ``a``'s free axes with ``g``'s, ordered to come out in ``w``'s layout."""
    (a_contract, a_batch), (w_contract, w_batch) = a_dims, w_dims
    a_free = [d for d in range(a.ndim) if d not in a_contract and d not in a_batch]
    w_free = [d for d in range(w.ndim) if d not in w_contract and d not in w_batch]
    nb = len(a_batch)
    # g's axes: batch, then the lhs's free axes, then the rhs's
    g_a = list(range(nb, nb + len(a_free))) if side == 1 else list(range(nb + len(w_free), g.ndim))
    g_batch = list(range(nb))
    # a's contracting axes, in a's order, stand for w's contracting axes paired with them
    a_kept = sorted(a_contract)
    w_of_a_kept = [w_contract[list(a_contract).index(d)] for d in a_kept]
    first_a = list(w_batch) + w_of_a_kept + w_free  # axes of w for dot_general(a, g)
    first_g = list(w_batch) + w_free + w_of_a_kept  # axes of w for dot_general(g, a)
    identity = list(range(w.ndim))
    if first_g == identity and first_a != identity:
        dims = ((g_a, a_free), (g_batch, list(a_batch)))
        out = lax.dot_general(
            g, a, dims, precision=params.get("precision"), preferred_element_type=params.get("preferred_element_type")
        )
        axes = first_g
    else:
        dims = ((a_free, g_a), (list(a_batch), g_batch))
        out = lax.dot_general(
            a, g, dims, precision=params.get("precision"), preferred_element_type=params.get("preferred_element_type")
        )
        axes = first_a
    if axes != identity:
        out = lax.transpose(out, tuple(int(i) for i in np.argsort(axes)))
    return out.astype(w.dtype)
