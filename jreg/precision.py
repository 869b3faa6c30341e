"""Mixed precision: float32 master params, low-precision compute, float32 loss and penalties.

A :class:`Policy` names three dtypes (as DeepMind's ``jmp`` does):

* ``param_dtype`` (float32): the params the optimizer holds and updates (the
  *master weights*), the optimizer state with them, and everything computed
  from the params directly: weight penalties see these params, so their terms
  are float32;
* ``compute_dtype`` (bfloat16): the dtype the model runs in;
* ``output_dtype`` (float32): the model's outputs, hence the loss, the
  output, activity and input penalties, all computed in float32.

:func:`mixed_precision` wraps any ``apply`` with jreg's model protocol
(``apply(params, x, *, key=None, intermediates=False)``, stateful ones with
``state=`` and ``train=``): it casts the floating-point leaves of ``params``
and of the inputs to ``compute_dtype``, runs ``apply``, and casts the floating
leaves of what comes back (outputs, intermediates) to ``output_dtype`` and a
stateful model's new state back to the dtypes of the state it was given (the
carry of a training scan keeps its dtype). Integer leaves (labels, token ids,
counters) are left alone. The casts are differentiable, so ``jax.grad`` of the
objective at float32 params is a float32 gradient, computed through the
low-precision model: the gradient of the float32 model evaluated at the
compute-dtype-rounded params and inputs, itself rounded along the way.

**Loss scaling (float16).** float16 keeps 5 exponent bits: cotangents below
``6e-8`` flush to zero, so small gradients of a float16 model vanish.
``loss_scale=S`` multiplies every cotangent by ``S`` where it enters the
low-precision region (at the outputs) and divides by ``S`` where it leaves it
(at the params, inputs and model state), both in float32. One ``jax.custom_jvp``
around the whole call does it: its tangent rule is ``S * J(t / S)`` with ``J``
the model's own linear map, which reverse mode transposes to
``J^T(S * g) / S``. Every derivative, of any order, is the model's own (a
gradient of a gradient, as an input penalty takes, is exact; forward mode works
too); the scale lives inside the wrapper, so neither the objective, its
``parts`` nor the optimizer change. The forward pass is untouched. (In a
second-order path, the input penalty's, the cotangent inside is divided by
``S`` instead: with float16 such a penalty's gradient loses precision.)
A scale too large makes a cotangent overflow to ``inf``: wrap the
optimizer in :func:`skip_nonfinite` (``optax.apply_if_finite``) to skip such
a step instead of applying it. bfloat16 has float32's exponent range and
needs no scaling (``loss_scale`` defaults to 1 for it; for float16 to
``2**15``, jmp's and PyTorch's usual starting value).

The scale here is *static*. Dynamic scaling (halve on overflow, double after
``n`` good steps) needs the optimizer's verdict on step ``t`` to reach the
forward pass of step ``t + 1``; jreg's engine carries only params, model state
and the step count there, so it is left to a hand-written loop (see
``docs/precision.md``).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_optimizer, check_positive_int
from ._errors import JregError, JregTypeError

#: dtype spellings the string form accepts (jmp's, numpy's and the short ones).
DTYPES = {
    **dict.fromkeys(["float32", "f32", "fp32", "full", "single"], np.dtype("float32")),
    **dict.fromkeys(["bfloat16", "bf16"], np.dtype(jnp.bfloat16)),
    **dict.fromkeys(["float16", "f16", "fp16", "half"], np.dtype("float16")),
    **dict.fromkeys(["float64", "f64", "fp64", "double"], np.dtype("float64")),
}
#: keys of the string form and the field each sets.
KEYS = {
    **dict.fromkeys(["params", "param", "p"], "param_dtype"),
    **dict.fromkeys(["compute", "c"], "compute_dtype"),
    **dict.fromkeys(["output", "outputs", "o"], "output_dtype"),
    **dict.fromkeys(["loss_scale", "scale"], "loss_scale"),
}
#: one-word policies: float32 master params and outputs, compute in the named dtype.
SHORTCUTS = {"f32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}
SHORTCUTS.update({"f16": "float16", "float16": "float16", "fp16": "float16", "half": "float16"})
#: the static loss scale a float16 policy gets when none is given.
FLOAT16_LOSS_SCALE = 2.0**15
#: the loss scales accepted: the scale and its inverse both normal float32 numbers.
SCALE_RANGE = (2.0**-126, 2.0**126)
_FLOATS = sorted({d.name for d in DTYPES.values()})


def _dtype(value: Any, name: str) -> np.dtype:
    """``value`` as a floating numpy dtype (a dtype, a type such as ``jnp.bfloat16``, or a name from DTYPES)."""
    if value is None:
        raise JregTypeError(f"{name} must be a floating dtype such as jnp.bfloat16, got None")
    if isinstance(value, str):
        if value.strip().lower() in DTYPES:
            return DTYPES[value.strip().lower()]
        raise JregError(f"{name} must be one of {_FLOATS} (or {sorted(DTYPES)}), got {value!r}")
    try:
        dtype = np.dtype(value)
    except TypeError as exc:
        raise JregTypeError(f"{name} must be a floating dtype such as jnp.bfloat16, got {value!r}") from exc
    if dtype not in DTYPES.values():
        raise JregTypeError(f"{name} must be a floating dtype, one of {_FLOATS}; got {dtype}")
    return dtype


def _scale(value: Any, name: str = "loss_scale") -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise JregTypeError(f"{name} must be a positive number such as 2**15, got {type(value).__name__}: {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not (math.isfinite(number) and number > 0):
        raise JregError(f"{name} must be a finite number > 0, got {value!r}")
    if not SCALE_RANGE[0] <= number <= SCALE_RANGE[1]:  # float32(S) or float32(1 / S) would be inf, 0 or subnormal
        raise JregError(
            f"{name} must be between 2**-126 and 2**126 (the scale and its inverse are applied in float32), "
            f"got {value!r}"
        )
    return number


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtype params, compute and outputs have, and the static loss scale (see the module docstring).

    Attributes:
        param_dtype: the master params' dtype (float32): what :func:`jreg.mlp` initializes,
            what the optimizer updates and the weight penalties see.
        compute_dtype: the dtype the model runs in (bfloat16 by default).
        output_dtype: the outputs' and intermediates' dtype, so the loss's (float32).
        loss_scale: cotangents are multiplied by it inside the low-precision region and divided
            by it on the way out; ``None`` means ``2**15`` for float16 compute and 1 otherwise.

    Fields given as strings (``"bf16"``) or types (``jnp.bfloat16``) are stored as numpy dtypes;
    a dtype that is not floating, or a scale that is not a number between ``2**-126`` and
    ``2**126`` (the scale and its inverse are applied in float32), is a
    :class:`jreg.JregError` naming the field. ``str(policy)`` reads back to an equal policy.
    """

    param_dtype: Any = np.dtype("float32")
    compute_dtype: Any = np.dtype(jnp.bfloat16)
    output_dtype: Any = np.dtype("float32")
    loss_scale: float | None = None

    def __post_init__(self) -> None:
        for field in ("param_dtype", "compute_dtype", "output_dtype"):
            object.__setattr__(self, field, _dtype(getattr(self, field), field))
        scale = self.loss_scale
        if scale is None:
            scale = FLOAT16_LOSS_SCALE if self.compute_dtype == np.float16 else 1.0
        object.__setattr__(self, "loss_scale", _scale(scale))

    @classmethod
    def parse(cls, spec: str, name: str = "policy") -> Policy:
        """A policy from ``"params=float32,compute=bfloat16,output=float32"`` or a shortcut.

        Keys: ``params``/``p``, ``compute``/``c``, ``output``/``o``, ``loss_scale``; a key left out
        is float32 (no loss scaling for ``loss_scale``, except float16's default). Shortcuts:
        ``"f32"``, ``"bf16"``, ``"f16"`` (and their long names): float32 params and outputs,
        compute in that dtype.
        """
        if not isinstance(spec, str):
            raise JregTypeError(f"{name} must be a jreg.Policy or a string such as 'bf16', got {spec!r}")
        text = "".join(spec.split()).lower()  # no whitespace anywhere (spaces, tabs, newlines)
        if text in SHORTCUTS:
            return cls(compute_dtype=SHORTCUTS[text])
        fields: dict[str, Any] = {}
        for item in text.split(","):
            key, eq, value = item.partition("=")
            if not eq or key not in KEYS or not value:
                raise JregError(
                    f"{name}: cannot read {item!r} in {spec!r}; write 'params=float32,compute=bfloat16,"
                    f"output=float32' (keys {sorted(KEYS)}) or one of the shortcuts {sorted(SHORTCUTS)}"
                )
            field = KEYS[key]
            if field in fields:
                raise JregError(f"{name}: {key!r} is given twice in {spec!r}")
            fields[field] = value if field != "loss_scale" else _number(value, f"{name}: loss_scale")
        full = dict.fromkeys(("param_dtype", "compute_dtype", "output_dtype"), "float32")
        try:
            return cls(**{**full, **fields})
        except JregError as exc:
            raise type(exc)(f"{name}: {exc} (in {spec!r})") from None

    def to_compute(self, tree: Any) -> Any:
        """The floating leaves of ``tree`` in ``compute_dtype`` (others unchanged); no loss scaling."""
        return _cast(tree, self.compute_dtype)

    def to_output(self, tree: Any) -> Any:
        """The floating leaves of ``tree`` in ``output_dtype`` (others unchanged); no loss scaling."""
        return _cast(tree, self.output_dtype)

    def to_params(self, tree: Any) -> Any:
        """The floating leaves of ``tree`` in ``param_dtype``: master params for a model initialized otherwise."""
        return _cast(tree, self.param_dtype)

    def wrap(self, apply: Callable[..., Any]) -> Callable[..., Any]:
        """:func:`mixed_precision` ``(apply, self)``."""
        return mixed_precision(apply, self)

    def __str__(self) -> str:
        return (
            f"params={self.param_dtype.name},compute={self.compute_dtype.name},"
            f"output={self.output_dtype.name},loss_scale={_format_scale(self.loss_scale)}"
        )


def _format_scale(scale: float) -> str:
    """``scale`` as short as it reads back exactly (``32768``, ``16777216``, ``0.3333333333333333``)."""
    if scale.is_integer() and scale < 2.0**53:
        return str(int(scale))
    short = f"{scale:g}"
    return short if float(short) == scale else repr(scale)


def _number(text: str, name: str) -> float:
    """``"32768"``, ``"2**15"`` or ``"3.2e4"`` as a positive float (``"-2**15"`` is ``-(2**15)``, as in Python)."""
    base, power, exponent = text.partition("**")
    sign, digits = (-1.0, base[1:]) if base.startswith("-") else (1.0, base.removeprefix("+"))
    try:
        if digits.startswith(("+", "-")):  # '--2**15': not a number Python would read as one
            raise ValueError(text)
        value = sign * float(digits) ** float(exponent) if power else float(text)
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        raise JregError(f"{name} must be a number such as 32768 or 2**15, got {text!r}") from exc
    return _scale(value, name)


def as_policy(policy: Any, name: str = "policy") -> Policy:
    """``policy`` as a :class:`Policy`: a Policy itself or its string form (:meth:`Policy.parse`)."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        return Policy.parse(policy, name)
    raise JregTypeError(
        f"{name} must be a jreg.Policy or a string such as 'bf16' or 'params=float32,compute=bfloat16,"
        f"output=float32', got {type(policy).__name__}: {policy!r}"
    )


def _is_float(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _cast(tree: Any, dtype: np.dtype) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if _is_float(x) else x, tree)


@jax.custom_jvp
def scale_gradient(x: jax.Array, factor: Any) -> jax.Array:
    """The identity on ``x``; its cotangent (reverse mode) and its tangent (forward mode) are multiplied by ``factor``.

    The product is taken in float32 (or ``x``'s dtype when wider) and rounded to ``x``'s
    dtype after, so a factor such as ``2**-25`` that float16 cannot hold still applies
    to a float16 leaf. ``factor`` gets no gradient. A ``jax.custom_jvp`` (its tangent rule
    is linear, so reverse mode transposes it): ``jax.jvp``, ``jax.jacfwd`` and double
    backpropagation all go through. Its derivative *is* ``factor``: use it in pairs
    (``factor`` and ``1 / factor``) whose paths are the only ones, for first-order
    gradients. :func:`mixed_precision` does not use it (a gradient of a gradient would
    see the factor uncancelled); it scales the whole call instead.
    """
    return x


@scale_gradient.defjvp
def _scale_jvp(primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[jax.Array, jax.Array]:
    (x, factor), (t, _) = primals, tangents
    wide = jnp.promote_types(t.dtype, jnp.float32)
    return x, (t.astype(wide) * jnp.asarray(factor, wide)).astype(t.dtype)


def _times(tree: Any, factor: float) -> Any:
    """The floating leaves of a tangent tree multiplied by ``factor`` in float32 (or wider), in their own dtype."""

    def one(t: Any) -> Any:
        if not _is_float(t):  # float0 tangents of integer leaves and keys
            return t
        wide = jnp.promote_types(t.dtype, jnp.float32)
        return (t.astype(wide) * jnp.asarray(factor, wide)).astype(t.dtype)

    return jax.tree.map(one, tree)


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def _loss_scaled(call: Callable[..., Any], scale: float, args: tuple[Any, ...]) -> Any:
    """``call(*args)`` whose derivatives are exactly ``call``'s, computed with tangents ``/ scale`` inside.

    One ``jax.custom_jvp`` around the whole call: its tangent rule is ``scale * J(t / scale)``
    with ``J`` the call's own linear map, the products real float32 arithmetic. Reverse mode
    transposes it to ``J^T(scale * g) / scale``: the cotangent is multiplied by ``scale``
    before it is cast into the low-precision region and divided after it comes out. Every
    derivative, of any order, is the call's own (the scale cancels on each path: a gradient
    of a gradient, as an input penalty takes, is exact). The array leaves of the arguments
    (params, inputs, model state, key, extra arguments) and the traced values ``apply``
    closes over (``jax.closure_convert``) are its explicit inputs; other leaves (Python
    flags) are held fixed.
    """
    leaves, treedef = jax.tree.flatten(args)
    where = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

    def rebuild(dynamic: tuple[Any, ...]) -> Any:
        full = list(leaves)
        for i, value in zip(where, dynamic):
            full[i] = value
        return call(*treedef.unflatten(full))

    dynamic = tuple(leaves[i] for i in where)
    # values apply closes over that may be differentiated (a traced coefficient) become inputs too
    converted, consts = jax.closure_convert(rebuild, dynamic)

    def run(dynamic: tuple[Any, ...], consts: tuple[Any, ...]) -> Any:
        return converted(dynamic, *consts)

    @jax.custom_jvp
    def scaled(dynamic: tuple[Any, ...], consts: tuple[Any, ...]) -> Any:
        return run(dynamic, consts)

    @scaled.defjvp
    def _jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any, Any]:
        out, t_out = jax.jvp(run, primals, _times(tangents, 1.0 / scale))
        return out, _times(t_out, scale)

    return scaled(dynamic, tuple(consts))


def _back_to(new: Any, old: Any) -> Any:
    """A stateful model's new state in the dtypes of the state it was given (when the structures match)."""
    new_leaves, treedef = jax.tree.flatten(new)
    old_leaves, old_def = jax.tree.flatten(old)
    if treedef != old_def:
        return new
    return treedef.unflatten(
        [n.astype(o.dtype) if _is_float(n) and _is_float(o) else n for n, o in zip(new_leaves, old_leaves)]
    )


def mixed_precision(apply: Callable[..., Any], policy: Policy | str = "bf16") -> Callable[..., Any]:
    """``apply`` run in the policy's compute dtype, with outputs (and gradients) in float32.

    Args:
        apply: any ``apply(params, x, **keywords)`` with jreg's model protocol: it may take
            ``key``, ``intermediates`` (then returns ``(outputs, intermediates)``), and
            ``state``/``train`` (a stateful model, returning ``(outputs, new_state)``).
        policy: a :class:`Policy` or its string form (``"bf16"``, ``"f16"``,
            ``"params=float32,compute=bfloat16,output=float32"``).

    Returns:
        ``wrapped(params, x, **keywords)`` with ``apply``'s own signature (so jreg passes it
        exactly the keywords ``apply`` takes): the floating leaves of ``params`` and ``x`` go in as
        ``compute_dtype`` (further positional arguments go to ``apply`` as given; params and
        inputs may also come by ``apply``'s own names for them); every floating leaf of the
        outputs and intermediates comes out as
        ``output_dtype``; a new model state comes out in the dtypes of the ``state`` passed in.
        The model state goes in unchanged (running statistics keep their precision). Cotangents
        are scaled by ``policy.loss_scale`` inside the low-precision region (module docstring).
        Wrapping a wrapper again under the same policy returns it unchanged; under another
        policy, or a policy naming float64 while JAX's 64-bit mode is off, is a
        :class:`jreg.JregError`.
    """
    if not callable(apply):
        raise JregTypeError(f"apply must be callable apply(params, x, ...), got {apply!r}")
    pol = as_policy(policy)
    inner = getattr(apply, "policy", None)
    if isinstance(inner, Policy) and getattr(apply, "_jreg_mixed_precision", False):
        if inner == pol:  # wrapping again changes nothing (two loss scales would multiply)
            return apply
        raise JregError(
            f"apply is already {apply.__name__} under the policy {inner}; wrapping it again under {pol} would cast "
            "twice and multiply the loss scales: wrap the plain apply (its __wrapped__) instead"
        )
    if not jax.config.read("jax_enable_x64"):
        wide = [f for f in ("param_dtype", "compute_dtype", "output_dtype") if getattr(pol, f) == np.float64]
        if wide:
            raise JregError(
                f"policy {pol} names float64 ({', '.join(wide)}) but JAX's 64-bit mode is off, so those arrays "
                "would be float32: call jax.config.update('jax_enable_x64', True) first, or use float32"
            )
    compute, output, scale = pol.compute_dtype, pol.output_dtype, pol.loss_scale
    try:
        signature: inspect.Signature | None = inspect.signature(apply)
    except (TypeError, ValueError):  # no signature (a builtin): positional (params, x) only
        signature = None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [n for n, p in signature.parameters.items() if p.kind in positional][:2] if signature else []
    label = f"mixed_precision({getattr(apply, '__name__', type(apply).__name__)})"

    def wrapped(*args: Any, **keywords: Any) -> Any:
        # params and x may come by apply's own names for them (wrapped(params, inputs=x))
        args = args + tuple(keywords.pop(n) for n in names[len(args) :] if n in keywords)
        if len(args) < 2:
            raise JregTypeError(
                f"{label} needs the params and the inputs ({', '.join(names) or 'params, x'}), got "
                f"{len(args)} positional argument(s) and the keywords {sorted(keywords)}"
            )
        params, x, *rest = args
        if scale == 1.0:
            return call(params, x, tuple(rest), keywords)
        return _loss_scaled(call, scale, (params, x, tuple(rest), keywords))

    def call(params: Any, x: Any, rest: tuple[Any, ...], keywords: dict[str, Any]) -> Any:
        out = apply(_cast(params, compute), _cast(x, compute), *rest, **keywords)
        if "state" not in keywords:
            return _cast(out, output)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise JregError(f"a stateful model's apply must return (outputs, new_state), got {type(out).__name__}")
        outputs, new_state = out
        return _cast(outputs, output), _back_to(new_state, keywords["state"])

    if signature is not None:
        wrapped.__signature__ = signature  # type: ignore[attr-defined]
    wrapped.__name__ = wrapped.__qualname__ = label
    wrapped.__doc__ = f"{getattr(apply, '__doc__', None) or ''}\n\nRun under the policy {pol}."
    wrapped.__wrapped__ = apply  # type: ignore[attr-defined]
    wrapped.policy = pol  # type: ignore[attr-defined]
    wrapped._jreg_mixed_precision = True  # type: ignore[attr-defined]
    return wrapped


def skip_nonfinite(optimizer: Any, max_consecutive: int = 10) -> Any:
    """``optimizer`` that skips a step whose gradient holds NaN or infinity (``optax.apply_if_finite``).

    With float16 and a loss scale an overflowing cotangent makes a step's gradient
    ``inf``; this leaves params and optimizer state as they were for that step. After
    ``max_consecutive`` bad steps in a row the update goes through, so jreg's divergence
    guard reports a run that cannot recover instead of it silently standing still.
    A skipped step changes no params, optimizer-state float or cost, so the guard
    does not fire on it.
    """
    check_optimizer(optimizer)
    import optax  # here, not at the top: jreg.nn (and so jreg.mlp) loads this module and needs no optax

    return optax.apply_if_finite(optimizer, check_positive_int(max_consecutive, "max_consecutive"))


__all__ = ["Policy", "as_policy", "mixed_precision", "scale_gradient", "skip_nonfinite"]
