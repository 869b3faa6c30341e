"""The checks on a checkpoint's JSON header: every field, tree description, leaf shape and dtype, and the key,
each complaint naming the file, the field and the value (the shared :class:`~jreg.checkpoint.common.Fields`)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .common import FORMAT, FORMAT_VERSION, MAX_TREE_DEPTH, CheckpointError, Fields, _is_int

_DTYPE_NAME = re.compile(r"[A-Za-z0-9_<>=|]{1,40}")


def _leaf_dtype(name: Any) -> np.dtype | None:
    """The dtype a header's dtype name stands for, if it is one jreg writes (numeric, or an ml_dtypes type)."""
    if not isinstance(name, str) or not _DTYPE_NAME.fullmatch(name):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dtype = np.dtype(name)
    except Exception:  # noqa: BLE001 - NumPy's parser on a foreign string: any failure means "not a dtype"
        return None
    if str(dtype) != name or dtype.names is not None or dtype.subdtype is not None or dtype.hasobject:
        return None
    if dtype.kind in "biufc" or (dtype.kind == "V" and dtype.type is not np.void):
        return dtype
    return None


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    """How a leaf of ``dtype`` is stored: ml_dtypes (bfloat16, float8...) as unsigned ints of their bits."""
    return np.dtype(f"u{dtype.itemsize}") if dtype.kind == "V" else dtype


class _Header:
    """Checks a parsed JSON header; every complaint names the file, the field and the value."""

    def __init__(self, path: Path):
        self.path = path
        self.fields = Fields(path, "not a valid jreg checkpoint header: ")
        self.fail = self.fields.fail

    def check(self, header: Any) -> dict[str, Any]:
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: not a jreg checkpoint (its header's format is not {FORMAT!r})")
        version = self.fields.integer(header.get("format_version"), "format_version", low=1)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{self.path}: checkpoint format {version} is newer than this jreg reads ({FORMAT_VERSION})"
            )
        for field in ("params", "opt_state", "step", "key", "meta"):
            if field not in header:
                raise self.fail(field, "is missing")
        if "jreg_version" in header:
            self.fields.string(header["jreg_version"], "jreg_version")
        self.fields.integer(header["step"], "step", low=0, null=True)
        self.section(header["params"], "params", required=True)
        for name in ("opt_state", "model_state"):  # model_state: absent in files written before it existed
            self.section(header.get(name), name, required=False)
        header.setdefault("model_state", None)
        self.key(header["key"])
        return header

    def section(self, info: Any, name: str, required: bool) -> None:
        if self.fields.obj(info, name, ("tree", "leaves"), null=not required) is None:
            return
        entries = info["leaves"]
        if not isinstance(entries, list):
            raise self.fail(f"{name}.leaves", "must be a list", entries)
        for i, entry in enumerate(entries):
            where = f"{name}.leaves[{i}]"
            self.fields.obj(entry, where, ("path", "shape", "dtype"))
            self.fields.string(entry["path"], f"{where}.path")
            self.fields.shape(entry["shape"], f"{where}.shape")
            if _leaf_dtype(entry["dtype"]) is None:
                raise self.fail(f"{where}.dtype", "must name a numeric dtype", entry["dtype"])
        if info["tree"] is not None:  # None: custom pytree nodes, restorable only into a template
            used = [False] * len(entries)
            self.tree(info["tree"], used, f"{name}.tree", 0)
            if not all(used):
                raise self.fail(f"{name}.tree", f"names {sum(used)} of the {len(entries)} leaves listed")

    def tree(self, node: Any, used: list[bool], field: str, depth: int) -> None:
        """A tree description: each node one kind, each leaf index an int in range, used exactly once."""
        if depth > MAX_TREE_DEPTH:
            raise self.fail(field, f"nests deeper than {MAX_TREE_DEPTH} levels")
        keys = set(node) if isinstance(node, dict) else None
        if keys == {"leaf"}:
            i = node["leaf"]
            if not _is_int(i) or not 0 <= i < len(used):
                raise self.fail(field, f"has a leaf index that is not an integer in [0, {len(used)})", i)
            if used[i]:
                raise self.fail(field, f"uses leaf {i} twice")
            used[i] = True
        elif keys == {"none"}:
            if node["none"] is not True:
                raise self.fail(field, "has a malformed null node", node)
        elif keys in ({"dict"}, {"namedtuple", "fields"}):
            children = node.get("dict", node.get("fields"))
            if "namedtuple" in node and not isinstance(node["namedtuple"], str):
                raise self.fail(field, "has a named tuple whose name is not a string", node["namedtuple"])
            if not isinstance(children, dict):
                raise self.fail(field, "has a dict node whose children are not an object", children)
            for k, child in children.items():
                self.tree(child, used, f"{field}/{k}", depth + 1)
        elif keys in ({"list"}, {"tuple"}):
            children = node.get("list", node.get("tuple"))
            if not isinstance(children, list):
                raise self.fail(field, "has a list node whose children are not a list", children)
            for k, child in enumerate(children):
                self.tree(child, used, f"{field}/{k}", depth + 1)
        else:
            raise self.fail(field, "has a node that is not a leaf, null, dict, named tuple, list or tuple", node)

    def key(self, key: Any) -> None:
        if key is None:
            return
        if not isinstance(key, dict) or not isinstance(key.get("typed"), bool) or "impl" not in key:
            raise self.fail("key", "must be null or an object with 'impl' and a boolean 'typed'", key)
        impl = key["impl"]
        if key["typed"]:
            if not isinstance(impl, str) or not _known_impl(impl):
                raise self.fail("key.impl", "must name a PRNG implementation this JAX knows", impl)
        elif impl is not None:
            raise self.fail("key.impl", "must be null for a raw (untyped) key", impl)
        if "shape" in key or "dtype" in key:  # recorded since issue 12; older files leave them out
            self.fields.shape(key.get("shape"), "key.shape")
            dtype = _leaf_dtype(key.get("dtype"))
            if dtype is None or dtype.kind == "V":
                raise self.fail("key.dtype", "must name an integer or float dtype", key.get("dtype"))


def _known_impl(name: str) -> bool:
    try:
        jax.random.key_dtype(name)
    except (ValueError, TypeError, KeyError):
        return False
    return True
