"""orbax checkpoints in one process (issue 27, item 4): ``jreg.save(..., format="orbax")`` and ``jreg.load`` hold the
``.npz`` format's fields bit for bit, ``jreg.load`` reads a user's own orbax pytree into a given structure,
``Checkpointing(format="orbax")`` resumes fit and sweep bit-exact under the folder rules, and a forged folder is a
CheckpointError naming the file, the field and the value, never orbax's or tensorstore's traceback."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

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
from tests.test_forged_files import MALFORMED_META, dump, json_equal, leaf_set, mutate, same

ocp = pytest.importorskip("orbax.checkpoint")

MODEL = jreg.mlp([4, 3, 2])
PARAMS = MODEL.init(jax.random.key(0))
ADAM = optax.adam(1e-2)
MODEL_STATE = {"batch_stats": {"mean": jnp.arange(3.0), "var": jnp.ones(3, jnp.bfloat16)}, "count": jnp.int32(4)}
#: each example writes an orbax folder (orbax's save takes a while): fewer than test_forged_files' 60
relaxed = settings(
    max_examples=int(os.environ.get("JREG_ORBAX_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
META = {"note": "hi", "lr": 0.01, "series": [1, 2.5, None]}


class Pair(NamedTuple):
    left: jax.Array
    right: tuple


def orbax_save(path: Path, tree) -> Path:
    """A user's own orbax code: ``StandardCheckpointer().save(path, tree)``, finished (its saves are asynchronous)."""
    with ocp.StandardCheckpointer() as checkpointer:  # closing waits for the asynchronous save
        checkpointer.save(Path(path).absolute(), tree)
    return Path(path)


def bits(tree) -> list:
    """The leaves' shapes and bytes as a multiset (a record may rearrange or retype them, never change a bit)."""
    return sorted((np.shape(x), np.asarray(x).tobytes()) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The same content as a ``.npz`` file and as an orbax folder: params, Adam state, model state (bfloat16, int32),
    a typed key, step and meta."""
    folder = tmp_path_factory.mktemp("orbax")
    opt_state = ADAM.init(PARAMS)
    fields = dict(opt_state=opt_state, model_state=MODEL_STATE, step=7, key=jax.random.key(3), meta=META)
    npz = jreg.save(folder / "full.npz", PARAMS, **fields)
    orbax = jreg.save(folder / "full.orbax", PARAMS, format="orbax", **fields)
    return {"npz": npz, "path": orbax, "folder": folder, "opt_state": opt_state}


def templates(saved) -> dict:
    return dict(params=PARAMS, opt_state=saved["opt_state"], model_state=MODEL_STATE)


# --------------------------------------------------------------------------- the format: the .npz format's fields


def test_save_writes_an_orbax_folder_of_two_items_and_returns_its_path(saved):
    path = saved["path"]
    assert path == saved["folder"] / "full.orbax" and path.is_dir()
    assert (path / "state").is_dir() and (path / "meta" / "metadata").is_file()
    record = json.loads((path / "meta" / "metadata").read_text())
    assert record["step"] == 7 and record["meta"] == META and record["jreg"]["format"] == ckpt.FORMAT
    assert record["key"] == jax.random.key_data(jax.random.key(3)).tolist()
    assert not [p for p in saved["folder"].iterdir() if "tmp" in p.name or p.name.startswith(".")]


def test_an_orbax_checkpoint_loads_exactly_as_the_npz_file_of_the_same_content(saved):
    """Without templates (plain containers, named tuples as dicts) and with them (the original structure), every
    leaf's bits and dtype, the step, key and meta: the same as the .npz format gives."""
    for kw in ({}, templates(saved)):
        a, b = jreg.load(saved["path"], **kw), jreg.load(saved["npz"], **kw)
        for name in ("params", "opt_state", "model_state"):
            assert same(getattr(a, name), getattr(b, name)), name
        assert a.step == b.step == 7 and a.meta == b.meta == META
        assert jax.random.key_impl(a.key) == jax.random.key_impl(b.key)
        np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    loaded = jreg.load(saved["path"], **templates(saved))
    assert same(loaded.params, PARAMS) and same(loaded.model_state, MODEL_STATE)
    assert same(loaded.opt_state, saved["opt_state"])  # optax's named tuples come back as they were
    assert loaded.model_state["batch_stats"]["var"].dtype == jnp.bfloat16


def test_read_header_and_verify_read_an_orbax_folder_as_a_npz_file(saved):
    a, b = ckpt.read_header(saved["path"]), ckpt.read_header(saved["npz"])
    assert {k: v for k, v in a.items() if k != "jreg_version"} == {k: v for k, v in b.items() if k != "jreg_version"}
    ckpt.verify(saved["path"])


def test_without_optional_fields_and_with_a_raw_key(tmp_path):
    path = jreg.save(tmp_path / "p", PARAMS, key=jnp.array([1, 2], jnp.uint32), format="orbax")
    loaded = jreg.load(path)
    assert loaded.opt_state is None and loaded.model_state is None and loaded.step is None and loaded.meta is None
    assert loaded.key.dtype == np.uint32 and loaded.key.tolist() == [1, 2]
    with pytest.raises(CheckpointError, match=r"p: the checkpoint holds no optimizer state"):
        jreg.load(path, opt_state=ADAM.init(PARAMS))


@relaxed
@given(
    shapes=st.lists(st.lists(st.integers(0, 3), max_size=3), min_size=1, max_size=4),
    dtypes=st.lists(st.sampled_from(["float32", "bfloat16", "int32", "uint8", "bool", "float16"]), min_size=4),
    kind=st.sampled_from(["dict", "list", "tuple", "namedtuple"]),
)
def test_any_tree_of_arrays_round_trips_bit_for_bit_as_in_the_npz_format(tmp_path_factory, shapes, dtypes, kind):
    rng = np.random.default_rng(len(shapes))
    leaves = [
        jnp.asarray(rng.standard_normal(s) * 100).astype(d) for s, d in zip(shapes, dtypes)
    ]  # fmt: skip
    tree = {
        "dict": {f"k{i}": x for i, x in enumerate(leaves)},
        "list": leaves,
        "tuple": (leaves[0], tuple(leaves[1:])),
        "namedtuple": Pair(leaves[0], tuple(leaves[1:])),
    }[kind]
    folder = tmp_path_factory.mktemp("tree")
    orbax, npz = jreg.save(folder / "t", tree, format="orbax"), jreg.save(folder / "t.npz", tree)
    assert same(jreg.load(orbax).params, jreg.load(npz).params)
    assert same(jreg.load(orbax, params=tree).params, tree)


def test_a_save_over_an_orbax_checkpoint_replaces_it_and_leaves_nothing_else(tmp_path):
    path = jreg.save(tmp_path / "c", PARAMS, step=1, format="orbax")
    jreg.save(path, {"w": jnp.ones(2)}, step=2, meta={"a": 1}, format="orbax")
    loaded = jreg.load(path)
    assert loaded.step == 2 and same(loaded.params, {"w": jnp.ones(2)}) and loaded.meta == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_save_never_replaces_what_is_not_an_orbax_checkpoint(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for name, kind in (("mine", "a folder that is not an orbax checkpoint"), ("file", "not a folder")):
        with pytest.raises(jreg.JregError, match=rf"path: .*{name} exists and is {kind}"):
            jreg.save(tmp_path / name, PARAMS, format="orbax")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "file").read_text() == "keep me too"


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(jreg.JregError, match=r"format must be one of \['npz', 'orbax'\].*got 'zarr'"):
        jreg.save(tmp_path / "a", PARAMS, format="zarr")
    with pytest.raises(jreg.JregTypeError, match=r"key: an orbax checkpoint stores the key's data as 32-bit words"):
        jreg.save(tmp_path / "b", PARAMS, key=jnp.ones(2, jnp.float32), format="orbax")
    with pytest.raises(jreg.JregTypeError, match=r"meta must be JSON-serializable"):
        jreg.save(tmp_path / "c", PARAMS, meta={"f": object()}, format="orbax")
    with pytest.raises(jreg.JregTypeError, match=r"params leaf 'w' is not a numeric array"):
        jreg.save(tmp_path / "d", {"w": np.array(["x"])}, format="orbax")
    with pytest.raises(jreg.JregError, match=r"step must be a non-negative int or None, got -1"):
        jreg.save(tmp_path / "e", PARAMS, step=-1, format="orbax")
    with pytest.raises(jreg.JregError, match=r"Checkpointing\.format must be one of \['npz', 'orbax'\].*got 'tf'"):
        jreg.Checkpointing(tmp_path / "f", format="tf")
    assert list(tmp_path.iterdir()) == []


def full_disk(monkeypatch, after: int = 0):
    """orbax's saves, from the ``after``-th on, begin their temporary folder and then fail as on a full disk."""
    calls, real = [], ocp.Checkpointer.save

    def save(self, directory, *args, **kwargs):
        calls.append(directory)
        if len(calls) <= after:
            return real(self, directory, *args, **kwargs)
        (Path(directory).parent / (Path(directory).name + ".orbax-checkpoint-tmp")).mkdir()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.Checkpointer, "save", save)


def test_an_os_error_while_writing_is_one_line_and_replaces_nothing(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(jreg.JregError, match=r"afile/c': cannot make its folder, part of it is a file"):
        jreg.save(tmp_path / "afile" / "c", PARAMS, format="orbax")
    path = jreg.save(tmp_path / "c", PARAMS, step=1, format="orbax")
    full_disk(monkeypatch)
    for target in (path, tmp_path / "d"):  # over a checkpoint, and a new one
        with pytest.raises(jreg.io.WriteError, match=rf"{target.name}': the orbax write failed \(No space left on"):
            jreg.save(target, {"w": jnp.ones(2)}, step=2, format="orbax")
    monkeypatch.undo()
    assert jreg.load(path).step == 1 and same(jreg.load(path).params, jreg.load(path, params=PARAMS).params)
    assert entries(tmp_path) == ["afile", "c"]  # no temporary folder, no staging copy left
    from jreg.checkpoint import orbax_format

    renames, rename = [], orbax_format._rename

    def second_rename_fails(src, dst):  # the new checkpoint cannot be put in place: the old one goes back
        renames.append(dst)
        if len(renames) == 2:
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(orbax_format, "_rename", second_rename_fails)
    with pytest.raises(jreg.io.WriteError, match=r"c': cannot put the new checkpoint in place \(No space left"):
        jreg.save(path, {"w": jnp.ones(2)}, step=2, format="orbax")
    monkeypatch.undo()
    assert len(renames) == 3 and jreg.load(path).step == 1 and entries(tmp_path) == ["afile", "c"]


def test_a_full_disk_during_a_runs_orbax_save_is_a_checkpoint_write_error(tmp_path, monkeypatch):
    full_disk(monkeypatch, after=1)
    with pytest.raises(jreg.train.checkpoint_folder.CheckpointWriteError) as info:
        fit(checkpoint=orbax_checkpointing(tmp_path / "ck"), epochs=3)
    assert str(info.value).startswith(f"checkpoint: cannot write {tmp_path / 'ck' / 'ckpt-000002.orbax'}")
    assert "No space left on device" in str(info.value) and "intact (ckpt-000001.orbax)" in str(info.value)
    assert entries(tmp_path / "ck") == ["ckpt-000001.orbax"]


# --------------------------------------------------------------------------- a user's own orbax checkpoints


def test_a_users_standard_checkpointer_pytree_restores_into_a_given_structure(tmp_path):
    path = orbax_save(tmp_path / "theirs", PARAMS)
    loaded = jreg.load(path, params=PARAMS)
    assert same(loaded.params, PARAMS) and jax.tree.structure(loaded.params) == jax.tree.structure(PARAMS)
    assert loaded.opt_state is None and loaded.step is None and loaded.key is None and loaded.meta is None
    plain = jreg.load(path)  # without a template: as orbax's metadata describes it
    assert leaf_set(plain.params) == leaf_set(PARAMS)


def test_a_users_pytree_that_does_not_fit_the_template_names_the_leaf(tmp_path):
    path = orbax_save(tmp_path / "theirs", {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.int32)})
    cases = [
        (
            {"w": jnp.ones((3, 2)), "b": jnp.zeros(3, jnp.int32)},
            r"params leaf 'w' is float32\[2, 3\] in the checkpoint",
        ),
        ({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, r"params leaf 'b' is int32\[3\] in the checkpoint but float32"),
        ({"w": jnp.ones((2, 3))}, r"params has 2 leaves, the target 1; only in the checkpoint: \['b'\]"),
        ({"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.int32), "c": jnp.ones(1)}, r"only in the target: \['c'\]"),
        ({"w": "x", "b": jnp.zeros(3, jnp.int32)}, r"the template's leaf 'w' must be an array"),
    ]
    for template, match in cases:
        with pytest.raises(jreg.JregError, match=match):
            jreg.load(path, params=template)
    with pytest.raises(CheckpointError, match=r"theirs: is an orbax pytree checkpoint .* read as params only"):
        jreg.load(path, params={"w": jnp.ones((2, 3))}, opt_state=ADAM.init(PARAMS))


def test_a_checkpoint_managers_step_reads_as_its_one_item_and_its_folder_says_which_step_to_pass(tmp_path):
    manager = ocp.CheckpointManager(tmp_path.absolute() / "run")
    manager.save(3, args=ocp.args.StandardSave(PARAMS))
    manager.wait_until_finished()
    manager.close()
    with pytest.raises(CheckpointError, match=r"run: holds orbax checkpoints of steps \['3'\] .*e\.g\. .*run/3$"):
        jreg.load(tmp_path / "run", params=PARAMS)
    for path in (tmp_path / "run" / "3", tmp_path / "run" / "3" / "default"):
        assert same(jreg.load(path, params=PARAMS).params, PARAMS)
        with pytest.raises(CheckpointError, match=r"is an orbax pytree checkpoint .* has no jreg header"):
            ckpt.read_header(path)
    composite = tmp_path / "composite"
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        args = ocp.args.Composite(a=ocp.args.StandardSave(PARAMS), b=ocp.args.StandardSave(PARAMS))
        checkpointer.save(composite.absolute(), args=args)
    with pytest.raises(CheckpointError, match=r"composite: holds the orbax items \['a', 'b'\] .* e\.g\. .*composite/a"):
        jreg.load(composite, params=PARAMS)


# --------------------------------------------------------------------------- forged folders


def record_of(path) -> dict:
    return json.loads((Path(path) / "meta" / "metadata").read_text())


def copy_with(saved, folder, record: str | None = None, name: str = "f.orbax") -> Path:
    path = folder / name
    if not path.exists():
        shutil.copytree(saved["path"], path)
    if record is not None:
        (path / "meta" / "metadata").write_text(record)
    return path


RECORD = r"f\.orbax/meta/metadata: not a readable orbax checkpoint: its run record "
HEADER = r"f\.orbax/meta/metadata: not a valid jreg checkpoint header: "


def set_field(doc: dict, field: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = field.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("step", "7", RECORD + r"'step' must be a non-negative integer or null, got '7'"),
        ("key", [-1, 0], RECORD + r"'key' must be null or a list of 1 to 262144 integers in \[0, 2\*\*32\), got"),
        ("key", [1, 2, 3], RECORD + r"'key' must hold the 2 words of a key of shape \[2\], got \[1, 2, 3\]"),
        ("key", None, RECORD + r"'key' must be null exactly when 'jreg\.key' is, got None"),
        ("jreg", [1], RECORD + r"'jreg' must be an object with 'format', 'params', 'opt_state' and 'key', got \[1\]"),
        ("jreg.params", KeyError, RECORD + r"'jreg' must be an object with 'format', 'params'"),
        ("jreg.format_version", "1", HEADER + r"'format_version' must be a positive integer, got '1'"),
        ("jreg.params.leaves.0.shape", [2, -1], HEADER + r"'params\.leaves\[0\]\.shape' must be a list of at most 64"),
        ("jreg.params.leaves.0.dtype", "object", HEADER + r"'params\.leaves\[0\]\.dtype' must name a numeric dtype"),
        ("jreg.params.leaves", {"a": 1}, HEADER + r"'params\.leaves' must be a list, got \{'a': 1\}"),
        ("jreg.params.tree", {"leaf": 99}, HEADER + r"'params\.tree' has a leaf index that is not an integer in"),
        ("jreg.key.impl", "nope", HEADER + r"'key\.impl' must name a PRNG implementation this JAX knows, got 'nope'"),
        ("jreg.key.dtype", "float32", RECORD + r"'jreg\.key\.dtype' must be 'uint32' or 'int32'"),
        ("jreg.opt_state", 5, HEADER + r"'opt_state' must be null or an object with 'tree' and 'leaves', got 5"),
        ("jreg.format", "zip", r"f\.orbax/meta/metadata: not a jreg checkpoint \(its header's format is not"),
    ],
)
def test_a_forged_record_field_is_a_checkpoint_error_naming_the_file_field_and_value(
    saved, tmp_path, field, value, match
):
    path = copy_with(saved, tmp_path, json.dumps(set_field(record_of(saved["path"]), field, value)))
    for read in (lambda: jreg.load(path), lambda: jreg.load(path, **templates(saved)), lambda: ckpt.verify(path)):
        with pytest.raises(CheckpointError, match=match):
            read()


@pytest.mark.parametrize(
    "field, value, match",
    [  # the record lies about the arrays: orbax's metadata of state/ says otherwise (orbax would cast a dtype)
        ("jreg.params.leaves.0.shape", [4], r"params leaf '0/b' \(state/params/0\) is float32\[3\] in state/, but its"),
        ("jreg.params.leaves.0.dtype", "int32", r"params leaf '0/b' \(state/params/0\) is float32\[3\] in state/, but"),
        (
            "jreg.model_state.leaves.2.dtype",
            "float16",
            r"model_state leaf 'count' \(state/model_state/2\) is int32\[\]",
        ),
    ],
)
def test_a_record_that_lies_about_the_stored_arrays_is_refused_before_orbax_reads_them(
    saved, tmp_path, field, value, match
):
    path = copy_with(saved, tmp_path, json.dumps(set_field(record_of(saved["path"]), field, value)))
    with pytest.raises(CheckpointError, match=r"f\.orbax: " + match):
        jreg.load(path)


def test_missing_items_or_arrays_are_a_checkpoint_error(saved, tmp_path):
    path = copy_with(saved, tmp_path)
    shutil.rmtree(path / "state")
    with pytest.raises(CheckpointError, match=r"f\.orbax: not a readable orbax checkpoint \(its arrays, state/, are"):
        jreg.load(path)
    path = copy_with(saved, tmp_path, name="g.orbax")
    shutil.rmtree(path / "meta")
    with pytest.raises(CheckpointError, match=r"g\.orbax: not a readable orbax checkpoint \(its run record, meta/"):
        jreg.load(path)
    path = copy_with(saved, tmp_path, name="i.orbax")
    shutil.rmtree(path / "meta")
    shutil.rmtree(path / "state")
    with pytest.raises(CheckpointError, match=r"i\.orbax: is a folder, not a checkpoint file \(\.npz\), nor an orbax"):
        jreg.load(path)
    fewer = jreg.save(tmp_path / "fewer", {"w": jnp.ones(2)}, format="orbax")  # state/ of another checkpoint
    path = copy_with(saved, tmp_path, name="h.orbax")
    shutil.rmtree(path / "state")
    shutil.copytree(fewer / "state", path / "state")
    with pytest.raises(CheckpointError, match=r"h\.orbax: params leaf '0/b' \(state/params/0\) is float32\[2\] in"):
        jreg.load(path)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's event loop, closing
@pytest.mark.parametrize("source", ["jreg", "theirs"])
def test_damaged_orbax_files_are_a_checkpoint_error_or_load_intact(saved, tmp_path, source):
    """orbax's own files junk, empty or gone, in jreg's folder or a user's orbax pytree: a CheckpointError naming
    the folder, or the intact content."""
    src = saved["path"] if source == "jreg" else orbax_save(tmp_path / "theirs", PARAMS)
    read = (lambda p: jreg.load(p)) if source == "jreg" else (lambda p: jreg.load(p, params=PARAMS))
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    original, outcomes = read(src), set()
    for n, name in enumerate(files):
        if name == Path("meta/metadata"):
            continue
        for damage in ("junk", "empty", "gone"):
            path = tmp_path / f"{damage}-{n}" / "c.orbax"
            shutil.copytree(src, path)
            target = path / name
            target.unlink() if damage == "gone" else target.write_bytes(b"\x00{[junk" * (damage == "junk"))
            try:
                loaded = read(path)
            except CheckpointError as e:
                assert str(path) in str(e)
                outcomes.add("refused")
            else:
                assert all(same(getattr(loaded, f), getattr(original, f)) for f in ("params", "opt_state"))
                outcomes.add("loaded")
            shutil.rmtree(path.parent)
    assert "refused" in outcomes


@relaxed
@given(data=st.data())
def test_mutated_records_give_the_saved_content_or_a_checkpoint_error(saved, tmp_path_factory, data):
    """Any change to the record's fields: the content it describes (every leaf as saved) or a jreg error."""
    record = record_of(saved["path"])
    doc, deep = mutate(data, record)
    folder = tmp_path_factory.mktemp("mutated")
    path = copy_with(saved, folder, dump(doc, deep))
    original = jreg.load(saved["path"], **templates(saved))
    try:
        plain = jreg.load(path)
        event("loaded without templates")
    except jreg.JregError as e:
        assert str(path) in str(e), str(e)
        plain = None
    if plain is not None:
        header = ckpt.read_header(path)
        assert plain.step == header["step"] and json_equal(plain.meta, header["meta"])
        for name in ("params", "opt_state", "model_state"):
            if header[name] is None:
                assert getattr(plain, name) is None
            else:  # exactly the leaves saved (orbax's metadata agreed with the record), in the tree it describes
                assert bits(getattr(plain, name)) == bits(getattr(original, name)), name
    try:
        loaded = jreg.load(path, **templates(saved))
        event("loaded with templates")
    except jreg.JregError as e:
        assert str(path) in str(e), str(e)
        return
    for name in ("params", "opt_state", "model_state"):
        assert same(getattr(loaded, name), getattr(original, name)), name


# --------------------------------------------------------------------------- Checkpointing(format="orbax"): fit, sweep

FIT_MODEL = jreg.mlp([4, 3, 2])
FIT_OBJ = jreg.objective(FIT_MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))
FIT_DATA = (jax.random.uniform(jax.random.key(1), (16, 4)), jnp.arange(16) % 2)
FIT_KW = dict(batch_size=4, key=jax.random.key(0), epochs=4)


class Interrupted(Exception):
    pass


def stop_after(epochs: int):
    def callback(epoch, metrics):
        if epoch + 1 == epochs:
            raise Interrupted

    return callback


def fit(**kw):
    return jreg.fit(FIT_OBJ, ADAM, PARAMS, FIT_DATA, **{**FIT_KW, **kw})


def orbax_checkpointing(folder, **kw) -> jreg.Checkpointing:
    return jreg.Checkpointing(folder, format="orbax", **kw)


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".jreg-lock")


def assert_same_run(got, want):
    for name in ("params", "opt_state"):
        assert same(getattr(got, name), getattr(want, name)), name
    assert got.history.history == want.history.history


@pytest.fixture(scope="module")
def interrupted_fit(tmp_path_factory):
    """A fit checkpointing into orbax folders (keep=2), interrupted after epoch 3, before that epoch's save."""
    folder = tmp_path_factory.mktemp("fit") / "ck"
    with pytest.raises(Interrupted):
        fit(checkpoint=orbax_checkpointing(folder, keep=2), callback=stop_after(3))
    assert entries(folder) == ["ckpt-000001.orbax", "ckpt-000002.orbax"]  # atomic: no orbax temporary left
    return folder, fit()


@pytest.mark.parametrize("how", ["auto", "folder", "checkpoint"])
def test_fit_resumes_bit_exact_from_orbax_checkpoints(interrupted_fit, tmp_path, how):
    source, want = interrupted_fit
    folder = tmp_path / "ck"
    shutil.copytree(source, folder)
    resume = {"auto": "auto", "folder": folder, "checkpoint": folder / "ckpt-000002.orbax"}[how]
    got = fit(checkpoint=orbax_checkpointing(folder, keep=2), resume=resume)
    assert_same_run(got, want)
    assert entries(folder) == ["ckpt-000003.orbax", "ckpt-000004.orbax"]  # keep=2, as orbax's max_to_keep
    last = jreg.load(folder / "ckpt-000004.orbax", params=PARAMS, opt_state=ADAM.init(PARAMS))
    assert last.step == 4 and same(last.params, want.params) and same(last.opt_state, want.opt_state)
    assert last.meta["history"] == {k: list(v) for k, v in want.history.history.items()}


def test_a_fit_resumed_across_formats_continues_the_same_run(interrupted_fit, tmp_path):
    """The format is how the run's checkpoints are written, not part of the run: resume reads either."""
    source, want = interrupted_fit
    folder = tmp_path / "ck"
    shutil.copytree(source, folder)
    got = fit(checkpoint=jreg.Checkpointing(folder, keep=2), resume=folder)
    assert_same_run(got, want)
    assert entries(folder) == ["ckpt-000003.npz", "ckpt-000004.npz"]  # the run's own orbax folders pruned too


def test_the_folder_rules_hold_for_orbax_checkpoints(interrupted_fit, tmp_path):
    source, _ = interrupted_fit
    folder = tmp_path / "ck"
    shutil.copytree(source, folder)
    with pytest.raises(jreg.JregError, match=r"already holds checkpoints \(ckpt-000001\.orbax, ckpt-000002\.orbax\)"):
        fit(checkpoint=orbax_checkpointing(folder))  # another run (no resume) is refused
    other = tmp_path / "other"
    fit(checkpoint=orbax_checkpointing(other, keep=5), epochs=1)  # another run's checkpoint, beside this run's
    shutil.copytree(other / "ckpt-000001.orbax", folder / "ckpt-000000.orbax")
    fit(checkpoint=orbax_checkpointing(folder, keep=1), resume=folder)
    assert entries(folder) == ["ckpt-000000.orbax", "ckpt-000004.orbax"]  # the other run's is never deleted
    held, busy = [], tmp_path / "held"

    def second_run(epoch, metrics):  # while this run holds its folder, another run into it is refused at once
        with pytest.raises(jreg.JregError, match=r"is in use by pid \d+"):
            fit(checkpoint=orbax_checkpointing(busy), resume="auto")
        held.append(epoch)

    fit(checkpoint=orbax_checkpointing(busy), epochs=1, callback=second_run)
    assert held == [0]


@pytest.mark.filterwarnings("ignore::jreg.JregWarning")  # a model of the sweep diverges, by design
def test_a_sweep_with_early_stopping_resumes_bit_exact_from_orbax_checkpoints(tmp_path):
    from tests import test_sweep_checkpoint as sc

    want = sc.uninterrupted()
    stop_epoch = want.history.stopped[0]["epochs"]
    assert set(want.history.diverged) == {1}  # the state to carry: a diverged model and a stopped one
    folder = tmp_path / "ck"
    with pytest.raises(sc.Interrupted):
        jreg.sweep(
            sc.build, sc.PARAMS, sc.TRAIN, checkpoint=orbax_checkpointing(folder),
            callback=sc.interrupt_after(stop_epoch + 1), **sc.KW,
        )  # fmt: skip
    assert entries(folder) == [f"ckpt-{e:06d}.orbax" for e in range(stop_epoch - 2, stop_epoch + 1)]  # keep=3
    got = jreg.sweep(sc.build, sc.PARAMS, sc.TRAIN, checkpoint=orbax_checkpointing(folder), resume="auto", **sc.KW)
    assert same(got.params, want.params) and same(got.opt_state, want.opt_state)
    for name in want.history.keys():
        np.testing.assert_array_equal(got.history[name], want.history[name], err_msg=name)  # NaN equal to NaN
        assert got.history.epochs(name) == want.history.epochs(name)
    assert got.history.stopped == want.history.stopped and got.history.diverged == want.history.diverged
    assert len(entries(folder)) == 3


def as_epoch_loss(case):
    """test_forged_files' forgery of the series ``training_cost`` as one of this run's, ``epoch_loss``."""
    field, value, match = case
    return (
        field,
        json.loads(json.dumps(value).replace("training_cost", "epoch_loss")),
        match.replace("training_cost", "epoch_loss"),
    )


@pytest.mark.parametrize(
    "field, value, match",
    [as_epoch_loss(case) for case in MALFORMED_META if "." not in case[0]] + [("run", 7, r"meta 'run' must be")],
)
def test_a_forged_run_state_in_an_orbax_checkpoint_is_refused_on_resume(interrupted_fit, tmp_path, field, value, match):
    source, _ = interrupted_fit
    folder = tmp_path / "ck"
    shutil.copytree(source, folder)
    path = folder / "ckpt-000002.orbax"
    record = record_of(path)
    record["meta"][field] = value
    (path / "meta" / "metadata").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"ckpt-000002\.orbax: " + match):
        fit(checkpoint=orbax_checkpointing(folder), resume=path)
