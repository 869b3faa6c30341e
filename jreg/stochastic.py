"""Stochastic regularizers as pure functions of an explicit key: dropout and Gaussian noise.

Each function has a training mode (random, needs a ``jax.random`` key) and an
evaluation mode (deterministic). The convention across jreg:

* A model's ``apply(params, x, *, key=None)`` is in **training mode when it is
  given a key** and in evaluation mode when it is not. The objective passes
  the step's key while training (:func:`jreg.fit`, :func:`jreg.make_epoch` and
  :func:`jreg.make_step` draw one per mini-batch); accuracy, costs and your own
  calls without a key are deterministic.
* Dropout is *inverted*: during training the kept units are scaled by
  ``1 / (1 - drop_rate)``, so evaluation needs no rescaling and the expected
  activation is the same in both modes.
* ``drop_rate`` is the probability of **dropping** a unit (as Keras' ``rate``
  and PyTorch's ``p``; not TensorFlow 1's ``keep_prob``). It may be a traced
  value (for sweeps); a concrete one must lie in ``[0, 1)``.

Model-level options: :func:`jreg.mlp` takes ``drop_rate`` (hidden units) and
``input_drop_rate``. Wrappers add noise to any model's ``apply``:
:func:`with_input_dropout`, :func:`with_input_noise`, :func:`with_weight_noise`.
They compose (each takes its share of the key) and keep the key convention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _signature
from ._checks import check_key, check_nonnegative_scalar, is_concrete
from ._errors import JregError, JregTypeError
from .penalties import Mask, mask_tree

Apply = Callable[..., Any]


def check_drop_rate(drop_rate: Any, name: str = "drop_rate") -> None:
    """A concrete ``drop_rate`` must be a real number in ``[0, 1)``; traced values pass."""
    check_nonnegative_scalar(drop_rate, name)
    if is_concrete(drop_rate) and not float(np.asarray(drop_rate)) < 1.0:
        raise JregError(
            f"{name} is the probability of dropping a unit and must lie in [0, 1), got {float(np.asarray(drop_rate))}"
        )


def _check_x(x: Any) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise JregTypeError(f"x must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise JregTypeError(f"x must be floating point, got dtype {x.dtype}")


def dropout(key: jax.Array | None, x: jax.Array, drop_rate: Any, *, train: bool = True) -> jax.Array:
    """Inverted dropout: zero each entry with probability ``drop_rate``, scale the rest by ``1/(1 - drop_rate)``.

    With ``train=False`` (or ``drop_rate == 0``) it returns ``x`` unchanged and
    ``key`` may be ``None``. ``E[dropout(key, x, r)] = x`` for every ``r``.
    """
    check_drop_rate(drop_rate)
    _check_x(x)
    if not train or (is_concrete(drop_rate) and float(np.asarray(drop_rate)) == 0.0):
        return x
    check_key(key)
    keep = 1.0 - jnp.asarray(drop_rate, x.dtype)
    mask = jax.random.bernoulli(key, keep, jnp.shape(x))
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


def gaussian_noise(key: jax.Array | None, x: jax.Array, stddev: Any, *, train: bool = True) -> jax.Array:
    """``x + stddev * N(0, 1)`` entrywise in training mode; ``x`` with ``train=False``."""
    check_nonnegative_scalar(stddev, "stddev")
    _check_x(x)
    if not train:
        return x
    check_key(key)
    return x + jnp.asarray(stddev, x.dtype) * jax.random.normal(key, jnp.shape(x), x.dtype)


def _check_apply(apply: Any) -> None:
    if not callable(apply):
        raise JregTypeError(f"apply must be callable apply(params, x, *, key=None), got {apply!r}")


def _wrap(apply: Apply, perturb: Callable[[jax.Array, Any, Any], tuple[Any, Any]]) -> Apply:
    """An apply that, given a key, perturbs ``(params, x)`` with half of it and passes the other half on."""

    def wrapped(params: Any, x: jax.Array, *, key: jax.Array | None = None, **kwargs: Any) -> Any:
        if key is None:  # evaluation mode
            return apply(params, x, **kwargs)
        check_key(key)
        mine, inner = jax.random.split(key)
        params, x = perturb(mine, params, x)
        if _signature.accepts(apply, "key"):  # a stochastic model inside: it gets its own key
            kwargs["key"] = inner
        return apply(params, x, **kwargs)

    return wrapped


def with_input_dropout(apply: Apply, drop_rate: Any) -> Apply:
    """``apply`` with dropout on its inputs while training (``key`` given); unchanged in evaluation."""
    _check_apply(apply)
    check_drop_rate(drop_rate)
    return _wrap(apply, lambda k, p, x: (p, dropout(k, x, drop_rate)))


def with_input_noise(apply: Apply, stddev: Any) -> Apply:
    """``apply`` on ``x + stddev * N(0, 1)`` while training (``key`` given); on ``x`` in evaluation.

    For small ``stddev`` and the quadratic cost this is, in expectation, Tikhonov
    regularization of the input gradient (Bishop 1995); compare
    :func:`jreg.penalties.input_gradient`.
    """
    _check_apply(apply)
    check_nonnegative_scalar(stddev, "stddev")
    return _wrap(apply, lambda k, p, x: (p, gaussian_noise(k, x, stddev)))


def with_weight_noise(apply: Apply, stddev: Any, *, mask: Mask = None) -> Apply:
    """``apply`` with ``w + stddev * N(0, 1)`` on the masked leaves (default: weight matrices) while training.

    The gradient flows to the clean weights (the noise is additive), so the
    optimizer updates ``w``; in evaluation the clean weights are used.
    """
    _check_apply(apply)
    check_nonnegative_scalar(stddev, "stddev")

    def perturb(key, params, x):
        flags = jax.tree.leaves(mask_tree(params, mask))
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        noisy = [gaussian_noise(k, w, stddev) if on else w for k, w, on in zip(keys, leaves, flags)]
        return jax.tree.unflatten(treedef, noisy), x

    return _wrap(apply, perturb)


__all__ = [
    "dropout",
    "gaussian_noise",
    "with_input_dropout",
    "with_input_noise",
    "with_weight_noise",
]
