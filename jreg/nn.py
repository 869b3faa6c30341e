"""Models as ``(init, apply)`` pairs of pure functions.

A :class:`Model` holds ``init(key) -> params`` and ``apply(params, x) -> outputs``.
jreg's own MLP uses params of the form ``[{"w": (n_in, n_out), "b": (n_out,)}, ...]``,
one dict per layer, but nothing else in jreg depends on that layout: penalties,
objectives and training work on any params pytree.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _memory
from . import initializers as inits
from ._checks import check_key, check_positive_int, is_concrete
from ._errors import JregError, JregTypeError
from .precision import Policy, as_policy, mixed_precision
from .stochastic import check_drop_rate, dropout

Params = Any
Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class Model(NamedTuple):
    """A model as two pure functions.

    Attributes:
        init: ``init(key) -> params``, a pytree of arrays.
        apply: ``apply(params, x) -> outputs``; ``x`` has shape ``(batch, n_in)``
            (or ``(n_in,)`` for one example) and ``outputs`` ``(batch, n_out)``.
            jreg's models also take two keywords: ``key`` (a ``jax.random`` key:
            training mode, with dropout or noise; without it, evaluation mode)
            and ``intermediates=True`` (return ``(outputs, intermediates)``, the
            pytree of hidden activations an activity penalty acts on). Any
            function with that protocol works with :func:`jreg.objective`.
    """

    init: Callable[[jax.Array], Params]
    apply: Callable[..., Any]


def mlp(
    sizes: Sequence[int],
    activation: Callable[[jax.Array], jax.Array] = jax.nn.sigmoid,
    output_activation: Callable[[jax.Array], jax.Array] | None = None,
    *,
    w_init: Initializer | None = None,
    b_init: Initializer | None = None,
    init: str = "default",
    dtype: Any = jnp.float32,
    drop_rate: Any = 0.0,
    input_drop_rate: Any = 0.0,
    policy: Policy | str | None = None,
) -> Model:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Layer ``l`` computes ``z = a @ w + b`` with ``w`` of shape ``(n_in, n_out)``;
    hidden layers apply ``activation``. ``apply`` returns the last layer's
    pre-activations ``z`` (logits), which is what the stable losses in
    :mod:`jreg.losses` expect, unless ``output_activation`` is given, in which
    case it returns ``output_activation(z)`` (e.g. ``jax.nn.sigmoid`` for
    Nielsen's quadratic cost on activations).

    Args:
        sizes: layer widths, input first, e.g. ``[784, 30, 10]``; at least two. Params that cannot fit in
            memory (``jreg/_memory.py``: the device's, the host's, or ``JREG_MEMORY_LIMIT``) are refused here,
            with a :class:`jreg.JregError` naming their size and largest shape, before ``init`` asks for them.
        activation: hidden-layer nonlinearity (default sigmoid, as in the book).
        output_activation: applied to the output layer, or ``None`` for logits.
        w_init, b_init: initializers with the ``jax.nn.initializers`` signature;
            they override the scheme chosen by ``init``.
        init: a named scheme from :data:`jreg.initializers.SCHEMES`:
            ``"default"`` (Nielsen: ``w ~ N(0, 1/n_in)``, ``b ~ N(0, 1)``),
            ``"large"`` (Nielsen: ``w, b ~ N(0, 1)``), ``"glorot"`` or ``"he"``
            (biases zero).
        dtype: dtype of the parameters (float32 by default).
        drop_rate: probability of dropping each hidden unit in training mode
            (inverted dropout after each hidden activation; see
            :mod:`jreg.stochastic`). May be traced, for sweeps.
        input_drop_rate: probability of dropping each input in training mode.
        policy: mixed precision (:mod:`jreg.precision`): a :class:`jreg.Policy` or its
            string form (``"bf16"``, ``"f16"``, ``"params=float32,compute=bfloat16,output=float32"``).
            The params are initialized in its ``param_dtype`` (``dtype`` must then be float32 or
            that same dtype) and ``apply`` is :func:`jreg.mixed_precision` of the plain one.
            ``None`` (default): no casts at all.

    Returns:
        A :class:`Model` whose params are ``[{"w": (n_in, n_out), "b": (n_out,)}, ...]``
        and whose ``apply(params, x, *, key=None, intermediates=False)`` is in
        training mode (dropout active) when given a key and deterministic
        without one. With ``intermediates=True`` it returns ``(outputs, hidden)``,
        ``hidden`` being the list of hidden-layer activations (after the
        nonlinearity, before dropout), one ``(batch, width)`` array per hidden layer.
    """
    sizes, dtype, policy, w_init, b_init = _mlp_checks(
        sizes, activation, output_activation, w_init, b_init, init, dtype, drop_rate, input_drop_rate, policy
    )
    _check_mlp_size(sizes, dtype)
    init_fn = _mlp_init(sizes, w_init, b_init, dtype)
    # with both rates concretely 0 a key changes nothing: skip the key split (and the dropout calls' work)
    stochastic = not all(is_concrete(r) and float(np.asarray(r)) == 0.0 for r in (drop_rate, input_drop_rate))
    apply_fn = _mlp_apply(sizes, activation, output_activation, drop_rate, input_drop_rate, stochastic)

    # One compiled program instead of one compile per eager op (about 1 s saved on first use).
    return Model(jax.jit(init_fn), apply_fn if policy is None else mixed_precision(apply_fn, policy))


def _mlp_checks(sizes, activation, output_activation, w_init, b_init, init, dtype, drop_rate, input_drop_rate, policy):
    """:func:`mlp`'s arguments checked: ``(sizes, dtype, policy, w_init, b_init)`` as the model uses them."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise JregTypeError(f"sizes must be a sequence of layer widths such as [784, 30, 10], got {sizes!r}")
    sizes = tuple(check_positive_int(n, f"sizes[{i}]") for i, n in enumerate(sizes))
    if len(sizes) < 2:
        raise JregError(f"sizes must list at least an input and an output width, got {list(sizes)}")
    if init not in inits.SCHEMES:
        raise JregError(f"init must be one of {sorted(inits.SCHEMES)}, got {init!r}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise JregTypeError(f"dtype must be a floating-point dtype, got {dtype}")
    if policy is not None:
        policy = as_policy(policy, "policy")
        if np.dtype(dtype) not in (np.dtype("float32"), policy.param_dtype):
            raise JregError(
                f"dtype ({np.dtype(dtype)}) and policy's param_dtype ({policy.param_dtype}) disagree; "
                "with a policy the params are initialized in its param_dtype: leave dtype out"
            )
        dtype = policy.param_dtype
    for name, fn in (("activation", activation), ("output_activation", output_activation)):
        if fn is not None and not callable(fn):
            raise JregTypeError(f"{name} must be callable, got {fn!r}")
    check_drop_rate(drop_rate, "drop_rate")
    check_drop_rate(input_drop_rate, "input_drop_rate")
    scheme_w, scheme_b = inits.SCHEMES[init]
    w_init = scheme_w if w_init is None else w_init
    b_init = scheme_b if b_init is None else b_init
    for name, fn in (("w_init", w_init), ("b_init", b_init)):
        if not callable(fn):
            raise JregTypeError(f"{name} must be an initializer init(key, shape, dtype), got {fn!r}")
    return sizes, dtype, policy, w_init, b_init


def _check_mlp_size(sizes: tuple[int, ...], dtype: Any) -> None:
    """Refuse, before ``init`` asks for it, params that cannot fit in memory (:func:`jreg._memory.check`)."""
    shapes = [[(n_in, n_out), (n_out,)] for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    part = _memory.Part(
        "params",
        sum(_memory.array_bytes(s, dtype) for layer in shapes for s in layer),
        max((s for layer in shapes for s in layer), key=lambda s: _memory.array_bytes(s, dtype)),
        str(np.dtype(dtype)),
    )
    _memory.check([part], f"jreg.mlp({list(sizes)})")


def _mlp_init(sizes: tuple[int, ...], w_init: Initializer, b_init: Initializer, dtype: Any) -> Callable[..., Any]:
    """``init_fn(key)``: the MLP's params, one ``{"w", "b"}`` dict per layer."""

    def init_fn(key: jax.Array) -> list[dict[str, jax.Array]]:
        keys = jax.random.split(key, 2 * (len(sizes) - 1))
        params = []
        for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = w_init(keys[2 * layer], (n_in, n_out), dtype)
            b = b_init(keys[2 * layer + 1], (n_out,), dtype)
            params.append({"w": jnp.asarray(w, dtype), "b": jnp.asarray(b, dtype)})
        return params

    return init_fn


def _mlp_apply(
    sizes, activation, output_activation, drop_rate, input_drop_rate, stochastic: bool
) -> Callable[..., Any]:
    """``apply_fn(params, x, *, key=None, intermediates=False)``: the MLP's forward pass (dropout with a key)."""

    def apply_fn(params: Params, x: jax.Array, *, key: jax.Array | None = None, intermediates: bool = False) -> Any:
        _check_mlp_input(params, x, sizes)
        if key is not None:  # checked even when no dropout would use it: a bad key is a mistake either way
            check_key(key)
        train = key is not None and stochastic
        keys = jax.random.split(key, len(sizes) - 1) if train else [None] * (len(sizes) - 1)
        a = dropout(keys[0], x, input_drop_rate, train=train)
        hidden = []
        last = len(params) - 1
        for layer, p in enumerate(params):
            z = _dense(a, p["w"]) + p["b"]  # a "wide" sweep's weight gradients: aᵀ·g (see _dense)
            if layer < last:
                a = activation(z)
                hidden.append(a)
                a = dropout(keys[layer + 1], a, drop_rate, train=train)
            else:
                a = z if output_activation is None else output_activation(z)
        return (a, hidden) if intermediates else a

    return apply_fn


def _left_product_state() -> Any:
    """A JAX config state (part of every trace and jit cache key), or ``None`` where this JAX has no such API.

    A trace-time switch must be part of the cache keys: a jitted function traced outside the context (a user's
    ``jax.jit(model.apply)``) must not be reused inside it, nor the other way round, or results would depend
    on what ran before. ``jax._src.config.bool_state`` is not public; without it the rule is never used
    (``"wide"`` sweeps then take JAX's own rule: slower on a CPU, the same results up to rounding).
    """
    try:
        from jax._src import config as jax_config

        state = jax_config.config_states.get(_LEFT_PRODUCTS_NAME)  # jreg.nn imported again (a reload)
        if state is None:
            state = jax_config.bool_state(
                _LEFT_PRODUCTS_NAME,
                False,
                "jreg (internal): jreg's dense layers take the weight gradient of a @ w as aT @ g while tracing",
                include_in_jit_key=True,
                include_in_trace_context=True,
            )
        state.set_global(False)  # not from its environment variable: only the context turns it on
        return state
    except Exception:  # another JAX's private API: go without the rule
        return None


_LEFT_PRODUCTS_NAME = "jreg_left_product_weight_gradients"
_LEFT_PRODUCTS = _left_product_state()
# Only left_product_weight_gradients() turns the rule on: the config state alone (set globally by its
# environment variable or jax.config.update) is not enough, so it never changes fit or a vmap sweep.
_IN_CONTEXT = threading.local()


@contextlib.contextmanager
def left_product_weight_gradients() -> Iterator[None]:
    """While tracing inside this context, jreg's dense layers take the gradient of ``a @ w`` for ``w`` as
    ``aᵀ · g`` (a custom VJP) instead of JAX's ``transpose(gᵀ · a)``.

    Used by ``jreg.sweep(vectorize="wide")``, whose weights are carried with the model axis second,
    ``(n_in, K, n_out)``: vmapped over the K models, ``aᵀ · g`` is one matmul whose output already has that
    layout, while JAX's rule makes a ``(K·n_out, n_in)`` product that the update then reads transposed
    (on a CPU that transposed read cost more than the matmul itself). The values are the same products,
    summed in another order (last bits). Reverse mode of any order goes through it (a gradient of a
    gradient, mixed precision's loss scaling under ``jax.grad``); pure forward mode (``jax.jvp``,
    ``jax.jacfwd``) cannot go through a custom VJP: the caller retraces without this context when it meets
    one. A model vmapped over single examples inside the loss gets a per-example ``(n_in, n_out)`` product
    summed afterwards (slower, same values). The switch is part of JAX's trace and jit cache keys, so no
    trace made inside is reused outside, nor the other way round; it is per thread.
    """
    if _LEFT_PRODUCTS is None:
        yield
        return
    outer = getattr(_IN_CONTEXT, "on", False)
    _IN_CONTEXT.on = True
    try:
        with _LEFT_PRODUCTS(True):
            yield
    finally:
        _IN_CONTEXT.on = outer


def _left_products_on() -> bool:
    return _LEFT_PRODUCTS is not None and getattr(_IN_CONTEXT, "on", False) and bool(_LEFT_PRODUCTS.value)


def _dense(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w``; under :func:`left_product_weight_gradients`, with the weight gradient ``aᵀ · g``."""
    return _left_product_matmul(a, w) if _left_products_on() else a @ w


@jax.custom_vjp
def _left_product_matmul(a: jax.Array, w: jax.Array) -> jax.Array:
    return a @ w


def _left_product_fwd(a: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return a @ w, (a, w)


def _left_product_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, w = res
    rows = a.reshape(-1, a.shape[-1])  # one example (n_in,) is one row: its gradient is an outer product
    dw = rows.T @ g.reshape(-1, g.shape[-1])
    return (g @ w.T).astype(a.dtype), dw.astype(w.dtype)


_left_product_matmul.defvjp(_left_product_fwd, _left_product_bwd)


def _check_mlp_input(params: Params, x: Any, sizes: tuple[int, ...]) -> None:
    """Shape/dtype checks at the boundary; all static, so they also run under jit."""
    if not isinstance(params, (list, tuple)) or len(params) != len(sizes) - 1:
        raise JregError(
            f"params must be a list of {len(sizes) - 1} layers of {{'w', 'b'}} for sizes {list(sizes)}, "
            f"got {type(params).__name__} of length {len(params) if hasattr(params, '__len__') else '?'}"
        )
    for layer, p in enumerate(params):
        expected = (sizes[layer], sizes[layer + 1])
        if not isinstance(p, Mapping) or "w" not in p or "b" not in p:
            got = f"a dict with keys {sorted(map(str, p))}" if isinstance(p, Mapping) else type(p).__name__
            raise JregError(f"params[{layer}] must be a dict {{'w': {expected}, 'b': {expected[1:]}}}, got {got}")
        for name, shape in (("w", expected), ("b", expected[1:])):
            leaf = p[name]
            if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
                raise JregTypeError(
                    f"params[{layer}][{name!r}] must be an array of shape {shape}, got {type(leaf).__name__}"
                )
            if not (jnp.issubdtype(leaf.dtype, jnp.number) or leaf.dtype == bool):
                raise JregTypeError(f"params[{layer}][{name!r}] must hold numbers, got dtype {leaf.dtype}")
        w, b = p["w"], p["b"]
        if tuple(w.shape) != expected or tuple(b.shape) != expected[1:]:
            raise JregError(
                f"params[{layer}] must hold w of shape {expected} and b of shape {expected[1:]}, "
                f"got w {tuple(w.shape)} and b {tuple(b.shape)}"
            )
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise JregTypeError(f"x must be an array of shape (batch, {sizes[0]}), got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise JregTypeError(
            f"x must be floating point, got dtype {x.dtype}; convert it first, e.g. x.astype('float32') / 255"
        )
    if x.ndim not in (1, 2) or x.shape[-1] != sizes[0]:
        raise JregError(
            f"x must have shape (batch, {sizes[0]}) to match the first layer of sizes {list(sizes)}, "
            f"got {tuple(x.shape)}"
        )
