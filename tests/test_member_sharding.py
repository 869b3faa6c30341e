"""Per-member data with the members split across devices (``parallel=jreg.ModelParallel(...)``) equals one device.

A per-member data order, bootstrap resamples measured out of bag, and ``jreg.cross_validate``'s folds, on 4 virtual
CPU devices in one process (tests/member_sharding_worker.py) and on 2 processes of 2 devices each
(tests/member_distributed_worker.py, JAX's distributed runtime with gloo CPU collectives). The device count must be
set before JAX starts, so the runs happen in their own processes; these tests read what they measured.

Not bit for bit: on the mesh each device batches its own K/4 members, so XLA's batched kernels sum in another order
than the one-device program's (float reassociation, as for every ``ModelParallel`` sweep: docs/scaling.md). A
checkpoint resumed on the mesh equals the uninterrupted run on the mesh bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jreg

from .two_processes import run_pair

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5  # float reassociation only (a wrong gather, key or order moves these by 1e-2 or more)
LIMIT = 300  # seconds for the two processes together: a hung collective fails the test, never the suite


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}


@pytest.fixture(scope="module")
def measured():
    worker = ROOT / "tests" / "member_sharding_worker.py"
    done = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_four_virtual_devices(measured):
    assert measured["devices"] == 4


@pytest.mark.parametrize("case", ["per_member", "bootstrap", "cv", "cv_per_member", "cv_uneven"])
def test_split_members_equal_one_device(measured, case):
    got = measured[case]
    assert got["gap"] < TOL  # every member's params
    assert got["history_gap"] < TOL and got["same_nans"]  # every series, every member, blanked where it stopped
    assert got["spec"] == ["model"] and got["devices"] == 4  # the stacked params split along their model axis
    assert got["stopped"][0] == got["stopped"][1]  # the same members stopped


def test_the_series_are_those_of_the_run(measured):
    assert {"training_cost", "training_accuracy", "evaluation_accuracy"} <= set(measured["per_member"]["series"])
    assert {"epoch_loss", "evaluation_cost", "evaluation_accuracy"} <= set(measured["bootstrap"]["series"])


def test_each_device_gathers_its_own_members_examples(measured):
    # one training group holding every member: the index sets and the members' keys are split as the state is,
    # and the compiled epoch moves nothing between devices
    assert measured["per_member"]["key_spec"] == ["model"]
    assert measured["per_member"]["collectives"] == 0
    assert measured["bootstrap"]["index_specs"] and all(s == ["model"] for s in measured["bootstrap"]["index_specs"])
    assert measured["bootstrap"]["collectives"] == 0


def test_groups_of_unequal_training_sets_on_a_model_and_data_mesh(measured):
    got = measured["cv"]
    assert got["vectorize"] == "vmap"  # cross_validate's default "auto" with parallel=: batched on each device
    assert got["training_sizes"] == [40, 41]  # two groups of members, trained apart and joined in member order
    assert got["collectives"] > 0  # the groups' members gathered across the model axis; the data axis' means
    assert got["mean_gap"] < TOL and got["se_gap"] < TOL and got["choices"][0] == got["choices"][1]
    assert measured["cv_per_member"]["mean_gap"] < TOL and measured["cv_uneven"]["mean_gap"] < TOL


def test_a_group_that_divides_over_the_model_axis_trains_split_there(measured):
    # groups of 4 and 8 members over 4 devices: each device's loops carry 1 and 2 of them; the groups are gathered
    # out of the split state and split again once an epoch, never inside a step
    got = measured["cv_per_member"]
    assert got["group_sizes"] == [4, 8] and got["loop_rows"] == [1, 2]
    assert got["entry"] > 0 and got["loops"] == 0
    # groups of 2 and 10 members do not divide over 4 devices: each trains whole on every device
    got = measured["cv_uneven"]
    assert got["group_sizes"] == [2, 10] and got["loop_rows"] == [2, 10] and got["loops"] == 0


def test_early_stopping_and_a_checkpoint_resumed_on_the_mesh(measured):
    got = measured["bootstrap"]
    assert got["stopped"][1] and got["stop_epochs"] == [3] * len(got["stopped"][1])  # some members stop early
    assert got["best_epochs"] == [2] * len(got["stopped"][1])  # restore_best: their params of epoch 2
    resumed = got["resumed"]
    assert resumed["gap"] < TOL and resumed["history_gap"] < TOL and resumed["stopped"][1] == got["stopped"][1]
    assert got["resumed_bitwise_as_uninterrupted"]


def test_a_diverged_member_is_flagged_as_on_one_device(measured):
    got = measured["diverged"]
    assert list(got["split"]) == ["1"] and got["split"] == got["one"]  # the same epoch, step and quantity
    assert got["nan_rows"] == [1]  # its series blanked, the others' kept
    assert got["gap"] < TOL and got["history_gap"] < TOL  # the other members trained as on one device


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("indivisible_k", ["sweep: the 6 models", "'model' axis (4 devices)", "multiple of 4"]),
        ("indivisible_bootstrap", ["sweep: the 2 models", "multiple of 4"]),
        ("indivisible_cv", ["cross_validate: the 1 setting(s) x 3 folds = 3 members", "'model' axis (4 devices)"]),
        ("map", ["vectorize='map'", "vmap"]),
    ],
)
def test_members_that_do_not_split_are_refused_before_any_work(measured, case, words):
    message = measured["errors"][case]
    assert message is not None, f"{case} was accepted"
    for word in words:
        assert word in message


# --------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    """The two workers' results; skip without gloo CPU collectives."""
    out = tmp_path_factory.mktemp("member_distributed")
    run_pair(ROOT / "tests" / "member_distributed_worker.py", out, _env(), LIMIT)
    return dict(np.load(out / "results.npz"))


def _gap(got: dict, prefix: str, tree) -> float:
    leaves = jax.tree.leaves(tree)
    return max(float(np.max(np.abs(got[f"{prefix}/{i:02d}"] - np.asarray(a)))) for i, a in enumerate(leaves))


def test_members_split_over_two_processes_equal_one_process(distributed):
    from .member_distributed_worker import problem

    p = problem()
    bagged = jreg.sweep(p["build"], p["params"], p["train"], **p["bagged"])
    assert _gap(distributed, "bagged", bagged.params) < TOL
    for name in bagged.history.keys():
        np.testing.assert_allclose(distributed[f"bagged_history/{name}"], bagged.history[name], atol=TOL, rtol=0)
    assert distributed["bagged_stopped"].tolist() == sorted(bagged.history.stopped) == [0, 1, 2, 3]
    assert distributed["bagged_best_epochs"].tolist() == [1] * 4
    assert distributed["checkpoints"].tolist() == ["ckpt-000002.orbax"]  # a multi-process sweep's checkpoint
    cv = jreg.cross_validate(p["build"], p["params"], p["train"], **p["cv"])
    assert _gap(distributed, "cv", cv.params) < TOL
    np.testing.assert_allclose(distributed["cv_mean"], cv.mean, atol=TOL, rtol=0)
