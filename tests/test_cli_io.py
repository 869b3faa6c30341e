"""The main job (`jreg demo`), safe file output and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from jreg import cli, io, plotting


def test_demo_tiny_configuration_writes_results_and_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--epochs", "3", "--hidden", "10", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["lmbda"] for r in results["runs"]] == [0.0, 0.1]
    for r in results["runs"]:
        assert 0.0 <= r["final_test_accuracy"] <= r["best_test_accuracy"] <= 1.0
        assert len(r["history"]["evaluation_accuracy"]) == 3
        for series in ("training_cost", "training_accuracy", "evaluation_cost", "evaluation_accuracy"):
            assert series in r["history"]
        assert r["weight_norm"] > 0
    assert results["config"]["sizes"] == [784, 10, 10] and results["config"]["n"] == 1000
    assert (out / "overfitting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "final test acc" in table and "weight norm" in table


def test_python_dash_m_jreg_demo(tmp_path):
    out = tmp_path / "m"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jreg",
            "demo",
            "--epochs",
            "1",
            "--hidden",
            "5",
            "--lmbda",
            "0.5",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "results.json").read_text())["runs"][0]["lmbda"] == 0.5


@pytest.mark.parametrize(
    "argv, match",
    [
        (["demo", "--epochs", "0"], "must be a positive integer"),
        (["demo", "--lmbda", "-1"], "must be a finite number >= 0"),
        (["demo", "--eta", "nan"], "must be a finite number > 0"),
        (["demo", "--init", "huge"], "invalid choice"),
    ],
)
def test_demo_bad_options(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2 and match in capsys.readouterr().err


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "results.json"
    io.write_json(path, {"a": 1})

    def broken(f):
        f.write(b'{"half": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary left behind


def test_write_json_handles_numpy_and_jax_values(tmp_path):
    import jax.numpy as jnp
    import numpy as np

    io.write_json(tmp_path / "x.json", {"np": np.float32(0.5), "arr": np.arange(3), "jax": jnp.ones(2)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"np": 0.5, "arr": [0, 1, 2], "jax": [1.0, 1.0]}


def test_plot_histories(tmp_path):
    runs = {
        "a": {"evaluation_accuracy": [0.1, 0.5], "training_cost": [2.0, 1.0]},
        "b": {"evaluation_accuracy": [0.2, 0.6], "training_cost": [2.5, 1.5]},
    }
    path = plotting.plot_histories(runs, tmp_path / "p.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = io.write_bytes(tmp_path / "new.bin", b"x")
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o600)
        io.write_bytes(path, b"y")  # an existing file keeps its mode
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_demo_reports_a_diverged_run_and_exits_non_zero(tmp_path, capsys):
    out = tmp_path / "diverged"
    argv = ["demo", "--epochs", "2", "--hidden", "5", "--eta", "1e6", "--lmbda", "0", "0.1", "--out", str(out)]
    assert cli.main([*argv, "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "λ = 0.1: training diverged in epoch 1, step" in captured.err and "try a smaller --eta" in captured.err
    assert "0.1   diverged: training diverged in epoch 1" in captured.out
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert "diverged" not in runs[0] and runs[0]["final_test_accuracy"] >= 0  # λ = 0 stays finite
    assert runs[1]["diverged"]["epoch"] == 1 and "nan" not in json.dumps(runs[1]).lower()


@pytest.mark.parametrize("overwrite", [False, True])
def test_demo_on_a_full_disk_is_one_line_and_exit_status_1(tmp_path, capsys, monkeypatch, overwrite):
    import errno

    out = tmp_path / "full"
    out.mkdir()
    (out / "results.json").write_text("old")  # kept as it was either way
    if not overwrite:
        (out / "results.json").unlink()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    argv = ["demo", "--epochs", "1", "--hidden", "5", "--out", str(out), "--quiet"]
    assert cli.main([*argv, "--overwrite"] if overwrite else argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"jreg demo: --out: cannot write {out / 'results.json'} (No space left on device); ")
    assert f"files already in {out} are as they were" in err
    assert sorted(p.name for p in out.iterdir()) == (["results.json"] if overwrite else [])  # no temporary file
    if overwrite:
        assert (out / "results.json").read_text() == "old"


def test_jreg_demo_on_a_full_disk_in_a_process_prints_no_traceback(tmp_path):
    out = tmp_path / "full"
    code = (
        "import errno, os, sys\n"
        "def full(fd):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "os.fsync = full\n"
        "from jreg import cli\n"
        f"sys.exit(cli.main(['demo', '--epochs', '1', '--hidden', '5', '--quiet', '--out', {str(out)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "No space left on device" in done.stderr and "Traceback" not in done.stderr


# issue 28, item 3: sizes before work
def test_demo_refuses_an_absurd_hidden_width_at_once(tmp_path, capsys):
    """``--hidden 99999999999`` (about 290 TiB of params) used to try the allocation and then sit for minutes in
    the finiteness check: now one line on stderr, exit status 2, before anything is allocated or written."""
    started = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--hidden", "99999999999", "--out", str(tmp_path / "out"), "--quiet"])
    assert info.value.code == 2 and time.perf_counter() - started < 30
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jreg demo: error: jreg.mlp([784, 99999999999, 10]) needs")
    assert "(784, 99999999999) float32" in err and "TiB" in err
    assert not (tmp_path / "out").exists()
