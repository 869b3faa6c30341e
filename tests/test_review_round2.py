"""The second review's defects: each public entry point gives a correct result or a jreg error naming the argument."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg import checkpoint
from jreg.checkpoint import CheckpointError


def _nested(depth: int, leaf):
    tree = leaf
    for _ in range(depth):
        tree = {"a": tree}
    return tree


def _mlp():
    return [{"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}]


def test_save_refuses_trees_and_meta_that_load_could_not_read(tmp_path):
    path = tmp_path / "c.npz"
    leaf = np.ones(2, np.float32)
    for depth in (checkpoint.MAX_TREE_DEPTH + 1, 900, 5000):
        for section in ("params", "opt_state", "model_state"):
            kwargs = {"params": {"w": leaf}, section: _nested(depth, leaf)}
            with pytest.raises(jreg.JregTypeError, match=f"{section}.*nests deeper than"):
                jreg.save(path, **kwargs)
    for depth in (checkpoint.MAX_META_DEPTH + 1, 990, 5000):
        with pytest.raises(jreg.JregTypeError, match="meta.*nests deeper than"):
            jreg.save(path, {"w": leaf}, meta=_nested(depth, 1))
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(jreg.JregTypeError, match="meta"):
        jreg.save(path, {"w": leaf}, meta=cyclic)
    assert not path.exists()
    # the deepest allowed still round-trips
    jreg.save(path, _nested(checkpoint.MAX_TREE_DEPTH, leaf), meta=_nested(checkpoint.MAX_META_DEPTH, 1))
    back = jreg.load(path)
    assert back.meta == _nested(checkpoint.MAX_META_DEPTH, 1)


def test_path_arguments_of_wrong_type_or_value_are_jreg_errors(tmp_path):
    good = tmp_path / "c.npz"
    jreg.save(good, {"w": np.ones(2, np.float32)})
    readers = [jreg.load, checkpoint.read_header, checkpoint.verify, jreg.load_network2]
    for bad in (None, 3, b"/x.npz", 1.5):
        for read in readers:
            with pytest.raises(jreg.JregTypeError, match="path"):
                read(bad)
        with pytest.raises(jreg.JregTypeError, match="path"):
            jreg.save(bad, {"w": np.ones(2, np.float32)})
        with pytest.raises(jreg.JregTypeError, match="path"):
            jreg.save_network2(bad, _mlp())
    with pytest.raises(jreg.JregTypeError, match="bytes"):
        jreg.load(b"/x.npz")
    for bad in ("", "a\0b"):
        for read in readers:
            with pytest.raises(jreg.JregError, match="path"):
                read(bad)
        with pytest.raises(jreg.JregError, match="path"):
            jreg.save(bad, {"w": np.ones(2, np.float32)})
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for target in (folder, a_file / "x.npz", a_file / "sub" / "x.npz"):
        with pytest.raises(jreg.JregError, match="path"):
            jreg.save(target, {"w": np.ones(2, np.float32)})
        with pytest.raises(jreg.JregError, match="path"):
            jreg.save_network2(target, _mlp())
    assert sorted(os.listdir(folder)) == [] and a_file.read_text() == "x"
    assert jreg.load(os.fspath(good)).params["w"].shape == (2,)
    for bad in ("", "a\0b"):
        with pytest.raises(jreg.JregError, match="Checkpointing.dir"):
            jreg.Checkpointing(bad)
    with pytest.raises(jreg.JregTypeError, match="Checkpointing.dir"):
        jreg.Checkpointing(b"ck")


def test_load_refuses_non_array_templates_naming_the_leaf(tmp_path):
    path = tmp_path / "c.npz"
    jreg.save(path, {"w": np.ones(2, np.float32)}, opt_state={"m": np.ones(2, np.float32)})
    for template, where in (
        ({"w": "abc"}, "w"),
        ([object()], "0"),
        (b"abc", "<root>"),
        (np.array([object()]), "<root>"),
        ({"w": np.array(["a", "b"])}, "w"),
    ):
        with pytest.raises(jreg.JregTypeError, match=f"params.*{where}"):
            jreg.load(path, params=template)
    with pytest.raises(jreg.JregTypeError, match="opt_state"):
        jreg.load(path, opt_state="abc")
    assert jreg.load(path, params={"w": jnp.zeros(2)}).params["w"].dtype == jnp.float32


def test_dtype_and_step_arguments_are_checked(tmp_path):
    path = tmp_path / "n.json"
    jreg.save_network2(path, _mlp())
    for bad in ("foo", object, object(), np.int32, "int8", jnp.bool_):
        with pytest.raises(jreg.JregTypeError, match="dtype"):
            jreg.load_network2(path, dtype=bad)
    assert jreg.load_network2(path, dtype=jnp.bfloat16)[0][0]["w"].dtype == jnp.bfloat16
    labels = jnp.array([0, 2])
    for bad in ("foo", object, object()):
        with pytest.raises(jreg.JregTypeError, match="dtype"):
            jreg.losses.one_hot(labels, 3, dtype=bad)
    assert jreg.losses.one_hot(labels, 3, dtype=jnp.int32).dtype == jnp.int32
    assert jreg.losses.one_hot(labels, 3, dtype=bool).dtype == jnp.bool_
    for bad in ("2", 2.0, True, -1):
        with pytest.raises(jreg.JregError, match="step"):
            checkpoint.check_run_meta({}, "p", bad)
    assert checkpoint.check_run_meta({}, "p", np.int64(2)) == {}


def test_save_network2_refuses_what_load_network2_would(tmp_path):
    path = tmp_path / "n.json"
    for bad in (np.nan, np.inf):
        params = _mlp()
        params[0]["w"] = params[0]["w"].copy()
        params[0]["w"][1, 1] = bad
        with pytest.raises(jreg.JregError, match=r"params\[0\].*finite"):
            jreg.save_network2(path, params)
        params = _mlp()
        params[0]["b"] = np.array([0, bad, 0], np.float32)
        with pytest.raises(jreg.JregError, match=r"params\[0\].*finite"):
            jreg.save_network2(path, params)
    for bad in (3, None, b"x"):
        with pytest.raises(jreg.JregTypeError, match="cost"):
            jreg.save_network2(path, _mlp(), cost=bad)
    assert not path.exists()


def test_history_values_must_be_numbers_a_float_holds_or_null():
    for bad in (10**400, -(10**400)):
        with pytest.raises(CheckpointError, match="history.loss"):
            checkpoint.check_run_meta({"history": {"loss": [1.0, bad]}}, "p", 2)
    meta = {"history": {"loss": [1.0, None, float("nan"), 3]}, "history_epochs": {"loss": [1, 2, 3, 4]}}
    assert checkpoint.check_run_meta(meta, "p", 4) is meta


@pytest.mark.parametrize("resume, match", [("", "non-empty path"), ("a\0b", "NUL character")])
def test_fit_refuses_an_empty_or_nul_resume_path(resume, match):
    model = jreg.mlp([4, 3, 2])
    params = model.init(jax.random.key(0))
    obj = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy)
    data = (jnp.ones((8, 4)), jnp.arange(8) % 2)
    with pytest.raises(jreg.JregError, match=f"resume must be a {match}|resume must not contain a {match}"):
        jreg.fit(obj, optax.sgd(0.1), params, data, epochs=1, batch_size=4, key=jax.random.key(0), resume=resume)


def test_atomic_write_turns_os_failures_into_one_line_errors_and_replaces_nothing(tmp_path, monkeypatch):
    """A full disk, a folder that appears where the file goes, an unwritable folder: a JregError naming the
    path, the previous file intact, no temporary file left behind."""
    import errno
    import tempfile

    from jreg import io

    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")

    def disk_full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(jreg.JregError, match=r"the write failed \(No space left on device\); nothing was replaced"):
        io.atomic_write(target, disk_full)
    assert target.read_bytes() == b"previous"

    racing = tmp_path / "racing.bin"

    def becomes_a_folder(f):  # another process makes a folder there while we write
        racing.mkdir()
        f.write(b"new")

    with pytest.raises(jreg.JregError, match="cannot put the new file in place"):
        io.atomic_write(racing, becomes_a_folder)
    assert racing.is_dir()

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(jreg.JregError, match=r"cannot write into .* \(Permission denied\)"):
        jreg.save(tmp_path / "ck.npz", {"w": jnp.ones(2)})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "racing.bin"]  # no temporary file left
