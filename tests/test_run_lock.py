"""One writer per run folder, nothing on disk before the checks, and OS errors while writing as one line (issue 28,
items 4 and 6): a run holds an exclusive OS lock on its checkpoint folder for its lifetime; a second run or resume
into a held folder is refused at once naming the holder; kill -9 never leaves a folder locked; a refused run leaves
no folder behind; a full disk or a folder removed mid-run is a CheckpointWriteError naming the path and what was
kept. The two-process tests run each run in its own subprocess."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import jreg
from jreg import io
from jreg.train import checkpoint_folder as cf
from jreg.train.resume import resolve

from .test_checkpoint_folders import DATA, KW, MODEL, OBJ, OPT, PARAMS  # the same tiny run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not io.LOCKING, reason="no fcntl on this platform: folders are not locked")

# A run in its own process: waits until every worker named in argv[3] is ready (so that they start together), then
# fits into argv[1] (resume="auto"), sleeping argv[2] seconds after each epoch; a refused run exits 3.
WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import jax, jax.numpy as jnp, optax
    import jreg
    from jreg.train.checkpoint_folder import FolderInUseError

    folder, pause, ready, count = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    model = jreg.mlp([4, 3, 2])
    obj = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy)
    data = (jax.random.uniform(jax.random.key(1), (16, 4)), jnp.arange(16) % 2)
    (ready / f"{os.getpid()}").touch()
    while len(list(ready.iterdir())) < count:
        time.sleep(0.01)

    def slow(epoch, metrics):
        (ready / f"epoch-{os.getpid()}").touch()
        time.sleep(pause)

    try:
        jreg.fit(obj, optax.sgd(0.5), model.init(jax.random.key(0)), data, epochs=3, batch_size=4,
                 key=jax.random.key(0), checkpoint=jreg.Checkpointing(folder), resume="auto", callback=slow)
    except FolderInUseError as exc:
        print("REFUSED", exc, flush=True)
        sys.exit(3)
    print("DONE", os.getpid(), flush=True)
    """
)


def fit(epochs, **kw):
    return jreg.fit(OBJ, OPT, PARAMS, DATA, epochs=epochs, **{**KW, **kw})


def start_worker(tmp_path, folder, pause, ready, count):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, str(script), str(folder), str(pause), str(ready), str(count)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_two_runs_started_together_on_one_folder_one_wins_the_other_is_refused_naming_its_pid(tmp_path):
    folder, ready = tmp_path / "ck", tmp_path / "ready"
    ready.mkdir()
    workers = [start_worker(tmp_path, folder, 1.0, ready, 2) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    codes = sorted(w.returncode for w in workers)
    assert codes == [0, 3], outs
    winner, loser = (workers[0], workers[1]) if workers[0].returncode == 0 else (workers[1], workers[0])
    message = outs[workers.index(loser)][0]
    assert message.startswith("REFUSED checkpoint: the folder") and "is in use by" in message
    assert f"pid {winner.pid} on host {io.host_name()}" in message and message.count("\n") == 1  # one line
    assert not (ready / f"epoch-{loser.pid}").exists()  # refused before any epoch
    assert sorted(p.name for p in folder.iterdir()) == [f"ckpt-00000{e}.npz" for e in (1, 2, 3)]  # no lock file
    # the winner's run, finished, is resumed here into the same folder (same run, more epochs)
    longer = fit(5, checkpoint=jreg.Checkpointing(folder), resume=folder)
    assert leaves_equal(longer.params, fit(5).params)


def test_after_kill_9_of_the_holder_a_new_run_takes_the_folder(tmp_path):
    folder, ready = tmp_path / "ck", tmp_path / "ready"
    ready.mkdir()
    holder = start_worker(tmp_path, folder, 600.0, ready, 1)  # sleeps in its first epoch's callback
    try:
        deadline = time.monotonic() + 240
        while not (ready / f"epoch-{holder.pid}").exists():
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()
            time.sleep(0.05)
        with pytest.raises(cf.FolderInUseError, match=f"in use by pid {holder.pid} on host "):
            fit(3, checkpoint=jreg.Checkpointing(folder), resume="auto")
        with pytest.raises(cf.FolderInUseError, match=f"pid {holder.pid}"):  # a fresh run into it too
            fit(3, checkpoint=jreg.Checkpointing(folder))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=60)
    assert (folder / cf.LOCK).exists()  # left behind by kill -9, and locked by nobody
    result = fit(3, checkpoint=jreg.Checkpointing(folder), resume="auto")
    assert leaves_equal(result.params, fit(3).params)
    assert sorted(p.name for p in folder.iterdir()) == [f"ckpt-00000{e}.npz" for e in (1, 2, 3)]


def test_a_held_folder_is_refused_in_process_and_released_when_the_run_ends_even_by_an_exception(tmp_path):
    folder = tmp_path / "ck"
    seen = []

    def inside(epoch, metrics):
        assert (folder / cf.LOCK).exists()
        with pytest.raises(
            cf.FolderInUseError, match=f"in use by pid {os.getpid()} on host .* \\(run [0-9a-f]{{32}}\\)"
        ):
            fit(2, checkpoint=jreg.Checkpointing(folder), resume=folder if epoch else None)
        seen.append(epoch)
        if epoch == 1:
            raise RuntimeError("the user's callback fails")

    with pytest.raises(RuntimeError, match="callback fails"):
        fit(3, checkpoint=jreg.Checkpointing(folder), callback=inside)
    assert seen == [0, 1] and not (folder / cf.LOCK).exists()  # released by the exception
    fit(3, checkpoint=jreg.Checkpointing(folder), resume=folder)  # the same run goes on


def test_sequential_fit_then_resume_into_the_same_folder_works_unchanged(tmp_path):
    folder = tmp_path / "ck"
    fit(2, checkpoint=jreg.Checkpointing(folder, keep=5))
    resumed = fit(4, checkpoint=jreg.Checkpointing(folder, keep=5), resume=folder)
    assert leaves_equal(resumed.params, fit(4).params)
    assert sorted(p.name for p in folder.iterdir()) == [f"ckpt-00000{e}.npz" for e in range(1, 5)]
    again = fit(4, checkpoint=jreg.Checkpointing(folder, keep=5), resume="auto")  # finished: nothing to do
    assert leaves_equal(again.params, resumed.params)


def test_the_lock_file_is_never_a_checkpoint_nor_a_stray_file(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / cf.LOCK).write_text('{"pid": 1, "host": "elsewhere"}')  # a stale one, e.g. after kill -9
    assert cf.held(folder) == [] and cf.numbered(folder) == []
    fit(2, checkpoint=jreg.Checkpointing(folder))  # not "already holds checkpoints"; not locked by anyone
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-000001.npz", "ckpt-000002.npz"]
    assert resolve("auto", jreg.Checkpointing(folder), "fit") == folder


def test_a_sweep_holds_its_folder_too(tmp_path):
    folder = tmp_path / "sweep"

    def build(hp):
        return jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(hp["lam"])), OPT

    def inside(epoch, metrics):
        with pytest.raises(cf.FolderInUseError, match=f"pid {os.getpid()}"):
            fit(2, checkpoint=jreg.Checkpointing(folder))

    jreg.sweep(build, PARAMS, DATA, hparams={"lam": [0.0, 0.1]}, epochs=2, checkpoint=jreg.Checkpointing(folder),
               callback=inside, **KW)  # fmt: skip
    assert not (folder / cf.LOCK).exists()


# --------------------------------------------------------------------------- nothing on disk before the checks


def test_refused_runs_leave_no_folder(tmp_path):
    batches = [(DATA[0][i : i + 4], DATA[1][i : i + 4]) for i in range(0, 16, 4)]
    folder = tmp_path / "new" / "ck"
    with pytest.raises(jreg.JregError, match="one-shot iterator"):  # a bare generator, two epochs
        jreg.fit(OBJ, OPT, PARAMS, (b for b in batches), epochs=2, checkpoint=jreg.Checkpointing(folder), **KW)
    assert not (tmp_path / "new").exists()

    def build(hp):
        return OBJ, OPT

    with pytest.raises(jreg.JregError, match="one-shot iterator"):
        jreg.sweep(build, PARAMS, (b for b in batches), hparams={"lam": [0.0, 0.1]}, epochs=2,
                   checkpoint=jreg.Checkpointing(folder), **KW)  # fmt: skip
    assert not (tmp_path / "new").exists()
    with pytest.raises(jreg.JregError):  # bad data
        jreg.fit(OBJ, OPT, PARAMS, (DATA[0], DATA[1][:3]), epochs=2, checkpoint=jreg.Checkpointing(folder), **KW)
    with pytest.raises(jreg.JregError):  # a resume that is no checkpoint
        fit(2, checkpoint=jreg.Checkpointing(folder), resume=tmp_path / "missing.npz")
    with pytest.raises(jreg.JregError):  # an optimizer state of another optimizer
        fit(2, checkpoint=jreg.Checkpointing(folder), opt_state=optax.adam(0.1).init(PARAMS))
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- OS errors while writing


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_naming_the_path_and_what_was_kept(tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    real, calls = os.fsync, []

    def full(fd):
        calls.append(fd)
        if len(calls) == 3:  # the third checkpoint's write
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(cf.CheckpointWriteError) as caught:
        fit(4, checkpoint=jreg.Checkpointing(folder, keep=5))
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, jreg.JregError)
    assert f"cannot write {folder / 'ckpt-000003.npz'} (No space left on device)" in message
    assert "ckpt-000003.npz was not written" in message
    assert "earlier checkpoints are intact (ckpt-000001.npz, ckpt-000002.npz)" in message
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.ENOSPC
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-000001.npz", "ckpt-000002.npz"]  # no temp, no lock
    monkeypatch.setattr(os, "fsync", real)  # room again: the run goes on from its newest checkpoint
    resumed = fit(4, checkpoint=jreg.Checkpointing(folder, keep=5), resume=folder)
    assert leaves_equal(resumed.params, fit(4).params)


def test_a_folder_that_loses_its_write_permission_is_one_line_naming_the_path(tmp_path, monkeypatch):
    """A permission lost mid-run (simulated: this suite may run as root, whom chmod does not stop): the OS refuses
    the third checkpoint's temporary file with EACCES."""
    import tempfile

    folder = tmp_path / "ck"
    real, calls = tempfile.mkstemp, []

    def refused(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == folder:
            calls.append(1)
            if len(calls) == 3:
                raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(cf.CheckpointWriteError) as caught:
        fit(4, checkpoint=jreg.Checkpointing(folder, keep=5))
    message = str(caught.value)
    assert "\n" not in message and "Permission denied" in message and "ckpt-000003.npz" in message
    assert "earlier checkpoints are intact (ckpt-000001.npz, ckpt-000002.npz)" in message
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-000001.npz", "ckpt-000002.npz"]  # no temp, no lock


def test_a_folder_removed_during_the_run_is_one_line_and_is_not_made_again(tmp_path):
    folder = tmp_path / "ck"

    def remove(epoch, metrics):
        if epoch == 1:
            shutil.rmtree(folder)

    with pytest.raises(cf.CheckpointWriteError) as caught:
        fit(3, checkpoint=jreg.Checkpointing(folder), callback=remove)
    message = str(caught.value)
    assert "\n" not in message and f"cannot write {folder / 'ckpt-000002.npz'}" in message
    assert "was removed or replaced during the run" in message and not folder.exists()


def test_write_errors_of_io_are_write_errors_naming_the_path(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(io.WriteError, match=r"results.json'.*No space left on device.*nothing was replaced"):
        io.write_json(tmp_path / "results.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
