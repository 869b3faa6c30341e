"""Checkpoints that cannot execute code on load, and network2.py's JSON model format.

Format: one ``.npz`` file (NumPy's zip of ``.npy`` arrays), read with
``allow_pickle=False``, holding every array leaf, plus a JSON header (stored as
a byte array inside the same file) that records the jreg version, the tree
structure of the params and optimizer state, every leaf's path, shape and
dtype, the step, the PRNG key's implementation and the user's ``meta``.

Why this format: it needs nothing beyond NumPy (no extra dependency), loads
anywhere NumPy does, cannot run code (no pickle, and the structure is rebuilt
from plain JSON: dicts, lists, tuples and named tuples by field names only, no
imports), is a single file, so one atomic rename publishes it, and it
handles dtypes NumPy lacks (bfloat16 and friends are stored as raw bits and
named in the header). safetensors would need an extra package and stores flat
names only; orbax-checkpoint writes directories and is heavy for models of this
size. For multi-terabyte sharded models use orbax; for these, one file is best.

Writes are atomic (:func:`jreg.io.atomic_write`: temporary file in the same
folder, fsync, rename), so a crash or ``kill -9`` during a save leaves the
previous file intact.
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import io
from ._errors import JregError, JregTypeError
from ._tree import path_str
from ._version import __version__

FORMAT = "jreg-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(JregError):
    """A file that is not a jreg checkpoint, is truncated or corrupted, or does not fit the target."""


class Checkpoint(NamedTuple):
    """What :func:`load` returns."""

    params: Any
    opt_state: Any
    step: int | None
    key: jax.Array | None
    meta: Any
    model_state: Any = None


# --------------------------------------------------------------------------- tree <-> JSON


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _describe(node: Any, leaves: list[Any]) -> Any:
    """A JSON description of a pytree of dicts, lists, tuples, named tuples and None; leaves are numbered."""
    if node is None:
        return {"none": True}
    if isinstance(node, dict):
        if not all(isinstance(k, str) for k in node):
            raise JregTypeError("checkpoint: dict keys in the tree must be strings")
        return {"dict": {k: _describe(node[k], leaves) for k in sorted(node)}}
    if _is_namedtuple(node):
        return {
            "namedtuple": type(node).__name__,
            "fields": {f: _describe(getattr(node, f), leaves) for f in node._fields},
        }
    if isinstance(node, (list, tuple)):
        return {"list" if isinstance(node, list) else "tuple": [_describe(v, leaves) for v in node]}
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


# --------------------------------------------------------------------------- arrays


def _to_numpy(leaf: Any, where: str) -> tuple[np.ndarray, str]:
    """The array to store and its dtype name (non-NumPy dtypes such as bfloat16 stored as raw bits)."""
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        raise JregTypeError(f"checkpoint: {where} is a PRNG key array; pass keys as key=, not inside a tree")
    try:
        arr = np.asarray(leaf)
    except Exception as exc:  # noqa: BLE001 - report which leaf
        raise JregTypeError(f"checkpoint: {where} is not an array ({type(leaf).__name__})") from exc
    if arr.dtype.kind not in "biufcV":  # objects, strings, bytes: nothing jax.numpy could load back
        raise JregTypeError(f"checkpoint: {where} is not a numeric array (dtype {arr.dtype}, {type(leaf).__name__})")
    name = str(arr.dtype)
    if arr.dtype.kind == "V":  # ml_dtypes (bfloat16, float8...): store the bits
        arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    return arr, name


def _flatten_section(tree: Any, prefix: str, store: dict[str, np.ndarray]) -> dict[str, Any]:
    leaves: list[Any] = []
    try:
        desc = _describe(tree, leaves)
    except _Opaque:
        desc = None
    with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    if desc is None:  # custom nodes somewhere: keep the flat leaves and their paths
        leaves = [leaf for _, leaf in with_paths]
    paths = [path_str(p) for p, _ in with_paths]
    entries = []
    for i, (leaf, path) in enumerate(zip(leaves, paths)):
        arr, dtype_name = _to_numpy(leaf, f"{prefix} leaf {path!r}")
        store[f"{prefix}{i}"] = arr
        entries.append({"path": path, "shape": list(arr.shape), "dtype": dtype_name})
    return {"tree": desc, "leaves": entries}


def save(
    path: str | os.PathLike[str],
    params: Any,
    *,
    opt_state: Any = None,
    step: int | None = None,
    key: jax.Array | None = None,
    meta: Any = None,
    model_state: Any = None,
) -> Path:
    """Save params (and optionally optimizer state, model state, step, PRNG key and JSON-able ``meta``) to ``path``.

    The write is atomic: until it completes, ``path`` keeps its previous content.
    """
    path = Path(path)
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0):
        raise JregError(f"step must be a non-negative int or None, got {step!r}")
    store: dict[str, np.ndarray] = {}
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jreg_version": __version__,
        "params": _flatten_section(params, "params", store),
        "opt_state": None if opt_state is None else _flatten_section(opt_state, "opt_state", store),
        "model_state": None if model_state is None else _flatten_section(model_state, "model_state", store),
        "step": None if step is None else int(step),
        "key": None,
        "meta": meta,
    }
    if key is not None:
        if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            store["key"] = np.asarray(jax.random.key_data(key))
            header["key"] = {"impl": str(jax.random.key_impl(key)), "typed": True}
        else:
            store["key"] = np.asarray(key)
            header["key"] = {"impl": None, "typed": False}
            if store["key"].dtype.kind not in "biufc":
                raise JregTypeError(f"key must be a PRNG key or an array of integers, got dtype {store['key'].dtype}")
        header["key"].update(shape=list(store["key"].shape), dtype=str(store["key"].dtype))
    try:
        text = json.dumps(header)
    except TypeError as exc:
        raise JregTypeError(f"meta must be JSON-serializable: {exc}") from exc
    store["__header__"] = np.frombuffer(text.encode(), dtype=np.uint8)
    buffer = _io.BytesIO()
    np.savez(buffer, **store)
    return io.write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------- reading: foreign bytes, checked first
#
# A checkpoint is read with ``zipfile`` directly, never with ``np.load``: the JSON header first (its declared size
# capped), then the header is checked field by field, then only the members the header names are read, each after
# its declared size and its ``.npy`` header agree with the shape and dtype the JSON header gives. A member the header
# does not name is never opened, so a forged file costs at most what its header and the arrays it names cost.

#: The most bytes the JSON header may declare (it lists each leaf's path, shape and dtype: ~100 bytes a leaf).
MAX_HEADER_BYTES = 64 * 2**20
#: The deepest tree description accepted (real trees nest a few levels; Python's recursion limit is 1000).
MAX_TREE_DEPTH = 200
#: The most dimensions a leaf may have (NumPy's own limit).
MAX_DIMS = 64
#: The most bytes a key member may hold in files that do not record the key's shape (written before they did).
KEY_MAX_BYTES = 2**20
_NPY_HEADER_LIMIT = 10_000  # NumPy's own limit on a .npy header's dict (np.lib.format's max_header_size)
_NPY_PREFIX = 12  # magic (6), version (2), header length (up to 4)
_DEFLATE_RATIO = 1032  # deflate's largest expansion: no member holds more bytes than this per compressed byte
_CHUNK = 1 << 24
_DTYPE_NAME = re.compile(r"[A-Za-z0-9_<>=|]{1,40}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


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
    """Checks a parsed JSON header; every complaint names the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, what: str, value: Any = None) -> CheckpointError:
        got = "" if value is None else f", got {_short(value)}"
        return CheckpointError(f"{self.path}: not a valid jreg checkpoint header: {field} {what}{got}")

    def check(self, header: Any) -> dict[str, Any]:
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: not a jreg checkpoint (its header's format is not {FORMAT!r})")
        version = header.get("format_version")
        if not _is_int(version) or version < 1:
            raise self.fail("'format_version'", "must be a positive integer", version)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{self.path}: checkpoint format {version} is newer than this jreg reads ({FORMAT_VERSION})"
            )
        for field in ("params", "opt_state", "step", "key", "meta"):
            if field not in header:
                raise self.fail(f"{field!r}", "is missing")
        if "jreg_version" in header and not isinstance(header["jreg_version"], str):
            raise self.fail("'jreg_version'", "must be a string", header["jreg_version"])
        step = header["step"]
        if step is not None and (not _is_int(step) or step < 0):
            raise self.fail("'step'", "must be a non-negative integer or null", step)
        self.section(header["params"], "params", required=True)
        for name in ("opt_state", "model_state"):  # model_state: absent in files written before it existed
            self.section(header.get(name), name, required=False)
        header.setdefault("model_state", None)
        self.key(header["key"])
        return header

    def section(self, info: Any, name: str, required: bool) -> None:
        if info is None and not required:
            return
        if not isinstance(info, dict) or "tree" not in info or "leaves" not in info:
            raise self.fail(f"{name!r}", "must be an object with 'tree' and 'leaves'", info)
        entries = info["leaves"]
        if not isinstance(entries, list):
            raise self.fail(f"'{name}.leaves'", "must be a list", entries)
        for i, entry in enumerate(entries):
            where = f"'{name}.leaves[{i}]'"
            if not isinstance(entry, dict) or not {"path", "shape", "dtype"} <= set(entry):
                raise self.fail(where, "must be an object with 'path', 'shape' and 'dtype'", entry)
            if not isinstance(entry["path"], str):
                raise self.fail(f"{where}.path", "must be a string", entry["path"])
            self.shape(entry["shape"], f"{where}.shape")
            if _leaf_dtype(entry["dtype"]) is None:
                raise self.fail(f"{where}.dtype", "must name a numeric dtype", entry["dtype"])
        if info["tree"] is not None:  # None: custom pytree nodes, restorable only into a template
            used = [False] * len(entries)
            self.tree(info["tree"], used, f"'{name}.tree'", 0)
            if not all(used):
                raise self.fail(f"'{name}.tree'", f"names {sum(used)} of the {len(entries)} leaves listed")

    def shape(self, shape: Any, field: str) -> None:
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(n) and n >= 0 for n in shape):
            raise self.fail(field, f"must be a list of at most {MAX_DIMS} non-negative integers", shape)

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
                self.tree(child, used, f"{field[:-1]}/{k}'", depth + 1)
        elif keys in ({"list"}, {"tuple"}):
            children = node.get("list", node.get("tuple"))
            if not isinstance(children, list):
                raise self.fail(field, "has a list node whose children are not a list", children)
            for k, child in enumerate(children):
                self.tree(child, used, f"{field[:-1]}/{k}'", depth + 1)
        else:
            raise self.fail(field, "has a node that is not a leaf, null, dict, named tuple, list or tuple", node)

    def key(self, key: Any) -> None:
        if key is None:
            return
        if not isinstance(key, dict) or not isinstance(key.get("typed"), bool) or "impl" not in key:
            raise self.fail("'key'", "must be null or an object with 'impl' and a boolean 'typed'", key)
        impl = key["impl"]
        if key["typed"]:
            if not isinstance(impl, str) or not _known_impl(impl):
                raise self.fail("'key.impl'", "must name a PRNG implementation this JAX knows", impl)
        elif impl is not None:
            raise self.fail("'key.impl'", "must be null for a raw (untyped) key", impl)
        if "shape" in key or "dtype" in key:  # recorded since issue 12; older files leave them out
            self.shape(key.get("shape"), "'key.shape'")
            dtype = _leaf_dtype(key.get("dtype"))
            if dtype is None or dtype.kind == "V":
                raise self.fail("'key.dtype'", "must name an integer or float dtype", key.get("dtype"))


def _known_impl(name: str) -> bool:
    try:
        jax.random.key_dtype(name)
    except (ValueError, TypeError, KeyError):
        return False
    return True


class _Archive:
    """An open checkpoint zip: members read only when named, sizes checked before anything is allocated."""

    def __init__(self, path: Path):
        self.path = path
        try:
            info = os.stat(path)
        except FileNotFoundError as exc:
            raise CheckpointError(f"{path}: no such checkpoint") from exc
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
        if stat.S_ISDIR(info.st_mode):
            raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path}: is not a regular file, so not a checkpoint")
        self.size, self.budget, magic = info.st_size, info.st_size, b""
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
            self.zip = zipfile.ZipFile(path)
        except Exception as exc:  # noqa: BLE001 - zipfile parsing foreign bytes: any failure means "not a checkpoint"
            if magic == b"\x93NUMPY":
                raise CheckpointError(
                    f"{path}: is a single .npy array, not a jreg checkpoint (an .npz archive written by jreg.save)"
                ) from exc
            raise CheckpointError(
                f"{path}: not a jreg checkpoint, or truncated or corrupted (not a zip archive: {exc})"
            ) from exc

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.zip.close()

    def member(self, name: str, what: str) -> zipfile.ZipInfo:
        """The zip entry of ``name`` whose declared sizes the file can actually hold."""
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: incomplete checkpoint ({what}: no member {name!r})") from None
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{self.path}: {what} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise CheckpointError(f"{self.path}: {what}: member {name!r} is corrupted (stored sizes disagree)")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > info.compress_size * _DEFLATE_RATIO + 1024:
                raise CheckpointError(
                    f"{self.path}: {what}: member {name!r} declares {info.file_size} bytes, more than its "
                    f"{info.compress_size} compressed bytes can hold"
                )
        else:
            raise CheckpointError(f"{self.path}: {what}: member {name!r} uses compression {info.compress_type}")
        self.budget -= info.compress_size  # members that overlap (a zip bomb) spend more than the file holds
        if self.budget < 0:
            raise CheckpointError(f"{self.path}: {what}: members declare more bytes than the file holds")
        return info

    def read(self, name: str, what: str, dtype: np.dtype | None, shape: tuple[int, ...] | None, limit: int = 0):
        """Member ``name`` as an array of ``dtype`` and ``shape`` (None: any numeric, at most ``limit`` bytes)."""
        info = self.member(name, what)
        if dtype is not None and shape is not None:
            need = math.prod(shape) * dtype.itemsize
            if not need <= info.file_size <= need + _NPY_PREFIX + _NPY_HEADER_LIMIT:
                raise CheckpointError(
                    f"{self.path}: {what}: member {name!r} declares {info.file_size} bytes, but {dtype}{list(shape)} "
                    f"takes {need} (plus a .npy header)"
                )
        elif info.file_size > limit + _NPY_PREFIX + _NPY_HEADER_LIMIT:
            raise CheckpointError(
                f"{self.path}: {what}: member {name!r} declares {info.file_size} bytes, more than the {limit} allowed"
            )
        try:
            with self.zip.open(info) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    got_shape, fortran, got = np.lib.format.read_array_header_1_0(fp, _NPY_HEADER_LIMIT)
                elif version == (2, 0):
                    got_shape, fortran, got = np.lib.format.read_array_header_2_0(fp, _NPY_HEADER_LIMIT)
                else:
                    raise ValueError(f".npy format version {version} is not one NumPy writes for numbers")
                self.agree(what, got_shape, got, dtype, shape)
                size = info.file_size - fp.tell()
                need = math.prod(got_shape) * got.itemsize
                if size != need:
                    raise CheckpointError(
                        f"{self.path}: {what} holds {size} bytes, but {got}{list(got_shape)} takes {need}"
                    )
                buffer = self.bytes(fp, need, what)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile and NumPy's .npy parser on foreign bytes
            raise CheckpointError(
                f"{self.path}: {what} is truncated or corrupted ({type(exc).__name__}: {exc})"
            ) from exc
        return np.frombuffer(buffer, dtype=got).reshape(got_shape, order="F" if fortran else "C")

    def agree(self, what: str, got_shape: tuple, got: np.dtype, dtype: np.dtype | None, shape: tuple | None) -> None:
        if got.hasobject:
            raise CheckpointError(f"{self.path}: {what} holds pickled Python objects, which jreg never loads")
        if dtype is None:
            if got.kind not in "biufc" or got.names is not None or got.subdtype is not None:
                raise CheckpointError(f"{self.path}: {what} is not numeric (dtype {got})")
        elif got != dtype or tuple(got_shape) != shape:
            raise CheckpointError(
                f"{self.path}: {what} is {got}{list(got_shape)} in its .npy member, the header says "
                f"{dtype}{list(shape or ())}"
            )

    def bytes(self, fp: Any, n: int, what: str) -> bytearray:
        buffer = bytearray(n)
        view, done = memoryview(buffer), 0
        while done < n:
            chunk = fp.read(min(n - done, _CHUNK))
            if not chunk:
                raise CheckpointError(f"{self.path}: {what} is truncated ({done} of {n} bytes)")
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        if fp.read(1):  # also makes zipfile check the member's CRC
            raise CheckpointError(f"{self.path}: {what} holds more bytes than its header says")
        return buffer

    def header(self) -> dict[str, Any]:
        blob = self.read("__header__.npy", "the jreg header", None, None, MAX_HEADER_BYTES)
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise CheckpointError(f"{self.path}: not a jreg checkpoint (its header is not a byte array)")
        try:
            parsed = json.loads(blob.tobytes().decode())
        except RecursionError as exc:
            raise CheckpointError(f"{self.path}: corrupted checkpoint header (nested too deeply)") from exc
        except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError, or an integer of too many digits
            raise CheckpointError(f"{self.path}: corrupted checkpoint header ({exc})") from exc
        return _Header(self.path).check(parsed)


def _open(path: Path) -> _Archive:
    archive = _Archive(path)
    if "__header__.npy" not in archive.zip.NameToInfo:
        archive.zip.close()
        raise CheckpointError(f"{path}: not a jreg checkpoint (no jreg header)")
    return archive


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's JSON header, checked, without reading any array: cheap even for a large checkpoint.

    Returns ``{"format", "format_version", "jreg_version", "params", "opt_state",
    "model_state", "step", "key", "meta"}``: each tree section is ``None`` or
    ``{"tree": description, "leaves": [{"path", "shape", "dtype"}, ...]}``;
    ``meta`` is the user's (or :func:`jreg.fit`'s) JSON as saved, unchecked
    (:func:`check_run_meta` checks the fields ``fit`` reads on resume). A file
    that is not a jreg checkpoint, or whose header lies, raises
    :class:`CheckpointError` naming the file and the field.
    """
    path = Path(path)
    with _open(path) as archive:
        return archive.header()


def _section(archive: _Archive, header: dict, name: str, target: Any) -> Any:
    info = header[name]
    entries = info["leaves"]
    leaves = []
    for i, e in enumerate(entries):
        dtype = _leaf_dtype(e["dtype"])
        stored = archive.read(f"{name}{i}.npy", f"{name} leaf {e['path']!r}", _stored_dtype(dtype), tuple(e["shape"]))
        leaves.append(stored.view(dtype) if dtype.kind == "V" else stored)
    path = archive.path
    if target is not None:
        return _into_target(leaves, entries, target, name, path)
    if info["tree"] is None:
        raise CheckpointError(
            f"{path}: the {name} tree holds custom pytree nodes; pass a template with the same structure to "
            f"load(..., {name}=template) to restore it"
        )
    return _build(info["tree"], [jnp.asarray(leaf) for leaf in leaves])


def _key(archive: _Archive, info: dict[str, Any]) -> Any:
    if "shape" in info:
        dtype, shape = _leaf_dtype(info["dtype"]), tuple(info["shape"])
        data = archive.read("key.npy", "the key", dtype, shape)
    else:  # files written before the key's shape was recorded
        data = archive.read("key.npy", "the key", None, None, KEY_MAX_BYTES)
    if not info["typed"]:
        return data
    try:
        return jax.random.wrap_key_data(data, impl=info["impl"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{archive.path}: the key's data do not fit {info['impl']!r} keys ({exc})") from exc


def _into_target(leaves: list, entries: list, target: Any, name: str, path: Path) -> Any:
    """Put the stored leaves into ``target``'s structure, saying exactly which leaf differs if any."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    want = [(path_str(p), tuple(np.shape(leaf)), str(jnp.result_type(leaf))) for p, leaf in flat]
    have = [(e["path"], tuple(e["shape"]), e["dtype"]) for e in entries]
    if len(want) != len(have):
        missing = sorted({w[0] for w in want} - {h[0] for h in have})
        extra = sorted({h[0] for h in have} - {w[0] for w in want})
        raise CheckpointError(
            f"{path}: {name} has {len(have)} leaves, the target {len(want)}"
            + (f"; only in the target: {missing}" if missing else "")
            + (f"; only in the checkpoint: {extra}" if extra else "")
        )
    for (wp, ws, wd), (hp, hs, hd) in zip(want, have):
        if wp != hp:
            raise CheckpointError(f"{path}: {name} leaf {hp!r} in the checkpoint is {wp!r} in the target")
        if ws != hs or wd != hd:
            raise CheckpointError(
                f"{path}: {name} leaf {hp!r} is {hd}{list(hs)} in the checkpoint but {wd}{list(ws)} in the target"
            )
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])


def load(
    path: str | os.PathLike[str], *, params: Any = None, opt_state: Any = None, model_state: Any = None
) -> Checkpoint:
    """Load a checkpoint written by :func:`save`; never executes code from the file.

    Without templates the trees come back as plain dicts, lists and tuples
    (named tuples as dicts of their fields). Pass ``params=`` and/or
    ``opt_state=`` templates (e.g. ``model.init(key)`` and ``optimizer.init(...)``)
    (and ``model_state=``, for a stateful model's state: BatchNorm statistics)
    to get the original structure back (optax states, Flax or Equinox trees):
    every leaf's path, shape and dtype is then checked, and the first
    difference is named in the error.
    """
    path = Path(path)
    with _open(path) as archive:
        header = archive.header()
        if opt_state is not None and header["opt_state"] is None:
            raise CheckpointError(f"{path}: the checkpoint holds no optimizer state")
        if model_state is not None and header["model_state"] is None:
            raise CheckpointError(f"{path}: the checkpoint holds no model state")
        loaded_params = _section(archive, header, "params", params)
        loaded_state = None if header["opt_state"] is None else _section(archive, header, "opt_state", opt_state)
        loaded_model_state = (
            None if header["model_state"] is None else _section(archive, header, "model_state", model_state)
        )
        key = None if header["key"] is None else _key(archive, header["key"])
    return Checkpoint(loaded_params, loaded_state, header["step"], key, header["meta"], loaded_model_state)


# --------------------------------------------------------------------------- network2.py's JSON


def save_network2(path: str | os.PathLike[str], params: Any, cost: str = "CrossEntropyCost") -> Path:
    """Write jreg MLP params in network2.py's JSON format (``Network.save``).

    ``{"sizes": [...], "weights": [...], "biases": [...], "cost": "CrossEntropyCost"}`` with
    weights as ``(n_out, n_in)`` nested lists and biases as ``(n_out, 1)``; the file loads
    with ``network2.load(filename)``.
    """
    layers = _check_mlp_params(params, "params")
    sizes = [layers[0][0].shape[0]] + [w.shape[1] for w, _ in layers]
    data = {
        "sizes": sizes,
        "weights": [w.T.tolist() for w, _ in layers],
        "biases": [b.reshape(-1, 1).tolist() for _, b in layers],
        "cost": str(cost),
    }
    return io.write_bytes(path, json.dumps(data).encode())


def load_network2(path: str | os.PathLike[str], dtype: Any = jnp.float32) -> tuple[list[dict[str, jax.Array]], str]:
    """Read a model saved by network2.py (``Network.save``): ``(params, cost name)``, params in jreg's layout."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such file") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a network2 JSON model ({exc})") from exc
    if not isinstance(data, dict) or not {"sizes", "weights", "biases"} <= set(data):
        raise CheckpointError(f"{path}: not a network2 JSON model (needs 'sizes', 'weights' and 'biases')")
    sizes = data["sizes"]
    if not isinstance(sizes, list) or len(sizes) < 2 or len(data["weights"]) != len(sizes) - 1:
        raise CheckpointError(f"{path}: 'sizes' {sizes!r} does not match {len(data['weights'])} weight matrices")
    params = []
    for layer, (w, b) in enumerate(zip(data["weights"], data["biases"])):
        try:
            w = np.asarray(w, dtype=np.float64)
            b = np.asarray(b, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: layer {layer} weights or biases are not numeric ({exc})") from exc
        expected = (sizes[layer + 1], sizes[layer])
        if w.shape != expected or b.shape != (sizes[layer + 1],):
            raise CheckpointError(
                f"{path}: layer {layer} must have weights {expected} (n_out, n_in) and {sizes[layer + 1]} biases, "
                f"got weights {w.shape} and {b.shape[0]} biases"
            )
        params.append({"w": jnp.asarray(w.T, dtype), "b": jnp.asarray(b, dtype)})
    return params, str(data.get("cost", "CrossEntropyCost"))


def _check_mlp_params(params: Any, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if not isinstance(params, (list, tuple)) or not params:
        raise JregTypeError(f"{name} must be jreg MLP params: a list of {{'w', 'b'}} layers")
    layers = []
    for i, p in enumerate(params):
        if not isinstance(p, dict) or set(p) != {"w", "b"}:
            raise JregTypeError(f"{name}[{i}] must be a dict with 'w' and 'b'")
        w, b = np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64)
        if w.ndim != 2 or b.shape != (w.shape[1],) or (layers and layers[-1][0].shape[1] != w.shape[0]):
            raise JregError(f"{name}[{i}]: w {w.shape} and b {b.shape} do not form an MLP layer")
        layers.append((w, b))
    return layers
