"""jreg.save / jreg.load and network2's JSON format."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import jreg
from jreg import checkpoint
from jreg.checkpoint import CheckpointError


def same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(u).dtype == np.asarray(v).dtype and np.array_equal(u, v) for u, v in zip(la, lb)
    )


@pytest.fixture
def trained():
    model = jreg.mlp([6, 4, 3])
    params = model.init(jax.random.key(0))
    opt = optax.adam(1e-2)
    return params, opt, opt.init(params)


def test_round_trip_with_templates_restores_everything(tmp_path, trained):
    params, opt, state = trained
    key = jax.random.key(42)
    jreg.save(tmp_path / "c.npz", params, opt_state=state, step=7, key=key, meta={"note": "hi", "lr": 0.01})
    ck = jreg.load(tmp_path / "c.npz", params=params, opt_state=opt.init(params))
    assert same(ck.params, params) and same(ck.opt_state, state)
    assert type(ck.opt_state[0]).__name__ == "ScaleByAdamState"  # the optax types, from the template
    assert ck.step == 7 and ck.meta == {"note": "hi", "lr": 0.01}
    assert np.array_equal(jax.random.key_data(ck.key), jax.random.key_data(key))
    assert jax.random.uniform(ck.key) == jax.random.uniform(key)


def test_round_trip_without_templates_gives_plain_containers(tmp_path, trained):
    params, _, state = trained
    jreg.save(tmp_path / "c.npz", params, opt_state=state)
    ck = jreg.load(tmp_path / "c.npz")
    assert isinstance(ck.params, list) and set(ck.params[0]) == {"w", "b"}
    assert same(ck.params, params)
    assert set(ck.opt_state[0]) == {"count", "mu", "nu"}  # a named tuple comes back as a dict of its fields
    assert ck.step is None and ck.key is None


def test_dtypes_including_bfloat16_and_ints(tmp_path):
    tree = {
        "bf16": jnp.ones((2, 3), jnp.bfloat16) * 1.5,
        "i": jnp.arange(4, dtype=jnp.int32),
        "u8": np.arange(3, dtype=np.uint8),
        "nested": ({"a": jnp.zeros(())}, [jnp.ones(2, jnp.float16)]),
    }
    jreg.save(tmp_path / "d.npz", tree, key=jnp.array([1, 2], jnp.uint32))
    ck = jreg.load(tmp_path / "d.npz")
    assert ck.params["bf16"].dtype == ml_dtypes.bfloat16 and float(ck.params["bf16"][0, 0]) == 1.5
    assert same(ck.params, tree)
    assert ck.key.dtype == np.uint32 and ck.key.tolist() == [1, 2]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Layer:
    kernel: jax.Array
    bias: jax.Array


def test_custom_pytree_nodes_need_a_template(tmp_path):
    tree = [Layer(jnp.ones((2, 2)), jnp.zeros(2))]
    jreg.save(tmp_path / "e.npz", tree)
    with pytest.raises(CheckpointError, match="custom pytree nodes; pass a template"):
        jreg.load(tmp_path / "e.npz")
    assert same(jreg.load(tmp_path / "e.npz", params=tree).params, tree)


@pytest.mark.parametrize(
    "template, match",
    [
        (
            lambda p: [{"w": jnp.zeros((6, 5)), "b": p[0]["b"]}, p[1]],
            r"leaf '0/w' is float32\[6, 4\] in the checkpoint but float32\[6, 5\]",
        ),
        (
            lambda p: [{"w": p[0]["w"].astype(jnp.float16), "b": p[0]["b"]}, p[1]],
            r"leaf '0/w' is float32\[6, 4\] .* float16",
        ),
        (lambda p: p[:1], r"params has 4 leaves, the target 2; only in the checkpoint: \['1/b', '1/w'\]"),
        (lambda p: [{"kernel": p[0]["w"], "b": p[0]["b"]}, p[1]], r"leaf '0/w' in the checkpoint is '0/kernel'|'0/b'"),
    ],
)
def test_mismatched_structure_names_the_leaf(tmp_path, trained, template, match):
    params, _, _ = trained
    jreg.save(tmp_path / "c.npz", params)
    with pytest.raises(CheckpointError, match=match):
        jreg.load(tmp_path / "c.npz", params=template(params))


def test_not_a_checkpoint_truncated_or_corrupted(tmp_path, trained):
    params, _, _ = trained
    good = jreg.save(tmp_path / "good.npz", params).read_bytes()
    cases = {
        "text.npz": b"hello, I am not a checkpoint",
        "empty.npz": b"",
        "half.npz": good[: len(good) // 2],
        "flipped.npz": good[:100] + bytes(b ^ 0xFF for b in good[100:200]) + good[200:],
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match=name):
            jreg.load(tmp_path / name)
    plain = io.BytesIO()
    np.savez(plain, a=np.ones(3))
    (tmp_path / "plain.npz").write_bytes(plain.getvalue())
    with pytest.raises(CheckpointError, match="not a jreg checkpoint"):
        jreg.load(tmp_path / "plain.npz")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        jreg.load(tmp_path / "missing.npz")


def test_a_pickled_payload_is_refused_not_executed(tmp_path):
    """An .npz whose member is a pickled object array: np.load(allow_pickle=False) refuses it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        obj = io.BytesIO()
        np.save(obj, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
        z.writestr("params0.npy", obj.getvalue())
        header = io.BytesIO()
        np.save(header, np.frombuffer(json.dumps({"format": "jreg-checkpoint"}).encode(), np.uint8))
        z.writestr("__header__.npy", header.getvalue())
    (tmp_path / "evil.npz").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="evil.npz"):
        jreg.load(tmp_path / "evil.npz")


def test_save_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(jreg.JregTypeError, match="PRNG key array; pass keys as key="):
        jreg.save(tmp_path / "k.npz", {"k": jax.random.key(0)})
    with pytest.raises(jreg.JregTypeError, match="meta must be JSON-serializable"):
        jreg.save(tmp_path / "m.npz", {"a": jnp.ones(1)}, meta={"f": object()})
    with pytest.raises(jreg.JregError, match="step must be a non-negative int"):
        jreg.save(tmp_path / "s.npz", {"a": jnp.ones(1)}, step=-1)
    assert not list(tmp_path.iterdir())  # nothing half-written


# --------------------------------------------------------------------------- network2 JSON


def network2_feedforward_accuracy(data, x, y):
    """network2.py's feedforward on its own JSON, in NumPy."""
    a = np.asarray(x, np.float64).T  # (784, N) column vectors
    for w, b in zip(data["weights"], data["biases"]):
        a = 1 / (1 + np.exp(-(np.asarray(w) @ a + np.asarray(b))))
    return float(np.mean(np.argmax(a, axis=0) == np.asarray(y)))


def test_network2_json_round_trip_and_classification(tmp_path):
    (x, y), test = jreg.data.load_mnist_small()
    model = jreg.mlp([784, 30, 10])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-4))
    trained, _ = jreg.fit(
        obj,
        optax.sgd(0.5),
        model.init(jax.random.key(0)),
        (x, y),
        epochs=3,
        batch_size=10,
        key=jax.random.key(1),
        monitor=(),
    )
    path = jreg.save_network2(tmp_path / "net.json", trained)
    data = json.loads(path.read_text())
    assert data["sizes"] == [784, 30, 10] and data["cost"] == "CrossEntropyCost"
    assert np.shape(data["weights"][0]) == (30, 784) and np.shape(data["biases"][0]) == (30, 1)
    loaded, cost = jreg.load_network2(path)
    assert cost == "CrossEntropyCost"
    for u, v in zip(jax.tree.leaves(loaded), jax.tree.leaves(trained)):
        np.testing.assert_allclose(u, v, rtol=1e-6)
    # a network2 model file classifies the test images with the accuracy its weights imply
    expected = network2_feedforward_accuracy(data, test.x, test.y)
    assert abs(float(jreg.accuracy(model.apply, loaded, test)) - expected) < 1e-3
    assert expected > 0.8


def test_network2_json_written_by_hand_in_the_books_layout(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [4, 3, 2]
    weights = [rng.normal(size=(3, 4)), rng.normal(size=(2, 3))]  # (n_out, n_in)
    biases = [rng.normal(size=(3, 1)), rng.normal(size=(2, 1))]
    (tmp_path / "m.json").write_text(
        json.dumps(
            {
                "sizes": sizes,
                "weights": [w.tolist() for w in weights],
                "biases": [b.tolist() for b in biases],
                "cost": "QuadraticCost",
            }
        )
    )
    params, cost = jreg.load_network2(tmp_path / "m.json")
    assert cost == "QuadraticCost" and params[0]["w"].shape == (4, 3)
    x = rng.normal(size=(5, 4))
    a = x.T
    for w, b in zip(weights, biases):
        a = 1 / (1 + np.exp(-(w @ a + b)))
    model = jreg.mlp(sizes, output_activation=jax.nn.sigmoid)
    np.testing.assert_allclose(model.apply(params, jnp.asarray(x, jnp.float32)), a.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "content, match",
    [
        ("not json", "not a network2 JSON model"),
        (json.dumps({"sizes": [2, 1]}), "must be an object with 'sizes', 'weights' and 'biases'"),
        (
            json.dumps({"sizes": [2, 1], "weights": [[[1.0, 2.0]]], "biases": [[[1.0], [2.0]]]}),
            r"'biases\[0\]' must be layer 0's 1 biases, \(1, 1\) .*\(not of that shape\)",
        ),
        (json.dumps({"sizes": [2, 1], "weights": [[["a", 2.0]]], "biases": [[[1.0]]]}), "not numeric"),
        (json.dumps({"sizes": [2, 3, 1], "weights": [[[1.0, 2.0]]], "biases": [[[1.0]]]}), "one per layer of 'sizes'"),
    ],
)
def test_bad_network2_files(tmp_path, content, match):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        jreg.load_network2(tmp_path / "bad.json")


def rewrite_header(path, change):
    """Rewrite a checkpoint's JSON header in place (to forge files as an older jreg wrote them)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(arrays["__header__"].tobytes().decode())
    change(header)
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def test_model_state_round_trip_and_files_written_before_model_state_existed(tmp_path, trained):
    params, opt, state = trained
    model_state = {"batch_stats": {"mean": jnp.arange(3.0), "var": jnp.ones(3)}, "count": jnp.int32(4)}
    jreg.save(tmp_path / "s.npz", params, opt_state=state, model_state=model_state, step=3)
    ck = jreg.load(tmp_path / "s.npz", params=params, opt_state=opt.init(params), model_state=model_state)
    assert same(ck.model_state, model_state) and same(ck.params, params)
    assert same(jreg.load(tmp_path / "s.npz").model_state, model_state)  # plain containers need no template
    with pytest.raises(CheckpointError, match=r"model_state leaf 'count' is int32\[\] in the checkpoint but float32"):
        jreg.load(tmp_path / "s.npz", model_state={**model_state, "count": jnp.float32(0)})
    # a file from before model state existed: no "model_state" in its header
    jreg.save(tmp_path / "old.npz", params, opt_state=state, step=3)
    rewrite_header(tmp_path / "old.npz", lambda h: h.pop("model_state"))
    old = jreg.load(tmp_path / "old.npz", params=params, opt_state=opt.init(params))
    assert old.model_state is None and same(old.params, params)
    with pytest.raises(CheckpointError, match="holds no model state"):
        jreg.load(tmp_path / "old.npz", model_state=model_state)


def test_fit_resumes_from_a_checkpoint_written_before_the_engine(tmp_path):
    """Checkpoints of the previous format (no model_state, no history epochs, no global step) still resume."""
    model = jreg.mlp([6, 4, 3])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.01))
    x = jax.random.uniform(jax.random.key(0), (30, 6))
    data = (x, jnp.argmax(x[:, :3], axis=1))
    params, opt = model.init(jax.random.key(1)), optax.adam(1e-2)
    kw = dict(batch_size=8, key=jax.random.key(2))
    straight, hs = jreg.fit(obj, opt, params, data, epochs=4, **kw)
    jreg.fit(obj, opt, params, data, epochs=2, checkpoint=jreg.Checkpointing(tmp_path), **kw)

    def as_before(header):
        header.pop("model_state")
        for key in ("history_epochs", "global_step"):
            header["meta"].pop(key)

    rewrite_header(tmp_path / "ckpt-000002.npz", as_before)
    resumed, hr = jreg.fit(obj, opt, params, data, epochs=4, resume=tmp_path, **kw)
    assert same(straight, resumed) and hs.to_dict() == hr.to_dict()


# --------------------------------------------------------------------------- the second review's defects
# Each public entry point gives a correct result or a jreg error naming the argument.


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
