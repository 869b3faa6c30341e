"""Issue 14's reliability leftovers: class counts bounded before any allocation, errors naming the keyword the
user gave (checkpoint_dir, not Checkpointing.dir), and orbax temporaries of interrupted saves cleaned safely.

(Divergence records of regularization_path and pbt members: tests/test_path.py and tests/test_pbt.py.)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jreg
from jreg._checks import MAX_CLASSES, MAX_ONE_HOT_ELEMENTS, check_one_hot_size
from jreg.stochastic import mix_targets, mixup

LABELS = jnp.array([0, 2, 1])
ONE_HOTS = [jreg.losses.one_hot, jreg.data.one_hot]


# --------------------------------------------------------------------------- 1. class counts


@pytest.fixture
def no_one_hot(monkeypatch):
    """jax.nn.one_hot must not be reached: the count is refused before anything is allocated."""

    def refuse(*args, **kwargs):
        raise AssertionError("jax.nn.one_hot was called with an absurd class count")

    monkeypatch.setattr(jax.nn, "one_hot", refuse)


@pytest.mark.parametrize("one_hot", ONE_HOTS, ids=["losses", "data"])
@pytest.mark.parametrize("classes", [2**40, np.int64(2**31), MAX_CLASSES + 1])
def test_one_hot_refuses_more_classes_than_int32_labels_address(one_hot, classes, no_one_hot):
    with pytest.raises(jreg.JregError, match=rf"classes must be at most 2147483647 .*got {int(classes)}$"):
        one_hot(LABELS, classes)
    with pytest.raises(jreg.JregError, match="classes must be at most"):
        jax.jit(lambda y: one_hot(y, classes))(LABELS)


@pytest.mark.parametrize("one_hot", ONE_HOTS, ids=["losses", "data"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_one_hot_refuses_an_array_over_the_element_limit_naming_its_size(one_hot, jit, no_one_hot):
    classes = 2**30  # 3 labels: 3 * 2**30 elements, 12 GiB as float32
    call = (lambda y: one_hot(y, classes)) if not jit else jax.jit(lambda y: one_hot(y, classes))
    with pytest.raises(jreg.JregError, match=r"classes=1073741824 for 3 labels makes a one-hot array of 3221225472"):
        call(LABELS)


def test_one_hot_at_the_limit_is_accepted_and_bool_classes_still_refused():
    # traced abstractly: the shapes are computed, nothing is allocated
    out = jax.eval_shape(lambda y: jreg.losses.one_hot(y, 2**30), jax.ShapeDtypeStruct((2,), jnp.int32))
    assert out.shape == (2, 2**30)
    with pytest.raises(jreg.JregError, match="one-hot array of 2147483650 elements"):
        jax.eval_shape(lambda y: jreg.losses.one_hot(y, 2**30 + 1), jax.ShapeDtypeStruct((2,), jnp.int32))
    with pytest.raises(jreg.JregTypeError, match="classes must be a positive integer, got bool"):
        jreg.data.one_hot(LABELS, True)
    np.testing.assert_array_equal(jreg.data.one_hot(LABELS, 3), np.eye(3)[[0, 2, 1]])  # ordinary use unchanged


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 2**20), classes=st.integers(1, 2**64))
def test_the_class_count_rule_is_exactly_the_documented_one(n, classes):
    """Refused iff classes > 2**31 - 1 or n * classes > 2**31 (the shape traced, nothing allocated)."""
    refused = classes > MAX_CLASSES or n * classes > MAX_ONE_HOT_ELEMENTS
    labels = jax.ShapeDtypeStruct((n,), jnp.int32)
    if refused:
        with pytest.raises(jreg.JregError, match="classes"):
            jax.eval_shape(lambda y: jreg.losses.one_hot(y, classes), labels)
    else:
        assert jax.eval_shape(lambda y: jreg.losses.one_hot(y, classes), labels).shape == (n, classes)


def test_check_one_hot_size_counts_every_label_axis():
    check_one_hot_size(2**20, np.empty((32, 64)))  # exactly 2**31
    with pytest.raises(jreg.JregError, match="for 2049 labels"):
        check_one_hot_size(2**20, np.empty((2049, 1)))


def test_mixing_refuses_an_absurd_class_count_before_any_work(no_one_hot):
    key, x = jax.random.key(0), jnp.ones((3, 4))
    for classes in (2**40, MAX_CLASSES + 1):
        with pytest.raises(jreg.JregError, match="classes must be at most"):
            mixup(key, x, LABELS, 0.2, classes=classes)
        with pytest.raises(jreg.JregError, match="classes must be at most"):
            mix_targets(LABELS, 0.5, jnp.arange(3), classes=classes)
    with pytest.raises(jreg.JregError, match="classes=1073741824 for 3 labels"):
        mix_targets(LABELS, 0.5, jnp.arange(3), classes=2**30)
    model = jreg.mlp([4, 3])
    objective = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy)
    for transform in (jreg.with_mixup, jreg.with_cutmix):
        with pytest.raises(jreg.JregError, match="classes must be at most 2147483647"):
            transform(objective, 0.2, classes=2**40)


# --------------------------------------------------------------------------- 2. errors name the user's argument


@functools.cache
def _problem():
    model = jreg.mlp([3, 2])
    x = jax.random.uniform(jax.random.key(1), (8, 3))
    return (
        jreg.objective(model.apply, jreg.losses.softmax_cross_entropy),
        model.init(jax.random.key(0)),
        (x, (x[:, 0] > 0.5).astype(jnp.int32)),
    )


FOLDER, MESH = object(), object()  # stand-ins for the test's folder and a one-device mesh


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(checkpoint_dir=""), jreg.JregError, r"^checkpoint_dir must be a non-empty path"),
        (dict(checkpoint_dir="ck\0x"), jreg.JregError, r"^checkpoint_dir .*NUL"),
        (dict(checkpoint_dir=b"ck"), jreg.JregTypeError, r"^checkpoint_dir must be a path as str or os.PathLike"),
        (dict(checkpoint_dir=3), jreg.JregTypeError, r"^checkpoint_dir must be a folder path, got int"),
        (dict(checkpoint_dir=FOLDER, checkpoint_every=0), jreg.JregError, r"^checkpoint_every must be a positive"),
        (dict(checkpoint_dir=FOLDER, checkpoint_every=True), jreg.JregTypeError, r"^checkpoint_every must be a pos"),
        (dict(checkpoint_dir=FOLDER, keep=-1), jreg.JregError, r"^keep must be a positive integer"),
        (dict(checkpoint_every=1.5), jreg.JregTypeError, r"^checkpoint_every must be a positive integer"),
        (dict(mesh="cpu"), jreg.JregTypeError, r"^mesh must be a jax.sharding.Mesh"),
        (dict(mesh=MESH, data_axis="batch"), jreg.JregError, r"^data_axis 'batch' is not an axis of the mesh"),
    ],
)
def test_fits_older_keywords_are_named_in_their_errors_before_any_work(kwargs, error, match, tmp_path):
    folder = tmp_path / "ck"
    fill = {id(FOLDER): folder, id(MESH): jax.make_mesh((1,), ("data",))}
    kwargs = {k: fill.get(id(v), v) for k, v in kwargs.items()}
    objective, params, data = _problem()
    with pytest.raises(error, match=match) as caught:
        jreg.fit(objective, optax.sgd(0.1), params, data, epochs=1, batch_size=4, key=jax.random.key(0), **kwargs)
    assert "Checkpointing." not in str(caught.value)  # the internal name never shows for a keyword
    assert not folder.exists()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(dir=""), jreg.JregError, r"^Checkpointing.dir must be a non-empty path"),
        (dict(dir=3), jreg.JregTypeError, r"^Checkpointing.dir must be a folder path, got int"),
        (dict(dir="ck", every=0), jreg.JregError, r"^Checkpointing.every must be a positive integer"),
        (dict(dir="ck", every=2.0), jreg.JregTypeError, r"^Checkpointing.every must be a positive integer"),
        (dict(dir="ck", keep=0), jreg.JregError, r"^Checkpointing.keep must be a positive integer"),
    ],
)
def test_checkpointing_names_its_own_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        jreg.Checkpointing(**kwargs)


# --------------------------------------------------------------------------- 3. orbax temporaries

RUN, OTHER = "a" * 32, "b" * 32


@pytest.fixture
def orbax():
    pytest.importorskip("orbax.checkpoint")
    from jreg.train import distributed_checkpoint

    return distributed_checkpoint


def _tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` (links not followed) with a file's bytes: to prove nothing changed."""
    out: dict[str, bytes | None] = {".": None}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(root, name)
            out[str(full.relative_to(path))] = full.read_bytes() if full.is_file() and not full.is_symlink() else None
    return out


def _temporary(folder: Path, source: Path, name: str, run: str | None, finalized_meta: bool = True) -> Path:
    """A crashed save's temporary: the checkpoint ``source`` copied under ``name``, recording ``run``."""
    path = folder / name
    shutil.copytree(source, path)
    record = json.loads((path / "meta" / "metadata").read_text())
    if run is None:  # interrupted before its record was written
        shutil.rmtree(path / "meta")
        return path
    record["meta"]["run"] = run
    (path / "meta" / "metadata").write_text(json.dumps(record))
    if not finalized_meta:  # orbax had not yet renamed the item's own temporary folder
        (path / "meta").rename(path / "meta.orbax-checkpoint-tmp")
    return path


def test_a_save_removes_only_its_own_runs_stale_orbax_temporaries(orbax, tmp_path):
    folder, scratch = tmp_path / "ck", tmp_path / "scratch"
    folder.mkdir()
    scratch.mkdir()
    params = {"w": jnp.arange(3.0)}
    orbax.save(scratch / "ckpt-000001.orbax", params, step=1, meta={"run": RUN})
    source = scratch / "ckpt-000001.orbax"
    stale = [
        _temporary(folder, source, "ckpt-000002.orbax.orbax-checkpoint-tmp", RUN),
        _temporary(folder, source, "ckpt-000004.orbax.orbax-checkpoint-tmp-1764201600", RUN, finalized_meta=False),
    ]
    kept = [
        _temporary(folder, source, "ckpt-000005.orbax.orbax-checkpoint-tmp", OTHER),  # another run's
        _temporary(folder, source, "ckpt-000006.orbax.orbax-checkpoint-tmp", None),  # no record: whose?
        _temporary(folder, source, "ckpt-000007.orbax.orbax-checkpoint-tmp.mine", RUN),  # not orbax's name
        _temporary(folder, source, "model.orbax.orbax-checkpoint-tmp", RUN),  # not a jreg checkpoint's
        _temporary(folder, source, "ckpt-000008.orbax.orbax-checkpoint-tmp", RUN),  # changed after the save began
    ]
    future = time.time() + 3600
    os.utime(kept[-1], (future, future))
    target = tmp_path / "elsewhere"
    _temporary(tmp_path, source, "elsewhere", RUN)
    (folder / "ckpt-000009.orbax.orbax-checkpoint-tmp").symlink_to(target, target_is_directory=True)  # a link
    (folder / "ckpt-000010.orbax.orbax-checkpoint-tmp").write_text("a file")
    before = {p.name: _tree(p) for p in [*kept, target]}
    with pytest.warns(jreg.JregWarning, match=r"left 5 temporary orbax folder\(s\) in .*ck alone: ckpt-000005") as w:
        orbax.save(folder / "ckpt-000003.orbax", params, step=3, meta={"run": RUN})
    for name in ("ckpt-000005", "ckpt-000006", "ckpt-000008", "ckpt-000009", "ckpt-000010"):
        assert name in str(w[0].message)
    assert not any(p.exists() for p in stale)
    assert {p.name: _tree(p) for p in [*kept, target]} == before
    assert (folder / "ckpt-000009.orbax.orbax-checkpoint-tmp").is_symlink()
    assert (folder / "ckpt-000010.orbax.orbax-checkpoint-tmp").read_text() == "a file"
    assert orbax.damage(folder / "ckpt-000003.orbax") is None
    with warnings.catch_warnings():  # each left-alone temporary is named once, not at every save
        warnings.simplefilter("error")
        orbax.save(folder / "ckpt-000004.orbax", params, step=4, meta={"run": RUN})
    assert {p.name: _tree(p) for p in [*kept, target]} == before


def test_a_resumed_run_removes_the_temporary_its_crashed_predecessor_left(orbax, tmp_path, monkeypatch):
    """Through fit: the resumed run carries the crashed run's id, so its next save clears that run's temporary."""
    monkeypatch.setattr(orbax, "needed", lambda tree: True)  # one process: write orbax folders all the same
    objective, params, data = _problem()
    folder = tmp_path / "ck"
    kw = dict(batch_size=4, key=jax.random.key(0), checkpoint=jreg.Checkpointing(folder, keep=5))
    jreg.fit(objective, optax.sgd(0.1), params, data, epochs=1, **kw)
    first = folder / "ckpt-000001.orbax"
    run = orbax.read_record(first)["meta"]["run"]
    crashed = _temporary(folder, first, "ckpt-000007.orbax.orbax-checkpoint-tmp", run, finalized_meta=False)
    foreign = _temporary(folder, first, "ckpt-000008.orbax.orbax-checkpoint-tmp", OTHER)
    with pytest.warns(jreg.JregWarning, match="ckpt-000008.orbax.orbax-checkpoint-tmp"):
        jreg.fit(objective, optax.sgd(0.1), params, data, epochs=2, resume=folder, **kw)
    assert sorted(p.name for p in folder.iterdir()) == [
        "ckpt-000001.orbax",
        "ckpt-000002.orbax",
        "ckpt-000008.orbax.orbax-checkpoint-tmp",
    ]
    assert not crashed.exists() and orbax.read_record(foreign)["meta"]["run"] == OTHER
