"""Tree paths, shared by penalties, selectors, checkpoints and the training guard."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def path_str(keypath: tuple[Any, ...]) -> str:
    """Render a JAX key path as ``"0/w"``-style text (keys joined by ``/``)."""
    parts = []
    for k in keypath:
        if isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:  # pragma: no cover - future key types
            parts.append(str(k))
    return "/".join(parts)


def paths(tree: Any) -> list[str]:
    """The path of every leaf of ``tree``, in flattening order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def inexact_leaves(tree: Any) -> list[tuple[str, Any]]:
    """``(path, leaf)`` for every floating-point (or complex) array leaf of ``tree``."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(path_str(p), x) for p, x in flat if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]


def all_finite(*trees: Any) -> jax.Array:
    """One boolean: every floating-point leaf of every tree is finite (True for trees without any)."""
    flags = [jnp.all(jnp.isfinite(x)) for tree in trees for _, x in inexact_leaves(tree)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def none_became_non_finite(old: Any, new: Any) -> jax.Array:
    """One boolean: no floating-point element of ``new`` is non-finite where ``old`` held a finite value.

    For states that may hold infinities on purpose (an optimizer's ``best_value = inf``
    before its first measurement): only a value that *becomes* non-finite counts.
    """
    flags = [
        jnp.all(jnp.isfinite(b) | ~jnp.isfinite(a)) for (_, a), (_, b) in zip(inexact_leaves(old), inexact_leaves(new))
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def leading_size(tree: Any) -> int | None:
    """The shared size of the leading axis of every leaf, or None when the leaves disagree or have none."""
    sizes = {x.shape[0] if getattr(x, "ndim", 0) else None for x in jax.tree.leaves(tree)}
    return sizes.pop() if len(sizes) == 1 else None
