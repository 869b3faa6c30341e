"""Checkpoints as orbax-checkpoint folders in one process (``jreg.save(path, ..., format="orbax")``), and the pytree
folders a user's own orbax code writes (``ocp.StandardCheckpointer().save(path, params)``), read by ``jreg.load``.

A jreg orbax checkpoint is a folder of two orbax items (orbax's ``CompositeCheckpointHandler``: the layout of the
multi-process checkpoints of :mod:`jreg.train.distributed_checkpoint`, so one set of folder rules serves both)::

    <path>/state/          orbax's StandardSave of {"params": {"0": leaf, "1": ...}, "opt_state": {...},
                           "model_state": {...}}: the sections saved, each leaf under its index in the
                           section's flattening, stored as the .npz format stores it (bfloat16 as its bits;
                           an empty array not at all: orbax stores none, and the record says its shape)
    <path>/meta/metadata   orbax's JsonSave of the run record: {"step", "key", "meta", "jreg"}

``step`` and ``meta`` are the ``.npz`` header's, ``key`` the key's data as a list of uint32 words (both formats of
orbax checkpoint record these three alike), and ``jreg`` the rest of the ``.npz`` header: ``format``,
``format_version``, ``jreg_version``, each section's tree description and leaves (path, shape, dtype) and the key's
implementation, shape and dtype. The structure of the trees thus comes back without a template, as from a ``.npz``
file, and a template is checked leaf by leaf against the record before orbax reads an array.

Reading trusts nothing in the folder: the record is read without orbax, as foreign bytes (a regular file, its size
capped, JSON), and checked field by field with the checks every format shares (:func:`check_record`, then the
``.npz`` header's checks on ``jreg``); then orbax's own metadata of ``state/`` must list exactly the leaves the
record lists, each of the shape and stored dtype it gives (orbax would otherwise cast a leaf to the dtype asked
for); only then does orbax restore the arrays, each into the shape and dtype the record gives. Any failure is a
:class:`CheckpointError` naming the folder (or the record's file), the field and the value, never orbax's or
tensorstore's traceback.

Writes are atomic: orbax writes into ``<path>.orbax-checkpoint-tmp`` and renames it when complete, so a crash
leaves the previous state (no folder) and that temporary, never a partial checkpoint. A save over an existing
checkpoint folder (only one: a folder that holds anything else is refused) writes beside it first, then swaps the
two by two renames and removes the old one; a crash between the renames leaves the previous checkpoint as
``.<name>.jreg-old-<hex>`` beside the path.

orbax-checkpoint is optional (``pip install 'jreg[orbax]'``) and imported only here, only when a folder is written or
read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from .._checks import check_path
from .._errors import JregError, JregTypeError
from .._tree import path_str
from .._version import __version__
from .common import (
    FORMAT,
    FORMAT_VERSION,
    KEY_MAX_BYTES,
    MAX_HEADER_BYTES,
    Checkpoint,
    CheckpointError,
    Fields,
    _check_meta_depth,
    _check_step,
    read_json,
)
from .format import _flatten_section, _into_target, _template_leaf
from .header import _Header, _leaf_dtype, _stored_dtype
from .tree import _build

SECTIONS = ("params", "opt_state", "model_state")
_NOUNS = {"opt_state": "optimizer state", "model_state": "model state"}
#: The most uint32 words of key data a run record may hold (the ``.npz`` format's ``KEY_MAX_BYTES``).
KEY_MAX_WORDS = KEY_MAX_BYTES // 4
#: the suffix of the folder orbax writes a checkpoint into before renaming it (stable since orbax 0.1)
TMP_SUFFIX = ".orbax-checkpoint-tmp"
#: orbax's own marker files: a folder holding one of them at its top is an orbax checkpoint (of any layout)
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA")


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as exc:
        raise JregError(
            "orbax checkpoints (format='orbax', or a checkpoint folder) are written and read with orbax-checkpoint, "
            "which is not installed: pip install 'jreg[orbax]' (or orbax-checkpoint)"
        ) from exc
    return ocp


def _checkpointer(ocp: Any) -> Any:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}{'...' if len(text) > 400 else ''}"


# --------------------------------------------------------------------------- the run record


def check_record(record: Any, where: Path) -> dict[str, Any]:
    """A run record read from the file ``where``, its common fields checked (:class:`Fields`, the checks every
    checkpoint format shares) before any is used; returns it.

    An object with ``step`` (null or a non-negative integer, as a ``.npz`` header's), ``key`` (null or the key's
    data: a list of 1 to :data:`KEY_MAX_WORDS` integers in ``[0, 2**32)``, uint32 words) and ``meta`` (any JSON, as a
    ``.npz`` header's: the user's, and the run state :func:`jreg.checkpoint.check_run_meta` checks where a resume
    reads it). ``jreg`` (this module's checkpoints) is checked by :func:`read_record`; other fields are ignored.
    Raises :class:`CheckpointError` naming the file, the field and the value.
    """
    fields = Fields(where, "not a readable orbax checkpoint: its run record ")
    fields.obj(record, "", ("step", "key", "meta"))
    fields.integer(record["step"], "step", low=0, null=True)
    fields.integers(record["key"], "key", low=0, high=2**32, min_len=1, max_len=KEY_MAX_WORDS, null=True)
    return record


def record_file(path: Path) -> Path:
    """Where the folder ``path`` keeps its run record: the ``meta`` item's ``metadata`` file."""
    return Path(path) / "meta" / "metadata"


def read_record(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(record, header)`` of the folder ``path``: the run record, read without orbax as foreign bytes (a regular
    file of at most :data:`MAX_HEADER_BYTES`, JSON) and checked (:func:`check_record`); ``header`` its ``jreg``
    part checked as a ``.npz`` header is (every field, tree description, leaf shape and dtype, the key), with
    ``step`` and ``meta`` beside it: what :func:`jreg.checkpoint.read_header` returns. ``header`` is None for a
    record without ``jreg`` (a multi-process run's, :mod:`jreg.train.distributed_checkpoint`)."""
    where = record_file(path)
    missing = "not a readable orbax checkpoint (its run record, meta/metadata, is missing)"
    record = check_record(
        read_json(where, "orbax run record", MAX_HEADER_BYTES, "jreg.checkpoint.MAX_HEADER_BYTES", missing), where
    )
    if "jreg" not in record:
        return record, None
    fields = Fields(where, "not a readable orbax checkpoint: its run record ")
    fields.obj(record["jreg"], "jreg", ("format", "params", "opt_state", "key"))
    header = _Header(where).check({**record["jreg"], "step": record["step"], "meta": record["meta"]})
    info, words = header["key"], record["key"]
    if (info is None) != (words is None):
        raise fields.fail("key", "must be null exactly when 'jreg.key' is", words)
    if info is not None:
        dtype = _leaf_dtype(info.get("dtype"))
        if "shape" not in info or dtype is None or dtype.itemsize != 4 or dtype.kind not in "iu":
            raise fields.fail("jreg.key.dtype", "must be 'uint32' or 'int32' (the key's data as 32-bit words)", info)
        if math.prod(info["shape"]) != len(words):
            raise fields.fail(
                "key", f"must hold the {math.prod(info['shape'])} words of a key of shape {info['shape']}", words
            )
    return record, header


def _key(path: Path, words: list[int], info: dict[str, Any]) -> Any:
    data = np.asarray(words, np.uint32).view(_leaf_dtype(info["dtype"])).reshape(info["shape"])
    if not info["typed"]:
        return data
    try:
        return jax.random.wrap_key_data(data, impl=info["impl"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{record_file(path)}: the key's data do not fit {info['impl']!r} keys ({exc})") from exc


def _key_record(key: Any) -> tuple[list[int] | None, dict[str, Any] | None]:
    """The key as the record holds it: its data as uint32 words, and its implementation, shape and dtype."""
    if key is None:
        return None, None
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data, info = np.asarray(jax.random.key_data(key)), {"impl": str(jax.random.key_impl(key)), "typed": True}
    else:
        try:
            data = np.asarray(key)
        except Exception as exc:  # noqa: BLE001 - report what came
            raise JregTypeError(f"key must be a PRNG key or an array of integers, got {type(key).__name__}") from exc
        info = {"impl": None, "typed": False}
    if data.dtype not in (np.dtype(np.uint32), np.dtype(np.int32)):
        raise JregTypeError(
            f"key: an orbax checkpoint stores the key's data as 32-bit words (uint32 or int32), got dtype {data.dtype}"
        )
    if not 1 <= data.size <= KEY_MAX_WORDS:
        raise JregTypeError(f"key must hold 1 to {KEY_MAX_WORDS} words of data, got shape {data.shape}")
    info.update(shape=list(data.shape), dtype=str(data.dtype))
    return np.ascontiguousarray(data).reshape(-1).view(np.uint32).tolist(), info


# --------------------------------------------------------------------------- writing


def is_orbax_folder(path: Path) -> bool:
    """Whether ``path`` is a folder that orbax wrote: a jreg orbax checkpoint (its run record) or any other orbax
    checkpoint (orbax's own marker files at its top). What :func:`save` may replace, and nothing else."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    return record_file(path).is_file() or any((path / name).is_file() for name in _ORBAX_MARKERS)


def save(
    path: str | os.PathLike[str],
    params: Any,
    *,
    opt_state: Any = None,
    step: int | None = None,
    key: Any = None,
    meta: Any = None,
    model_state: Any = None,
) -> Path:
    """Write the orbax checkpoint folder ``path`` (see the module's docstring): :func:`jreg.save`'s fields, the same
    checks before anything is written; the write is atomic. An existing ``path`` is replaced only when it is an orbax
    checkpoint folder (a file or any other folder is a :class:`JregError`, and is left as it is)."""
    path = check_path(path, "path")
    _check_step(step)
    store: dict[str, np.ndarray] = {}
    header: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "jreg_version": __version__}
    state: dict[str, Any] = {}
    for name, tree in zip(SECTIONS, (params, opt_state, model_state)):
        if tree is None and name != "params":
            header[name] = None
            continue
        header[name] = _flatten_section(tree, name, store)
        leaves = (store[f"{name}{i}"] for i in range(len(header[name]["leaves"])))
        state[name] = {str(i): leaf for i, leaf in enumerate(leaves) if leaf.size}  # orbax stores no empty array
    words, header["key"] = _key_record(key)
    _check_meta_depth(meta)
    record = {"step": None if step is None else int(step), "key": words, "meta": meta, "jreg": header}
    try:
        json.dumps(record)
    except (TypeError, ValueError, RecursionError) as exc:
        raise JregTypeError(f"meta must be JSON-serializable: {exc}") from exc
    target = path.absolute()
    if target.exists() or target.is_symlink():
        if not is_orbax_folder(target):
            kind = "a folder that is not an orbax checkpoint" if target.is_dir() else "not a folder"
            raise JregError(
                f"path: {path} exists and is {kind}; an orbax checkpoint replaces only an orbax checkpoint folder "
                "(move it away, or save elsewhere)"
            )
        _replace(target, state, record)
    else:
        _write(target, state, record)
    return path


def _write(target: Path, state: dict[str, Any], record: dict[str, Any], shown: Path | None = None) -> None:
    """orbax's atomic save of the folder ``target``; an OS error is a :class:`jreg.io.WriteError` naming ``shown``
    (default: ``target``), and the temporary folder the failed save began is removed (one that was there before is
    not this save's: kept)."""
    shown = target if shown is None else shown
    ocp = _orbax()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise JregError(f"path {str(shown)!r}: cannot make its folder, part of it is a file ({exc.strerror})") from exc
    except OSError as exc:  # permission denied, a full disk, a read-only file system
        raise io.WriteError(
            f"path {str(shown)!r}: cannot make its folder ({exc.strerror or exc}); nothing was written"
        ) from exc
    temporary = target.with_name(target.name + TMP_SUFFIX)
    began_here = not (temporary.exists() or temporary.is_symlink())
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record))
    try:
        _checkpointer(ocp).save(target, args=args)
    except BaseException as exc:
        if began_here and temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(exc, OSError):
            raise io.WriteError(
                f"path {str(shown)!r}: the orbax write failed ({exc.strerror or exc}); nothing was replaced"
            ) from exc
        raise


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def _replace(target: Path, state: dict[str, Any], record: dict[str, Any]) -> None:
    """Write a new checkpoint beside ``target``, then swap it in (two renames) and remove the old one; if the swap
    fails, the old one is put back and the new one removed (an OS error is a :class:`jreg.io.WriteError`)."""
    token = uuid.uuid4().hex[:12]
    staging = target.parent / f".{target.name}.jreg-new-{token}"
    old = target.parent / f".{target.name}.jreg-old-{token}"
    try:
        _write(staging, state, record, shown=target)
        try:
            _rename(target, old)
            _rename(staging, target)
        except OSError as exc:
            if old.exists() and not (target.exists() or target.is_symlink()):
                _rename(old, target)
            raise io.WriteError(
                f"path {str(target)!r}: cannot put the new checkpoint in place ({exc.strerror or exc}); nothing was "
                "replaced"
            ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def _tree_metadata(ocp: Any, folder: Path, where: Path) -> Any:
    """orbax's metadata of the pytree item in ``folder`` (its tree of ArrayMetadata), any failure a CheckpointError."""
    try:
        found = ocp.StandardCheckpointHandler().metadata(folder.absolute())
        return getattr(found, "tree", found)  # orbax >= 0.11 wraps the tree in a TreeMetadata
    except Exception as exc:  # noqa: BLE001 - orbax and tensorstore on foreign bytes
        raise CheckpointError(f"{where}: its arrays cannot be read ({_short_error(exc)})") from exc


def _stored_leaf(meta: Any) -> tuple[tuple[int, ...], str] | None:
    """An orbax metadata leaf's shape and dtype name, or None when it does not describe an array."""
    try:
        return tuple(int(n) for n in meta.shape), str(np.dtype(meta.dtype))
    except Exception:  # noqa: BLE001 - a scalar's or string's metadata, or anything else: not an array
        return None


def _check_stored(path: Path, header: dict[str, Any], tree: Any) -> None:
    """orbax's metadata of ``state/`` lists exactly the leaves the record lists, each of its shape and stored dtype."""
    tree = tree if isinstance(tree, dict) else {}
    for name in SECTIONS:
        info, stored = header[name], tree.get(name)
        if info is None:
            if stored is not None:
                raise CheckpointError(f"{path}: state/ holds {name}, which its run record says was not saved")
            continue
        if not isinstance(stored, dict):
            stored = {} if stored is None or not info["leaves"] else None
        if stored is None:
            raise CheckpointError(f"{path}: state/{name} is not the section of leaves its run record describes")
        listed = {str(i) for i, e in enumerate(info["leaves"]) if math.prod(e["shape"])}
        extra = sorted(set(stored) - listed)
        if extra:
            raise CheckpointError(f"{path}: state/{name} holds leaves its run record does not list: {extra[:5]}")
        for i, entry in enumerate(info["leaves"]):
            if not math.prod(entry["shape"]):  # an empty array: the record alone holds it (orbax stores none)
                continue
            what = f"{name} leaf {entry['path']!r} (state/{name}/{i})"
            if str(i) not in stored:
                raise CheckpointError(f"{path}: {what} is missing from state/")
            found = _stored_leaf(stored[str(i)])
            want = (tuple(entry["shape"]), str(_stored_dtype(_leaf_dtype(entry["dtype"]))))
            if found != want:
                got = "not an array" if found is None else f"{found[1]}{list(found[0])}"
                raise CheckpointError(
                    f"{path}: {what} is {got} in state/, but its run record says {entry['dtype']}{entry['shape']}"
                    + (f" (stored as {want[1]})" if want[1] != entry["dtype"] else "")
                )


def _local() -> Any:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _restore_state(ocp: Any, path: Path, header: dict[str, Any]) -> dict[str, list[np.ndarray]]:
    """Each section's leaves as saved, in order (after :func:`_check_stored`), viewed back to their dtypes."""
    device, target = _local(), {}
    for name in SECTIONS:
        if header[name] is not None:
            target[name] = {
                str(i): jax.ShapeDtypeStruct(tuple(e["shape"]), _stored_dtype(_leaf_dtype(e["dtype"])), sharding=device)
                for i, e in enumerate(header[name]["leaves"])
                if math.prod(e["shape"])
            }
    try:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        state = _checkpointer(ocp).restore(path.absolute(), args=args)["state"]
        out = {}
        for name in target:
            out[name] = []
            for i, e in enumerate(header[name]["leaves"]):
                dtype = _leaf_dtype(e["dtype"])
                empty = not math.prod(e["shape"])
                array = np.zeros(e["shape"], _stored_dtype(dtype)) if empty else np.asarray(state[name][str(i)])
                out[name].append(array.view(dtype) if dtype.kind == "V" else array)
    except Exception as exc:  # noqa: BLE001 - orbax and tensorstore on foreign bytes: one clear error
        raise CheckpointError(f"{path}: its arrays (state/) cannot be read ({_short_error(exc)})") from exc
    return out


def _checked(path: Path) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """``(orbax, record, header)`` of the folder ``path`` once its record is checked and, for a jreg orbax
    checkpoint, once orbax's metadata of its arrays agrees with the record."""
    record, header = read_record(path)
    if not (Path(path) / "state").is_dir():
        raise CheckpointError(f"{path}: not a readable orbax checkpoint (its arrays, state/, are missing)")
    ocp = _orbax()
    if header is not None:
        _check_stored(path, header, _tree_metadata(ocp, Path(path) / "state", path))
    return ocp, record, header


def _locate(path: Path) -> tuple[str, Path]:
    """What the folder ``path`` holds: ``("jreg", path)``, a jreg orbax checkpoint (its run record), or
    ``("pytree", folder)``, a pytree that orbax's StandardSave wrote (``path`` itself, or the one item of a
    CheckpointManager's step folder, ``<step>/default``); anything else is a CheckpointError saying what to pass."""
    if record_file(path).exists() or record_file(path).is_symlink():
        return "jreg", path
    if (path / "_METADATA").is_file():
        return "pytree", path
    if (path / "state" / "_METADATA").is_file():  # a jreg checkpoint's arrays without their record
        raise CheckpointError(f"{path}: not a readable orbax checkpoint (its run record, meta/metadata, is missing)")
    try:
        children = [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    steps = sorted((p.name for p in children if p.name.isdigit()), key=int)
    if steps:
        raise CheckpointError(
            f"{path}: holds orbax checkpoints of steps {steps[:5]}{' ...' if len(steps) > 5 else ''} (a "
            f"CheckpointManager's folder), not one checkpoint: pass one step's folder, e.g. {path / steps[-1]}"
        )
    items = sorted(p.name for p in children if (p / "_METADATA").is_file())
    if len(items) == 1:
        return "pytree", path / items[0]
    if items:
        raise CheckpointError(
            f"{path}: holds the orbax items {items} (a composite checkpoint), not one pytree: pass the item's "
            f"folder, e.g. {path / items[0]}"
        )
    raise CheckpointError(
        f"{path}: is a folder, not a checkpoint file (.npz), nor an orbax checkpoint folder (neither jreg's run "
        "record, meta/metadata, nor orbax's _METADATA)"
    )


def _jreg_folder(path: Path) -> None:
    """Refuse a folder that is not a jreg orbax checkpoint (one that has a header to read), saying what it is."""
    kind, folder = _locate(path)
    if kind == "pytree":
        raise CheckpointError(
            f"{path}: is an orbax pytree checkpoint ({folder}, written by orbax itself, not jreg.save): it has no "
            "jreg header; jreg.load(path, params=like) reads it into like's structure"
        )


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of the jreg orbax checkpoint folder ``path``, checked, without reading any array (see
    :func:`jreg.checkpoint.read_header`, whose fields it has)."""
    path = check_path(path, "path")
    _jreg_folder(path)
    record, header = read_record(path)
    if header is None:
        raise CheckpointError(
            f"{path}: written by a run across processes, whose record holds only step, key and meta (jreg.fit "
            "resumes from it); it has no jreg header"
        )
    return header


def verify(path: str | os.PathLike[str]) -> None:
    """Check that the jreg orbax checkpoint folder ``path`` can be read in full: its record, orbax's metadata of its
    arrays against it, and every array. Raises :class:`CheckpointError` if not."""
    path = check_path(path, "path")
    read_header(path)
    ocp, _, header = _checked(path)
    _restore_state(ocp, path, header)


def _pytree_into(ocp: Any, folder: Path, template: Any, name: str, where: Path) -> Any:
    """The pytree item in ``folder`` (written by orbax's StandardSave) restored into ``template``'s structure, after
    every leaf's path, shape and dtype agree with orbax's metadata (else a CheckpointError naming the leaf)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    want = [(path_str(p), *_template_leaf(leaf, name, path_str(p) or "<root>")) for p, leaf in flat]
    stored = jax.tree_util.tree_flatten_with_path(_tree_metadata(ocp, folder, where))[0]
    have = {path_str(p): _stored_leaf(meta) for p, meta in stored}
    missing = [w[0] for w in want if w[0] not in have]
    extra = sorted(set(have) - {w[0] for w in want})
    if missing or extra:
        raise CheckpointError(
            f"{where}: {name} has {len(have)} leaves, the target {len(want)}"
            + (f"; only in the target: {missing[:10]}" if missing else "")
            + (f"; only in the checkpoint: {extra[:10]}" if extra else "")
        )
    for leaf_path, shape, dtype in want:
        found = have[leaf_path]
        if found != (shape, dtype):
            got = "not an array" if found is None else f"{found[1]}{list(found[0])}"
            raise CheckpointError(
                f"{where}: {name} leaf {leaf_path!r} is {got} in the checkpoint but {dtype}{list(shape)} in the target"
            )
    device = _local()
    abstract = jax.tree_util.tree_unflatten(
        treedef, [jax.ShapeDtypeStruct(shape, dtype, sharding=device) for _, shape, dtype in want]
    )
    try:
        restored = ocp.StandardCheckpointer().restore(folder.absolute(), abstract)
        leaves = treedef.flatten_up_to(restored)
    except Exception as exc:  # noqa: BLE001 - orbax and tensorstore on foreign bytes: one clear error
        raise CheckpointError(
            f"{where}: its arrays cannot be read into the {name} given ({_short_error(exc)})"
        ) from exc
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])


def _pytree(ocp: Any, folder: Path) -> Any:
    """The pytree item in ``folder`` as orbax's metadata describes it (dicts and lists), without a template."""
    try:
        restored = ocp.StandardCheckpointer().restore(folder.absolute())
    except Exception as exc:  # noqa: BLE001 - orbax and tensorstore on foreign bytes: one clear error
        raise CheckpointError(f"{folder}: its arrays cannot be read ({_short_error(exc)})") from exc
    return jax.tree.map(jnp.asarray, restored)


def load(
    path: str | os.PathLike[str], *, params: Any = None, opt_state: Any = None, model_state: Any = None
) -> Checkpoint:
    """The checkpoint in the folder ``path``: a jreg orbax checkpoint (as :func:`jreg.checkpoint.load` reads a
    ``.npz`` file: trees rebuilt from the record, or put into the templates given, every leaf checked), or a pytree
    that a user's own orbax code saved (``ocp.StandardCheckpointer().save(path, params)``), restored into ``params=``
    (its structure, every leaf's path, shape and dtype checked first; without it, as orbax's metadata describes it:
    dicts and lists) and returned as :attr:`Checkpoint.params`, the other fields None. A CheckpointManager's step
    folder of one pytree item (``<step>/default``) reads as that item."""
    path = check_path(path, "path")
    kind, folder = _locate(path)
    if kind == "pytree":  # a user's own orbax pytree
        if opt_state is not None or model_state is not None:
            raise CheckpointError(
                f"{path}: is an orbax pytree checkpoint (one tree, not written by jreg); it is read as params only"
            )
        ocp = _orbax()
        tree = _pytree(ocp, folder) if params is None else _pytree_into(ocp, folder, params, "params", path)
        return Checkpoint(tree, None, None, None, None, None)
    ocp, record, header = _checked(path)
    if header is None:  # a multi-process run's checkpoint: trees as saved, restorable into templates only
        return _load_trees(ocp, path, record, params, opt_state, model_state)
    for name, template in (("opt_state", opt_state), ("model_state", model_state)):
        if template is not None and header[name] is None:
            raise CheckpointError(f"{path}: the checkpoint holds no {_NOUNS[name]}")
    leaves = _restore_state(ocp, path, header)
    trees = []
    for name, template in zip(SECTIONS, (params, opt_state, model_state)):
        if header[name] is None:
            trees.append(None)
        elif template is not None:
            trees.append(_into_target(leaves[name], header[name]["leaves"], template, name, path))
        elif header[name]["tree"] is None:
            raise CheckpointError(
                f"{path}: the {name} tree holds custom pytree nodes; pass a template with the same structure to "
                f"load(..., {name}=template) to restore it"
            )
        else:
            trees.append(_build(header[name]["tree"], [jnp.asarray(leaf) for leaf in leaves[name]]))
    key = None if header["key"] is None else _key(path, record["key"], header["key"])
    return Checkpoint(trees[0], trees[1], header["step"], key, header["meta"], trees[2])


def _load_trees(ocp: Any, path: Path, record: dict[str, Any], *templates: Any) -> Checkpoint:
    """A multi-process run's checkpoint (its state item holds the trees as saved) read into the templates."""
    if templates[0] is None:
        raise CheckpointError(
            f"{path}: written by a run across processes, whose record describes no trees: pass params= (and "
            "opt_state=, model_state= for what it holds) to restore it"
        )
    template = dict(zip(SECTIONS, templates))
    state = _pytree_into(ocp, path / "state", template, "the state", path)
    key = None if record["key"] is None else np.asarray(record["key"], np.uint32)
    return Checkpoint(state["params"], state["opt_state"], record["step"], key, record["meta"], state["model_state"])
