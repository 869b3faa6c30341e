"""Two processes on JAX's distributed runtime (127.0.0.1, gloo CPU collectives, 4 devices each) equal one process.

tests/distributed_worker.py runs in both processes: a data-parallel fit over the 8 devices (its checkpoints are
orbax folders, since no process holds its arrays whole), the fit resumed on 2 processes, a sweep whose
models are split over a model axis, a streamed fit where each process feeds its half of every batch, and a fit
into a folder another run holds (every process refuses it). This
test compares them with the same runs in this process on one device, and restores the 8-device checkpoint
here, on one device.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jreg

from .distributed_worker import EPOCHS, problem, stopping
from .two_processes import run_pair

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 240  # seconds for both processes together: a hung collective fails the test, never the suite


def launch(out: Path) -> None:
    """Run the two workers; kill both and fail with their stderr past ``LIMIT``; skip without gloo."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    run_pair(ROOT / "tests" / "distributed_worker.py", out, env, LIMIT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    launch(out)
    got = dict(np.load(out / "results.npz"))
    p = problem()
    fit = lambda epochs, **kw: jreg.fit(  # noqa: E731
        p["objective"], p["optimizer"], p["params"], p["train"], epochs=epochs, **p["common"], **kw
    )
    seen = {}  # the uninterrupted run's params after epoch EPOCHS: the reference of the 2-epoch fit
    params, history = fit(EPOCHS + 1, callback=lambda e, m, params: seen.setdefault(e, jax.device_get(params)))
    accuracy = history.evaluation_accuracy
    reference = {"fit": (seen[EPOCHS - 1], accuracy[:EPOCHS]), "resumed": (params, accuracy)}
    swept, history = jreg.sweep(
        p["build"],
        p["params"],
        p["train"],
        hparams=p["hparams"],
        epochs=EPOCHS,
        early_stopping=stopping(),
        **p["common"],
    )
    assert sorted(history.stopped) == list(range(8))  # every model stops (at epoch 2), its best epoch's params kept
    reference["sweep"] = (swept, history["evaluation_accuracy"])
    streamed, history = jreg.fit(
        p["objective"], p["optimizer"], p["params"], p["stream"](0, 1), epochs=EPOCHS, **p["common"]
    )
    reference["streamed"] = (streamed, history.epoch_loss)
    return out, got, reference, fit


def gap(got: dict, name: str, params) -> float:
    """The largest difference between run ``name``'s gathered params (``name/00``...) and ``params``."""
    mine = [got[k] for k in sorted(k for k in got if k.startswith(f"{name}/"))]
    want = [np.asarray(v) for v in jax.tree.leaves(params)]
    assert len(mine) == len(want) and all(a.shape == b.shape for a, b in zip(mine, want))
    return max(float(np.max(np.abs(a - b))) for a, b in zip(mine, want))


def test_data_parallel_fit_over_two_processes_equals_one(runs):
    _, got, reference, _ = runs
    params, accuracy = reference["fit"]
    assert gap(got, "fit", params) < 1e-5
    np.testing.assert_allclose(got["fit_accuracy"], accuracy, atol=1e-6)


def test_model_sharded_sweep_over_two_processes_equals_one(runs):
    _, got, reference, _ = runs
    params, accuracy = reference["sweep"]
    assert gap(got, "sweep", params) < 1e-5
    np.testing.assert_allclose(got["sweep_accuracy"], accuracy, atol=1e-6)
    assert int(got["local_models"]) == 2  # 8 models over a model axis of 4 devices
    assert int(got["process_models"]) == 4  # the model axis crosses the processes
    assert got["sweep_stopped"].tolist() == list(range(8)) and got["sweep_best_epochs"].tolist() == [1] * 8


def test_streamed_fit_each_process_feeding_its_half_equals_one(runs):
    _, got, reference, _ = runs
    params, loss = reference["streamed"]
    assert gap(got, "streamed", params) < 1e-5
    np.testing.assert_allclose(got["streamed_loss"], loss, rtol=1e-6)


def test_checkpoints_spanning_processes_are_orbax_folders(runs):
    out, got, _, _ = runs
    assert list(got["written"]) == ["ckpt-000001.orbax", "ckpt-000002.orbax"]  # keep=2, nothing else left
    assert sorted(q.name for q in (out / "resumed").iterdir()) == ["ckpt-000003.orbax"]
    assert sorted(q.name for q in (out / "sweep").iterdir()) == ["ckpt-000002.orbax"]  # a sweep's too (keep=1)


def test_resumed_on_two_processes_equals_the_uninterrupted_run(runs):
    _, got, reference, _ = runs
    params, accuracy = reference["resumed"]
    assert gap(got, "resumed", params) < 1e-5
    np.testing.assert_allclose(got["resumed_accuracy"], accuracy, atol=1e-6)
    assert len(got["resumed_accuracy"]) == EPOCHS + 1  # the checkpoint's history, continued


def test_a_held_folder_is_refused_by_every_process(runs):
    _, got, _, _ = runs
    # process 0 holds the lock of another run; both processes refuse the folder, naming its holder, and go on
    assert got["held_refused"].tolist() == [1, 1]


def test_eight_device_checkpoint_restored_on_one_device(runs, tmp_path):
    out, _, reference, fit = runs
    saved = out / "ckpt" / "ckpt-000002.orbax"
    params, history = fit(EPOCHS + 1, resume=saved, checkpoint=jreg.Checkpointing(tmp_path / "one"))
    want, accuracy = reference["resumed"]
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want))) < 1e-5
    assert history.evaluation_accuracy == pytest.approx(accuracy, abs=1e-6)
    assert sorted(q.name for q in (tmp_path / "one").iterdir()) == ["ckpt-000003.npz"]  # one process: .npz as ever


def test_damaged_orbax_checkpoint_refused(runs, tmp_path):
    out, _, _, fit = runs
    broken = tmp_path / "ckpt-000002.orbax"
    shutil.copytree(out / "ckpt" / "ckpt-000002.orbax", broken)
    (broken / "meta" / "metadata").unlink()
    with pytest.raises(jreg.CheckpointError, match="ckpt-000002.orbax.*not a readable orbax checkpoint"):
        fit(EPOCHS + 1, resume=broken)


def test_orbax_missing_is_a_clear_error(monkeypatch):
    from jreg.train import distributed_checkpoint

    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(jreg.JregError, match=r"pip install 'jreg\[orbax\]'"):
        distributed_checkpoint.save(Path("unused.orbax"), {})
