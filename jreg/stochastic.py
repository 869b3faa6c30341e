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

Mixing regularizers act on a whole batch, inputs and targets together:
:func:`mixup` (Zhang et al. 2018) and :func:`cutmix` (Yun et al. 2019) pair
each example with another of the batch (a random permutation) and mix both the
inputs and the targets with ``lambda ~ Beta(alpha, alpha)``. The mixed targets
are *soft* (``lambda * onehot(y) + (1 - lambda) * onehot(y[perm])`` for integer
labels), which jreg's cross-entropies take as they are; for them the loss of
the mixed targets is exactly ``lambda * L(y) + (1 - lambda) * L(y[perm])``
(both are linear in the targets). :func:`jreg.with_mixup` and
:func:`jreg.with_cutmix` apply them inside an objective, with the step's key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _signature
from ._checks import (
    check_classes,
    check_key,
    check_nonnegative_scalar,
    check_one_hot_size,
    check_positive_int,
    is_concrete,
)
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


# --- mixing: mixup and CutMix -------------------------------------------------------------------------------------


def _check_batch_x(x: Any, name: str = "x") -> int:
    _check_x(x)
    if x.ndim < 2:
        raise JregError(f"{name} must have a leading batch axis and at least one feature axis, got shape {x.shape}")
    if x.shape[0] == 0:
        raise JregError(f"{name} holds no examples: mixing needs at least one")
    return x.shape[0]


def _draw_lambda(key: jax.Array, alpha: Any) -> jax.Array:
    """``lambda ~ Beta(alpha, alpha)`` in float32; exactly 1 (no mixing) when ``alpha == 0``."""
    a = jnp.asarray(alpha, jnp.float32)
    safe = jnp.where(a > 0, a, jnp.ones((), jnp.float32))
    return jnp.where(a > 0, jax.random.beta(key, safe, safe, dtype=jnp.float32), jnp.ones((), jnp.float32))


def _check_lam(lam: Any) -> jax.Array:
    """``lam`` as a scalar array: a number in ``[0, 1]`` (checked when concrete; traced values pass)."""
    if isinstance(lam, (str, bytes)) or not (
        isinstance(lam, (int, float, np.integer, np.floating)) or hasattr(lam, "dtype")
    ):
        raise JregTypeError(f"lam must be a number in [0, 1], got {type(lam).__name__}")
    array = jnp.asarray(lam)
    if (
        array.shape != ()
        or not jnp.issubdtype(array.dtype, jnp.floating)
        and not jnp.issubdtype(array.dtype, jnp.integer)
    ):
        raise JregTypeError(f"lam must be a real scalar in [0, 1], got {array.dtype}{list(array.shape)}")
    if is_concrete(array) and not 0.0 <= float(array) <= 1.0:  # NaN fails too
        raise JregError(f"lam must be in [0, 1], got {float(array)}")
    return array


def _check_perm(perm: Any) -> jax.Array:
    """``perm``: integer indices ``(N,)``, a permutation of ``range(N)`` (checked when concrete)."""
    if not hasattr(perm, "shape") or not hasattr(perm, "dtype"):
        raise JregTypeError(f"perm must be an integer array of example indices, got {type(perm).__name__}")
    perm = jnp.asarray(perm)
    if perm.ndim != 1 or not jnp.issubdtype(perm.dtype, jnp.integer):
        raise JregTypeError(f"perm must be a 1-D integer array of example indices, got {perm.dtype}{list(perm.shape)}")
    if is_concrete(perm) and not np.array_equal(np.sort(np.asarray(perm)), np.arange(perm.shape[0])):
        raise JregError(f"perm must be a permutation of range({perm.shape[0]}) (each example once)")
    return perm


def mix_targets(
    y: Any, lam: Any, perm: jax.Array, *, classes: int | None = None, dtype: Any = jnp.float32
) -> jax.Array:
    """``lam * t + (1 - lam) * t[perm]`` with ``t`` the targets as floats: soft targets ``(N, classes)``.

    Integer labels ``(N,)`` become one-hot rows of ``classes`` columns first
    (``classes`` is then required); float targets (one-hot, soft, or regression
    values with a leading batch axis) are mixed as they are. For a loss linear
    in its targets (jreg's softmax and sigmoid cross-entropies) the loss of the
    result is ``lam * L(y) + (1 - lam) * L(y[perm])``. Integer labels outside
    ``[0, classes)`` raise when their values are known; under ``jit`` their row
    becomes NaN (a NaN loss, never a silent zero).
    """
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise JregTypeError(f"y must be an array of targets, got {type(y).__name__}")
    perm = _check_perm(perm)
    if y.ndim == 0 or y.shape[0] != perm.shape[0]:
        raise JregError(f"y must hold one target per example, {perm.shape[0]} along its first axis, got {y.shape}")
    lam = _check_lam(lam).astype(dtype)
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.ndim != 1:
            raise JregError(f"y given as integer labels must have shape ({y.shape[0]},), got {y.shape}")
        if classes is None:
            raise JregError("mixing integer labels needs classes= (the number of classes) to make soft targets")
        classes = check_classes(classes, "classes")
        check_one_hot_size(classes, y, "classes")
        if is_concrete(y) and y.size:
            lo, hi = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
            if lo < 0 or hi >= classes:
                raise JregError(f"y must lie in [0, {classes}) for classes={classes}, got values in [{lo}, {hi}]")
        valid = (y >= 0) & (y < classes)
        t = jnp.where(valid[:, None], jax.nn.one_hot(y, classes, dtype=dtype), jnp.full((), jnp.nan, dtype))
    elif jnp.issubdtype(y.dtype, jnp.floating):
        t = jnp.asarray(y, dtype if jnp.issubdtype(dtype, jnp.floating) else y.dtype)
    else:
        raise JregTypeError(f"y must be integer labels or float (one-hot, soft) targets, got dtype {y.dtype}")
    lam = lam.astype(t.dtype)
    return lam * t + (1 - lam) * t[perm]


def mixup(
    key: jax.Array, x: jax.Array, y: Any, alpha: Any, *, classes: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Mixup (Zhang, Cisse, Dauphin, Lopez-Paz 2018, "mixup: Beyond Empirical Risk Minimization").

    ``x~ = lam * x + (1 - lam) * x[perm]`` and ``y~ = lam * t + (1 - lam) * t[perm]``
    with ``lam ~ Beta(alpha, alpha)`` (one draw per batch, as the paper's code),
    ``perm`` a random permutation of the batch and ``t`` the targets as float
    rows (:func:`mix_targets`: integer labels become one-hot with ``classes``).

    The draws: ``k_lam, k_perm = jax.random.split(key)``; ``lam =
    jax.random.beta(k_lam, alpha, alpha)`` (float32); ``perm =
    jax.random.permutation(k_perm, N)``. ``alpha == 0`` means ``lam = 1``: the
    inputs come back unchanged and the targets as their float rows. ``alpha``
    may be traced (a sweep over it is one program); a concrete one must be
    finite and ``>= 0``.

    Returns ``(mixed inputs, soft targets)``.
    """
    check_nonnegative_scalar(alpha, "alpha")
    n = _check_batch_x(x)
    check_key(key)
    k_lam, k_perm = jax.random.split(key)
    lam = _draw_lambda(k_lam, alpha)
    perm = jax.random.permutation(k_perm, n)
    y_mixed = mix_targets(y, lam, perm, classes=classes, dtype=x.dtype)
    x, lx = jnp.asarray(x), lam.astype(x.dtype)
    return lx * x + (1 - lx) * x[perm], y_mixed


def check_image_shape(shape: Any) -> tuple[int, ...]:
    """An image shape as cutmix takes it: an int side (a square) or ``(H, W)`` / ``(H, W, C)`` of positive ints."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (check_positive_int(shape, "shape"),) * 2
    if not isinstance(shape, (tuple, list)) or len(shape) not in (2, 3):
        raise JregError(f"shape must be an int side or a tuple (H, W) or (H, W, C), got {shape!r}")
    return tuple(check_positive_int(s, "shape") for s in shape)


def _image_shape(x: jax.Array, shape: Any) -> tuple[int, ...]:
    """The per-example image shape ``(H, W)`` or ``(H, W, C)``."""
    if shape is None:
        if x.ndim not in (3, 4):
            raise JregError(
                f"cutmix needs images (N, H, W) or (N, H, W, C), got x of shape {x.shape}; for flat images give "
                "shape=(H, W) or shape=side (e.g. shape=28 for MNIST's (N, 784))"
            )
        if 0 in x.shape[1:]:
            raise JregError(f"cutmix needs images with at least one pixel, got x of shape {x.shape}")
        return tuple(x.shape[1:])
    shape = check_image_shape(shape)
    if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
        raise JregError(f"shape {shape} holds {int(np.prod(shape))} values, but each example of x has {x.shape[1:]}")
    return shape


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """The box of CutMix for ``lam``: a boolean ``(height, width)`` mask and the corrected ``lam``.

    As the paper's code: ``r = sqrt(1 - lam)``, ``cut_h = floor(H r)``, ``cut_w
    = floor(W r)``, a centre ``(cy, cx)`` uniform over the pixels
    (``k_y, k_x = jax.random.split(key)``), the box ``[cy - cut_h // 2, cy +
    cut_h // 2) x [cx - cut_w // 2, cx + cut_w // 2)`` clipped to the image,
    and ``lam' = 1 - area / (H W)``: the fraction of the image kept.
    """
    k_y, k_x = jax.random.split(check_key(key))
    lam = _check_lam(lam)
    height, width = check_positive_int(height, "height"), check_positive_int(width, "width")
    r = jnp.sqrt(jnp.clip(1.0 - lam, 0.0, 1.0))
    cut_h = jnp.floor(height * r).astype(jnp.int32)
    cut_w = jnp.floor(width * r).astype(jnp.int32)
    cy = jax.random.randint(k_y, (), 0, height)
    cx = jax.random.randint(k_x, (), 0, width)
    y1, y2 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x1, x2 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    area = (y2 - y1) * (x2 - x1)
    return box, 1.0 - area.astype(jnp.float32) / (height * width)


def cutmix(
    key: jax.Array, x: jax.Array, y: Any, alpha: Any, *, classes: int | None = None, shape: Any = None
) -> tuple[jax.Array, jax.Array]:
    """CutMix (Yun, Han, Oh, Chun, Choe, Yoo 2019, "CutMix: Regularization Strategy to Train Strong Classifiers").

    ``x~ = M * x + (1 - M) * x[perm]`` with ``M`` zero on a random box of area
    fraction about ``1 - lam`` (:func:`cutmix_box`), ``lam ~ Beta(alpha, alpha)``,
    and ``y~ = lam' * t + (1 - lam') * t[perm]`` with ``lam'`` the fraction of
    the image actually kept (the box is clipped at the border).

    Images are ``(N, H, W)`` or ``(N, H, W, C)``; flat ones ``(N, H*W[*C])``
    need ``shape=(H, W)``, ``(H, W, C)`` or a square side (``shape=28`` for
    MNIST's ``(N, 784)``) and come back flat. The draws: ``k_lam, k_perm, k_box
    = jax.random.split(key, 3)``; ``alpha == 0`` leaves the images unchanged.

    Returns ``(mixed inputs, soft targets)``.
    """
    check_nonnegative_scalar(alpha, "alpha")
    n = _check_batch_x(x)
    image = _image_shape(x, shape)
    check_key(key)
    k_lam, k_perm, k_box = jax.random.split(key, 3)
    lam = _draw_lambda(k_lam, alpha)
    perm = jax.random.permutation(k_perm, n)
    box, kept = cutmix_box(k_box, lam, image[0], image[1])
    y_mixed = mix_targets(y, kept, perm, classes=classes, dtype=x.dtype)
    images = jnp.asarray(x).reshape((n, *image))
    mask = box.reshape(box.shape + (1,) * (len(image) - 2))
    mixed = jnp.where(mask, images[perm], images)
    return mixed.reshape(x.shape), y_mixed


__all__ = [
    "cutmix",
    "cutmix_box",
    "dropout",
    "gaussian_noise",
    "mix_targets",
    "mixup",
    "with_input_dropout",
    "with_input_noise",
    "with_weight_noise",
]
