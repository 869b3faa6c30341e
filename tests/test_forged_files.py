"""Forged and foreign files: refused with a CheckpointError naming the file, cheaply, and never a foreign exception.

One named test per kind of lie a header can tell (issue 12), then hypothesis properties that take real headers
(a checkpoint with params, Adam state, model state and key; a fit checkpoint's meta with history and early stopping;
a network2 JSON model) and mutate them field by field: the only outcomes allowed are the saved content (as the mutated
header describes it) or a jreg error.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import shutil
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import jreg
from jreg import checkpoint as ckpt
from jreg.checkpoint import CheckpointError
from jreg.train.early_stopping import Stopper
from jreg.train.history import History
from jreg.train.resume import resume as resume_run
from jreg.train.state import TrainState

relaxed = settings(
    max_examples=int(os.environ.get("JREG_HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

MODEL = jreg.mlp([4, 3, 2])
PARAMS = MODEL.init(jax.random.key(0))
ADAM = optax.adam(1e-2)
MODEL_STATE = {"batch_stats": {"mean": jnp.arange(3.0), "var": jnp.ones(3, jnp.bfloat16)}, "count": jnp.int32(4)}


# --------------------------------------------------------------------------- forging tools


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def header_of(path) -> dict:
    blob = members(path)["__header__.npy"]
    return json.loads(np.load(io.BytesIO(blob), allow_pickle=False).tobytes().decode())


def npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


def header_npy(text: str) -> bytes:
    return npy(np.frombuffer(text.encode(), np.uint8))


def write_members(path, named: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in named.items():
            z.writestr(name, data)


def forge(src, dst, change) -> None:
    """Copy checkpoint ``src`` to ``dst`` with ``change(header)`` applied to its JSON header."""
    header = header_of(src)
    change(header)
    write_members(dst, {**members(src), "__header__.npy": header_npy(json.dumps(header))})


def zip_bytes(entries) -> bytes:
    """A minimal zip writer: ``(name, raw bytes, method, crc, declared size)``, sizes free to lie (zip64 past 4 GiB)."""
    out, central = bytearray(), bytearray()
    for name, raw, method, crc, size in entries:
        n, offset = name.encode(), len(out)
        extra = b"" if size < 2**32 else struct.pack("<HHQ", 1, 8, size)  # zip64: the real size in an extra field
        small = min(size, 0xFFFFFFFF)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0x21, crc, len(raw), small, len(n), 0)
        out += n + raw
        central += struct.pack(
            "<IHHHHHHIIIHHH", 0x02014B50, 45, 45, 0, method, 0, 0x21, crc, len(raw), small, len(n), len(extra), 0
        ) + struct.pack("<HHII", 0, 0, 0, offset)
        central += n + extra
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + end)


def stored(name: str, data: bytes):
    return (name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))


def deflated_zeros(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros (~1 KB a MiB), built without compressing them all."""
    chunk = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # after a full flush every MiB compresses the same
    return first + block * (mib - 1) + c.flush()


def same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.asarray(u).dtype == np.asarray(v).dtype and np.array_equal(u, v) for u, v in zip(la, lb)
    )


def leaf_set(tree) -> list:
    """The leaves as a multiset (order-free): a header may legitimately rearrange them."""
    return sorted((str(np.asarray(x).dtype), np.shape(x), np.asarray(x).tobytes()) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- the saved files


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint with params, Adam state, model state (bfloat16 and int32 leaves), a typed key, step and meta."""
    folder = tmp_path_factory.mktemp("forged")
    opt_state = ADAM.init(PARAMS)
    path = jreg.save(
        folder / "full.npz",
        PARAMS,
        opt_state=opt_state,
        model_state=MODEL_STATE,
        step=7,
        key=jax.random.key(3),
        meta={"note": "hi", "lr": 0.01},
    )
    return {"path": path, "folder": folder, "opt_state": opt_state}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A checkpoint that fit wrote with early stopping: meta holds history, history epochs, batch size, steps."""
    folder = tmp_path_factory.mktemp("fit")
    x = jax.random.uniform(jax.random.key(0), (24, 4))
    data = (x, jnp.argmax(x[:, :2], axis=1))
    run = dict(
        batch_size=8,
        key=jax.random.key(1),
        early_stopping=jreg.EarlyStopping(patience=3, monitor="training_cost"),
        monitor=("training_cost",),
    )
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.01))
    jreg.fit(obj, ADAM, PARAMS, data, epochs=2, checkpoint=jreg.Checkpointing(folder), **run)
    return {"path": folder / "ckpt-000002.npz", "folder": folder, "obj": obj, "data": data, "run": run}


# --------------------------------------------------------------------------- headers that lie, one kind each


def first_leaf(tree: dict) -> dict:
    """The first ``{"leaf": i}`` node of a tree description."""
    if "leaf" in tree:
        return tree
    children = tree.get("dict") or tree.get("fields") or tree.get("list") or tree.get("tuple")
    for child in children.values() if isinstance(children, dict) else children:
        found = first_leaf(child)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("index", [99, -1, "0", 0.0, True, None])
def test_a_leaf_index_out_of_range_or_of_the_wrong_type(saved, tmp_path, index):
    forge(saved["path"], tmp_path / "f.npz", lambda h: first_leaf(h["params"]["tree"]).update(leaf=index))
    with pytest.raises(CheckpointError, match=r"f\.npz: .*'params\.tree/0/b' has a leaf index that is not an integer"):
        jreg.load(tmp_path / "f.npz")


def test_a_leaf_index_used_twice(saved, tmp_path):
    def duplicate(h):
        h["params"]["tree"]["list"][1]["dict"]["w"]["leaf"] = h["params"]["tree"]["list"][1]["dict"]["b"]["leaf"]

    forge(saved["path"], tmp_path / "f.npz", duplicate)
    with pytest.raises(CheckpointError, match=r"f\.npz: .*'params\.tree/1/w' uses leaf 2 twice"):
        jreg.load(tmp_path / "f.npz")


@pytest.mark.parametrize(
    "node, match",
    [
        ({"dict": [{"leaf": 0}]}, "a dict node whose children are not an object"),
        ({"list": {"b": {"leaf": 0}}}, "a list node whose children are not a list"),
        ({"set": [0]}, "a node that is not a leaf, null, dict, named tuple, list or tuple"),
        ({"leaf": 0, "list": []}, "a node that is not a leaf"),
        ({"namedtuple": 3, "fields": {}}, "a named tuple whose name is not a string"),
        ({"none": "yes"}, "a malformed null node"),
    ],
)
def test_wrong_container_kinds(saved, tmp_path, node, match):
    forge(saved["path"], tmp_path / "f.npz", lambda h: h["params"]["tree"]["list"].__setitem__(0, node))
    with pytest.raises(CheckpointError, match=rf"f\.npz: .*'params\.tree/0' has {match}"):
        jreg.load(tmp_path / "f.npz")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("shape", [4, 2], r"params leaf '0/w' is float32\[4, 3\] in its \.npy member, the header says float32\[4, 2\]"),
        ("dtype", "int32", r"params leaf '0/w' is float32\[4, 3\] in its \.npy member, the header says int32\[4, 3\]"),
        ("dtype", "bfloat16", r"params leaf '0/w' is float32\[4, 3\] in its \.npy member, the header says bfloat16"),
        ("dtype", "object", r"'params\.leaves\[1\]\.dtype' must name a numeric dtype"),
        ("dtype", "V4", r"'params\.leaves\[1\]\.dtype' must name a numeric dtype"),
        ("shape", [4, -3], r"'params\.leaves\[1\]\.shape' must be a list of at most 64 non-negative integers"),
        ("shape", "4x3", r"'params\.leaves\[1\]\.shape' must be a list"),
    ],
)
def test_shapes_and_dtypes_that_disagree_with_the_arrays(saved, tmp_path, field, value, match):
    forge(saved["path"], tmp_path / "f.npz", lambda h: h["params"]["leaves"][1].update({field: value}))
    with pytest.raises(CheckpointError, match=rf"f\.npz: .*{match}"):
        jreg.load(tmp_path / "f.npz")
    with pytest.raises(CheckpointError, match=rf"f\.npz: .*{match}"):
        jreg.load(tmp_path / "f.npz", params=PARAMS)


@pytest.mark.parametrize("version", ["1", 1.0, True, None, [1], 0, -1])
def test_a_format_version_of_the_wrong_type(saved, tmp_path, version):
    forge(saved["path"], tmp_path / "f.npz", lambda h: h.update(format_version=version))
    with pytest.raises(CheckpointError, match=r"f\.npz: .*'format_version' must be a positive integer"):
        jreg.load(tmp_path / "f.npz")
    forge(saved["path"], tmp_path / "g.npz", lambda h: h.update(format_version=2))
    with pytest.raises(CheckpointError, match=r"g\.npz: checkpoint format 2 is newer than this jreg reads \(1\)"):
        jreg.load(tmp_path / "g.npz")


@pytest.mark.parametrize("impl", ["bogus", 3, None, ["threefry2x32"]])
def test_an_unknown_key_implementation(saved, tmp_path, impl):
    forge(saved["path"], tmp_path / "f.npz", lambda h: h["key"].update(impl=impl))
    with pytest.raises(CheckpointError, match=r"f\.npz: .*'key\.impl' must name a PRNG implementation this JAX knows"):
        jreg.load(tmp_path / "f.npz")


def test_a_known_key_implementation_that_does_not_fit_the_data(saved, tmp_path):
    forge(saved["path"], tmp_path / "f.npz", lambda h: h["key"].update(impl="rbg", shape=[2]))
    with pytest.raises(CheckpointError, match=r"f\.npz: the key's data do not fit 'rbg' keys"):
        jreg.load(tmp_path / "f.npz")


ABSURD = 100_000


@pytest.mark.parametrize("depth", [ABSURD, ckpt.MAX_TREE_DEPTH + 1])
def test_absurd_nesting_depth(saved, tmp_path, depth):
    header = header_of(saved["path"])
    header["params"]["tree"] = "@DEEP@"
    deep = '{"list": [' * depth + '{"none": true}' + "]}" * depth
    text = json.dumps(header).replace('"@DEEP@"', deep)
    write_members(tmp_path / "f.npz", {**members(saved["path"]), "__header__.npy": header_npy(text)})
    match = "nested too deeply" if depth == ABSURD else rf"'params\.tree(/0)+' nests deeper than {ckpt.MAX_TREE_DEPTH}"
    with pytest.raises(CheckpointError, match=rf"f\.npz: .*{match}"):
        jreg.load(tmp_path / "f.npz")


@pytest.mark.parametrize("step", [-3, 2.5, "7", True, [7], {"epoch": 7}])
def test_negative_or_non_integer_steps(saved, tmp_path, step):
    forge(saved["path"], tmp_path / "f.npz", lambda h: h.update(step=step))
    with pytest.raises(CheckpointError, match=r"f\.npz: .*'step' must be a non-negative integer or null"):
        jreg.load(tmp_path / "f.npz")
    with pytest.raises(CheckpointError, match=r"f\.npz: .*'step'"):
        ckpt.read_header(tmp_path / "f.npz")


MALFORMED_META = [
    ("history", {"training_cost": "abc"}, r"meta 'history\.training_cost' must be a list of numbers"),
    ("history", {"training_cost": [0.5, True]}, r"meta 'history\.training_cost' must be a list of numbers"),
    ("history", ["training_cost"], r"meta 'history' must be an object of named series"),
    ("history_epochs", {"training_cost": [2, 1]}, r"meta 'history_epochs\.training_cost' must increase"),
    (
        "history_epochs",
        {"training_cost": [1]},
        r"meta 'history_epochs\.training_cost' must give one epoch for each of the 2 values",
    ),
    ("history_epochs", {"training_cost": [1, 9]}, r"meta 'history_epochs\.training_cost' goes beyond the 2 epochs run"),
    (
        "history_epochs",
        {"training_cost": ["1", 2]},
        r"meta 'history_epochs\.training_cost' must be a list of positive integers",
    ),
    ("early_stopping", {"best": "x"}, r"meta 'early_stopping' must be an object with"),
    ("early_stopping.best", "x", r"meta 'early_stopping\.best' must be a number or null"),
    ("early_stopping.best_epoch", 5, r"meta 'early_stopping\.best_epoch' must be an epoch before the 2 run"),
    ("early_stopping.best_epoch", None, r"meta 'early_stopping\.best_epoch' must be null exactly when 'best' is"),
    ("early_stopping.wait", -1, r"meta 'early_stopping\.wait' must be a non-negative integer"),
    ("early_stopping.lr_scale", 0, r"meta 'early_stopping\.lr_scale' must be a number in \[2\*\*-126, 1\]"),
    ("early_stopping.stopped", 3, r"meta 'early_stopping\.stopped' must be a string or null"),
]


def set_meta(field: str, value):
    def change(h):
        *parents, last = field.split(".")
        node = h["meta"]
        for p in parents:
            node = node[p]
        node[last] = value

    return change


@pytest.mark.parametrize("field, value, match", MALFORMED_META)
def test_a_malformed_history_or_early_stopping_state(fitted, tmp_path, field, value, match):
    """load returns meta as saved; resuming checks the fields it reads (check_run_meta), naming the file and field."""
    forge(fitted["path"], tmp_path / "ckpt-000002.npz", set_meta(field, value))
    loaded = jreg.load(tmp_path / "ckpt-000002.npz")
    with pytest.raises(CheckpointError, match=rf"ckpt-000002\.npz: {match}"):
        ckpt.check_run_meta(loaded.meta, tmp_path / "ckpt-000002.npz", loaded.step)
    if (field, value) != ("history_epochs", {"training_cost": [1, 9]}):  # the epoch bound needs check_run_meta
        # fit itself: History.from_dicts and the early-stopping resume check what they read, before any compilation
        with pytest.raises(CheckpointError, match=match.split(" must")[0].replace("meta ", "")):
            jreg.fit(fitted["obj"], ADAM, PARAMS, fitted["data"], epochs=4, resume=tmp_path, **fitted["run"])


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("global_step", "abc", r"meta 'global_step' must be an integer in \[0, 2\*\*31\) or null, got 'abc'"),
        ("global_step", -4, r"meta 'global_step' must be an integer in \[0, 2\*\*31\) or null, got -4"),
        ("global_step", 2**40, r"meta 'global_step' must be an integer in \[0, 2\*\*31\) or null, got 1099511627776"),
        ("batch_size", 8.5, r"meta 'batch_size' must be a positive integer"),
        ("batch_size", True, r"meta 'batch_size' must be a positive integer"),
    ],
)
def test_malformed_step_counters_in_a_fit_checkpoint(fitted, tmp_path, field, value, match):
    forge(fitted["path"], tmp_path / "ckpt-000002.npz", set_meta(field, value))
    loaded = jreg.load(tmp_path / "ckpt-000002.npz")
    with pytest.raises(CheckpointError, match=rf"ckpt-000002\.npz: {match}"):
        ckpt.check_run_meta(loaded.meta, tmp_path / "ckpt-000002.npz", loaded.step)


def test_fit_refuses_a_forged_global_step_on_resume(fitted, tmp_path):
    forge(fitted["path"], tmp_path / "ckpt-000002.npz", set_meta("global_step", "abc"))
    with pytest.raises(CheckpointError, match="global_step"):
        jreg.fit(fitted["obj"], ADAM, PARAMS, fitted["data"], epochs=4, resume=tmp_path, **fitted["run"])


def test_the_fit_checkpoint_as_written_passes_the_resume_checks(fitted):
    loaded = jreg.load(fitted["path"])
    meta = ckpt.check_run_meta(loaded.meta, fitted["path"], loaded.step)
    assert set(meta) >= {"history", "history_epochs", "batch_size", "global_step", "early_stopping"}
    assert ckpt.check_run_meta(None, fitted["path"]) == {}


# --------------------------------------------------------------------------- foreign files and lying members


def test_an_npy_file_instead_of_an_npz(tmp_path):
    np.save(tmp_path / "params.npy", np.ones(3))
    with pytest.raises(CheckpointError, match=r"params\.npy: is a single \.npy array, not a jreg checkpoint"):
        jreg.load(tmp_path / "params.npy")


def test_a_folder_instead_of_a_file(tmp_path):
    (tmp_path / "ckpt.npz").mkdir()
    with pytest.raises(CheckpointError, match=r"ckpt\.npz: is a folder, not a checkpoint file"):
        jreg.load(tmp_path / "ckpt.npz")
    with pytest.raises(CheckpointError, match=r"ckpt\.npz: is a folder"):
        ckpt.read_header(tmp_path / "ckpt.npz")


def test_an_unnamed_huge_member_is_never_read(saved, tmp_path):
    """A 1.5 MB file holding a 1.5 GB (declared) member the header does not name: loads at once, reads none of it.

    Before issue 12, np.load read every member: 23 s and 3.1 GB of memory for this file.
    """
    entries = [stored(name, data) for name, data in members(saved["path"]).items()]
    entries.append(("extra.npy", deflated_zeros(1430), zipfile.ZIP_DEFLATED, 0, 1430 << 20))  # CRC never checked
    path = tmp_path / "big.npz"
    path.write_bytes(zip_bytes(entries))
    assert path.stat().st_size < 2_000_000
    jreg.load(saved["path"], params=PARAMS, opt_state=saved["opt_state"], model_state=MODEL_STATE)  # warm
    start = time.perf_counter()
    ck = jreg.load(path, params=PARAMS, opt_state=saved["opt_state"], model_state=MODEL_STATE)
    assert time.perf_counter() - start < 1.0
    assert same(ck.params, PARAMS) and same(ck.model_state, MODEL_STATE) and ck.step == 7


def test_a_member_declaring_an_enormous_size_is_refused_before_allocation(saved, tmp_path):
    everything = members(saved["path"])
    # the header and the .npy header agree on 2**40 floats; the zip entry declares that many bytes from 1 KB
    forge(saved["path"], tmp_path / "src.npz", lambda h: h["params"]["leaves"][0].update(shape=[2**40]))
    header = members(tmp_path / "src.npz")["__header__.npy"]
    npy_header = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy_header, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
    raw = zlib.compress(npy_header.getvalue() + bytes(1000))[2:-4]
    entries = [stored(n, d) for n, d in everything.items() if n not in ("params0.npy", "__header__.npy")]
    entries += [stored("__header__.npy", header), ("params0.npy", raw, zipfile.ZIP_DEFLATED, 0, 2**42 + 128)]
    (tmp_path / "f.npz").write_bytes(zip_bytes(entries))
    with pytest.raises(CheckpointError, match=r"f\.npz: .*member 'params0\.npy' declares \d+ bytes, more than its"):
        jreg.load(tmp_path / "f.npz")
    # a stored member that declares more bytes than the whole file holds
    entries[-1] = ("params0.npy", npy_header.getvalue(), zipfile.ZIP_STORED, 0, 2**42 + 128)
    (tmp_path / "g.npz").write_bytes(zip_bytes(entries))
    with pytest.raises(
        CheckpointError, match=r"g\.npz: .*member 'params0\.npy' is corrupted \(stored sizes disagree\)"
    ):
        jreg.load(tmp_path / "g.npz")
    # a header member declaring more than MAX_HEADER_BYTES
    entries = [stored(n, d) for n, d in everything.items() if n != "__header__.npy"]
    for size, raw, why in [
        (2**30, zlib.compress(bytes(1000))[2:-4], r"more than its \d+ compressed bytes can hold"),
        (65 << 20, deflated_zeros(65), r"more than the 67108864 allowed"),
    ]:
        (tmp_path / "h.npz").write_bytes(zip_bytes([*entries, ("__header__.npy", raw, zipfile.ZIP_DEFLATED, 0, size)]))
        with pytest.raises(
            CheckpointError, match=rf"h\.npz: the jreg header: member '__header__\.npy' declares .*{why}"
        ):
            jreg.load(tmp_path / "h.npz")


def test_a_pickled_member_is_refused_even_under_a_valid_header(saved, tmp_path):
    everything = members(saved["path"])
    everything["params0.npy"] = npy(np.array([{"evil": 1}] * 12, dtype=object).reshape(4, 3))
    write_members(tmp_path / "evil.npz", everything)
    with pytest.raises(CheckpointError, match=r"evil\.npz: params leaf '0/b' holds pickled Python objects"):
        jreg.load(tmp_path / "evil.npz")


def test_read_header_reads_no_array(saved, tmp_path, monkeypatch):
    header = ckpt.read_header(saved["path"])
    assert header["step"] == 7 and header["meta"] == {"note": "hi", "lr": 0.01}
    assert header["key"]["impl"] == "threefry2x32" and header["key"]["shape"] == [2]
    assert [e["path"] for e in header["params"]["leaves"]] == ["0/b", "0/w", "1/b", "1/w"]
    opened = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    ckpt.read_header(saved["path"])
    assert opened == ["__header__.npy"]
    opened.clear()
    jreg.load(saved["path"])
    assert sorted(opened) == sorted(
        members(saved["path"])
    )  # a checkpoint as written: every member named, each read once


def test_files_without_the_key_shape_or_model_state_still_load(saved, tmp_path):
    """What the previous save wrote (no key shape and dtype; before that, no model_state section) loads exactly."""

    def as_before(h):
        h.pop("model_state")
        del h["key"]["shape"], h["key"]["dtype"]

    everything = members(saved["path"])
    forge(saved["path"], tmp_path / "old.npz", as_before)
    old = {n: d for n, d in members(tmp_path / "old.npz").items() if not n.startswith("model_state")}
    write_members(tmp_path / "old.npz", old)
    ck = jreg.load(tmp_path / "old.npz", params=PARAMS, opt_state=saved["opt_state"])
    assert same(ck.params, PARAMS) and same(ck.opt_state, saved["opt_state"]) and ck.model_state is None
    assert np.array_equal(jax.random.key_data(ck.key), jax.random.key_data(jax.random.key(3)))
    assert len(everything) == len(old) + 3


# --------------------------------------------------------------------------- network2 JSON files


def network2_file(tmp_path, **change):
    data = json.loads(jreg.save_network2(tmp_path / "net.json", PARAMS).read_text())
    data.update(change)
    (tmp_path / "net.json").write_text(json.dumps(data))
    return tmp_path / "net.json"


def test_network2_fewer_biases_than_layers(tmp_path):
    data = json.loads(jreg.save_network2(tmp_path / "net.json", PARAMS).read_text())
    path = network2_file(tmp_path, biases=data["biases"][:1])
    with pytest.raises(
        CheckpointError,
        match=r"net\.json: .*'biases' must be a list of 2 matrices, one per layer of 'sizes' \[4, 3, 2\]",
    ):
        jreg.load_network2(path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"sizes": [4.0, 3, 2]}, r"'sizes' must be a list of at least 2 positive integers, got \[4\.0, 3, 2\]"),
        ({"sizes": [4, 3, True]}, r"'sizes' must be a list of at least 2 positive integers, got \[4, 3, True\]"),
        ({"sizes": [4, 0, 2]}, r"'sizes' must be a list of at least 2 positive integers, got \[4, 0, 2\]"),
        ({"sizes": "4,3,2"}, "'sizes' must be a list of at least 2 positive integers, got '4,3,2'"),
        ({"weights": 5}, r"'weights' must be a list of 2 matrices, one per layer of 'sizes' \[4, 3, 2\], got 5"),
        ({"cost": 5}, "'cost' must be the cost's name .*, got 5"),
        ({"biases": [[["0.5"]] * 3, [[0.1]] * 2]}, r"'biases\[0\]' must be layer 0's 3 biases.*\(not numeric\)"),
        ({"biases": [[[True]] * 3, [[0.1]] * 2]}, r"'biases\[0\]' must be layer 0's 3 biases.*\(not numeric\)"),
        ({"biases": [[[None]] * 3, [[0.1]] * 2]}, r"'biases\[0\]' must be layer 0's 3 biases.*\(not numeric\)"),
        ({"biases": [[[0.1]] * 3, [[float("nan")]] * 2]}, r"'biases\[1\]' .*\(not all finite: NaN or infinity\)"),
        ({"biases": [[[0.1]] * 3, [[10**400]] * 2]}, r"'biases\[1\]' .*\(a number beyond float64's range\)"),
        ({"biases": [[[[0.1]]]] * 3 + [[[0.1]] * 2]}, r"'biases' must be a list of 2 matrices"),
        ({"biases": [[[[0.1]]] * 3, [[0.1]] * 2]}, r"'biases\[0\]' must be layer 0's 3 biases.*\(not numeric\)"),
    ],
)
def test_network2_wrong_types(tmp_path, change, match):
    with pytest.raises(CheckpointError, match=rf"net\.json: .*{match}"):
        jreg.load_network2(network2_file(tmp_path, **change))


def test_network2_deep_nesting_and_a_folder(tmp_path):
    (tmp_path / "deep.json").write_text('{"sizes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match=r"deep\.json: not a network2 JSON model \(nested too deeply\)"):
        jreg.load_network2(tmp_path / "deep.json")
    (tmp_path / "net.json").mkdir()
    with pytest.raises(CheckpointError, match=r"net\.json: is a folder, not a network2 JSON model file"):
        jreg.load_network2(tmp_path / "net.json")


def test_network2_size_cap_is_checked_before_reading(tmp_path, monkeypatch):
    path = jreg.save_network2(tmp_path / "net.json", PARAMS)
    monkeypatch.setattr(ckpt.network2, "NETWORK2_MAX_BYTES", path.stat().st_size - 1)
    with pytest.raises(CheckpointError, match=r"net\.json: \d+ bytes, more than the \d+ a network2 JSON model may"):
        jreg.load_network2(path)


def test_network2_flat_biases_still_load(tmp_path):
    data = json.loads(jreg.save_network2(tmp_path / "net.json", PARAMS).read_text())
    flat = network2_file(tmp_path, biases=[[v for (v,) in b] for b in data["biases"]])
    params, cost = jreg.load_network2(flat)
    assert cost == "CrossEntropyCost" and all(np.allclose(p["b"], q["b"]) for p, q in zip(params, PARAMS))


# --------------------------------------------------------------------------- properties: real headers, mutated


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=4)
    | st.sampled_from(
        [{"leaf": 0}, {"leaf": 1}, {"none": True}, {"list": []}, {"dict": {}}, [2**62, 2**62], [-1], "bfloat16"]
        + ["object", "float32", "V2", "threefry2x32", "rbg", "philox2x32", 10**400]
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
DEEP = "@@DEEP@@"


def json_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from json_paths(v, prefix + (i,))


def get(node, path):
    for p in path:
        node = node[p]
    return node


def put(root, path, value):
    if not path:
        return value
    get(root, path[:-1])[path[-1]] = value
    return root


def mutate(data, doc):
    """Apply one to three field-by-field changes to a JSON document; returns (document, deep JSON text or None)."""
    deep = None
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(json_paths(doc))
        path = data.draw(st.sampled_from(paths))
        op = data.draw(st.sampled_from(["replace", "delete", "number", "wrap", "leaf", "deep"]))
        node = get(doc, path)
        if op == "replace":
            # a copy: the strategy's constants ({"leaf": 0}, [-1], ...) are shared between examples, and later
            # changes in this example edit the document in place (hypothesis then sees other data: "flaky")
            doc = put(doc, path, copy.deepcopy(data.draw(JSON_VALUES)))
        elif op == "delete" and path:
            del get(doc, path[:-1])[path[-1]]
        elif op == "number" and isinstance(node, (int, float)):
            # float(node) only where one exists: an int grown past the largest float by earlier changes has none
            as_float = [float(node)] if abs(node) <= sys.float_info.max else []
            doc = put(doc, path, data.draw(st.sampled_from([-node, node + 1, node - 1, node * 2**40, *as_float, True])))
        elif op == "wrap":
            doc = put(doc, path, data.draw(st.sampled_from([{"list": [node]}, {"tuple": [node]}, [node], {"a": node}])))
        elif op == "leaf":  # renumber one leaf: an index used twice, one out of range, or two swapped
            leaves = [p for p in paths if isinstance(get(doc, p), dict) and "leaf" in get(doc, p)]
            if len(leaves) >= 2:
                a, b = data.draw(st.sampled_from(leaves)), data.draw(st.sampled_from(leaves))
                ia, ib = get(doc, a)["leaf"], get(doc, b)["leaf"]
                if not (type(ia) is int and type(ib) is int):  # an earlier change replaced one: nothing to renumber
                    continue
                if data.draw(st.booleans()):
                    get(doc, a)["leaf"], get(doc, b)["leaf"] = ib, ia
                else:
                    get(doc, a)["leaf"] = data.draw(st.sampled_from([ib, ia + 1000, -ia - 1]))
        elif op == "deep" and deep is None:
            n = data.draw(st.sampled_from([3, ckpt.MAX_TREE_DEPTH, 2000, 100_000]))
            deep = data.draw(st.sampled_from(['{"list": [' * n + '{"none": true}' + "]}" * n, "[" * n + "]" * n]))
            doc = put(doc, path, DEEP)
    return doc, deep


def dump(doc, deep) -> str:
    text = json.dumps(doc)
    return text if deep is None else text.replace(json.dumps(DEEP), deep, 1)


def json_equal(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def saved_leaves(path) -> dict[str, list[np.ndarray]]:
    """Each section's arrays in member order (``params0``, ``params1``...), as the unmutated header types them."""
    header, blobs = header_of(path), members(path)
    out = {}
    for name in ("params", "opt_state", "model_state"):
        entries = (header.get(name) or {}).get("leaves", [])
        arrays = [np.load(io.BytesIO(blobs[f"{name}{i}.npy"])) for i in range(len(entries))]
        out[name] = [a.view(np.dtype(e["dtype"])) for a, e in zip(arrays, entries)]
    return out


@relaxed
@given(data=st.data(), which=st.sampled_from(["full", "fit"]))
def test_mutated_checkpoint_headers_give_the_saved_content_or_a_checkpoint_error(saved, fitted, tmp_path, data, which):
    src = saved["path"] if which == "full" else fitted["path"]
    templates = dict(params=PARAMS, opt_state=saved["opt_state"])
    if which == "full":
        templates["model_state"] = MODEL_STATE
    original = jreg.load(src, **templates)
    doc, deep = mutate(data, header_of(src))
    path = tmp_path / "m.npz"
    write_members(path, {**members(src), "__header__.npy": header_npy(dump(doc, deep))})

    try:
        plain_load = jreg.load(path)
        event("loaded without templates")
    except jreg.JregError as e:
        assert str(path) in str(e), str(e)
        plain_load = None
    if plain_load is not None:  # the header still tells the truth about the arrays it names
        header = ckpt.read_header(path)
        assert plain_load.step == header["step"] and json_equal(plain_load.meta, header["meta"])
        stored = saved_leaves(src)
        for name in ("params", "opt_state", "model_state"):
            got = getattr(plain_load, name)
            if header[name] is None:
                assert got is None
            else:  # the leaves its header lists, each member once, in whatever tree the header describes
                assert leaf_set(got) == leaf_set(stored[name][: len(header[name]["leaves"])]), name
        assert (plain_load.key is None) == (header["key"] is None)
        if plain_load.key is not None:
            data_of = (lambda k: jax.random.key_data(k)) if header["key"]["typed"] else np.asarray
            assert np.array_equal(data_of(plain_load.key), jax.random.key_data(original.key))
        if which == "fit" and isinstance(plain_load.meta, dict):
            resume_fields_are_checked(plain_load.meta, path, plain_load.step)
    try:
        with_templates = jreg.load(path, **templates)
        event("loaded with templates")
    except jreg.JregError as e:
        assert str(path) in str(e), str(e)
        return
    for name in ("params", "opt_state", "model_state"):
        assert same(getattr(with_templates, name), getattr(original, name)), name


def resume_fields_are_checked(meta, path, step):
    """check_run_meta passes exactly what History and EarlyStopping can use; anything else is a CheckpointError."""
    try:
        meta = ckpt.check_run_meta(meta, path, step)
        event("resume meta accepted")
    except CheckpointError as e:
        assert str(path) in str(e)
        event("resume meta refused")
        return
    history = History.from_dicts(meta.get("history"), meta.get("history_epochs"))
    assert len(history) >= 0
    state = meta.get("early_stopping")
    if state is not None:
        rule = jreg.EarlyStopping(patience=2, monitor="evaluation_accuracy")  # a rule applied by hand names its series
        stopper = Stopper.resumed(rule, state, step, path, writer=None, key=None, verbose=0)
        rule.update(stopper.state, step, 0.5)


@relaxed
@given(data=st.data())
def test_mutated_network2_files_give_the_model_they_describe_or_a_checkpoint_error(tmp_path, data):
    doc = json.loads(jreg.save_network2(tmp_path / "net.json", PARAMS).read_text())
    doc, deep = mutate(data, doc)
    path = tmp_path / "m.json"
    path.write_text(dump(doc, deep))
    try:
        params, cost = jreg.load_network2(path)
        event("network2 loaded")
    except jreg.JregError as e:
        assert str(path) in str(e), str(e)
        return
    # it loaded: then the file is a well-formed network2 model, and the params are exactly its numbers
    assert cost == doc.get("cost", "CrossEntropyCost") and isinstance(cost, str)
    sizes = doc["sizes"]
    assert all(type(n) is int and n >= 1 for n in sizes) and len(params) == len(sizes) - 1
    for layer, (p, w, b) in enumerate(zip(params, doc["weights"], doc["biases"])):
        w, b = np.asarray(w, np.float64), np.asarray(b, np.float64).reshape(-1)
        assert w.shape == (sizes[layer + 1], sizes[layer]) and np.all(np.isfinite(w)) and np.all(np.isfinite(b))
        np.testing.assert_array_equal(p["w"], jnp.asarray(w.T, jnp.float32))
        np.testing.assert_array_equal(p["b"], jnp.asarray(b, jnp.float32))
    assert math.isfinite(sum(float(jnp.sum(p["w"])) for p in params))


# --------------------------------------------------------------------------- orbax run records (issue 28, item 1)
# A checkpoint of a run spanning processes is an orbax folder whose run record (meta/metadata: step, key bits and
# the same meta) jreg reads itself. Every field is checked, with the checks the .npz header and network2 use, before
# any is used: a forged one is a CheckpointError naming the record's file, the field and the value.


@pytest.fixture(scope="module")
def orbaxed(fitted, tmp_path_factory):
    """The fit checkpoint of ``fitted`` (history, early stopping, Adam state, key) written as an orbax folder."""
    pytest.importorskip("orbax.checkpoint")
    from jreg.train import distributed_checkpoint as dc

    opt_state = ADAM.init(PARAMS)
    loaded = jreg.load(fitted["path"], params=PARAMS, opt_state=opt_state)
    path = tmp_path_factory.mktemp("orbax") / "ckpt-000002.orbax"
    dc.save(path, loaded.params, opt_state=loaded.opt_state, step=loaded.step, key=loaded.key, meta=loaded.meta)
    record = json.loads((path / "meta" / "metadata").read_text())
    assert record["step"] == 2 and record["key"] == [0, 1] and record["meta"] == loaded.meta
    return {"path": path, "record": record, "loaded": loaded, "opt_state": opt_state, "dc": dc}


def orbax_copy(orbaxed, folder, record) -> os.PathLike:
    """A copy of the orbax checkpoint in ``folder`` (made once) whose run record is ``record`` (a JSON text)."""
    path = folder / "ckpt-000002.orbax"
    if not path.exists():
        shutil.copytree(orbaxed["path"], path)
    (path / "meta" / "metadata").write_text(record)
    return path


def resume_from(path):
    """What jreg.fit's resume reads of ``path`` (``jreg.train.resume.resume``: no training, no compilation)."""
    template = TrainState(PARAMS, ADAM.init(PARAMS), None, jnp.asarray(0, jnp.int32))
    return resume_run(path, template, jax.random.key(1), batch_size=8, epochs=4, steps_per_epoch=3)


RECORD = r"ckpt-000002\.orbax/meta/metadata: not a readable orbax checkpoint: its run record "
KEY_RULE = r"'key' must be null or a list of 1 to 262144 integers in \[0, 2\*\*32\), got "


@pytest.mark.parametrize(
    "field, value, match",
    [  # the issue's four (each a raw OverflowError, ValueError or TypeError before), then more of the kind
        ("key", [-1, -2], KEY_RULE + r"\[-1, -2\]"),
        ("key", ["a", "b"], KEY_RULE + r"\['a', 'b'\]"),
        ("key", {"a": 1}, KEY_RULE + r"\{'a': 1\}"),
        ("key", [2**40, 0], KEY_RULE + r"\[1099511627776, 0\]"),
        ("key", [2**32, 0], KEY_RULE + r"\[4294967296, 0\]"),
        ("key", [0.0, 1.0], KEY_RULE + r"\[0\.0, 1\.0\]"),
        ("key", [True, False], KEY_RULE + r"\[True, False\]"),
        ("key", [[0, 1]], KEY_RULE + r"\[\[0, 1\]\]"),
        ("key", [], KEY_RULE + r"\[\]"),
        ("key", [0] * 262_145, KEY_RULE + r"\[0, 0, 0"),
        ("key", "01", KEY_RULE + "'01'"),
        ("key", 10**400, KEY_RULE + "1000"),
        ("step", -1, r"'step' must be a non-negative integer or null, got -1"),
        ("step", 2.0, r"'step' must be a non-negative integer or null, got 2\.0"),
        ("step", "2", r"'step' must be a non-negative integer or null, got '2'"),
        ("step", True, r"'step' must be a non-negative integer or null, got True"),
        ("step", [2], r"'step' must be a non-negative integer or null, got \[2\]"),
        ("step", {"epoch": 2}, r"'step' must be a non-negative integer or null, got \{'epoch': 2\}"),
        ("", [1, 2], r"must be an object with 'step', 'key' and 'meta', got \[1, 2\]"),
        ("", {"step": 2, "key": [0, 1]}, r"must be an object with 'step', 'key' and 'meta', got \{'step': 2"),
    ],
)
def test_a_forged_orbax_record_field_is_a_checkpoint_error_naming_it(orbaxed, tmp_path, field, value, match):
    record = value if not field else {**orbaxed["record"], field: value}
    path = orbax_copy(orbaxed, tmp_path, json.dumps(record))
    for read in (
        lambda: orbaxed["dc"].load(path, params=PARAMS, opt_state=orbaxed["opt_state"]),
        lambda: resume_from(path),
    ):
        with pytest.raises(CheckpointError, match=RECORD + match):
            read()
    assert orbaxed["dc"].damage(path) is not None  # a forged record is damage: a folder resume skips it, saying why


def test_fit_refuses_a_forged_orbax_key_naming_the_field(orbaxed, fitted, tmp_path):
    """The issue's case through fit itself: it was ``OverflowError: Python integer -1 out of bounds for uint32``."""
    path = orbax_copy(orbaxed, tmp_path, json.dumps({**orbaxed["record"], "key": [-1, -2]}))
    with pytest.raises(CheckpointError, match=RECORD + KEY_RULE + r"\[-1, -2\]"):
        jreg.fit(fitted["obj"], ADAM, PARAMS, fitted["data"], epochs=4, resume=path, **fitted["run"])


def test_the_orbax_record_as_written_loads_and_resumes(orbaxed, tmp_path):
    path = orbax_copy(orbaxed, tmp_path, json.dumps(orbaxed["record"]))
    loaded = orbaxed["dc"].load(path, params=PARAMS, opt_state=orbaxed["opt_state"])
    assert same(loaded.params, orbaxed["loaded"].params) and loaded.step == 2 and loaded.meta == orbaxed["loaded"].meta
    np.testing.assert_array_equal(loaded.key, jax.random.key_data(jax.random.key(1)))
    resumed = resume_from(path)
    assert resumed.epoch == 2 and int(resumed.state.step) == 6 and same(resumed.state.params, orbaxed["loaded"].params)
    for key in (None, [7]):  # null, and a key of one word (another run's), are well-formed: a resume says "differs"
        path = orbax_copy(orbaxed, tmp_path, json.dumps({**orbaxed["record"], "key": key}))
        assert orbaxed["dc"].damage(path) is None
        with pytest.raises(jreg.JregError, match=r"resume: key differs from the one .*ckpt-000002\.orbax was trained"):
            resume_from(path)


def test_a_record_file_that_is_not_a_record(orbaxed, tmp_path, monkeypatch):
    """Not JSON, not UTF-8, nested beyond the parser, a folder, a FIFO (read, it would block for ever), too large
    (checked before reading, as a .npz header's 64 MiB), missing; and a record without its arrays (state/)."""
    path = orbax_copy(orbaxed, tmp_path, "{not json")
    record, dc = path / "meta" / "metadata", orbaxed["dc"]

    def refused(match):
        with pytest.raises(CheckpointError, match=match):
            dc.load(path, params=PARAMS, opt_state=orbaxed["opt_state"])
        assert re.search(match, dc.damage(path))  # damage: a folder resume skips it, saying why

    refused(r"ckpt-000002\.orbax/meta/metadata: not an orbax run record \(Expecting property name")
    record.write_bytes(b'{"step": 2, "key": [0, 1], "meta": "\xff"}')
    refused(r"metadata: not an orbax run record \('utf-8' codec can't decode")
    record.write_text('{"step": 2, "key": [0, 1], "meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(r"metadata: not an orbax run record \(nested too deeply\)")
    record.unlink()
    refused(
        r"ckpt-000002\.orbax/meta/metadata: not a readable orbax checkpoint \(its run record, meta/metadata, is "
        "missing\\)"
    )
    record.mkdir()
    refused(r"metadata: is a folder, not an orbax run record file")
    record.rmdir()
    os.mkfifo(record)
    refused(r"metadata: is not a regular file, so not an orbax run record")
    record.unlink()
    record.write_text(json.dumps(orbaxed["record"]))
    monkeypatch.setattr(ckpt, "MAX_HEADER_BYTES", record.stat().st_size - 1)
    refused(
        r"metadata: \d+ bytes, more than the \d+ an orbax run record may take \(jreg\.checkpoint\.MAX_HEADER_BYTES\)"
    )
    monkeypatch.undo()
    shutil.rmtree(path / "state")
    refused(r"ckpt-000002\.orbax: not a readable orbax checkpoint \(its arrays, state/, are missing\)")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's event loop, closing
def test_damaged_orbax_arrays_are_a_checkpoint_error_or_load_intact(orbaxed, tmp_path):
    """orbax's own files (state/, metadata, commit markers) junk, empty or gone: what orbax cannot read is a
    CheckpointError naming the folder; what it does not need still loads, intact."""
    files = sorted(p.relative_to(orbaxed["path"]) for p in orbaxed["path"].rglob("*") if p.is_file())
    assert len(files) >= 6
    outcomes = set()
    for name in files:
        if name == Path("meta/metadata"):
            continue
        for damage in ("junk", "empty", "gone"):
            path = tmp_path / f"{damage}-{len(outcomes)}" / "ckpt-000002.orbax"
            shutil.copytree(orbaxed["path"], path)
            target = path / name
            target.unlink() if damage == "gone" else target.write_bytes(b"\x00{[junk" * (damage == "junk"))
            try:
                loaded = orbaxed["dc"].load(path, params=PARAMS, opt_state=orbaxed["opt_state"])
            except CheckpointError as e:
                assert str(path) in str(e)
                outcomes.add("refused")
            else:
                assert same(loaded.params, orbaxed["loaded"].params) and same(
                    loaded.opt_state, orbaxed["loaded"].opt_state
                )
                outcomes.add("loaded")
            shutil.rmtree(path.parent)
    assert outcomes == {"refused", "loaded"}


NEW_META = [  # run-state fields that went unchecked before issue 28 (a raw error, or a silent misreading)
    ("early_stopping.best", 10**400, r"meta 'early_stopping\.best' must be a number or null \(within a float's range"),
    ("early_stopping.lr_scale", 10**400, r"meta 'early_stopping\.lr_scale' must be a number in \[2\*\*-126, 1\]"),
    ("early_stopping.lr_scale", 1e300, r"meta 'early_stopping\.lr_scale' must be a number in \[2\*\*-126, 1\]"),
    ("early_stopping.lr_scale", 5e-324, r"meta 'early_stopping\.lr_scale' must be a number in \[2\*\*-126, 1\]"),
    ("early_stopping.wait", 10**400, r"meta 'early_stopping\.wait' must be at most the 2 epochs run"),
    ("run", "run-1", r"meta 'run' must be a run id \(32 lowercase hex digits\), got 'run-1'"),
    ("run", 7, r"meta 'run' must be a run id \(32 lowercase hex digits\), got 7"),
    ("cost_convention", ["jreg"], r"meta 'cost_convention' must be one of \['jreg', 'network2'\], got \['jreg'\]"),
    ("cost_convention", "book", r"meta 'cost_convention' must be one of \['jreg', 'network2'\], got 'book'"),
    ("streamed", "no", r"meta 'streamed' must be true or false, got 'no'"),
    ("streamed", 0, r"meta 'streamed' must be true or false, got 0"),
    ("ema", 5, r"meta 'ema' must be null or an object, got 5"),
    ("ema", {"decay": 1.5, "evaluate": True}, r"meta 'ema\.decay' must be a number in \[0, 1\) or the name of an"),
    ("ema", {"decay": 0.9, "evaluate": "yes"}, r"meta 'ema\.evaluate' must be true or false, got 'yes'"),
]


@pytest.mark.parametrize("kind", ["npz", "orbax"])
@pytest.mark.parametrize("field, value, match", MALFORMED_META + NEW_META)
def test_every_run_state_field_is_checked_alike_in_both_formats(fitted, orbaxed, tmp_path, kind, field, value, match):
    """The same meta, forged the same way, in a .npz header or an orbax record: the same CheckpointError on resume."""
    if kind == "npz":
        path = tmp_path / "ckpt-000002.npz"
        forge(fitted["path"], path, set_meta(field, value))
    else:
        record = copy.deepcopy(orbaxed["record"])
        set_meta(field, value)(record)
        path = orbax_copy(orbaxed, tmp_path, json.dumps(record))
    name = re.escape(path.name)
    with pytest.raises(CheckpointError, match=rf"{name}: {match}"):
        resume_from(path)


ORBAX_VALUES = st.one_of(
    JSON_VALUES,
    st.integers(-(2**70), 2**70),
    st.lists(st.integers(-(2**40), 2**40), max_size=4),
    st.lists(st.sampled_from([0, 1, 2**32 - 1, 2**32, -1, 2**64, 1.0, True, None, "1", [0]]), max_size=4),
    st.sampled_from([10**400, float("inf"), float("nan"), -0.0, "x" * 1000, [0] * 262_144, [0] * 262_145]),
)


@relaxed
@given(data=st.data(), field=st.sampled_from(["step", "key", "meta", None]))
def test_mutated_orbax_records_give_the_saved_run_or_a_checkpoint_error(orbaxed, tmp_path, data, field):
    """Every field replaced by hostile JSON (wrong types, out-of-range and huge integers, huge lists, nested junk,
    nesting beyond the parser) and the record mutated as the .npz headers above: load gives exactly what the record
    says, or a CheckpointError naming the file; a resume gives the saved run or a jreg error naming it. Quickly."""
    doc = copy.deepcopy(orbaxed["record"])
    if field is not None:
        doc[field] = copy.deepcopy(data.draw(ORBAX_VALUES, label=field))
    deep = None
    if field is None or data.draw(st.booleans(), label="and mutated"):
        doc, deep = mutate(data, doc)
    path = orbax_copy(orbaxed, tmp_path, dump(doc, deep))
    started = time.perf_counter()
    try:
        loaded = orbaxed["dc"].load(path, params=PARAMS, opt_state=orbaxed["opt_state"])
        event("loaded")
    except jreg.JregError as e:
        assert isinstance(e, CheckpointError) and str(path) in str(e), str(e)
        loaded = None
        event("refused on load")
    if loaded is not None:  # then the record is well-formed, and load returned exactly what it says
        record = json.loads((path / "meta" / "metadata").read_text())
        step, key = record["step"], record["key"]
        assert loaded.step == step and (step is None or (type(step) is int and step >= 0))
        if key is None:
            assert loaded.key is None
        else:
            assert 1 <= len(key) <= orbaxed["dc"].KEY_MAX_WORDS and all(type(k) is int and 0 <= k < 2**32 for k in key)
            assert loaded.key.dtype == np.uint32 and loaded.key.tolist() == key
        assert json_equal(loaded.meta, record["meta"])
        assert same(loaded.params, orbaxed["loaded"].params) and same(loaded.opt_state, orbaxed["loaded"].opt_state)
    try:
        resumed = resume_from(path)
        event("resumed")
    except jreg.JregError as e:
        assert str(path) in str(e), str(e)
    else:
        assert loaded is not None and resumed.epoch == (loaded.step or 0) <= 4
        assert same(resumed.state.params, orbaxed["loaded"].params) and 0 <= int(resumed.state.step) < 2**31
        resume_fields_are_checked(resumed.meta, path, resumed.epoch)
    assert time.perf_counter() - started < 30
