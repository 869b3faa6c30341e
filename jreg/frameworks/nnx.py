"""Flax NNX models as jreg models: :func:`from_nnx` (see :mod:`jreg.frameworks`)."""

from __future__ import annotations

from typing import Any

import jax

from .._errors import JregError, JregTypeError
from .._types import ModelState, Params
from .common import FrameworkModel, _apply_with_intermediates, _require


def from_nnx(model: Any) -> FrameworkModel:
    """A Flax NNX model as a jreg model.

    ``nnx.split(model, nnx.Param, nnx.RngState, ...)``: the ``nnx.Param``
    variables (as a plain nested dict, ``{"linear": {"kernel": ...}}``) are the
    params; the RNG streams stay with the adapter; every other variable
    (``nnx.BatchStat``, counters) is the model state, returned updated in
    training mode. ``apply`` merges the model again and sets its mode with
    ``nnx.view(model, deterministic=not train, use_running_average=not train)``.
    In training the step's key reseeds every RNG stream of the model
    (``nnx.reseed``), so each ``nnx.Dropout`` draws a fresh mask per step from
    the key (two streams of the same name draw different masks). A Dropout
    built without ``rngs=`` cannot get a key that way: the adapter refuses it.

    Intermediates: ``apply(..., intermediates=True)`` returns ``(outputs,
    sown)``, what the model's ``self.sow(nnx.Intermediate, name, value)`` calls
    stored (through ``nnx.capture``), as a plain dict of tuples.
    """
    nnx = _require("flax.nnx", "flax")
    if not isinstance(model, nnx.Module):
        raise JregTypeError(f"model must be a flax.nnx Module, got {type(model).__name__}")
    _check_dropouts(nnx, model)
    model = nnx.clone(model)  # the caller's model stays as it is
    nnx.pop(model, nnx.Intermediate)  # values sown by earlier calls are not part of the model
    graphdef, params, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    params = nnx.to_pure_dict(params)
    model_state = nnx.to_pure_dict(rest) if len(jax.tree.leaves(rest)) else None
    tags = sorted({node.key.tag for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)})
    template = rest

    def merge(params, state, train, key):
        parts = [params] + ([state] if state is not None else [])
        m = nnx.merge(graphdef, *parts, rng_state, copy=True)
        m = nnx.view(m, deterministic=not train, use_running_average=not train, raise_if_not_found=False)
        if train and tags:
            if key is None:
                raise JregError("the NNX model draws random numbers (dropout): training mode needs a key")
            nnx.reseed(m, **dict.fromkeys(tags, key))
        return m

    def forward(params, state, x, key, train, intermediates):
        m = merge(params, state, train, key)
        y, sown = nnx.capture(m, nnx.Intermediate)(x)
        new_state = nnx.state(m, nnx.Not(nnx.Any(nnx.Param, nnx.RngState, nnx.Intermediate)))
        new_state = nnx.to_pure_dict(new_state) if state is not None and train else state
        return ((y, nnx.to_pure_dict(sown)) if intermediates else y), new_state

    apply = _apply_with_intermediates(forward, model_state is not None)

    def rebuild(params: Params, model_state: ModelState = None) -> Any:
        parts = [params] + ([model_state] if model_state is not None else [template] if template else [])
        return nnx.merge(graphdef, *parts, rng_state, copy=True)

    return FrameworkModel(apply, params, model_state, rebuild, None, "flax.nnx")


def _check_dropouts(nnx: Any, model: Any) -> None:
    """Refuse an ``nnx.Dropout`` (rate > 0) built without ``rngs=``: the adapter could not feed it a key."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Dropout) and node.rate > 0 and node.rngs is None:
            where = "/".join(map(str, path)) or "<root>"
            raise JregError(
                f"the nnx.Dropout at {where!r} was built without rngs=: give it rngs=nnx.Rngs(...) (or your "
                "model's rngs) so that the adapter can feed it each step's key"
            )
