"""A pytree as plain JSON (dicts, lists, tuples, named tuples by field names, None) and back: how a checkpoint
records a tree's structure without pickle or imports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from .._errors import JregTypeError
from .common import MAX_TREE_DEPTH, CheckpointError


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _describe(node: Any, leaves: list[Any], name: str = "tree", depth: int = 0) -> Any:
    """A JSON description of a pytree of dicts, lists, tuples, named tuples and None; leaves are numbered.

    The root is at depth 0; a node deeper than :data:`MAX_TREE_DEPTH` (which :func:`load` refuses) is a
    :class:`JregTypeError` naming ``name``.
    """
    if depth > MAX_TREE_DEPTH:
        raise JregTypeError(
            f"{name} nests deeper than {MAX_TREE_DEPTH} levels (jreg.checkpoint.MAX_TREE_DEPTH), "
            "which jreg.load could not read back"
        )
    if node is None:
        return {"none": True}
    down = depth + 1
    if isinstance(node, dict):
        if not all(isinstance(k, str) for k in node):
            raise JregTypeError(f"checkpoint: dict keys in the tree must be strings ({name})")
        return {"dict": {k: _describe(node[k], leaves, name, down) for k in sorted(node)}}
    if _is_namedtuple(node):
        return {
            "namedtuple": type(node).__name__,
            "fields": {f: _describe(getattr(node, f), leaves, name, down) for f in node._fields},
        }
    if isinstance(node, (list, tuple)):
        kind = "list" if isinstance(node, list) else "tuple"
        return {kind: [_describe(v, leaves, name, down) for v in node]}
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(node)):
        leaves.append(node)
        return {"leaf": len(leaves) - 1}
    raise _Opaque  # a custom pytree node (Flax, Equinox...): restorable only into a target


class _Opaque(Exception):
    """The tree holds a node type that plain JSON cannot describe."""


def _build(desc: Any, arrays: Sequence[Any]) -> Any:
    """Rebuild a tree from its JSON description: plain containers only (named tuples come back as dicts)."""
    if not isinstance(desc, dict) or len(desc) < 1:
        raise CheckpointError(f"checkpoint: malformed tree description {desc!r}")
    if "leaf" in desc:
        return arrays[desc["leaf"]]
    if "none" in desc:
        return None
    if "dict" in desc:
        return {k: _build(v, arrays) for k, v in desc["dict"].items()}
    if "namedtuple" in desc:
        return {k: _build(v, arrays) for k, v in desc["fields"].items()}
    if "list" in desc:
        return [_build(v, arrays) for v in desc["list"]]
    if "tuple" in desc:
        return tuple(_build(v, arrays) for v in desc["tuple"])
    raise CheckpointError(f"checkpoint: malformed tree description {desc!r}")
