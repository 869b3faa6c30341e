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
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from .._checks import check_path
from .._errors import JregTypeError
from .._tree import path_str
from .._version import __version__
from .archive import _Archive, _open
from .common import (
    FORMAT,
    FORMAT_VERSION,
    KEY_MAX_BYTES,
    Checkpoint,
    CheckpointError,
    _check_meta_depth,
    _check_step,
    _to_numpy,
)
from .header import _leaf_dtype, _stored_dtype
from .tree import _build, _describe, _Opaque

# --------------------------------------------------------------------------- arrays


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
    _check_step(step)
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
