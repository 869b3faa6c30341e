"""Each experiment script runs end to end in a tiny configuration (embedded data, 1 epoch, 1 seed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = sorted((p.name for p in EXPERIMENTS.glob("e[0-9]*_*.py")), key=lambda name: int(name[1:].split("_")[0]))


def test_all_experiments_are_here():
    assert [s.split("_")[0] for s in SCRIPTS] == [f"e{i}" for i in range(1, 14)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_experiment_runs_in_a_tiny_configuration(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXPERIMENTS / script), "--quick", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        # the script's folder comes first on sys.path, not the checkout: import this checkout's jreg, not an
        # installed one
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["summary"]
    if script.startswith("e5"):
        # the report's identities hold even after a tiny training run
        s = results["summary"]
        assert s["max |dJ/d output (logits z): with - without penalty|"] == 0.0
        assert s["max |SGD step on J - weight-decay update (1 - ηλ/n) w - η dC0/dw|"] < 1e-12
    elif not script.startswith("e7"):
        assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_e1_cost_convention_changes_the_test_cost_only(tmp_path):
    """--cost-convention network2: the same training and accuracies; the test cost carries λ/(2·len(test))."""
    summaries = {}
    for convention in ("jreg", "network2"):
        out = tmp_path / convention
        done = subprocess.run(
            [sys.executable, str(EXPERIMENTS / "e1_overfitting.py"), "--quick", "--seeds", "1", "--epochs", "2"]
            + ["--out", str(out), "--cost-convention", convention],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        results = json.loads((out / "results.json").read_text())
        assert results["cost_convention"] == convention
        summaries[convention] = results["summary"]
    for lmbda in ("lmbda=0", "lmbda=0.1"):
        a, b = summaries["jreg"][lmbda], summaries["network2"][lmbda]
        for key in ("final_test_accuracy", "final_training_accuracy", "final_training_cost"):
            assert a[key] == b[key], (lmbda, key)
    assert summaries["jreg"]["lmbda=0"]["final_test_cost"] == summaries["network2"]["lmbda=0"]["final_test_cost"]
    # 1,000 training images, 1,000 test images in --quick: the same size, so the same figure
    assert summaries["jreg"]["lmbda=0.1"]["final_test_cost"] == summaries["network2"]["lmbda=0.1"]["final_test_cost"]
