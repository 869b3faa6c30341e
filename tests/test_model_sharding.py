"""A sweep's models split across 8 virtual CPU devices (``jreg.ModelParallel``) equal the one-device sweep.

The device count must be set before JAX starts, so the checks run in their own process
(tests/model_sharding_worker.py); this test reads what it measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def measured():
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    worker = ROOT / "tests" / "model_sharding_worker.py"
    done = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_eight_virtual_devices(measured):
    assert measured["devices"] == 8


@pytest.mark.parametrize("case", ["model8_k8", "model4_data2_k16"])
def test_model_sharded_sweep_equals_one_device(measured, case):
    got = measured[case]
    assert got["gap"] < 1e-5  # params (EMA params in the second case): float reassociation only
    assert got["history_gap"] < 1e-5  # every series, every model
    assert "evaluation_accuracy" in got["series"] and "training_cost" in got["series"]
    assert got["spec"] == ["model"]  # the stacked params are split along their model axis


def test_each_device_holds_its_own_models(measured):
    assert measured["model8_k8"]["shard_rows"] == 1  # 8 models over 8 devices
    assert measured["model4_data2_k16"]["shard_rows"] == 4  # 16 models over a model axis of 4


def test_no_communication_across_models(measured):
    assert measured["model8_k8"]["collectives"] == []  # nothing at all: each device trains its own models
    reductions = measured["model4_data2_k16"]["collectives"]
    assert reductions and all(axes == ["data"] for axes in reductions)  # gradient means over the data axis only


def test_a_diverged_model_is_flagged_as_on_one_device(measured):
    got = measured["diverged"]
    assert list(got["split"]) == ["2"] and got["split"] == got["one"]  # the same epoch, step and quantity
    assert got["nan_rows"] == [2]  # its series blanked, the others' kept
    assert got["gap"] < 1e-5  # the other seven models trained as on one device
    assert got["stopped"] == [0, 1, 3, 4, 5, 6, 7] and got["best_epochs"] == [1]  # early stopping, restore_best


def test_early_stopping_and_a_checkpoint_resumed_on_the_mesh_equal_one_device(measured):
    got = measured["diverged"]
    assert got["resumed_events"] and got["resumed_gap"] < 1e-5 and got["resumed_history_gap"] < 1e-5


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("axis_missing", ["model_axis 'models'", "('model',)"]),
        ("data_axis_missing", ["data_axis 'data'", "('model',)"]),
        ("same_axis", ["two different mesh axes"]),
        ("not_a_mesh", ["JregTypeError", "jax.sharding.Mesh"]),
        ("indivisible_k", ["6 models", "'model' axis (8 devices)", "multiple of 8"]),
        ("indivisible_batch", ["batch_size must be a multiple of the mesh's 'data' axis (2 devices)", "got 15"]),
        ("data_parallel", ["JregTypeError", "jreg.ModelParallel", "DataParallel"]),
        ("map", ["vectorize='map'", "vmap"]),
    ],
)
def test_bad_meshes_refused(measured, case, words):
    message = measured["errors"][case]
    assert message is not None, f"{case} was accepted"
    for word in words:
        assert word in message
