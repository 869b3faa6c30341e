"""Data-parallel fit on a mesh of 8 virtual CPU devices equals one device (up to float reassociation).

XLA_FLAGS must be set before jax is imported, so the checks run in their own process
(tests/sharding_worker.py); this test reads what it measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def measured():
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(HERE / "sharding_worker.py")], capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_eight_virtual_devices(measured):
    assert measured["devices"] == 8


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_data_parallel_equals_one_device(measured, opt):
    assert measured[f"{opt}_data_parallel_gap"] < 1e-5
    one, eight = measured[f"{opt}_accuracy"]
    assert abs(one[-1] - eight[-1]) <= 1e-3
    assert measured[f"{opt}_sharding"] == []  # params replicated


def test_params_sharded_along_a_model_axis(measured):
    assert measured["model_sharded_gap"] < 1e-5
    assert measured["model_sharded_spec"] == [None, "model"]
    assert measured["model_sharded_shard_shape"] == [784, 15]  # each device holds half of the 30 units


def test_the_compiled_epoch_reduces_gradients_across_devices(measured):
    assert measured["all_reduce_in_program"]


def test_batch_size_must_split_evenly(measured):
    assert "batch_size must be a multiple of the mesh's 'data' axis (8 devices)" in measured["indivisible_error"]


def test_example_script_runs_on_four_virtual_devices(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(HERE.parent / "examples" / "data_parallel.py"), "--epochs", "1", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "4 devices" in done.stdout and "test accuracy" in done.stdout
