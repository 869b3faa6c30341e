"""Mini-batches and augmentation for in-memory data: shuffled batch indices and stacked mini-batches for
``lax.scan``, Nielsen's one-pixel-shift expansion, one-hot targets. Re-exported by :mod:`jreg.data`
(``jreg.data.batches``, ``jreg.data.expand``...), where they are documented."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._checks import check_key, check_positive_int
from ._errors import JregError, JregTypeError


def one_hot(labels: Any, classes: int = 10) -> jax.Array:
    """Integer labels ``(N,)`` -> float32 one-hot targets ``(N, classes)`` (range-checked).

    As :func:`jreg.losses.one_hot`: ``classes`` a positive ``int`` of at most
    ``2**31 - 1``, and at most ``2**31`` elements in all, else a :class:`JregError`.
    """
    from .losses import one_hot as _one_hot

    return _one_hot(labels, classes)


class Batches(NamedTuple):
    """Shuffled mini-batches: ``x (num_batches, batch_size, ...)``, ``y (num_batches, batch_size, ...)``,
    and the ``n % batch_size`` examples left over (``rest_x``, ``rest_y``, possibly empty)."""

    x: jax.Array
    y: jax.Array
    rest_x: jax.Array
    rest_y: jax.Array


def _pair(data: Any) -> tuple[Any, Any]:
    """``data`` as ``(x, y)`` arrays with a common leading (example) axis, or a clear error."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise JregError(f"data must be a pair (x, y), got {type(data).__name__}")
    x, y = data
    for name, a in (("x", x), ("y", y)):
        if not (hasattr(a, "shape") and hasattr(a, "dtype")):
            raise JregTypeError(
                f"data: {name} must be an array with a leading axis of examples, got {type(a).__name__}"
            )
        if len(a.shape) == 0:
            raise JregError(f"data: {name} must be an array with a leading axis of examples, got a scalar")
    if y.shape[0] != x.shape[0]:
        raise JregError(f"data: x and y must hold the same number of examples, got {x.shape[0]} and {y.shape[0]}")
    return x, y


def batch_indices(n: int, batch_size: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A shuffled order of ``range(n)`` cut into mini-batches: ``(full (n // batch_size, batch_size), rest)``.

    ``rest`` holds the ``n % batch_size`` indices a full batch cannot take.
    Scanning over ``full`` and gathering each batch inside the step is how
    :func:`jreg.make_epoch` runs an epoch (no copy of the whole data set).
    """
    n = check_positive_int(n, "n")
    batch_size = check_positive_int(batch_size, "batch_size")
    if batch_size > n:
        raise JregError(f"batch_size must be at most the number of examples ({n}), got {batch_size}")
    key = check_key(key)
    perm = jax.random.permutation(key, n)
    head = (n // batch_size) * batch_size
    return perm[:head].reshape(n // batch_size, batch_size), perm[head:]


def batches(data: tuple[Any, Any], batch_size: int, key: jax.Array) -> Batches:
    """Shuffle ``data = (x, y)`` with ``key`` and cut it into full mini-batches, stacked.

    The stacked ``x``/``y`` have a leading ``num_batches`` axis, so
    ``jax.lax.scan(step, carry, (b.x, b.y))`` runs an epoch with no Python
    loop; jit-able (``batch_size`` must be static). The examples a full batch
    cannot hold come back as ``rest_x``/``rest_y``. The order is the one
    :func:`batch_indices` gives for the same key.
    """
    x, y = _pair(data)
    full, rest = batch_indices(x.shape[0], batch_size, key)
    return Batches(x[full], y[full], x[rest], y[rest])


def _shift(images: jax.Array, offset: int, axis: int) -> jax.Array:
    """Shift ``(N, 28, 28)`` images by one pixel along ``axis`` (1 rows, 2 columns), filling with zeros."""
    rolled = jnp.roll(images, offset, axis=axis)
    edge = 0 if offset > 0 else images.shape[axis] - 1
    index = [slice(None)] * 3
    index[axis] = edge
    return rolled.at[tuple(index)].set(0)


def expand(data: tuple[Any, Any], side: int = 28) -> tuple[jax.Array, jax.Array]:
    """Nielsen's expansion of a training set by one-pixel shifts (``expand_mnist.py``).

    Returns ``5 N`` examples: the originals, then the images shifted one pixel
    down, up, right and left (the pixels shifted in are 0), each block with
    the original labels. Jit-able; 50,000 images become 250,000.
    """
    side = check_positive_int(side, "side")
    x, y = _pair(data)
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == bool):
        raise JregTypeError(f"data: x must hold pixel values (numbers), got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != side * side:
        raise JregError(f"data: x must have shape (N, {side * side}) for {side}x{side} images, got {tuple(x.shape)}")
    images = x.reshape(-1, side, side)
    shifted = [_shift(images, d, axis) for d, axis in ((1, 1), (-1, 1), (1, 2), (-1, 2))]
    xs = jnp.concatenate([x] + [s.reshape(x.shape) for s in shifted])
    return xs, jnp.tile(y, (5,) + (1,) * (y.ndim - 1))
