"""Proximal maps of the catalog's elementwise penalties: soft-thresholding (L1), shrinking (L2), both (elastic net),
and the map of a penalty moved to a center. The structured penalties' maps (group lasso, max-norm, nuclear norm) sit
beside their formulas in :mod:`jreg.penalties.catalog`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def soft_threshold(w: jax.Array, threshold: Any) -> jax.Array:
    """``sign(w) * max(|w| - threshold, 0)``: the proximal map of ``threshold * ||w||_1``; exact zeros."""
    return jnp.sign(w) * jnp.maximum(jnp.abs(w) - threshold, 0.0)


def _prox_l2(w: jax.Array, t: Any, c: Any) -> jax.Array:
    return w / (1.0 + t * c)


def _prox_l1(w: jax.Array, t: Any, c: Any) -> jax.Array:
    return soft_threshold(w, t * c)


def _prox_elastic(w: jax.Array, t: Any, c1: Any, c2: Any) -> jax.Array:
    return soft_threshold(w, t * c1) / (1.0 + t * c2)


def _centered_prox(prox: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """The proximal map of ``v -> f(v - w0)``: ``w0 + prox_f(w - w0)``."""

    def centered(w: jax.Array, t: Any, *args: Any) -> jax.Array:
        *coefs, w0 = args
        if w0 is None:
            return prox(w, t, *coefs)
        w0 = jnp.asarray(w0, w.dtype)
        return (w0 + prox(w - w0, t, *coefs)).astype(w.dtype)

    return centered
