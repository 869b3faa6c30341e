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
import os
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


def _from_numpy(arr: np.ndarray, dtype_name: str) -> np.ndarray:
    if str(arr.dtype) == dtype_name:
        return arr
    return arr.view(jnp.dtype(dtype_name))


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
    try:
        text = json.dumps(header)
    except TypeError as exc:
        raise JregTypeError(f"meta must be JSON-serializable: {exc}") from exc
    store["__header__"] = np.frombuffer(text.encode(), dtype=np.uint8)
    buffer = _io.BytesIO()
    np.savez(buffer, **store)
    return io.write_bytes(path, buffer.getvalue())


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such checkpoint") from exc
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        why = "it holds pickled Python objects, which jreg never loads" if "allow_pickle" in str(exc) else str(exc)
        raise CheckpointError(f"{path}: not a jreg checkpoint, or truncated or corrupted ({why})") from exc
    if "__header__" not in arrays:
        raise CheckpointError(f"{path}: not a jreg checkpoint (no jreg header)")
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupted checkpoint header ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a jreg checkpoint")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {header['format_version']} is newer than this jreg reads ({FORMAT_VERSION})"
        )
    return header, arrays


def _section(header: dict, arrays: dict, name: str, path: Path, target: Any) -> Any:
    info = header[name]
    entries = info["leaves"]
    try:
        leaves = [_from_numpy(arrays[f"{name}{i}"], e["dtype"]) for i, e in enumerate(entries)]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {name} leaves are missing or corrupted ({exc})") from exc
    for leaf, e in zip(leaves, entries):
        if leaf.dtype.kind not in "biufcV":
            raise CheckpointError(f"{path}: {name} leaf {e['path']!r} is not numeric (dtype {leaf.dtype})")
        if list(leaf.shape) != e["shape"]:
            raise CheckpointError(f"{path}: {name} leaf {e['path']!r} has shape {leaf.shape}, header says {e['shape']}")
    if target is not None:
        return _into_target(leaves, entries, target, name, path)
    if info["tree"] is None:
        raise CheckpointError(
            f"{path}: the {name} tree holds custom pytree nodes; pass a template with the same structure to "
            f"load(..., {name}=template) to restore it"
        )
    return _build(info["tree"], [jnp.asarray(leaf) for leaf in leaves])


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
    header, arrays = _read(path)
    try:
        loaded_params = _section(header, arrays, "params", path, params)
        loaded_state = None if header["opt_state"] is None else _section(header, arrays, "opt_state", path, opt_state)
        saved_model_state = header.get("model_state")  # absent in files written before model state existed
        loaded_model_state = (
            None if saved_model_state is None else _section(header, arrays, "model_state", path, model_state)
        )
        key = None
        if header["key"] is not None:
            data = arrays["key"]
            key = jax.random.wrap_key_data(data, impl=header["key"]["impl"]) if header["key"]["typed"] else data
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {exc})") from exc
    if opt_state is not None and header["opt_state"] is None:
        raise CheckpointError(f"{path}: the checkpoint holds no optimizer state")
    if model_state is not None and loaded_model_state is None:
        raise CheckpointError(f"{path}: the checkpoint holds no model state")
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
