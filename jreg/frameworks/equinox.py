"""Equinox modules as jreg models: :func:`from_equinox` (see :mod:`jreg.frameworks`)."""

from __future__ import annotations

import inspect
from typing import Any

import jax

from .._errors import JregError, JregTypeError
from .._types import ModelState, Params
from .common import FrameworkModel, _mode, _require


def from_equinox(
    module: Any, *, state: Any = None, axis_name: str = "batch", per_example: bool = True
) -> FrameworkModel:
    """An Equinox module as a jreg model.

    ``eqx.partition(module, eqx.is_inexact_array)``: the floating-point arrays
    are the params, the rest (activation functions, sizes) is closed over and
    ``eqx.combine``-d again in ``apply``. ``state`` is the ``eqx.nn.State`` of
    ``eqx.nn.make_with_state`` (BatchNorm), the model state; the module is then
    called ``module(x, state, key=...)`` and returns ``(y, new_state)``.

    Equinox modules take one example: ``apply`` vmaps the module over the
    batch with ``axis_name`` (what ``eqx.nn.BatchNorm(axis_name=...)`` names),
    unless ``per_example=False`` (the module takes the whole batch). Training
    mode is ``eqx.nn.inference_mode(module, False)``, evaluation
    ``inference_mode(module)``: Dropout on, BatchNorm updating, and off,
    reading. In training, a module whose ``__call__`` takes ``key`` gets one key
    per example, ``jax.random.split(key, batch)`` (the whole key with
    ``per_example=False``); a module with ``eqx.nn.Dropout`` whose call takes no
    key is refused.
    """
    eqx = _require("equinox", "equinox")
    if not isinstance(module, eqx.Module):
        raise JregTypeError(f"module must be an Equinox Module, got {type(module).__name__}")
    if state is not None and not isinstance(state, eqx.nn.State):
        raise JregTypeError(f"state must be the eqx.nn.State from eqx.nn.make_with_state, got {type(state).__name__}")
    if not isinstance(axis_name, str):
        raise JregTypeError(f"axis_name must be a str (the one eqx.nn.BatchNorm names), got {axis_name!r}")
    takes_key, has_dropout = _key_and_dropout(eqx, module)
    _check_equinox_state(eqx, module, state, axis_name, per_example)
    params, static = eqx.partition(module, eqx.is_inexact_array)

    forward = _forward(eqx, module, static, takes_key, has_dropout, axis_name, per_example)

    if state is None:

        def apply(params, x, *, key=None, train=None):
            return forward(params, None, x, key, _mode(train, key))

    else:

        def apply(params, x, *, state, train, key=None):
            y, new_state = forward(params, state, x, key, _mode(train, key))
            return y, (new_state if train else state)

    def rebuild(params: Params, model_state: ModelState = None) -> Any:
        m = eqx.combine(params, static)
        return m if model_state is None else (m, model_state)

    return FrameworkModel(apply, params, state, rebuild, None, "equinox")


def _key_and_dropout(eqx: Any, module: Any) -> tuple[bool, bool]:
    """``(takes_key, has_dropout)``: whether the module's call takes ``key``, whether it holds a Dropout (p > 0);
    a Dropout without a key to draw from is refused."""
    try:
        names = set(inspect.signature(type(module).__call__).parameters)
    except (TypeError, ValueError):
        names = {"key"}
    takes_key = "key" in names
    is_dropout = lambda x: isinstance(x, eqx.nn.Dropout)  # noqa: E731
    has_dropout = any(is_dropout(x) and x.p > 0 for x in jax.tree.leaves(module, is_leaf=is_dropout))
    if has_dropout and not takes_key:
        raise JregError(
            f"{type(module).__name__} holds eqx.nn.Dropout but its __call__ takes no key: give it a key= "
            "parameter passed on to the dropout layers, or dropout would get no randomness"
        )
    return takes_key, has_dropout


def _forward(eqx: Any, module: Any, static: Any, takes_key: bool, has_dropout: bool, axis_name: str, per_example: bool):
    """``forward(params, state, x, key, train)``: the module (vmapped over the batch unless ``per_example=False``)."""

    def forward(params, state, x, key, train):
        m = eqx.nn.inference_mode(eqx.combine(params, static), value=not train)
        if train and key is None and has_dropout:
            raise JregError(f"{type(module).__name__} has dropout: training mode needs a key (apply(..., key=key))")
        use_key = takes_key and train and key is not None
        args = (x,) if state is None else (x, state)
        if not per_example:
            return m(*args, key=key) if use_key else m(*args)
        n = jax.tree.leaves(x)[0].shape[0]
        keys = jax.random.split(key, n) if use_key else None
        call = (lambda *a: m(*a[:-1], key=a[-1])) if use_key else m
        in_axes = (0,) if state is None else (0, None)
        out_axes = 0 if state is None else (0, None)
        batched = jax.vmap(call, axis_name=axis_name, in_axes=in_axes + ((0,) if use_key else ()), out_axes=out_axes)
        return batched(*args, *((keys,) if use_key else ()))

    return forward


def _check_equinox_state(eqx: Any, module: Any, state: Any, axis_name: str, per_example: bool) -> None:
    """Refuse a stateful module without ``state=`` (or the reverse) and a BatchNorm on another axis name."""

    def found(kind: type) -> list[Any]:
        return [x for x in jax.tree.leaves(module, is_leaf=lambda x: isinstance(x, kind)) if isinstance(x, kind)]

    indices, name = found(eqx.nn.StateIndex), type(module).__name__
    if state is None and indices:
        raise JregError(
            f"{name} holds stateful layers (eqx.nn.StateIndex: BatchNorm...) but state= was not given: build it "
            f"with module, state = eqx.nn.make_with_state({name})(...) and pass from_equinox(module, state=state)"
        )
    if state is not None and not indices:
        raise JregError(f"state= was given but {name} holds no stateful layer (eqx.nn.StateIndex): leave state= out")
    for bn in found(eqx.nn.BatchNorm) if per_example else ():
        if (bn.axis_name if isinstance(bn.axis_name, (tuple, list)) else (bn.axis_name,)) != (axis_name,):
            raise JregError(
                f"{name} holds an eqx.nn.BatchNorm with axis_name={bn.axis_name!r} but the adapter vmaps over the "
                f"batch as axis_name={axis_name!r}: pass from_equinox(..., axis_name={bn.axis_name!r})"
            )
