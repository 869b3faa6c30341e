"""What every adapter shares: :class:`FrameworkModel`, the framework imports (:func:`_require`), the mode flag and
``train``/``key`` rules, jreg's ``apply`` around an adapter's ``forward``, and :func:`stack` (see
:mod:`jreg.frameworks`)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import check_key
from .._errors import JregError, JregTypeError
from .._types import ModelState, Params

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


def _describe_flag(flag: str | None, inverted: bool, train: bool) -> str:
    return "".join(f", {k}={v}" for k, v in _flag(flag, inverted, train).items())


def _apply_with_intermediates(forward: Callable[..., Any], stateful: bool) -> Callable[..., Any]:
    """jreg's ``apply`` around ``forward(params, state, x, key, train, intermediates) -> (result, new_state)``
    (linen, NNX): ``apply(params, x, *, key=None, train=None, intermediates=False)``, or with ``state=`` returning
    ``(result, new_state)``."""
    if not stateful:

        def apply(params, x, *, key=None, train=None, intermediates=False):
            return forward(params, None, x, key, _mode(train, key), intermediates)[0]

    else:

        def apply(params, x, *, state, train, key=None, intermediates=False):
            return forward(params, state, x, key, _mode(train, key), intermediates)

    return apply
