"""A checkpoint folder belongs to one run: a used folder is refused unless resuming, a run deletes and overwrites
only its own files, stray temporary files are removed only when their writer is dead, and resume falls back past
damaged checkpoints (issue 12, item 1)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import jreg
from jreg import io

MODEL = jreg.mlp([4, 3, 2])
PARAMS = MODEL.init(jax.random.key(0))
OBJ = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy)
DATA = (jax.random.uniform(jax.random.key(1), (16, 4)), jnp.arange(16) % 2)
OPT = optax.sgd(0.5)
KW = dict(batch_size=4, key=jax.random.key(0))


def fit(epochs, **kw):
    return jreg.fit(OBJ, OPT, PARAMS, DATA, epochs=epochs, **{**KW, **kw})


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry of a folder: a file's bytes, or "dir"."""
    return {p.name: ("dir" if p.is_dir() else p.read_bytes()) for p in folder.iterdir()}


def same(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def counting_objective(seen: list):
    def apply(params, x):
        seen.append(1)
        return MODEL.apply(params, x)

    return jreg.objective(apply, jreg.losses.softmax_cross_entropy)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_probe_a_second_run_in_a_used_folder_is_refused_before_any_work_and_touches_nothing(tmp_path):
    ck = tmp_path / "ck"
    fit(5, checkpoint=jreg.Checkpointing(ck, keep=3))
    before = snapshot(ck)
    assert sorted(before) == ["ckpt-000003.npz", "ckpt-000004.npz", "ckpt-000005.npz"]
    seen = []
    with pytest.raises(jreg.JregError) as info, pytest.warns(DeprecationWarning, match="jreg.Checkpointing"):
        jreg.fit(
            counting_objective(seen), OPT, PARAMS, DATA, epochs=2, batch_size=4, key=jax.random.key(9),
            checkpoint_dir=ck, keep=3,
        )  # fmt: skip  # the older keyword: the error names it
    message = str(info.value)
    assert message.startswith(f"checkpoint_dir: the folder {ck} already holds checkpoints")
    assert "ckpt-000003.npz, ckpt-000004.npz, ckpt-000005.npz" in message
    assert f"resume={str(ck)!r}" in message and "new or empty folder" in message
    assert seen == []  # the objective was never traced: no work was done
    assert snapshot(ck) == before  # byte-identical
    with pytest.raises(jreg.JregError, match=r"^checkpoint: the folder .* already holds"):
        fit(2, checkpoint=jreg.Checkpointing(ck))
    # a file of its own in an unrelated folder does not make it "used"; resuming from the folder itself is allowed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    fit(1, checkpoint=jreg.Checkpointing(tmp_path / "other"))
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["ckpt-000001.npz", "notes.txt"]
    fit(6, checkpoint=jreg.Checkpointing(ck, keep=3), resume=ck)
    fit(7, checkpoint=jreg.Checkpointing(ck, keep=3), resume=ck / "ckpt-000006.npz")
    assert sorted(p.name for p in ck.iterdir()) == ["ckpt-000005.npz", "ckpt-000006.npz", "ckpt-000007.npz"]
    # resuming from another folder does not make a used one free
    with pytest.raises(jreg.JregError, match="already holds checkpoints"):
        fit(3, checkpoint=jreg.Checkpointing(ck), resume=tmp_path / "other")


def test_a_long_listing_is_shortened_and_best_npz_counts(tmp_path):
    for e in (1, 2, 10, 11):
        jreg.save(tmp_path / f"ckpt-{e:06d}.npz", PARAMS, step=e)
    jreg.save(tmp_path / "best.npz", PARAMS)
    with pytest.raises(jreg.JregError, match=r"\(ckpt-000001.npz … best.npz \(5 files\)\)"):
        fit(1, checkpoint=jreg.Checkpointing(tmp_path))
    for p in tmp_path.glob("ckpt-*"):
        p.unlink()
    with pytest.raises(jreg.JregError, match=r"already holds checkpoints \(best.npz\)"):
        fit(1, checkpoint=jreg.Checkpointing(tmp_path))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(checkpoint_dir=5), "checkpoint_dir must be a folder path, got int"),
        (dict(checkpoint_dir=["ck"]), "checkpoint_dir must be a folder path, got list"),
        (
            dict(checkpoint=jreg.Checkpointing("ck"), resume=5),
            "resume must be a jreg.Result, a checkpoint file or folder path, or .auto.",
        ),
        (dict(resume=["ck"]), "resume must be a jreg.Result, a checkpoint file or folder path, or .auto., got list"),
        (dict(resume=b"ck"), "resume must be a jreg.Result, a checkpoint file or folder path, or .auto., got bytes"),
    ],
)
def test_a_folder_or_resume_that_is_not_a_path_is_a_type_error_before_any_work(kwargs, match):
    seen = []
    legacy = "checkpoint_dir" in kwargs  # the older keyword: deprecated, and named in the error
    older = pytest.warns(DeprecationWarning, match="jreg.Checkpointing") if legacy else contextlib.nullcontext()
    with pytest.raises(jreg.JregTypeError, match=match), older:
        jreg.fit(counting_objective(seen), OPT, PARAMS, DATA, epochs=1, **KW, **kwargs)
    assert seen == []


def test_restore_best_in_a_used_folder_is_refused(tmp_path):
    stop = jreg.EarlyStopping(patience=50, monitor="training_cost", restore_best=True)
    watched = ("training_cost",)
    fit(3, checkpoint=jreg.Checkpointing(tmp_path), early_stopping=stop, monitor=watched)
    assert (tmp_path / "best.npz").exists()
    before = snapshot(tmp_path)
    with pytest.raises(jreg.JregError, match="already holds checkpoints"):
        fit(3, checkpoint=jreg.Checkpointing(tmp_path), early_stopping=stop, key=jax.random.key(5), monitor=watched)
    assert snapshot(tmp_path) == before
    # resuming it is allowed, and keeps its own best.npz up to date
    fit(5, checkpoint=jreg.Checkpointing(tmp_path), resume=tmp_path, early_stopping=stop, monitor=watched)
    assert jreg.load(tmp_path / "best.npz").meta["run"] == jreg.load(tmp_path / "ckpt-000005.npz").meta["run"]


def test_resume_in_the_same_folder_prunes_only_its_own_files(tmp_path):
    ck, other = tmp_path / "ck", tmp_path / "other"
    fit(5, checkpoint=jreg.Checkpointing(ck, keep=3))
    fit(2, checkpoint=jreg.Checkpointing(other, keep=3), key=jax.random.key(9))  # another run: ckpt-000001, ckpt-000002
    for name in ("ckpt-000001.npz", "ckpt-000002.npz"):
        shutil.copy(other / name, ck / name)  # copied in: older by epoch number, sorted first by name
    (ck / "ckpt-7.npz").write_bytes(b"not ours either")  # a ckpt-*.npz name fit never writes
    foreign = {n: b for n, b in snapshot(ck).items() if n in ("ckpt-000001.npz", "ckpt-000002.npz", "ckpt-7.npz")}
    run = jreg.load(ck / "ckpt-000005.npz").meta["run"]
    with pytest.warns(jreg.JregWarning, match="skipped ckpt-7.npz, which cannot be read"):
        fit(8, checkpoint=jreg.Checkpointing(ck, keep=3), resume=ck)
    after = snapshot(ck)
    assert sorted(after) == sorted([*foreign, "ckpt-000006.npz", "ckpt-000007.npz", "ckpt-000008.npz"])
    assert all(after[n] == b for n, b in foreign.items())  # byte-identical
    assert {jreg.load(ck / f"ckpt-00000{e}.npz").meta["run"] for e in (6, 7, 8)} == {run}  # the run id carried over


def test_the_newest_checkpoint_is_the_highest_epoch_number_not_the_last_name(tmp_path):
    fit(3, checkpoint=jreg.Checkpointing(tmp_path, keep=3))
    (tmp_path / "ckpt-000001.npz").rename(tmp_path / "ckpt-1.npz")  # sorts after ckpt-000003.npz as a string
    seen = []
    fit(3, resume=tmp_path, callback=lambda epoch, metrics: seen.append(epoch))
    assert seen == []  # resumed from epoch 3 (not 1): nothing left to train
    fit(5, resume=tmp_path, checkpoint=jreg.Checkpointing(tmp_path, keep=2))  # pruning by epoch number too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000004.npz", "ckpt-000005.npz"]


def test_a_file_the_run_would_overwrite_but_did_not_write_is_refused_before_training(tmp_path):
    fit(5, checkpoint=jreg.Checkpointing(tmp_path, keep=3))
    (tmp_path / "ckpt-000007.npz").write_bytes(b"someone else's")
    before = snapshot(tmp_path)
    seen = []
    with pytest.raises(jreg.JregError, match=r"would write .*ckpt-000007.npz, which exists and cannot be read"):
        jreg.fit(
            counting_objective(seen), OPT, PARAMS, DATA, epochs=8, **KW, checkpoint=jreg.Checkpointing(tmp_path),
            resume=tmp_path / "ckpt-000005.npz",
        )  # fmt: skip
    assert snapshot(tmp_path) == before
    assert len(seen) > 0  # (the check needs the run id, read from the checkpoint resumed from)


def test_stray_temporary_files_are_removed_only_when_their_writer_is_dead(tmp_path):
    host, dead, live = io.host_name(), dead_pid(), os.getppid()
    gone = f".ckpt-000001.npz.{host}.{dead}.abc123.tmp"
    kept = [
        f".ckpt-000002.npz.{host}.{live}.abc123.tmp",  # a live writer, perhaps mid-save
        f".ckpt-000003.npz.{host}.{os.getpid()}.abc123.tmp",  # this very process
        f".best.npz.elsewhere-host.{dead}.abc123.tmp",  # another machine: its pids mean nothing here
        ".ckpt-000004.npz.k2j4h5.tmp",  # an older or foreign naming
    ]
    unrelated = f".notes.txt.{host}.{dead}.abc123.tmp"  # not a checkpoint's temporary file
    for name in [gone, *kept, unrelated]:
        (tmp_path / name).write_bytes(b"half a write")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(3, checkpoint=jreg.Checkpointing(tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert gone not in names and all(k in names for k in kept) and unrelated in names
    ours = [w for w in caught if issubclass(w.category, jreg.JregWarning)]
    assert len(ours) == 1  # reported once, not at each of the three saves
    text = str(ours[0].message)
    assert "left 4 temporary file(s)" in text and all(k in text for k in kept) and unrelated not in text


def test_atomic_write_names_its_writer(tmp_path):
    def write(f):
        (tmp_path / "seen").write_text(",".join(p.name for p in tmp_path.iterdir()))
        f.write(b"x")

    io.atomic_write(tmp_path / "ckpt-000001.npz", write)
    (temp,) = (tmp_path / "seen").read_text().split(",")
    assert io.temp_owner(temp) == ("ckpt-000001.npz", io.host_name(), os.getpid())
    assert not io.writer_gone(temp)
    assert io.writer_gone(temp.replace(f".{os.getpid()}.", f".{dead_pid()}."))
    assert not io.writer_gone(".ckpt-000001.npz.abcdef.tmp") and not io.writer_gone(f".a.{io.host_name()}.0.x.tmp")


def test_resume_falls_back_past_a_damaged_newest_checkpoint_and_says_so(tmp_path):
    ck = tmp_path / "ck"
    fit(4, checkpoint=jreg.Checkpointing(ck, keep=3))
    newest = ck / "ckpt-000004.npz"
    damaged = newest.read_bytes()[:200]  # truncated
    newest.write_bytes(damaged)
    want, want_history = fit(6, resume=ck / "ckpt-000003.npz")
    with pytest.warns(jreg.JregWarning) as caught:
        got, history = fit(6, resume=ck)
    assert same(got, want) and history.to_dict() == want_history.to_dict()
    (message,) = [str(w.message) for w in caught if issubclass(w.category, jreg.JregWarning)]
    assert "skipped ckpt-000004.npz, which cannot be read" in message
    assert "truncated or corrupted" in message and "resuming from ckpt-000003.npz instead" in message
    # an explicitly named file never falls back
    with pytest.raises(jreg.CheckpointError, match="truncated or corrupted"):
        fit(6, resume=newest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jreg.JregWarning)
        # resuming into the same folder would overwrite the damaged file, which the run cannot vouch for: refused
        with pytest.raises(jreg.JregError, match="ckpt-000004.npz, which exists and cannot be read"):
            fit(6, resume=ck, checkpoint=jreg.Checkpointing(ck))
    assert newest.read_bytes() == damaged


def test_a_readable_checkpoint_that_does_not_fit_is_an_error_not_a_fallback(tmp_path):
    fit(3, checkpoint=jreg.Checkpointing(tmp_path))
    (tmp_path / "ckpt-000009.npz").mkdir()  # damaged: skipped
    wide = jreg.mlp([4, 5, 2])
    wide_obj = jreg.objective(wide.apply, jreg.losses.softmax_cross_entropy)
    jreg.fit(
        wide_obj,
        OPT,
        wide.init(jax.random.key(0)),
        DATA,
        epochs=4,
        **KW,
        checkpoint=jreg.Checkpointing(tmp_path / "wide"),
    )
    shutil.copy(tmp_path / "wide" / "ckpt-000004.npz", tmp_path / "ckpt-000004.npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(jreg.CheckpointError, match=r"ckpt-000004.npz: params leaf '0/b' is float32\[5\]"):
            fit(5, resume=tmp_path)  # not a silent fallback to ckpt-000003
    assert not [w for w in caught if issubclass(w.category, jreg.JregWarning)]  # nothing resumed, nothing to say


def test_resume_with_every_checkpoint_damaged_lists_what_it_tried(tmp_path):
    fit(3, checkpoint=jreg.Checkpointing(tmp_path, keep=2))
    (tmp_path / "ckpt-000002.npz").write_bytes(os.urandom(300))
    (tmp_path / "ckpt-000003.npz").write_bytes(b"")
    (tmp_path / "ckpt-000009.npz").mkdir()
    with pytest.raises(jreg.JregError) as info:
        fit(3, resume=tmp_path)
    message = str(info.value)
    assert message.startswith(f"resume: no valid checkpoint in {tmp_path}; tried, newest first: ckpt-000009.npz")
    assert message.index("ckpt-000003.npz") < message.index("ckpt-000002.npz")


# ------------------------------------------------------------------ a property over broken folders

EPOCHS = 5
_REF: dict = {}


def reference(tmp_path_factory):
    """Straight 5 epochs; this run's checkpoints at epochs 1-3; another run's (another key) at 1-3. Made once."""
    if not _REF:
        root = tmp_path_factory.mktemp("reference")
        _REF["straight"] = fit(EPOCHS)[0]
        fit(3, checkpoint=jreg.Checkpointing(root / "a", keep=3))
        fit(3, checkpoint=jreg.Checkpointing(root / "b", keep=3), key=jax.random.key(9))
        _REF["a"] = {e: (root / "a" / f"ckpt-{e:06d}.npz").read_bytes() for e in (1, 2, 3)}
        _REF["b"] = {e: (root / "b" / f"ckpt-{e:06d}.npz").read_bytes() for e in (1, 2, 3)}
    return _REF


SLOT = st.sampled_from(["none", "none", "ours", "other", "truncated", "random", "dir"])
TEMPS = st.lists(st.sampled_from(["dead", "live", "other-host", "unknown"]), unique=True, max_size=4)

training = settings(
    max_examples=int(os.environ.get("JREG_HOSTILE_FIT_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@training
@given(
    slots=st.tuples(SLOT, SLOT, SLOT, SLOT, SLOT),
    dir9=st.booleans(),
    temps=TEMPS,
    noise=st.binary(max_size=64),
    keep=st.integers(1, 3),
)
@example(  # always tried: a resumable folder holding one of everything
    slots=("other", "random", "ours", "none", "none"),
    dir9=True,
    temps=["dead", "live", "other-host", "unknown"],
    noise=b"PK\x03\x04",
    keep=1,
)
def test_resuming_a_broken_folder_gives_the_right_result_or_a_jreg_error_and_loses_no_other_file(
    tmp_path_factory, slots, dir9, temps, noise, keep
):
    ref = reference(tmp_path_factory)
    folder = tmp_path_factory.mktemp("broken")
    kinds: dict[str, str] = {}  # entry name -> what it is
    for epoch, slot in enumerate(slots, start=1):
        name = f"ckpt-{epoch:06d}.npz"
        source = min(epoch, 3)  # files of the epochs past 3 are damaged or absent
        if slot in ("ours", "other") and epoch > 3:
            slot = "truncated"
        if slot == "ours":
            (folder / name).write_bytes(ref["a"][epoch])
        elif slot == "other":
            (folder / name).write_bytes(ref["b"][epoch])
        elif slot == "truncated":
            (folder / name).write_bytes(ref["a"][source][: len(ref["a"][source]) // 2])
        elif slot == "random":
            (folder / name).write_bytes(noise)
        elif slot == "dir":
            (folder / name).mkdir()
        if slot != "none":
            kinds[name] = slot
    if dir9:
        (folder / "ckpt-000009.npz").mkdir()
        kinds["ckpt-000009.npz"] = "dir"
    host = io.host_name()
    pids = {"dead": dead_pid(), "live": os.getpid(), "other-host": 1, "unknown": 0}
    for temp in temps:
        name = (
            f".ckpt-000004.npz.{'elsewhere' if temp == 'other-host' else host}.{pids[temp]}.x1.tmp"
            if temp != "unknown"
            else ".ckpt-000004.npz.x1y2.tmp"
        )
        (folder / name).write_bytes(b"half")
        kinds[name] = temp
    before = snapshot(folder)

    # what must happen: resume from the newest readable file if it is this run's, and only if the run would
    # overwrite nothing it cannot vouch for; anything else is a jreg error before any file changes
    readable = [(e, s) for e, s in enumerate(slots, start=1) if s in ("ours", "other") and e <= 3]
    start = readable[-1][0] if readable and readable[-1][1] == "ours" else None
    blocked = start is not None and any(s != "none" for e, s in enumerate(slots, start=1) if e > start)
    expect_success = start is not None and not blocked

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jreg.JregWarning)
        try:
            params, history = fit(EPOCHS, resume=folder, checkpoint=jreg.Checkpointing(folder, keep=keep))
        except jreg.JregError as exc:
            assert str(exc)
            assert not expect_success, f"refused a resumable folder: {exc}"
            assert snapshot(folder) == before  # an error changes nothing
            return
    assert expect_success, "resumed a folder that should have been refused"
    assert same(params, ref["straight"]) and len(history) == EPOCHS
    after = snapshot(folder)
    for name, kind in kinds.items():
        if kind == "dead":
            assert name not in after  # a dead writer's temporary file is removed by the next save
        elif kind != "ours":  # this run's own files may be pruned, nothing else may change
            assert after.get(name) == before[name], f"{name} ({kind}) was changed or deleted"
    mine = sorted(n for n in after if n.startswith("ckpt-") and kinds.get(n) in (None, "ours"))
    assert mine[-1] == f"ckpt-{EPOCHS:06d}.npz" and len(mine) <= keep


# --- found by the independent review of this change


def test_resuming_an_older_checkpoint_of_the_run_in_its_folder_is_refused_before_work(tmp_path):
    """Resuming epoch 2 of 4 into the same folder used to branch the run: with keep=1 the file just written
    (epoch 3) was pruned at once while the stale epoch 4 stayed, and a later resume failed."""
    fit(4, checkpoint=jreg.Checkpointing(tmp_path, keep=3))  # ckpt-2, 3, 4
    before = snapshot(tmp_path)
    with pytest.raises(jreg.JregError, match=r"holds later checkpoints of this run \(ckpt-000003.npz, ckpt-000004"):
        fit(3, checkpoint=jreg.Checkpointing(tmp_path, keep=1), resume=tmp_path / "ckpt-000002.npz")
    assert snapshot(tmp_path) == before
    # resuming it into another folder is the way to branch; the newest one continues in place
    fit(3, checkpoint=jreg.Checkpointing(tmp_path / "branch", keep=1), resume=tmp_path / "ckpt-000002.npz")
    assert sorted(p.name for p in (tmp_path / "branch").iterdir()) == ["ckpt-000003.npz"]
    fit(6, checkpoint=jreg.Checkpointing(tmp_path, keep=1), resume=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["ckpt-000006.npz"]


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    fit(2, checkpoint=jreg.Checkpointing(tmp_path, keep=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000002.npz"]
    fit(3, checkpoint=jreg.Checkpointing(tmp_path, keep=1), resume=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000003.npz"]


def test_a_resume_with_another_cost_convention_is_refused(tmp_path):
    """The checkpoint records how its costs were measured; one history must not mix two conventions."""
    obj = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(3.0 / 16))
    held_out = (DATA[0][:6], DATA[1][:6])
    stop = jreg.EarlyStopping(patience=3, monitor="evaluation_cost")

    def run(epochs, convention, **kw):
        return jreg.fit(
            obj,
            OPT,
            PARAMS,
            DATA,
            epochs=epochs,
            evaluation=jreg.Evaluation(held_out, cost_convention=convention),
            early_stopping=stop,
            checkpoint=jreg.Checkpointing(tmp_path),
            **{**KW, **kw},
        )

    run(2, "jreg")
    assert jreg.checkpoint.read_header(tmp_path / "ckpt-000002.npz")["meta"]["cost_convention"] == "jreg"
    with pytest.raises(jreg.JregError, match="cost_convention='jreg', this run with 'network2'"):
        run(4, "network2", resume=tmp_path)
    _, history = run(4, "jreg", resume=tmp_path)
    assert len(history["evaluation_cost"]) == 4 and history.cost_convention == "jreg"


def test_a_dangling_best_npz_link_makes_the_folder_used(tmp_path):
    """A dangling link named best.npz used to pass the check (exists() is False) and fail the first save of
    the best params, after training had begun."""
    os.symlink(tmp_path / "nowhere.npz", tmp_path / "best.npz")
    seen: list = []
    with pytest.raises(jreg.JregError, match=r"already holds checkpoints \(best.npz\)"):
        jreg.fit(
            counting_objective(seen),
            OPT,
            PARAMS,
            DATA,
            epochs=3,
            evaluation=DATA,
            early_stopping=jreg.EarlyStopping(patience=2, monitor="evaluation_cost", restore_best=True),
            checkpoint=jreg.Checkpointing(tmp_path),
            **KW,
        )
    assert seen == [] and (tmp_path / "best.npz").is_symlink()


# --------------------------------------------------------------------------- errors name the user's argument
# fit's older keywords (checkpoint_dir, not Checkpointing.dir) are checked under their own names (issue 14).


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


# --------------------------------------------------------------------------- orbax temporaries (issue 14)
# Temporary folders of interrupted orbax saves are removed only when they are the run's own and cannot be live.

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


# --------------------------------------------------------------------------- the folder rules, both formats (issue 28)
# A run's folder holds ckpt-<epoch>.npz files or ckpt-<epoch>.orbax folders; which folder a resume path continues the
# run in, and what makes a folder used, is one rule for both (checkpoint_folder.folder_of, held, is_checkpoint).


@pytest.mark.parametrize("suffix", [".npz", ".orbax"])
def test_the_folder_rules_are_the_same_for_npz_files_and_orbax_folders(tmp_path, suffix):
    from jreg.train.checkpoint_folder import check_folder, folder_of, held, is_checkpoint

    ck, other = tmp_path / "ck", tmp_path / "other"
    for folder in (ck, other):
        folder.mkdir()
        entry = folder / f"ckpt-000002{suffix}"
        entry.mkdir() if suffix == ".orbax" else entry.write_bytes(b"")
    (ck / "notes.txt").write_text("mine")
    (ck / "ckpt-000009.npz.bak").write_text("not a checkpoint's name")
    mine, theirs = ck / f"ckpt-000002{suffix}", other / f"ckpt-000002{suffix}"
    assert held(ck) == [mine.name] and is_checkpoint(mine) and folder_of(mine) == ck and folder_of(ck) == ck
    for resume in (ck, mine, str(mine), ck / "ckpt-000001.npz", ck / "ckpt-000001.orbax"):  # the folder, or one in it
        check_folder(jreg.Checkpointing(ck), resume)
    for resume in (None, other, theirs, tmp_path):  # a fresh run, or another folder's run: refused
        with pytest.raises(jreg.JregError, match=rf"the folder .*ck already holds checkpoints \({mine.name}\)"):
            check_folder(jreg.Checkpointing(ck), resume)
    link = ck / f"ckpt-000003{suffix}"
    link.symlink_to(theirs, target_is_directory=suffix == ".orbax")
    assert held(ck) == [mine.name, link.name] and not is_checkpoint(link)  # a link counts, and is never a run's own


def test_resuming_its_own_orbax_checkpoint_by_path_into_its_own_folder_is_accepted(orbax, tmp_path, monkeypatch):
    """Issue 28, item 5: refused with "already holds checkpoints" before (the orbax checkpoint is a folder, and was
    compared with the run folder itself). Now as with a .npz file: it continues the run, bit for bit."""
    monkeypatch.setattr(orbax, "needed", lambda tree: True)  # one process: write orbax folders all the same
    objective, params, data = _problem()
    folder = tmp_path / "ck"
    kw = dict(batch_size=4, key=jax.random.key(0))
    straight = jreg.fit(objective, optax.sgd(0.1), params, data, epochs=3, **kw)
    jreg.fit(objective, optax.sgd(0.1), params, data, epochs=2, checkpoint=jreg.Checkpointing(folder, keep=5), **kw)
    resumed = jreg.fit(
        objective, optax.sgd(0.1), params, data, epochs=3, resume=folder / "ckpt-000002.orbax",
        checkpoint=jreg.Checkpointing(folder, keep=5), **kw,
    )  # fmt: skip
    assert same(resumed.params, straight.params) and resumed.history.epoch_loss == straight.history.epoch_loss
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-000001.orbax", "ckpt-000002.orbax", "ckpt-000003.orbax"]
    used = tmp_path / "used"
    shutil.copytree(folder / "ckpt-000001.orbax", used / "ckpt-000001.orbax")
    with pytest.raises(jreg.JregError, match=r"the folder .*used already holds checkpoints \(ckpt-000001\.orbax\)"):
        jreg.fit(
            objective, optax.sgd(0.1), params, data, epochs=4, resume=folder / "ckpt-000003.orbax",
            checkpoint=jreg.Checkpointing(used), **kw,
        )  # fmt: skip
