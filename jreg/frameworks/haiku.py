"""Haiku transformed functions as jreg models: :func:`from_haiku` (see :mod:`jreg.frameworks`)."""

from __future__ import annotations

import inspect
from typing import Any

import jax

from .._checks import check_key
from .._errors import JregError, JregTypeError
from .._types import ModelState, Params
from .common import FrameworkModel, _describe_flag, _flag, _mode, _mode_flag, _require


def from_haiku(transformed: Any, example_x: Any, *, key: jax.Array, train_arg: str | None = None) -> FrameworkModel:
    """A Haiku ``hk.transform`` / ``hk.transform_with_state`` function as a jreg model.

    ``transformed.init(key, example_x, is_training=True)`` (the mode flag as
    found: ``train_arg``, or the first of ``train``, ``training``,
    ``is_training``, ``deterministic``... the function takes) gives the params
    and, with ``transform_with_state``, the state (the model state, returned
    updated in training mode and unchanged in evaluation). ``apply`` calls
    ``transformed.apply(params, [state,] rng, x, is_training=...)`` with
    ``rng`` the step's key in training and ``None`` in evaluation, so a
    function that still draws random keys in evaluation fails loudly; the
    adapter checks that once on ``example_x`` (no compute).
    """
    hk = _require("haiku", "dm-haiku")
    with_state = isinstance(transformed, hk.TransformedWithState)
    if not (with_state or isinstance(transformed, hk.Transformed)):
        raise JregTypeError(
            f"transformed must come from hk.transform or hk.transform_with_state, got {type(transformed).__name__}"
        )
    check_key(key)
    flag, inverted = _mode_flag(transformed.apply, train_arg, "the transformed function")

    init, params, model_state = _init(transformed, example_x, key, flag, inverted, with_state)
    takes_rng = _takes_rng(transformed)
    forward = _forward(transformed, flag, inverted, with_state, takes_rng)
    _check_modes(forward, params, model_state, example_x, key, flag, inverted, takes_rng)

    if model_state is None:

        def apply(params, x, *, key=None, train=None):
            train = _mode(train, key)
            return forward(params, None, x, key, train)[0]

    else:

        def apply(params, x, *, state, train, key=None):
            y, new_state = forward(params, state, x, key, _mode(train, key))
            return y, (new_state if train else state)

    def rebuild(params: Params, model_state: ModelState = None) -> Any:
        return params if model_state is None else (params, model_state)

    return FrameworkModel(apply, params, model_state, rebuild, init, "haiku")


def _init(transformed: Any, example_x: Any, key: jax.Array, flag, inverted, with_state: bool):
    """``(init, params, model_state)``: the jitted ``init(key)`` and its first call (a failure as a JregError)."""

    def init(key: jax.Array) -> tuple[Params, ModelState]:
        out = transformed.init(key, example_x, **_flag(flag, inverted, True))
        return out if with_state else (out, None)

    init = jax.jit(init)  # one compiled program rather than one per eager op
    try:
        params, model_state = init(key)
    except Exception as exc:
        raise JregError(
            f"transformed.init(key, example_x{_describe_flag(flag, inverted, True)}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return init, params, model_state


def _takes_rng(transformed: Any) -> bool:
    """Whether ``transformed.apply`` takes an ``rng`` (not ``hk.without_apply_rng``)."""
    try:  # hk.without_apply_rng: an apply without rng (then the function must not draw keys)
        takes_rng = "rng" in inspect.signature(transformed.apply).parameters
    except (TypeError, ValueError):
        takes_rng = True
    return takes_rng


def _forward(transformed: Any, flag, inverted, with_state: bool, takes_rng: bool):
    """``forward(params, state, x, key, train) -> (outputs, new_state)``: ``transformed.apply`` in that mode."""

    def forward(params, state, x, key, train):
        rng = (key if train else None,) if takes_rng else ()
        if with_state:
            return transformed.apply(params, state, *rng, x, **_flag(flag, inverted, train))
        return transformed.apply(params, *rng, x, **_flag(flag, inverted, train)), None

    return forward


def _check_modes(forward, params, model_state, example_x, key, flag, inverted, takes_rng: bool) -> None:
    """Trace the function once in each mode (no compute): training needs an rng, evaluation must not."""
    try:  # training mode, traced once (no compute): without_apply_rng and dropout do not go together
        jax.eval_shape(lambda p, s, x, k: forward(p, s, x, k, True), params, model_state, example_x, key)
    except Exception as exc:
        raise JregError(
            f"the Haiku function fails in training mode ({_describe_flag(flag, inverted, True)[2:] or 'no flag'}"
            f"{'' if takes_rng else ', no rng: hk.without_apply_rng'}): {type(exc).__name__}: {exc}"
        ) from exc
    try:  # evaluation must not need randomness: dropout off there
        jax.eval_shape(lambda p, s, x: forward(p, s, x, None, False), params, model_state, example_x)
    except Exception as exc:
        raise JregError(
            "the Haiku function fails in evaluation mode (rng=None"
            f"{_describe_flag(flag, inverted, False)}): {type(exc).__name__}: {exc}; it must skip dropout "
            "(hk.next_rng_key) when not training" + ("" if flag else ": give it an is_training parameter")
        ) from exc
