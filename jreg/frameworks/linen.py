"""Flax linen modules as jreg models: :func:`from_linen` (see :mod:`jreg.frameworks`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from .._checks import check_key
from .._errors import JregError, JregTypeError
from .._types import ModelState, Params
from .common import FrameworkModel, _apply_with_intermediates, _describe_flag, _flag, _mode_flag, _require


def from_linen(
    module: Any,
    example_x: Any,
    *,
    key: jax.Array,
    train_arg: str | None = None,
    rng_names: Sequence[str] = ("dropout",),
    capture_intermediates: bool | Callable[..., bool] = False,
) -> FrameworkModel:
    """A Flax linen module as a jreg model.

    ``module.init`` runs once on ``example_x`` (a batch of inputs; one example is
    enough) in evaluation mode. The ``params`` collection becomes the params;
    every other collection (``batch_stats``...) the model state, updated with
    ``mutable=[...]`` in training mode and read in evaluation mode. The step's
    key reaches the module as ``rngs={"dropout": key}`` (further names in
    ``rng_names`` get ``fold_in(key, i)``).

    The mode: the parameter of ``module.__call__`` named ``train_arg``, or the
    first of ``train``, ``training``, ``is_training`` (True in training) or
    ``deterministic``, ``inference``, ``eval``, ``evaluation``,
    ``use_running_average`` (True in evaluation) that it has. The adapter traces
    the module once in each mode (no compute) and raises a
    :class:`~jreg.JregError` if a ``nn.Dropout`` with a rate above 0 would be
    off in training or on in evaluation.

    Intermediates for activity penalties: ``apply(..., intermediates=True)``
    returns ``(outputs, sown)``, ``sown`` being the ``intermediates`` collection
    that ``self.sow("intermediates", name, value)`` fills (Flax stores each as
    a tuple); with ``capture_intermediates=True`` (or a filter ``f(module,
    method_name) -> bool``) Flax also records every submodule's output there.
    """
    _require("flax", "flax")
    nn = _require("flax.linen", "flax")
    if not isinstance(module, nn.Module):
        raise JregTypeError(f"module must be a flax.linen Module, got {type(module).__name__}")
    check_key(key)
    if isinstance(rng_names, str) or not all(isinstance(n, str) for n in rng_names) or not rng_names:
        raise JregTypeError(f"rng_names must be a non-empty sequence of rng collection names, got {rng_names!r}")
    rng_names = tuple(rng_names)
    flag, inverted = _mode_flag(type(module).__call__, train_arg, f"{type(module).__name__}.__call__")

    def rngs_of(key: Any) -> dict[str, Any]:
        return {n: key if i == 0 else jax.random.fold_in(key, i) for i, n in enumerate(rng_names)}

    init, params, model_state = _linen_init(module, example_x, key, flag, inverted, rngs_of)
    dropouts = _linen_dropouts(nn, module, params, model_state, example_x, flag, inverted, rngs_of)
    forward = _linen_forward(module, model_state, flag, inverted, rngs_of, capture_intermediates, dropouts)
    apply = _apply_with_intermediates(forward, model_state is not None)

    def rebuild(params: Params, model_state: ModelState = None) -> dict[str, Any]:
        return {"params": params, **(model_state or {})}

    return FrameworkModel(apply, params, model_state, rebuild, init, "flax.linen")


def _linen_init(module: Any, example_x: Any, key: jax.Array, flag, inverted, rngs_of) -> tuple[Any, Params, ModelState]:
    """``(init, params, model_state)``: the jitted ``init(key)`` and its first call (a failure as a JregError)."""

    def init(key: jax.Array) -> tuple[Params, ModelState]:
        k_params, k_rngs = jax.random.split(key)
        variables = module.init({"params": k_params, **rngs_of(k_rngs)}, example_x, **_flag(flag, inverted, False))
        variables = dict(variables)
        variables.pop("intermediates", None)
        if "params" not in variables:
            raise JregError(f"{type(module).__name__} has no parameters: its init made only {sorted(variables)}")
        params = variables.pop("params")
        return params, (dict(variables) or None)

    init = jax.jit(init)  # one compiled program rather than one per eager op
    try:
        params, model_state = init(key)
    except JregError:
        raise
    except Exception as exc:
        raise JregError(
            f"{type(module).__name__}.init(key, example_x{_describe_flag(flag, inverted, False)}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return init, params, model_state


def _linen_forward(module: Any, model_state, flag, inverted, rngs_of, capture_intermediates, dropouts: int):
    """``forward(params, state, x, key, train, intermediates) -> (result, new_state)``: the module applied."""
    collections = () if model_state is None else tuple(model_state)

    def forward(params, state, x, key, train, intermediates):
        variables = {"params": params, **(state or {})}
        mutable = (list(collections) if train else []) + (["intermediates"] if intermediates else [])
        if train and key is None and dropouts:
            raise JregError(f"{type(module).__name__} has dropout: training mode needs a key (apply(..., key=key))")
        rngs = rngs_of(key) if train and key is not None else None
        capture = capture_intermediates if intermediates else False
        out = module.apply(
            variables,
            x,
            rngs=rngs,
            mutable=mutable or False,
            capture_intermediates=capture,
            **_flag(flag, inverted, train),
        )
        y, updated = out if mutable else (out, {})
        new_state = {c: updated[c] for c in collections} if train else state
        result = (y, dict(updated.get("intermediates", {}))) if intermediates else y
        return result, new_state

    return forward


def _linen_dropouts(nn: Any, module: Any, params, state, x, flag, inverted, rngs_of) -> int:
    """How many ``nn.Dropout`` calls (rate > 0) the module makes; raise if one is off in training or on in eval."""
    name = type(module).__name__
    counts = {}
    for train in (True, False):
        variables = {"params": params, **(state or {})}
        seen = _linen_dropout_calls(nn, module, variables, x, flag, inverted, train, rngs_of)
        counts[train] = len(seen)
        wrong = [n for n, deterministic in seen if deterministic == train]
        if wrong:
            how = _describe_flag(flag, inverted, train)[2:] if flag else "no mode flag"
            state_word = "off in training" if train else "on in evaluation"
            fix = "wire the layer's deterministic to the module's mode flag"
            if not flag:
                fix = "give __call__ a train (or deterministic) parameter wired to nn.Dropout, or name it: train_arg="
            raise JregError(f"{name}: dropout {wrong} would be {state_word} (with {how}); {fix}")
    return counts[True]


def _linen_dropout_calls(nn, module, variables, x, flag, inverted, train, rngs_of) -> list[tuple[str, bool]]:
    """``(name, deterministic)`` of each ``nn.Dropout`` call with rate > 0, traced once (no compute) in one mode."""
    seen: list[tuple[str, bool]] = []

    def spy(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, nn.Dropout) and context.method_name == "__call__" and m.rate > 0:
            given = kwargs.get("deterministic", args[1] if len(args) > 1 else None)
            seen.append((m.name or "Dropout", bool(m.deterministic if given is None else given)))
        return next_fun(*args, **kwargs)

    mutable = [c for c in variables if c != "params"] if train else False
    rngs = rngs_of(jax.random.key(0)) if train else None  # every stream the adapter feeds in training

    def run(v, x, r):
        return module.apply(v, x, rngs=r, mutable=mutable or False, **_flag(flag, inverted, train))

    try:
        with nn.intercept_methods(spy):
            jax.eval_shape(run, variables, x, rngs)
    except Exception as exc:
        hint = "" if flag else "; its __call__ has no train/deterministic parameter: name it with train_arg="
        raise JregError(
            f"{type(module).__name__} fails in {'training' if train else 'evaluation'} mode (apply(variables, "
            f"example_x{_describe_flag(flag, inverted, train)})): {type(exc).__name__}: {exc}{hint}"
        ) from exc
    return seen
