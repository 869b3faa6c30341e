"""The examples run, in a tiny configuration, through the public API only."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (Flax modules) look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_examples_use_the_public_api_only(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jreg."):
            pytest.fail(f"{path.name} imports {node.module}: examples use `import jreg` names only")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            pytest.fail(f"{path.name} uses the private name {node.attr}")


def test_flax_cnn_with_batchnorm_dropout_and_l2_on_kernels(capsys):
    pytest.importorskip("flax")
    out = load("flax_cnn_batchnorm").main(["--quick"])
    stats = out["model_state"]["batch_stats"]
    assert float(jnp.abs(stats["BatchNorm_0"]["mean"]).max()) > 0  # running statistics were updated
    assert "not penalized: BatchNorm_0/bias" in capsys.readouterr().out  # L2 on the kernels only
    assert 0.0 <= out["history"].evaluation_accuracy[-1] <= 1.0


def test_equinox_model_with_state():
    pytest.importorskip("equinox")
    out = load("equinox_state").main(["--quick"])
    means = [a for a in jax.tree.leaves(out["model_state"]) if a.dtype == jnp.float32]
    assert any(float(jnp.abs(a).max()) > 0 for a in means)
    assert out["history"].evaluation_accuracy[-1] > 0.2


def test_regression_with_custom_metrics_and_batched_evaluation():
    out = load("regression_metrics").main(["--quick"])
    history = out["history"]
    assert "evaluation_accuracy" not in history
    assert history.epochs("evaluation_mse") == [5, 10]
    assert history.evaluation_mse[-1] < history.evaluation_mse[0]
    assert np.isfinite(history.evaluation_within_tolerance[-1])


def test_mixed_precision_keeps_float32_params_loss_and_parts():
    out = load("mixed_precision").main(["--quick", "--policy", "f16"])  # float16 with loss scaling
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((out["params"], out["grads"])))
    assert {v.dtype for v in out["parts"].values()} == {jnp.dtype("float32")}
    assert out["history"].evaluation_accuracy[-1] > 0.3


def test_streaming_with_checkpoint_and_bit_exact_resume():
    out = load("streaming").main(["--quick"])
    assert out["resumed_equal"]
    history = out["history"]
    assert {"epoch_loss", "evaluation_accuracy"} <= set(history.to_dict()) and len(history.epoch_loss) == 2
    assert history.epoch_loss[-1] < history.epoch_loss[0]


def test_flax_linen_adapter_with_dropout_batchnorm_and_activity():
    pytest.importorskip("flax")
    out = load("flax_linen").main(["--quick"])
    variables = out["variables"]
    assert set(variables) == {"params", "batch_stats"}
    assert float(jnp.abs(variables["batch_stats"]["BatchNorm_0"]["mean"]).max()) > 0
    assert "training_activity_l1" in out["history"]
    assert 0.2 < out["history"].evaluation_accuracy[-1] <= 1.0


def test_flax_nnx_adapter_with_dropout_and_batchnorm():
    nnx = pytest.importorskip("flax.nnx")
    out = load("flax_nnx").main(["--quick"])
    assert isinstance(out["model"], nnx.Module)
    assert float(jnp.abs(out["model"].norm.mean[...]).max()) > 0  # the running statistics came back
    assert 0.2 < out["history"].evaluation_accuracy[-1] <= 1.0


def test_equinox_adapter_with_dropout():
    eqx = pytest.importorskip("equinox")
    out = load("equinox_mlp").main(["--quick"])
    assert isinstance(out["model"], eqx.Module)
    assert 0.2 < out["history"].evaluation_accuracy[-1] <= 1.0


def test_haiku_adapter_with_dropout_and_batchnorm():
    pytest.importorskip("haiku")
    out = load("haiku_mlp").main(["--quick"])
    assert "linear" in out["params"] and out["model_state"]
    assert 0.2 < out["history"].evaluation_accuracy[-1] <= 1.0


def test_sweep_grid_trains_each_grid_point_in_one_wide_sweep(capsys):
    out = load("sweep_grid").main(["--quick"])
    history, grid = out["history"], out["grid"]
    assert history.models == 4 and len(grid["lmbda"]) == 4
    accuracy = history["evaluation_accuracy"]
    assert accuracy.shape == (4, 3) and np.all(np.isfinite(accuracy))
    assert out["best"] == int(np.argmax(np.nanmax(accuracy, axis=1)))
    assert all(leaf.shape[0] == 4 for leaf in jax.tree.leaves(out["params"]))
    assert "best: λ =" in capsys.readouterr().out


def test_selection_plots_writes_the_path_and_grid_figures(tmp_path, capsys):
    wrote = load("selection_plots").main(["--quick", "--out", str(tmp_path)])
    assert {"path", "sweep"} <= set(wrote)  # and "cv" once jreg.cross_validate is there
    for file in wrote.values():
        data = file.read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 10_000
    assert "first layer Df" in capsys.readouterr().out  # the path's table


def test_readme_quickstart_sweeps_seeds_and_resumes(capsys):
    pytest.importorskip("flax")
    out = load("readme_quickstart").main(["--quick"])
    result, best = out["result"], out["best"]
    assert result.models == 12 and sorted(set(result.hparams["seed"].tolist())) == [0, 1, 2]
    assert result.history["evaluation_accuracy"].shape == (12, 3)  # 2 epochs, then 1 more resumed
    assert best.models is None and set(best.hparams) == {"lmbda", "seed"}
    assert "not penalized: Dense_0/bias" in capsys.readouterr().out  # the audit: L2 on the kernels only


def test_readme_snippets_run_as_written(tmp_path, monkeypatch):
    """README.md's first snippet is examples/readme_quickstart.py's (run above in its quick form); every other
    python block runs as written, in order, in one namespace."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    source = (EXAMPLES / "readme_quickstart.py").read_text()
    region = textwrap.dedent(source.split("    # --- README\n")[1])
    region = region.replace("epochs=epochs", "epochs=20").replace("epochs=more", "epochs=30")

    def code(text: str) -> str:  # blank lines aside: ruff formats the README's blocks as scripts of their own
        return "\n".join(line for line in text.splitlines() if line.strip())

    assert code(blocks[0]).endswith(code(region)), "README.md's first snippet differs from the example's"
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints and model.npz into the current folder
    namespace: dict = {}
    for i, block in enumerate(blocks[1:], 2):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    assert namespace["result"].history.epochs("evaluation_accuracy")[-1] == 15


def test_grain_stream_resumes_mid_epoch_bit_for_bit():
    pytest.importorskip("grain")
    out = load("grain_stream").main(["--quick"])
    assert out["resumed_equal"]
    assert any(name.startswith("ckpt-000001-") for name in out["kept"])  # the newest kept is inside epoch 2
    assert out["history"].epochs("epoch_loss") == [1, 2]


def test_trackers_sweep_logs_16_runs_to_tensorboard_and_mlflow(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    out = load("trackers").main(["--quick", "--out", str(tmp_path)])
    names = sorted(p.name for p in out["tensorboard"].iterdir())
    assert len(names) == 16 and "lmbda=5,eta=0.2" in names
    client = MlflowClient(tracking_uri=out["mlflow"])
    runs = client.search_runs([client.get_experiment_by_name("trackers").experiment_id])
    assert sorted(r.info.run_name for r in runs) == names
    assert all(set(r.data.params) == {"lmbda", "eta"} and "evaluation_accuracy" in r.data.metrics for r in runs)
