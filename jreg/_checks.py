"""Small validation helpers shared by the public entry points.

Checks on *values* only run on concrete inputs: under ``jit`` or ``vmap`` the
value is a tracer and only its shape and dtype are known, so those checks are
skipped there (shape checks always run, since shapes are static).
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import JregError, JregTypeError
from ._tree import path_str


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds a known value (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_nonnegative_scalar(value: Any, name: str) -> None:
    """Raise unless a concrete ``value`` is a finite, non-negative real scalar.

    Traced values pass unchecked, so the coefficient can be swept with ``vmap``.
    """
    if not is_concrete(value):
        return
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array, np.generic)):
        raise JregTypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    arr = np.asarray(value)
    if arr.shape != ():
        raise JregError(f"{name} must be a scalar, got an array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise JregTypeError(f"{name} must be a real number, got dtype {arr.dtype}")
    if not np.isfinite(arr):
        raise JregError(f"{name} must be finite, got {arr.item()}")
    if arr < 0:
        raise JregError(f"{name} must be >= 0, got {arr.item()}")


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int, raising unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise JregTypeError(f"{name} must be a positive integer, got {type(value).__name__}: {value!r}")
    if value <= 0:
        raise JregError(f"{name} must be a positive integer, got {value}")
    return int(value)


MAX_CLASSES = 2**31 - 1
"""The most classes a one-hot encoding takes: labels are int32 in JAX by default, so more are never used."""

MAX_ONE_HOT_ELEMENTS = 2**31
"""The most elements a one-hot array may have (labels x classes): 8 GiB as float32."""


def check_classes(value: Any, name: str = "classes") -> int:
    """``value`` as a number of classes: a positive ``int`` (not bool), at most :data:`MAX_CLASSES`."""
    classes = check_positive_int(value, name)
    if classes > MAX_CLASSES:
        raise JregError(f"{name} must be at most {MAX_CLASSES} (2**31 - 1: labels are int32), got {classes}")
    return classes


def check_one_hot_size(classes: int, labels: Any, name: str = "classes") -> None:
    """Raise unless one-hot encoding ``labels`` (an array) in ``classes`` columns stays within
    :data:`MAX_ONE_HOT_ELEMENTS`, so an absurd count is refused before the array is allocated."""
    count = math.prod(int(d) for d in labels.shape)
    if count * classes > MAX_ONE_HOT_ELEMENTS:
        raise JregError(
            f"{name}={classes} for {count} labels makes a one-hot array of {count * classes} elements, over the "
            f"{MAX_ONE_HOT_ELEMENTS} (2**31, 8 GiB as float32) jreg allows; one-hot smaller batches, or give "
            f"jreg's losses the integer labels"
        )


def check_path(value: Any, name: str = "path") -> Path:
    """``value`` as a :class:`~pathlib.Path`: a non-empty ``str`` or ``os.PathLike`` of text, without NUL characters.

    Bytes paths are refused (jreg names files in text). A wrong type is a :class:`JregTypeError`, an empty path or
    one holding a NUL character a :class:`JregError`, each naming ``name``.
    """
    if isinstance(value, (bytes, bytearray)):
        raise JregTypeError(f"{name} must be a path as str or os.PathLike, not bytes ({value!r}); decode it first")
    if not isinstance(value, (str, os.PathLike)):
        raise JregTypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}: {value!r}")
    try:
        text = os.fspath(value)
    except Exception as exc:  # noqa: BLE001 - a PathLike whose __fspath__ fails
        raise JregTypeError(f"{name}: {type(value).__name__}.__fspath__() failed ({exc})") from exc
    if not isinstance(text, str):
        raise JregTypeError(
            f"{name} must be a text path; {type(value).__name__}.__fspath__() gave {type(text).__name__}"
        )
    if not text:
        raise JregError(f"{name} must be a non-empty path, got ''")
    if "\0" in text:
        raise JregError(f"{name} must not contain a NUL character, got {text!r}")
    return Path(text)


def check_finite(x: Any, name: str) -> None:
    """Raise if a concrete array holds NaN or infinity.

    One pass over the values (the count of bad ones only when there are some), and none at all for integers
    and booleans, which are always finite.
    """
    if not is_concrete(x):
        return
    dtype = getattr(x, "dtype", None)
    if dtype is not None and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_)):
        return
    finite = np.isfinite(np.asarray(x))
    if not bool(np.all(finite)):
        bad = int(np.size(finite) - np.count_nonzero(finite))
        raise JregError(f"{name} holds {bad} non-finite value(s) (NaN or inf)")


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Raise unless ``key`` is a JAX PRNG key (typed ``jax.random.key`` or raw ``PRNGKey``)."""
    if isinstance(key, (jax.Array, np.ndarray)) or not is_concrete(key):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise JregTypeError(
        f"{name} must be a single JAX PRNG key such as jax.random.key(0), got "
        f"{type(key).__name__} {getattr(key, 'dtype', '')}{tuple(getattr(key, 'shape', ()))}"
    )


def check_optimizer(optimizer: Any, name: str = "optimizer") -> None:
    """Raise unless ``optimizer`` looks like an optax ``GradientTransformation`` (has init and update).

    A ``flax.nnx.Optimizer`` (or ``nnx.ModelAndOptimizer``) holds a model and its optimizer state beside the
    optax transformation (``.tx``); jreg keeps the state itself, so it is told to pass ``.tx``.
    """
    if _is_nnx_optimizer(optimizer):
        kind = type(optimizer).__name__
        raise JregTypeError(
            f"{name} must be an optax GradientTransformation, got a flax.nnx.{kind} (a model with its optimizer "
            f"state); pass the optax transformation it wraps, {name}=<your nnx.{kind}>.tx (e.g. optax.adam(1e-3)): "
            "jreg keeps the optimizer state itself (result.opt_state) and trains the model's params "
            "(jreg.frameworks.from_nnx(model))"
        )
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise JregTypeError(f"{name} must be an optax GradientTransformation (with init and update), got {optimizer!r}")


def _is_nnx_optimizer(optimizer: Any) -> bool:
    """A ``flax.nnx`` optimizer object (``nnx.Optimizer``, ``nnx.ModelAndOptimizer``), by its class (no import)."""
    return any(
        c.__module__.startswith("flax.") and c.__name__ in ("Optimizer", "ModelAndOptimizer")
        for c in type(optimizer).__mro__
    )


def check_params(params: Any, name: str = "params", *, finite: bool = True) -> None:
    """Params to be trained must be a pytree of floating-point arrays (what ``jax.grad`` can differentiate).

    The error names the first bad leaf by its path. ``finite=False`` skips the
    NaN/infinity check (used to explain a failure that has another cause).
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if not flat:
        raise JregError(f"{name} holds no arrays" + _advice_for(params))
    for path, leaf in flat:
        where = path_str(path) or "<root>"
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            hint = _advice_for(params) or (
                "; params must be a pytree of arrays only (functions and other objects belong in the model, not "
                "in what is trained)"
            )
            raise JregTypeError(f"{name}: leaf {where!r} is {type(leaf).__name__}, not an array{hint}")
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise JregTypeError(
                f"{name}: leaf {where!r} must be floating point to be trained, got {leaf.dtype}{list(leaf.shape)}"
                + _advice_for(params)
            )
        if finite:
            check_finite(leaf, f"{name}: leaf {where!r}")


def framework_advice(obj: Any) -> str | None:
    """What to do when a framework's model object stands where jreg wants params, or ``None``.

    Looks at class names and their modules only, so it imports no framework (and costs nothing
    when none is loaded).
    """
    for cls in type(obj).__mro__:
        where, cls_name = getattr(cls, "__module__", "") or "", cls.__name__
        if where.startswith("equinox") and cls_name == "Module":
            return (
                "an Equinox module is not params: use model = jreg.frameworks.from_equinox(module) (with "
                "state= for eqx.nn.State) and train model.params with model.apply, or split it yourself with "
                "eqx.partition(module, eqx.is_inexact_array)"
            )
        if where.startswith("flax.nnx") and cls_name == "Module":
            return "a Flax NNX model is not params: use model = jreg.frameworks.from_nnx(model) and train model.params"
        if where.startswith("flax.linen") and cls_name == "Module":
            return (
                "a Flax linen module holds no params: use model = jreg.frameworks.from_linen(module, x[:1], "
                "key=key) and train model.params"
            )
        if where.startswith("haiku") and cls_name in ("Transformed", "TransformedWithState"):
            return (
                "a Haiku transformed function is not params: use model = jreg.frameworks.from_haiku(transformed, "
                "x[:1], key=key) and train model.params"
            )
    return None


def framework_params_advice(params: Any) -> str | None:
    """:func:`framework_advice` for the first framework object in ``params`` (root or inside), or ``None``."""
    advice = _advice_for(params)
    return advice[2:] if advice else None


def _advice_for(params: Any) -> str:
    """``"; <advice>"`` for the first framework object in ``params`` (the root or a node inside), else ``""``."""
    found = [framework_advice(params)]
    if found[0] is None:
        nodes = jax.tree.leaves(params, is_leaf=lambda x: framework_advice(x) is not None)
        found = [a for a in map(framework_advice, nodes) if a is not None][:1] or [None]
    return "" if found[0] is None else f"; {found[0]}"
