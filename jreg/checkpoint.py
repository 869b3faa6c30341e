"""Checkpoints that cannot execute code on load, and network2.py's JSON model format.

Format: one ``.npz`` file (NumPy's zip of ``.npy`` arrays) holding every array
leaf, plus a JSON header (stored as a byte array inside the same file) that
records the jreg version, the tree structure of the params and optimizer state,
every leaf's path, shape and dtype, the step, the PRNG key's implementation
(and, since issue 12, its shape and dtype) and the user's ``meta``.

Reading trusts nothing in the file: :func:`load` opens the zip itself, reads
the header first (at most :data:`MAX_HEADER_BYTES`), checks it field by field,
then reads only the members the header names, each after its declared size and
its ``.npy`` header agree with the shape and dtype the JSON header gives (no
object arrays, no pickle). A lie anywhere is a :class:`CheckpointError` naming
the file and the field, before anything large is allocated.

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
from ._checks import check_path
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
        desc = _describe(tree, leaves, prefix)
    except _Opaque:
        desc = None
    try:
        with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    except RecursionError as exc:  # custom nodes nested absurdly deep
        raise JregTypeError(f"{prefix} nests too deeply to be flattened") from exc
    if desc is None:  # custom nodes somewhere: keep the flat leaves and their paths
        leaves = [leaf for _, leaf in with_paths]
    paths = [path_str(p) for p, _ in with_paths]
    entries = []
    for i, (leaf, path) in enumerate(zip(leaves, paths)):
        arr, dtype_name = _to_numpy(leaf, f"{prefix} leaf {path!r}")
        store[f"{prefix}{i}"] = arr
        entries.append({"path": path, "shape": list(arr.shape), "dtype": dtype_name})
    return {"tree": desc, "leaves": entries}


def _check_meta_depth(meta: Any) -> None:
    """Refuse ``meta`` whose dicts and lists nest deeper than :data:`MAX_META_DEPTH` (walked without recursion)."""
    stack = [(meta, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, (list, tuple)):
            children = list(node)
        else:
            continue
        if depth >= MAX_META_DEPTH:
            raise JregTypeError(
                f"meta nests deeper than {MAX_META_DEPTH} levels (jreg.checkpoint.MAX_META_DEPTH), "
                "which jreg.load could not be sure to read back"
            )
        stack.extend((child, depth + 1) for child in children)


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

    The write is atomic: until it completes, ``path`` keeps its previous content. What :func:`load` could not
    read back is refused here: trees nested deeper than :data:`MAX_TREE_DEPTH`, ``meta`` deeper than
    :data:`MAX_META_DEPTH` or not JSON, non-numeric leaves.
    """
    path = check_path(path, "path")
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
    _check_meta_depth(meta)
    try:
        text = json.dumps(header)
    except (TypeError, ValueError, RecursionError) as exc:  # ValueError: a circular reference
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
#: The deepest ``meta`` :func:`save` writes (a container at the top is level 1): far inside what ``json`` parses.
MAX_META_DEPTH = 200
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
        return CheckpointError(f"{self.path}: not a valid jreg checkpoint header: '{field}' {what}{got}")

    def check(self, header: Any) -> dict[str, Any]:
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: not a jreg checkpoint (its header's format is not {FORMAT!r})")
        version = header.get("format_version")
        if not _is_int(version) or version < 1:
            raise self.fail("format_version", "must be a positive integer", version)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{self.path}: checkpoint format {version} is newer than this jreg reads ({FORMAT_VERSION})"
            )
        for field in ("params", "opt_state", "step", "key", "meta"):
            if field not in header:
                raise self.fail(field, "is missing")
        if "jreg_version" in header and not isinstance(header["jreg_version"], str):
            raise self.fail("jreg_version", "must be a string", header["jreg_version"])
        step = header["step"]
        if step is not None and (not _is_int(step) or step < 0):
            raise self.fail("step", "must be a non-negative integer or null", step)
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
            raise self.fail(name, "must be an object with 'tree' and 'leaves'", info)
        entries = info["leaves"]
        if not isinstance(entries, list):
            raise self.fail(f"{name}.leaves", "must be a list", entries)
        for i, entry in enumerate(entries):
            where = f"{name}.leaves[{i}]"
            if not isinstance(entry, dict) or not {"path", "shape", "dtype"} <= set(entry):
                raise self.fail(where, "must be an object with 'path', 'shape' and 'dtype'", entry)
            if not isinstance(entry["path"], str):
                raise self.fail(f"{where}.path", "must be a string", entry["path"])
            self.shape(entry["shape"], f"{where}.shape")
            if _leaf_dtype(entry["dtype"]) is None:
                raise self.fail(f"{where}.dtype", "must name a numeric dtype", entry["dtype"])
        if info["tree"] is not None:  # None: custom pytree nodes, restorable only into a template
            used = [False] * len(entries)
            self.tree(info["tree"], used, f"{name}.tree", 0)
            if not all(used):
                raise self.fail(f"{name}.tree", f"names {sum(used)} of the {len(entries)} leaves listed")

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
            self.shape(key.get("shape"), "key.shape")
            dtype = _leaf_dtype(key.get("dtype"))
            if dtype is None or dtype.kind == "V":
                raise self.fail("key.dtype", "must name an integer or float dtype", key.get("dtype"))


def _known_impl(name: str) -> bool:
    try:
        jax.random.key_dtype(name)
    except (ValueError, TypeError, KeyError):
        return False
    return True


def _regular_file(path: Path, what: str, missing: str) -> os.stat_result:
    """``os.stat(path)`` of a regular file; a missing file, a folder, a FIFO or device is a CheckpointError."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {missing}") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path}: is a folder, not a {what} file")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: is not a regular file, so not a {what}")
    return info


class _Archive:
    """An open checkpoint zip: members read only when named, sizes checked before anything is allocated."""

    def __init__(self, path: Path):
        self.path = path
        info = _regular_file(path, "checkpoint", "no such checkpoint")
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

    def read(self, name: str, what: str, dtype: Any, shape: Any, limit: int = 0, said: str = "") -> np.ndarray:
        """Member ``name`` as an array of ``dtype`` and ``shape`` (None: any numeric, at most ``limit`` bytes).

        ``said``: the dtype and shape as the header gives them, for messages (bfloat16 is stored as uint16).
        """
        info = self.member(name, what)
        said = said or f"{dtype}{list(shape or ())}"
        if dtype is not None and shape is not None:
            need = math.prod(shape) * dtype.itemsize
            if not need <= info.file_size <= need + _NPY_PREFIX + _NPY_HEADER_LIMIT:
                raise CheckpointError(
                    f"{self.path}: {what}: member {name!r} declares {info.file_size} bytes, but {said} takes {need} "
                    "(plus a .npy header)"
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
                self.agree(what, got_shape, got, dtype, shape, said)
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

    def agree(self, what: str, got_shape: tuple, got: np.dtype, dtype: Any, shape: Any, said: str) -> None:
        if got.hasobject:
            raise CheckpointError(f"{self.path}: {what} holds pickled Python objects, which jreg never loads")
        if dtype is None:
            if got.kind not in "biufc" or got.names is not None or got.subdtype is not None:
                raise CheckpointError(f"{self.path}: {what} is not numeric (dtype {got})")
        elif got != dtype or tuple(got_shape) != shape:
            raise CheckpointError(
                f"{self.path}: {what} is {got}{list(got_shape)} in its .npy member, the header says {said}"
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
    path = check_path(path, "path")
    with _open(path) as archive:
        return archive.header()


def verify(path: str | os.PathLike[str]) -> None:
    """Check that a checkpoint can be read in full: its header, and every array it names (sizes, ``.npy``
    headers, checksums), without building any tree. Raises :class:`CheckpointError` if not.

    This tells a damaged or forged file (it fails here) from an intact one that does not fit a template
    (it passes here, and :func:`load` with the template says which leaf differs).
    """
    path = check_path(path, "path")
    with _open(path) as archive:
        header = archive.header()
        for name in ("params", "opt_state", "model_state"):
            if header[name] is not None:
                _leaves(archive, header, name)
        if header["key"] is not None:
            _key(archive, header["key"])


def _leaves(archive: _Archive, header: dict, name: str) -> list[np.ndarray]:
    leaves = []
    for i, e in enumerate(header[name]["leaves"]):
        dtype = _leaf_dtype(e["dtype"])
        what, said = f"{name} leaf {e['path']!r}", f"{e['dtype']}{e['shape']}"
        stored = archive.read(f"{name}{i}.npy", what, _stored_dtype(dtype), tuple(e["shape"]), said=said)
        leaves.append(stored.view(dtype) if dtype.kind == "V" else stored)
    return leaves


def _section(archive: _Archive, header: dict, name: str, target: Any) -> Any:
    info = header[name]
    entries = info["leaves"]
    leaves = _leaves(archive, header, name)
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


def _template_leaf(leaf: Any, name: str, where: str) -> tuple[tuple[int, ...], str]:
    """A template leaf's shape and dtype name; a leaf that is not a numeric array is a JregTypeError."""
    dtype = getattr(leaf, "dtype", None)
    numeric = isinstance(leaf, (int, float, complex)) or (
        hasattr(leaf, "shape") and dtype is not None and not (isinstance(dtype, np.dtype) and dtype.kind in "OSUMm")
    )
    if not numeric:
        raise JregTypeError(
            f"{name}: the template's leaf {where!r} must be an array (or an array's shape and dtype), "
            f"got {type(leaf).__name__}{'' if dtype is None else f' of dtype {dtype}'}"
        )
    try:
        return tuple(np.shape(leaf)), str(jnp.result_type(leaf))
    except (TypeError, ValueError) as exc:
        raise JregTypeError(f"{name}: the template's leaf {where!r} is not a numeric array ({exc})") from exc


def _into_target(leaves: list, entries: list, target: Any, name: str, path: Path) -> Any:
    """Put the stored leaves into ``target``'s structure, saying exactly which leaf differs if any."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    want = [(path_str(p), *_template_leaf(leaf, name, path_str(p) or "<root>")) for p, leaf in flat]
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
    path = check_path(path, "path")
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


# --------------------------------------------------------------------------- what fit reads back on resume
#
# ``load`` returns ``meta`` as saved (any JSON): it is the user's. The fields jreg.fit writes there and reads back on
# resume are checked where they are read, by these functions.

STOPPING_FIELDS = ("best", "best_epoch", "wait", "lr_scale", "stopped")


def _run_field(where: str, field: str, what: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{where}: meta {field!r} {what}, got {_short(value)}")


def _is_float(value: Any) -> bool:
    """A number that a float holds (NaN and infinity included, as an unguarded monitored value may be)."""
    if not _is_number(value):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def check_history(series: Any, epochs: Any, where: str, epochs_done: int | None = None) -> None:
    """Check a saved history: ``{name: [number or None, ...]}`` and ``{name: [1-based epochs, increasing]}``.

    ``epochs`` may be None (files written before it existed); ``epochs_done``, when given, bounds the epochs.
    Raises :class:`CheckpointError` starting with ``where`` and naming the field.
    """
    if series is not None:
        if not isinstance(series, dict) or not all(isinstance(k, str) for k in series):
            raise _run_field(where, "history", "must be an object of named series", series)
        for name, values in series.items():
            if not isinstance(values, list) or not all(v is None or _is_float(v) for v in values):
                raise _run_field(
                    where, f"history.{name}", "must be a list of numbers (within float range) or nulls", values
                )
            if epochs_done is not None and epochs is None and len(values) > epochs_done:
                raise _run_field(where, f"history.{name}", f"has more values than the {epochs_done} epochs run", values)
    if epochs is None:
        return
    if not isinstance(epochs, dict) or not all(isinstance(k, str) for k in epochs):
        raise _run_field(where, "history_epochs", "must be an object of named lists of epochs", epochs)
    for name, at in epochs.items():
        field = f"history_epochs.{name}"
        if not isinstance(at, list) or not all(_is_int(e) and e >= 1 for e in at):
            raise _run_field(where, field, "must be a list of positive integers", at)
        if any(b <= a for a, b in zip(at, at[1:])):
            raise _run_field(where, field, "must increase", at)
        if epochs_done is not None and at and at[-1] > epochs_done:
            raise _run_field(where, field, f"goes beyond the {epochs_done} epochs run", at)
        if isinstance(series, dict) and name in series and len(series[name]) != len(at):
            raise _run_field(where, field, f"must give one epoch for each of the {len(series[name])} values", at)


def check_stopping_state(state: Any, where: str, epochs_done: int | None = None) -> dict[str, Any]:
    """Check a saved early-stopping state (:meth:`jreg.EarlyStopping.initial_state`'s fields); return it.

    ``best`` and ``best_epoch`` (0-based, before ``epochs_done`` when given) are both null or both set, ``wait`` a
    non-negative integer, ``lr_scale`` a positive finite number, ``stopped`` null or the reason the run stopped.
    """
    field = "early_stopping"
    if not isinstance(state, dict) or not set(STOPPING_FIELDS) <= set(state):
        raise _run_field(where, field, f"must be an object with {list(STOPPING_FIELDS)}", state)
    best, best_epoch, wait, scale, stopped = (state[k] for k in STOPPING_FIELDS)
    if best is not None and (not _is_number(best) or math.isnan(best)):
        raise _run_field(where, f"{field}.best", "must be a number or null", best)
    if best_epoch is not None and (not _is_int(best_epoch) or best_epoch < 0):
        raise _run_field(where, f"{field}.best_epoch", "must be a non-negative integer or null", best_epoch)
    if (best is None) != (best_epoch is None):
        raise _run_field(where, f"{field}.best_epoch", "must be null exactly when 'best' is", best_epoch)
    if best_epoch is not None and epochs_done is not None and best_epoch >= epochs_done:
        raise _run_field(where, f"{field}.best_epoch", f"must be an epoch before the {epochs_done} run", best_epoch)
    if not _is_int(wait) or wait < 0:
        raise _run_field(where, f"{field}.wait", "must be a non-negative integer", wait)
    if not _is_number(scale) or not 0 < scale < math.inf:
        raise _run_field(where, f"{field}.lr_scale", "must be a positive finite number", scale)
    if stopped is not None and not isinstance(stopped, str):
        raise _run_field(where, f"{field}.stopped", "must be null or a string", stopped)
    return state


def check_run_meta(meta: Any, path: str | os.PathLike[str], step: int | None = None) -> dict[str, Any]:
    """The ``meta`` of a checkpoint :func:`jreg.fit` wrote, checked before a resume reads it; returns it (a dict).

    Checks ``history`` and ``history_epochs`` (:func:`check_history`), ``batch_size`` (a positive integer),
    ``global_step`` (null or an integer in ``[0, 2**31)``, the step counter's range) and ``early_stopping``
    (:func:`check_stopping_state`), each only when present (older files lack some); ``step`` (the checkpoint's
    epoch) bounds the epochs they name. ``None`` gives ``{}``. Other fields are the user's and are not looked at.
    Raises :class:`CheckpointError` naming ``path`` and the field.
    """
    where = str(path)
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0):
        raise JregTypeError(f"step must be None or a non-negative int (the checkpoint's epoch), got {step!r}")
    step = None if step is None else int(step)
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: meta must be an object (a checkpoint jreg.fit wrote), got {_short(meta)}")
    check_history(meta.get("history"), meta.get("history_epochs"), where, step)
    batch_size = meta.get("batch_size")
    if "batch_size" in meta and (not _is_int(batch_size) or batch_size < 1):
        raise _run_field(where, "batch_size", "must be a positive integer", batch_size)
    global_step = meta.get("global_step")
    if global_step is not None and (not _is_int(global_step) or not 0 <= global_step < 2**31):
        raise _run_field(where, "global_step", "must be null or an integer in [0, 2**31)", global_step)
    if meta.get("early_stopping") is not None:
        check_stopping_state(meta["early_stopping"], where, step)
    return meta


# --------------------------------------------------------------------------- network2.py's JSON


def save_network2(path: str | os.PathLike[str], params: Any, cost: str = "CrossEntropyCost") -> Path:
    """Write jreg MLP params in network2.py's JSON format (``Network.save``).

    ``{"sizes": [...], "weights": [...], "biases": [...], "cost": "CrossEntropyCost"}`` with
    weights as ``(n_out, n_in)`` nested lists and biases as ``(n_out, 1)``; the file loads
    with ``network2.load(filename)``. What :func:`load_network2` would refuse is refused here: non-finite
    weights or biases, a ``cost`` that is not a string.
    """
    path = check_path(path, "path")
    if not isinstance(cost, str):
        raise JregTypeError(f"cost must be the cost's name (a string), got {type(cost).__name__}: {cost!r}")
    layers = _check_mlp_params(params, "params")
    for i, (w, b) in enumerate(layers):
        for what, arr in (("w", w), ("b", b)):
            if not np.all(np.isfinite(arr)):
                raise JregError(
                    f"params[{i}]: {what} holds non-finite values (NaN or infinity), which network2 JSON cannot "
                    "hold and load_network2 refuses"
                )
    sizes = [layers[0][0].shape[0]] + [w.shape[1] for w, _ in layers]
    data = {
        "sizes": sizes,
        "weights": [w.T.tolist() for w, _ in layers],
        "biases": [b.reshape(-1, 1).tolist() for _, b in layers],
        "cost": cost,
    }
    return io.write_bytes(path, json.dumps(data).encode())


#: The largest network2 JSON file read: ~13 million numbers at ~20 characters each, far beyond what network2.py
#: trains in pure NumPy; parsing it takes a few GB of Python objects. Larger models belong in :func:`save`'s format.
NETWORK2_MAX_BYTES = 256 * 2**20


def _numbers(value: Any, shape: tuple[int, ...]) -> bool:
    """Whether ``value`` is nested lists of exactly ``shape`` holding JSON numbers (no bools, strings or nulls)."""
    if not shape:
        return type(value) in (int, float)
    if type(value) is not list or len(value) != shape[0]:
        return False
    if len(shape) == 1:
        return all(type(v) in (int, float) for v in value)
    return all(_numbers(v, shape[1:]) for v in value)


def _only_numbers(value: Any, depth: int) -> bool:
    """Whether ``value`` is a number, or lists (at most ``depth`` deep) holding numbers only."""
    if type(value) in (int, float):
        return True
    return type(value) is list and depth > 0 and all(_only_numbers(v, depth - 1) for v in value)


def _network2_array(value: Any, shapes: Sequence[tuple[int, ...]], what: str, path: Path, rule: str) -> np.ndarray:
    """``value`` as a float64 array of the first of ``shapes`` it has; finite numbers only."""
    for shape in shapes:
        if _numbers(value, shape):
            try:
                arr = np.asarray(value, dtype=np.float64).reshape(shape)
            except OverflowError as exc:  # an integer beyond float64's range
                raise CheckpointError(f"{path}: {rule}; its {what} are not all finite numbers ({exc})") from exc
            if not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{path}: {rule}; its {what} are not all finite numbers (NaN or infinity)")
            return arr
    if not _only_numbers(value, 2):
        raise CheckpointError(f"{path}: {rule}; its {what} are not numeric, got {_short(value)}")
    raise CheckpointError(f"{path}: {rule}; its {what} do not have that shape")


def _float_dtype(dtype: Any, name: str) -> np.dtype:
    """``dtype`` as a NumPy dtype, refusing anything that is not a floating dtype (bfloat16 and friends included)."""
    try:
        resolved = jnp.dtype(dtype)
    except Exception as exc:  # noqa: BLE001 - NumPy and JAX raise TypeError or ValueError by dtype spelling
        raise JregTypeError(f"{name} must be a floating dtype such as jnp.float32, got {dtype!r}") from exc
    if not jnp.issubdtype(resolved, jnp.floating):
        raise JregTypeError(f"{name} must be a floating dtype such as jnp.float32, got {resolved}")
    return resolved


def load_network2(path: str | os.PathLike[str], dtype: Any = jnp.float32) -> tuple[list[dict[str, jax.Array]], str]:
    """Read a model saved by network2.py (``Network.save``): ``(params, cost name)``, params in jreg's layout.

    The file must be a JSON object with ``sizes`` (at least two positive integers), ``weights`` and ``biases``
    (one per layer, ``(n_out, n_in)`` and ``(n_out, 1)`` nested lists of finite numbers; biases may also be flat)
    and optionally ``cost`` (a string); anything else, or a file over :data:`NETWORK2_MAX_BYTES`, raises
    :class:`CheckpointError` naming the file. ``dtype`` is the floating dtype the arrays get.
    """
    path = check_path(path, "path")
    dtype = _float_dtype(dtype, "dtype")
    info = _regular_file(path, "network2 JSON model", "no such file")
    if info.st_size > NETWORK2_MAX_BYTES:
        raise CheckpointError(
            f"{path}: {info.st_size} bytes, more than the {NETWORK2_MAX_BYTES} a network2 JSON model may take "
            "(jreg.checkpoint.NETWORK2_MAX_BYTES)"
        )
    try:
        with open(path, "rb") as f:
            blob = f.read(NETWORK2_MAX_BYTES + 1)  # the file may have grown since
        if len(blob) > NETWORK2_MAX_BYTES:
            raise CheckpointError(f"{path}: more than the {NETWORK2_MAX_BYTES} bytes a network2 JSON model may take")
        data = json.loads(blob.decode())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{path}: not a network2 JSON model (nested too deeply)") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError, or an integer of too many digits
        raise CheckpointError(f"{path}: not a network2 JSON model ({exc})") from exc
    if not isinstance(data, dict) or not {"sizes", "weights", "biases"} <= set(data):
        raise CheckpointError(f"{path}: not a network2 JSON model (needs 'sizes', 'weights' and 'biases')")
    sizes, weights, biases = data["sizes"], data["weights"], data["biases"]
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(_is_int(n) and n >= 1 for n in sizes):
        raise CheckpointError(f"{path}: 'sizes' must be a list of at least two positive integers, got {_short(sizes)}")
    for name, value in (("weights", weights), ("biases", biases)):
        if not isinstance(value, list) or len(value) != len(sizes) - 1:
            got = f"{len(value)} {name}" if isinstance(value, list) else f"{name} {_short(value)}"
            raise CheckpointError(
                f"{path}: 'sizes' {_short(sizes)} does not match {got}: it makes {len(sizes) - 1} layers, so "
                f"{name!r} must list {len(sizes) - 1} matrices"
            )
    cost = data.get("cost", "CrossEntropyCost")
    if not isinstance(cost, str):
        raise CheckpointError(f"{path}: 'cost' must be the cost's name (a string), got {_short(cost)}")
    params = []
    for layer, (w, b) in enumerate(zip(weights, biases)):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        rule = f"layer {layer} must have weights {(n_out, n_in)} (n_out, n_in) and {n_out} biases ({n_out}, 1)"
        w = _network2_array(w, [(n_out, n_in)], "weights", path, rule)
        b = _network2_array(b, [(n_out, 1), (n_out,), (1, n_out)], "biases", path, rule)
        params.append({"w": jnp.asarray(w.T, dtype), "b": jnp.asarray(b.reshape(-1), dtype)})
    return params, cost


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
