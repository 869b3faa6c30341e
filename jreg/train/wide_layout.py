"""Where the ``"wide"`` sweep carries each stacked leaf's model axis: second for a weight that meets the shared
mini-batch in a matmul, first for one that meets per-model activations.

A ``"wide"`` sweep trains K models in one loop, each step ``vmap``-ed over the models with the carry's own layout
as ``in_axes``/``out_axes``. The layout rule, per leaf of the stacked :class:`~jreg.train.state.TrainState`:

* a weight matrix that is an operand of a ``dot_general`` whose other operand is the same for every model (the
  mini-batch, or anything computed from it alone: a first layer) is carried with the model axis **second**,
  ``(n_in, K, n_out)``: the shared mini-batch then meets all K matrices in one wide ``(B, n_in) · (n_in, K·n_out)``
  matmul, and the weight gradient ``aᵀ·g`` is one matmul whose output already has that layout;
* a weight matrix that meets only per-model operands (the activations of a deeper layer, different for each
  model) is carried with the model axis **first**, ``(K, n_in, n_out)``: its matmuls are batched over the models,
  and XLA's batched dot wants the batch axis major. Carried second, every step moved it (and its gradient) to the
  front and back: the transposes that ``tests/test_wide_layout.py`` counts in the compiled step;
* every other leaf keeps the earlier rule: model axis second when it has two or more axes of its own (a kernel no
  matmul reveals, model state), else first (biases, scalars, step counts).

The optimizer's state and the EMA follow the params: a subtree shaped like the params (optax's ``mu``, ``nu``,
``trace``) takes their axes leaf for leaf, so that an update (``w - η·m``, per-model ``η`` included) mixes only
arrays of one layout, which XLA fuses without a transpose. The rule reads one model's objective once, as a jaxpr
traced on shapes (nothing runs); if that trace fails (a model jreg cannot read this way), every leaf keeps the
earlier rule, and the real trace reports any genuine error.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Var

from . import calls
from .state import TrainState

#: primitives whose output is the same numbers as their (one array) input, for telling which weight meets a matmul
_SAME_NUMBERS = {"convert_element_type", "copy", "copy_p", "reduce_precision", "transpose", "reshape"}


def carry_axes(
    build: Any, hp: Any, state: TrainState, data: Any, batch_size: int, keyed: bool, first: Any = frozenset()
) -> TrainState:
    """The model axis (0 or 1) of every leaf of the stacked ``state`` (model axis first, ``(K, ...)``) in the
    "wide" carry; ``hp``: the (K,) hyperparameters, ``data``: the training arrays (mini-batches of
    ``batch_size`` rows of them are what the objective sees); ``first``: per-model shapes of the weights used as
    ``W @ x`` (:func:`jreg.train.left_products.model_axis_first`), carried model axis first, ``(K, n_out, n_in)``,
    the layout of their gradient ``g · x``."""
    default = jax.tree.map(_default_axis, state)
    try:
        shared, batched = _matmul_weights(build, hp, state, data, batch_size, keyed)
    except Exception:  # noqa: BLE001 - the rule only reads the objective; the real trace reports its errors
        if not first:
            return default
        shared, batched = set(), set()
    leaves, treedef = jax.tree.flatten(state.params)
    axes = [
        0 if (i in batched and i not in shared and a.ndim >= 3) or tuple(a.shape[1:]) in first else _default_axis(a)
        for i, a in enumerate(leaves)
    ]
    params_axes = jax.tree.unflatten(treedef, axes)
    opt_axes = _follow(state.opt_state, state.params, params_axes)
    ema_axes = None if state.ema is None else _follow(state.ema, state.params, params_axes)
    return default._replace(params=params_axes, opt_state=opt_axes, ema=ema_axes)


def to_carry(tree: Any, axes: Any) -> Any:
    """Each stacked leaf with its model axis moved from the front to its carry axis."""
    return jax.tree.map(lambda a, ax: _move(a, 0, ax), tree, axes)


def from_carry(tree: Any, axes: Any) -> Any:
    """The inverse of :func:`to_carry`: every model axis back in front."""
    return jax.tree.map(lambda a, ax: _move(a, ax, 0), tree, axes)


def _move(a, source: int, target: int):
    return a if source == target else jnp.moveaxis(a, source, target)


def _default_axis(a) -> int:
    """The earlier rule: model axis second for a leaf with two or more axes of its own."""
    return 1 if np.ndim(a) >= 3 else 0


def _follow(tree: Any, params: Any, params_axes: Any) -> Any:
    """Axes for ``tree`` (an optimizer state, an EMA): every subtree with the params' structure and shapes takes
    the params' axes; any other leaf the earlier rule."""
    structure = jax.tree.structure(params)
    shapes = [np.shape(a) for a in jax.tree.leaves(params)]

    def like_params(node) -> bool:
        try:
            return jax.tree.structure(node) == structure and [np.shape(a) for a in jax.tree.leaves(node)] == shapes
        except Exception:  # noqa: BLE001 - a node that is no pytree
            return False

    return jax.tree.map(lambda n: params_axes if like_params(n) else _default_axis(n), tree, is_leaf=like_params)


def _matmul_weights(build, hp, state: TrainState, data, batch_size: int, keyed: bool) -> tuple[set, set]:
    """``(shared, batched)``: the indices of the params' leaves that are an operand of a ``dot_general`` whose
    other operand is the same for every model (``shared``) or differs per model (``batched``), in one model's
    training loss traced on shapes."""
    one = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), tree)  # noqa: E731
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size, *np.shape(a)[1:]), a.dtype), data)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype) if keyed else None
    step = None if state.step is None else one(state.step)

    def loss(h, params, model_state, step, batch, key):
        return calls.train_loss(build(h)[0])(params, model_state, batch, key, step)

    closed = jax.make_jaxpr(loss)(one(hp), one(state.params), one(state.model_state), step, batch, key)
    n_hp = len(jax.tree.leaves(hp))
    n_params = len(jax.tree.leaves(state.params))
    n_per_model = n_hp + n_params + len(jax.tree.leaves(state.model_state)) + (0 if step is None else 1)
    invars = closed.jaxpr.invars
    per_model = {v: i < n_per_model for i, v in enumerate(invars)}
    alias = {v: i - n_hp for i, v in enumerate(invars) if n_hp <= i < n_hp + n_params}
    shared, batched = set(), set()
    _walk(closed.jaxpr, per_model, alias, shared, batched)
    return shared, batched


def _walk(jaxpr, per_model: dict, alias: dict, shared: set, batched: set) -> None:
    """Propagate "differs per model" and "is the numbers of params leaf i" through ``jaxpr``'s equations,
    entering calls (``pjit``, custom derivatives, remat); a loop or branch's outputs differ per model if any input
    does."""
    is_var = lambda v: isinstance(v, Var)  # noqa: E731 - a Literal is the same for every model
    for eqn in jaxpr.eqns:
        ins = [per_model.get(v, False) if is_var(v) else False for v in eqn.invars]
        name = eqn.primitive.name
        if name == "dot_general":
            for own, other in ((0, 1), (1, 0)):
                leaf = alias.get(eqn.invars[own]) if is_var(eqn.invars[own]) else None
                if leaf is not None:
                    (batched if ins[other] else shared).add(leaf)
        inner = _inner(eqn)
        if inner is not None and len(inner.invars) == len(eqn.invars):
            sub_per_model = {u: f for u, f in zip(inner.invars, ins)}
            sub_alias = {u: alias[v] for u, v in zip(inner.invars, eqn.invars) if is_var(v) and v in alias}
            _walk(inner, sub_per_model, sub_alias, shared, batched)
            for out, inner_out in zip(eqn.outvars, inner.outvars):
                per_model[out] = sub_per_model.get(inner_out, False) if is_var(inner_out) else False
                if is_var(inner_out) and inner_out in sub_alias:
                    alias[out] = sub_alias[inner_out]
            continue
        for out in eqn.outvars:
            per_model[out] = any(ins)
        if name in _SAME_NUMBERS and len(eqn.invars) == 1 and is_var(eqn.invars[0]) and eqn.invars[0] in alias:
            alias[eqn.outvars[0]] = alias[eqn.invars[0]]


def _inner(eqn):
    """The jaxpr a call-like equation runs on its own inputs (``pjit``, ``closed_call``, ``custom_jvp_call``,
    ``custom_vjp_call``, ``remat``), or None."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None or eqn.primitive.name in ("scan", "while", "cond"):
            continue
        return getattr(sub, "jaxpr", sub)
    return None
