"""Flax linen, Flax NNX, Equinox and Haiku models as jreg models: one adapter per framework.

Each adapter takes the framework's own object and returns a :class:`FrameworkModel`:

* ``apply`` follows jreg's model protocol, so it goes straight into
  :func:`jreg.objective`: ``apply(params, x, *, key=None, train=None,
  intermediates=False)`` (stateless) or ``apply(params, x, *, state, train,
  key=None, intermediates=False) -> (outputs, new_state)`` (a model with
  BatchNorm statistics or other non-trained variables).
* ``params`` are the trained arrays only (Flax ``params`` collection, NNX
  ``nnx.Param`` variables, an Equinox module's inexact arrays, Haiku params),
  ``model_state`` the rest that changes while training (linen's other
  collections, NNX ``nnx.BatchStat``..., ``eqx.nn.State``, Haiku state), or
  ``None``: pass it as ``fit(..., model_state=model.model_state)``.
* ``rebuild(params, model_state)`` gives back the framework's object: linen's
  variables dict, an NNX model, an Equinox module (with its state), Haiku's
  params (with its state).
* ``init(key) -> (params, model_state)`` draws fresh params (linen, Haiku), for
  sweeps over seeds; ``None`` for NNX and Equinox, whose models are built by
  their constructors: :func:`stack` stacks the params and states of several
  adapted models for ``jreg.sweep(..., stacked_params=True)``.

Modes and keys, the same for every framework: given a ``key`` (every training
step of :func:`jreg.fit` gets a fresh one) the model is in training mode and
the key drives dropout; without one it is deterministic (evaluation). The
adapters check that dropout really is on in training and off in evaluation
where the framework lets them look, and raise a :class:`jreg.JregError`
otherwise: dropout is never silently off.

Framework imports happen inside the adapters, so ``import jreg`` needs none
of them; a missing framework is a :class:`jreg.JregError` saying what to install.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import check_key
from ._errors import JregError, JregTypeError
from ._types import ModelState, Params

#: Names of a mode flag meaning "training" when True, tried in this order.
TRAIN_FLAGS = ("train", "training", "is_training")
#: Names of a mode flag meaning "evaluation" when True.
EVAL_FLAGS = ("deterministic", "inference", "eval", "evaluation", "use_running_average")


@dataclasses.dataclass(frozen=True, eq=False)
class FrameworkModel:
    """A framework's model as jreg takes it; see the module docstring.

    Attributes:
        apply: the model for :func:`jreg.objective`.
        params: the trained arrays (a pytree).
        model_state: the non-trained variables that training updates, or ``None``.
        rebuild: ``rebuild(params, model_state=None)`` -> the framework's own object.
        init: ``init(key) -> (params, model_state)`` with fresh params, or ``None``.
        framework: ``"flax.linen"``, ``"flax.nnx"``, ``"equinox"`` or ``"haiku"``.
    """

    apply: Callable[..., Any]
    params: Params
    model_state: ModelState
    rebuild: Callable[..., Any]
    init: Callable[[jax.Array], tuple[Params, ModelState]] | None
    framework: str

    @property
    def stateful(self) -> bool:
        """Whether the model carries state (then ``apply`` takes ``state=``)."""
        return self.model_state is not None


#: the ``jreg[...]`` extra that installs each package an adapter needs
EXTRAS = {"flax": "flax", "equinox": "equinox", "dm-haiku": "haiku"}


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise JregError(
            f"this adapter needs {package}, which is not installed: pip install 'jreg[{EXTRAS[package]}]' "
            f"(or pip install {package}; importing {module} failed: {exc})"
        ) from exc


def _mode_flag(fn: Callable[..., Any], train_arg: str | None, what: str) -> tuple[str | None, bool]:
    """``(name, inverted)`` of the parameter of ``fn`` that switches training and evaluation, or ``(None, False)``."""
    try:
        names = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        names = set()
    if train_arg is not None:
        if not isinstance(train_arg, str):
            raise JregTypeError(f"train_arg must be the name of {what}'s mode parameter (a str), got {train_arg!r}")
        if names and train_arg not in names:
            raise JregError(f"train_arg={train_arg!r}: {what} has no parameter of that name; it takes {sorted(names)}")
        return train_arg, train_arg in EVAL_FLAGS
    for name in TRAIN_FLAGS + EVAL_FLAGS:
        if name in names:
            return name, name in EVAL_FLAGS
    return None, False


def _flag(flag: str | None, inverted: bool, train: bool) -> dict[str, bool]:
    return {} if flag is None else {flag: (not train) if inverted else bool(train)}


def _mode(train: bool | None, key: Any) -> bool:
    if key is not None:
        check_key(key)
    return key is not None if train is None else bool(train)


def _stack(arrays: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *a: jnp.stack(a), *arrays)


def stack(models: Sequence[FrameworkModel]) -> tuple[Params, ModelState]:
    """``(params, model_state)`` of several adapted models of one architecture, stacked on a new leading axis.

    For ``jreg.sweep(..., params, stacked_params=True, model_state=...)`` over
    models built with different seeds (any framework). Every model's params and
    state must have the same structure and shapes.
    """
    models = list(models)
    if not models or not all(isinstance(m, FrameworkModel) for m in models):
        raise JregTypeError("stack takes a non-empty list of models from jreg.frameworks adapters")

    def shapes(m: FrameworkModel) -> Any:
        return jax.tree.structure((m.params, m.model_state)), [jnp.shape(a) for a in jax.tree.leaves(m.params)]

    first = shapes(models[0])
    for i, m in enumerate(models[1:], 1):
        if shapes(m) != first:
            raise JregError(
                f"models[{i}] has other params or state (structure or shapes) than models[0]: not one architecture"
            )
    state = None if models[0].model_state is None else _stack([m.model_state for m in models])
    return _stack([m.params for m in models]), state


# ----------------------------------------------------------------------------------------------- flax.linen


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

    dropouts = _linen_dropouts(nn, module, params, model_state, example_x, flag, inverted, rngs_of)

    if model_state is None:

        def apply(params, x, *, key=None, train=None, intermediates=False):
            return forward(params, None, x, key, _mode(train, key), intermediates)[0]

    else:

        def apply(params, x, *, state, train, key=None, intermediates=False):
            return forward(params, state, x, key, _mode(train, key), intermediates)

    def rebuild(params: Params, model_state: ModelState = None) -> dict[str, Any]:
        return {"params": params, **(model_state or {})}

    return FrameworkModel(apply, params, model_state, rebuild, init, "flax.linen")


def _describe_flag(flag: str | None, inverted: bool, train: bool) -> str:
    return "".join(f", {k}={v}" for k, v in _flag(flag, inverted, train).items())


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


# ----------------------------------------------------------------------------------------------- flax.nnx


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
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Dropout) and node.rate > 0 and node.rngs is None:
            where = "/".join(map(str, path)) or "<root>"
            raise JregError(
                f"the nnx.Dropout at {where!r} was built without rngs=: give it rngs=nnx.Rngs(...) (or your "
                "model's rngs) so that the adapter can feed it each step's key"
            )
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

    if model_state is None:

        def apply(params, x, *, key=None, train=None, intermediates=False):
            return forward(params, None, x, key, _mode(train, key), intermediates)[0]

    else:

        def apply(params, x, *, state, train, key=None, intermediates=False):
            return forward(params, state, x, key, _mode(train, key), intermediates)

    def rebuild(params: Params, model_state: ModelState = None) -> Any:
        parts = [params] + ([model_state] if model_state is not None else [template] if template else [])
        return nnx.merge(graphdef, *parts, rng_state, copy=True)

    return FrameworkModel(apply, params, model_state, rebuild, None, "flax.nnx")


# ----------------------------------------------------------------------------------------------- equinox


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
    _check_equinox_state(eqx, module, state, axis_name, per_example)
    params, static = eqx.partition(module, eqx.is_inexact_array)

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


# ----------------------------------------------------------------------------------------------- haiku


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

    try:  # hk.without_apply_rng: an apply without rng (then the function must not draw keys)
        takes_rng = "rng" in inspect.signature(transformed.apply).parameters
    except (TypeError, ValueError):
        takes_rng = True

    def forward(params, state, x, key, train):
        rng = (key if train else None,) if takes_rng else ()
        if with_state:
            return transformed.apply(params, state, *rng, x, **_flag(flag, inverted, train))
        return transformed.apply(params, *rng, x, **_flag(flag, inverted, train)), None

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


__all__ = ["FrameworkModel", "from_equinox", "from_haiku", "from_linen", "from_nnx", "stack"]
