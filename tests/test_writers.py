"""jreg.writers: trackers read back with their own readers: K runs named by their hyperparameters, the right tags
and values, hparams attached; resumed runs append; a failing writer warns once and changes nothing."""

from __future__ import annotations

import glob
import json
import os
import struct
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.writers import JSONL, TensorBoard

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
HP = {"lmbda": [0.0, 0.01, 0.1, 1.0], "eta": [0.05, 0.3, 1.0, 3.0]}
NAMES = ["lmbda=0,eta=0.05", "lmbda=0.01,eta=0.3", "lmbda=0.1,eta=1", "lmbda=1,eta=3"]
TAGS = {"epoch_loss", "evaluation_cost", "evaluation_accuracy"}


def toy(n, seed):
    kx, _ = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


TRAIN, TEST = toy(40, 0), toy(30, 1)


def build(hp):
    objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return objective, optax.sgd(hp["eta"])


def sweep(epochs=2, **kw):
    return jreg.sweep(build, PARAMS, TRAIN, hparams=HP, epochs=epochs, batch_size=8, key=jax.random.key(1),
                      evaluation=TEST, **kw)  # fmt: skip


class Recorder:
    """A plain writer (clu's shape, no ``run``): what jreg wrote into it."""

    def __init__(self):
        self.scalars, self.hparams, self.flushed, self.closed = [], [], 0, 0

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))

    def write_hparams(self, hparams):
        self.hparams.append(dict(hparams))

    def flush(self):
        self.flushed += 1

    def close(self):
        self.closed += 1


def tensorboard_runs(logdir):
    """``{run folder: (EventAccumulator, hparams)}`` read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = {}
    for folder in sorted(os.listdir(logdir)):
        acc = EventAccumulator(os.path.join(logdir, folder))
        acc.Reload()
        content = acc.PluginTagToContent("hparams").get("_hparams_/session_start_info")
        hparams = {}
        if content is not None:
            info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
            hparams = {k: v.number_value for k, v in info.hparams.items()}
        out[folder] = (acc, hparams)
    return out


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def jsonl(path):
    return [json.loads(line) for line in open(path)]


# --------------------------------------------------------------------------- sweep: TensorBoard, JSONL, a plain writer


def test_a_sweep_writes_one_run_per_member_named_by_its_hyperparameters(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    recorder = Recorder()
    writers = [TensorBoard(tmp_path / "tb"), JSONL(tmp_path / "log.jsonl"), recorder]
    result = sweep(writers=writers)
    history = result.history

    runs = tensorboard_runs(tmp_path / "tb")
    assert sorted(runs) == sorted(NAMES)
    for i, name in enumerate(NAMES):
        acc, hparams = runs[name]
        assert TAGS <= set(acc.Tags()["scalars"])
        for tag in TAGS:
            steps, values = zip(*scalars(acc, tag))
            assert steps == (1, 2)
            np.testing.assert_allclose(values, np.asarray(history[tag])[i], rtol=1e-6)
        assert hparams == pytest.approx({k: v[i] for k, v in HP.items()})

    records = jsonl(tmp_path / "log.jsonl")
    assert {r["run"] for r in records} == set(NAMES)
    assert len({r["group"] for r in records}) == 1  # jreg's run id
    for i, name in enumerate(NAMES):
        mine = [r for r in records if r["run"] == name]
        assert [r["hparams"] for r in mine if "hparams" in r] == [pytest.approx({k: v[i] for k, v in HP.items()})]
        steps = [r for r in mine if "step" in r]
        assert [r["step"] for r in steps] == [1, 2]
        np.testing.assert_allclose([r["scalars"]["evaluation_accuracy"] for r in steps],
                                   np.asarray(history["evaluation_accuracy"])[i], rtol=1e-6)  # fmt: skip

    # the same runs, written after the fact from the result
    jreg.writers.write_history([JSONL(tmp_path / "later.jsonl")], history, hparams=result.hparams)
    later = jsonl(tmp_path / "later.jsonl")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "group"} for r in rs]  # noqa: E731
    assert strip(later) == strip(sorted(records, key=lambda r: "step" in r))  # hparams first, then each step

    # a plain writer: one run, each member's tags under its name; flushed at the end, not closed (it is the caller's)
    assert [step for step, _ in recorder.scalars] == [1, 2]
    assert set(recorder.scalars[0][1]) == {f"{n}/{t}" for n in NAMES for t in TAGS}
    assert recorder.hparams == [{f"{n}/{k}": v[i] for i, n in enumerate(NAMES) for k, v in HP.items()}]
    assert (recorder.flushed, recorder.closed) == (1, 0)


def test_a_stopped_or_diverged_members_nan_figures_are_not_written():
    recorder = Recorder()
    hp = {"lmbda": [0.0, 0.0, 0.0], "eta": [0.3, 1e30, 0.0]}  # member 1 diverges at once, member 2 never learns
    stopping = jreg.EarlyStopping(patience=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = jreg.sweep(build, PARAMS, TRAIN, hparams=hp, epochs=4, batch_size=8, key=jax.random.key(1),
                            evaluation=TEST, writers=[recorder], early_stopping=stopping)  # fmt: skip
    history = result.history
    assert 1 in history.diverged and 2 in history.stopped and history.stopped[2]["epochs"] < 4
    written = {(step, tag) for step, scalars in recorder.scalars for tag in scalars}
    names = ["lmbda=0,eta=0.3", "lmbda=0,eta=1e+30", "lmbda=0,eta=0"]
    expected = {
        (epoch, f"{name}/{tag}")
        for tag in history.keys()
        for i, name in enumerate(names)
        for epoch, value in zip(history.epochs(tag), np.asarray(history[tag])[i])
        if np.isfinite(value)
    }
    assert written == expected  # every finite figure, and only those
    assert not any(tag.startswith(names[1] + "/") for _, tag in written)
    assert max(step for step, tag in written if tag.startswith(names[2] + "/")) == history.stopped[2]["epochs"]


def test_the_writers_add_no_transfer_from_the_device(monkeypatch):
    calls = []
    real = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda tree: calls.append(1) or real(tree))
    counts = []
    for writers in (None, [Recorder()], None):
        calls.clear()
        sweep(epochs=3, writers=writers)
        counts.append(len(calls))
    assert counts[0] == counts[1] == counts[2] > 0  # the epoch's one transfer is the writers' too


# --------------------------------------------------------------------------- resume: the same runs, appended to


def test_a_resumed_sweep_appends_to_its_runs_in_mlflow_tensorboard_and_jsonl(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboardX")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "ckpt"

    def writers():
        return [jreg.writers.MLflow(uri, experiment="sweep"), TensorBoard(tmp_path / "tb"), JSONL(tmp_path / "l.jsonl")]

    sweep(epochs=2, writers=writers(), checkpoint=jreg.Checkpointing(folder, every=1, keep=5))
    # preempted after the trackers got epoch 2 but before its checkpoint: resumed from epoch 1, epoch 2 written again
    (folder / "ckpt-000002.npz").unlink()
    result = sweep(epochs=3, writers=writers(), checkpoint=jreg.Checkpointing(folder, every=1, keep=5),
                   resume=folder / "ckpt-000001.npz")  # fmt: skip
    history = result.history

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(NAMES)  # K runs, not 2K
    assert len({r.data.tags["jreg.group"] for r in runs}) == 1
    for run in runs:
        i = NAMES.index(run.info.run_name)
        assert run.data.params == {k: str(float(v[i])) for k, v in HP.items()}
        assert run.info.status == "FINISHED"
        metric = client.get_metric_history(run.info.run_id, "evaluation_accuracy")
        assert sorted({m.step for m in metric}) == [1, 2, 3]
        latest = {m.step: m.value for m in sorted(metric, key=lambda m: m.timestamp)}  # the resumed run's last
        np.testing.assert_allclose([latest[s] for s in (1, 2, 3)], np.asarray(history["evaluation_accuracy"])[i])

    tb = tensorboard_runs(tmp_path / "tb")
    assert sorted(tb) == sorted(NAMES)
    for i, name in enumerate(NAMES):  # TensorBoard's reader hides the first run's epoch 2: each step once
        steps, values = zip(*scalars(tb[name][0], "epoch_loss"))
        assert steps == (1, 2, 3)
        np.testing.assert_allclose(values, np.asarray(history["epoch_loss"])[i], rtol=1e-6)

    records = [r for r in jsonl(tmp_path / "l.jsonl") if "step" in r]
    for name in NAMES:  # the crashed run's epoch 2 was dropped from the file before the resumed run wrote it
        assert [r["step"] for r in records if r["run"] == name] == [1, 2, 3]


def test_fit_writes_one_run_and_resuming_its_result_appends(tmp_path):
    pytest.importorskip("tensorboardX")
    objective, optimizer = build({"lmbda": 0.01, "eta": 0.3})
    common = dict(batch_size=8, key=jax.random.key(1), evaluation=TEST)
    first = jreg.fit(objective, optimizer, PARAMS, TRAIN, epochs=1,
                     writers=[TensorBoard(tmp_path), JSONL(tmp_path / "fit.jsonl")], **common)  # fmt: skip
    result = jreg.fit(objective, optimizer, PARAMS, TRAIN, epochs=2, resume=first,
                      writers=[TensorBoard(tmp_path), JSONL(tmp_path / "fit.jsonl")], **common)  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    steps, values = zip(*scalars(acc, "evaluation_accuracy"))
    assert steps == (1, 2)
    np.testing.assert_allclose(values, result.history["evaluation_accuracy"], rtol=1e-6)
    records = jsonl(tmp_path / "fit.jsonl")
    assert [(r["run"], r["step"]) for r in records] == [(None, 1), (None, 2)]
    assert len({r["group"] for r in records}) == 1  # the resumed run kept the run's id: the same tracker run


def test_a_streamed_fit_writes_after_each_epoch(tmp_path):
    batches = [(TRAIN[0][i : i + 8], TRAIN[1][i : i + 8]) for i in range(0, 40, 8)]  # a stream: a list of batches
    objective, optimizer = build({"lmbda": 0.01, "eta": 0.3})
    result = jreg.fit(objective, optimizer, PARAMS, batches, epochs=2, batch_size=8, key=jax.random.key(1),
                      evaluation=TEST, writers=[JSONL(tmp_path / "s.jsonl")])  # fmt: skip
    records = jsonl(tmp_path / "s.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    np.testing.assert_allclose([r["scalars"]["epoch_loss"] for r in records], result.history["epoch_loss"], rtol=1e-6)


# --------------------------------------------------------------------------- failures warn once, never stop training


class Failing(Recorder):
    def __init__(self, at="write_scalars"):
        super().__init__()
        self.at, self.calls = at, 0

    def write_scalars(self, step, scalars):
        self.calls += 1
        if self.at == "write_scalars":
            raise OSError(28, "No space left on device")

    def write_hparams(self, hparams):
        if self.at == "write_hparams":
            raise ConnectionError("tracking server unreachable")


def test_a_failing_writer_warns_once_and_changes_nothing(tmp_path):
    plain = sweep(epochs=3)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the logdir should be")  # TensorBoard cannot make its folder
    failing, recorder = Failing(), Recorder()
    writers = [failing, Failing("write_hparams"), TensorBoard(blocked), recorder]
    with pytest.warns(jreg.JregWarning) as caught:
        result = sweep(epochs=3, writers=writers)
    messages = [str(w.message) for w in caught if issubclass(w.category, jreg.JregWarning)]
    assert len(messages) == 3  # one per failing writer, not one per epoch
    assert any("writers[0] (Failing) failed (OSError" in m and "training goes on" in m for m in messages)
    assert any("writers[1] (Failing) failed (ConnectionError: tracking server unreachable)" in m for m in messages)
    assert any("writers[2] (TensorBoard) failed" in m for m in messages)
    assert failing.calls == 1  # dropped after its first failure
    assert [step for step, _ in recorder.scalars] == [1, 2, 3]  # the healthy writer got everything
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(result.params)):
        np.testing.assert_array_equal(a, b)


def test_an_unreachable_mlflow_server_warns_once_and_training_goes_on(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries decide how long it waits
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.warns(jreg.JregWarning, match=r"writers\[0\] \(MLflow\) failed .*127\.0\.0\.1") as caught:
        result = sweep(writers=[jreg.writers.MLflow("http://127.0.0.1:9", experiment="unreachable")])
    assert len([w for w in caught if issubclass(w.category, jreg.JregWarning)]) == 1
    assert np.asarray(result.history["epoch_loss"]).shape == (4, 2)


def test_an_asynchronous_mlflow_failure_is_raised_at_a_later_call_and_reported_once():
    pytest.importorskip("mlflow")
    from jreg.writers._mlflow import _Run

    class Client:
        calls = 0

        def log_batch(self, run_id, metrics=(), params=(), synchronous=None):
            Client.calls += 1
            raise ConnectionError("lost the tracking server")  # on the background thread

        def set_terminated(self, run_id):
            pass

    class Tracker:  # a multi-run writer whose runs log asynchronously (each epoch at once) to a server that fails
        def run(self, name, *, group=None, start=0):
            return _Run(Client(), name, resumed=False)

    runs = jreg.writers.Runs([Tracker()], ["a", "b"], [{}, {}], group="g", start=0, function="sweep")
    with pytest.warns(jreg.JregWarning, match="lost the tracking server") as caught:
        for step in range(1, 6):
            runs.write(step, {"loss": np.array([1.0, 2.0])})
        runs.close()
    assert len(caught) == 1
    # the error is raised by a later call of the run that made it: at the latest the third write of run "a", which
    # waits for its first (two in flight); the writer is dropped then, so no more than 3 + 2 calls were made
    assert 1 <= Client.calls <= 5


def test_a_tensorboard_logdir_removed_while_training_does_not_stop_it(tmp_path):
    pytest.importorskip("tensorboardX")
    import shutil

    logdir = tmp_path / "tb"

    def remove(epoch, metrics):
        shutil.rmtree(logdir, ignore_errors=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jreg.JregWarning)
        result = sweep(epochs=3, writers=[TensorBoard(logdir, flush_secs=0)], callback=remove)
    assert len(result.history["epoch_loss"][0]) == 3


# --------------------------------------------------------------------------- bad input, before any work


@pytest.mark.parametrize(
    "writers, match",
    [
        ([object()], r"writers\[0\] \(object\) has no write_scalars\(\), write_hparams\(\), flush\(\), close\(\)"),
        ([Recorder(), type("NoClose", (Recorder,), {"close": None})()], r"writers\[1\] \(NoClose\) has no close\(\)"),
        (Recorder(), r"writers must be a list of writers.*pass writers=\[Recorder\(...\)\]"),
    ],
)
def test_a_writer_without_the_protocol_is_a_jreg_error_before_any_work(writers, match):
    calls = []

    def counted(hp):
        calls.append(hp)
        return build(hp)

    with pytest.raises(jreg.JregTypeError, match=match):
        jreg.sweep(counted, PARAMS, TRAIN, hparams=HP, epochs=1, batch_size=8, key=jax.random.key(1), writers=writers)
    assert calls == []
    objective, optimizer = build({"lmbda": 0.0, "eta": 0.1})
    with pytest.raises(jreg.JregTypeError, match=match.replace("sweep", "fit")):
        jreg.fit(objective, optimizer, PARAMS, TRAIN, epochs=1, batch_size=8, key=jax.random.key(1), writers=writers)


# --------------------------------------------------------------------------- path and PBT


def test_a_path_writes_one_run_per_strength_and_pbt_each_members_trajectory(tmp_path):
    strengths = [0.1, 0.01]
    for mode in ("population", "sequential"):
        path = tmp_path / f"{mode}.jsonl"
        jreg.regularization_path(build, PARAMS, TRAIN, epochs=2, batch_size=8, key=jax.random.key(1), top=1.0,
                                 strengths=strengths, hparams={"eta": 0.3}, mode=mode, writers=[JSONL(path)],
                                 evaluation=TEST)  # fmt: skip
        records = jsonl(path)
        assert sorted({r["run"] for r in records}) == ["lmbda=0.01", "lmbda=0.1"]
        for r in records:
            if "hparams" in r:
                assert r["hparams"] == pytest.approx({"lmbda": float(r["run"].split("=")[1]), "eta": 0.3})
        for name in ("lmbda=0.01", "lmbda=0.1"):
            assert [r["step"] for r in records if r["run"] == name and "step" in r] == [1, 2]

    result = jreg.pbt(build, PARAMS, TRAIN, hparams=HP, explore={"eta": (0.5, 2.0)}, every=1, epochs=3, batch_size=8,
                      key=jax.random.key(3), evaluation=TEST, writers=[JSONL(tmp_path / "pbt.jsonl")])  # fmt: skip
    records = jsonl(tmp_path / "pbt.jsonl")
    names = [f"member={i}" for i in range(4)]
    assert sorted({r["run"] for r in records}) == names
    for i, name in enumerate(names):
        steps = [r for r in records if r["run"] == name and "step" in r]
        trajectory = [r["scalars"]["hparams/eta"] for r in steps]
        np.testing.assert_allclose(trajectory, result.hparams["eta"][i], rtol=1e-6)
        assert [r["hparams"] for r in records if r["run"] == name and "hparams" in r] == [
            pytest.approx({k: v[i] for k, v in HP.items()})
        ]


# --------------------------------------------------------------------------- W&B (offline), write_runs, names


def wandb_records(path):
    """The records of an offline W&B run file (LevelDB's log format: 32 KiB blocks of checksummed chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, out, parts = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
            parts = b""
    return out


def test_wandb_offline_one_run_per_member(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = sweep(writers=[jreg.writers.WandB("jreg-test")])
    files = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 4
    seen = {}
    for path in files:
        name, config, history = None, {}, []
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name = record.run.display_name
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        seen[name] = (config, history)
    assert sorted(seen) == sorted(NAMES)
    for i, name in enumerate(NAMES):
        config, history = seen[name]
        assert {k: config[k] for k in HP} == pytest.approx({k: v[i] for k, v in HP.items()})
        assert [h["_step"] for h in history] == [1, 2]
        np.testing.assert_allclose([h["epoch_loss"] for h in history], np.asarray(result.history["epoch_loss"])[i],
                                   rtol=1e-6)  # fmt: skip


def test_write_runs_writes_finished_series_as_runs_for_folds_and_their_mean(tmp_path):
    folds = np.array([[0.5, 0.6, 0.7], [0.4, 0.5, 0.9]])
    series = {"evaluation_accuracy": np.vstack([folds, folds.mean(0)])}
    jreg.writers.write_runs([JSONL(tmp_path / "cv.jsonl")], ["fold=0", "fold=1", "mean"], [{"lmbda": 0.1}] * 3, series)
    records = [r for r in jsonl(tmp_path / "cv.jsonl") if "step" in r]
    mean = [r["scalars"]["evaluation_accuracy"] for r in records if r["run"] == "mean"]
    np.testing.assert_allclose(mean, [0.45, 0.55, 0.8])
    assert [r["step"] for r in records if r["run"] == "fold=1"] == [1, 2, 3]


def test_a_missing_tracker_package_names_its_extra(monkeypatch):
    import importlib.util
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in MISSING else real(name, *a))
    for make, module, extra in [
        (lambda: TensorBoard("runs"), "tensorboardX", "tensorboard"),
        (lambda: jreg.writers.MLflow(), "mlflow", "mlflow"),
        (lambda: jreg.writers.WandB("p"), "wandb", "wandb"),
    ]:
        MISSING[:] = [module]
        with pytest.raises(jreg.JregError, match=rf"needs the {module} package: pip install 'jreg\[{extra}\]'"):
            make()
        assert any(r.startswith(module + ">=") for r in extras[extra]), extras[extra]
    assert "jreg[tensorboard,mlflow,wandb]" in extras["test"]  # the suite tests every writer


MISSING: list[str] = []


def test_member_names_are_unique_and_readable():
    names = jreg.writers.member_names({"lmbda": np.float32([0.1, 0.1, 1e-4]), "seed": [0, 0, 2]})
    assert names == ["lmbda=0.1,seed=0,member=0", "lmbda=0.1,seed=0,member=1", "lmbda=0.0001,seed=2"]
    assert isinstance(jreg.writers.TensorBoard("x"), jreg.writers.MultiRunWriter)
    assert isinstance(Recorder(), jreg.writers.Writer)


def test_mlflow_runs_send_together_in_rounds_and_always_on_flush():
    """The runs of one writer send in rounds at least ``every`` seconds apart, and at least 50 times the CPU seconds
    of the last round apart (each call is a SQLite transaction); ``every=0`` sends each epoch at once; a bad
    ``every`` is refused before any work."""
    pytest.importorskip("mlflow")
    from jreg.writers._mlflow import SHARE, _Pace, _Run

    class Client:
        def __init__(self):
            self.calls = []

        def log_batch(self, run_id, metrics=(), params=(), synchronous=True):
            self.calls.append((run_id, [(m.key, m.value, m.step) for m in metrics]))

    now = [0.0]
    pace = _Pace(5.0, clock=lambda: now[0])
    held = Client()
    runs = [_Run(held, r, resumed=False, asynchronous=False, pace=pace) for r in ("a", "b")]
    for step in (1, 2, 3):
        for run in runs:
            run.write_scalars(step, {"loss": float(step), "acc": 0.5})
        now[0] += 1.0
    assert held.calls == []  # 3 s: no round due yet
    now[0] = 5.0
    for run in runs:
        run.write_scalars(4, {"loss": 4.0})
    assert [(r, [s for _, _, s in m]) for r, m in held.calls] == [
        ("a", [1, 1, 2, 2, 3, 3, 4]),
        ("b", [1, 1, 2, 2, 3, 3, 4]),
    ]
    pace.spent(1.0)  # the round took a CPU-second: the next one waits 1 / SHARE = 50 s, not 5
    assert 1.0 / SHARE == 50.0
    for t in (11.0, 54.0):
        now[0] = t
        runs[0].write_scalars(int(t), {"loss": 0.0})
        assert len(held.calls) == 2
    now[0] = 56.0  # 51 s after the round began (its CPU time is a second and what the fake calls took)
    runs[0].write_scalars(56, {"loss": 0.0})
    assert len(held.calls) == 3 and held.calls[-1][1] == [("loss", 0.0, 11), ("loss", 0.0, 54), ("loss", 0.0, 56)]
    runs[1].flush()  # flush sends what the run holds at once
    assert len(held.calls) == 3  # b held nothing since its round
    runs[1].write_scalars(57, {"acc": 1.0})
    assert len(held.calls) == 4 and held.calls[-1] == ("b", [("acc", 1.0, 57)])  # round 2 is b's too
    runs[0].write_scalars(57, {"acc": 1.0})
    runs[0].flush()
    assert held.calls[-1] == ("a", [("acc", 1.0, 57)])
    each = Client()
    run = _Run(each, "r", resumed=False, asynchronous=False, pace=None)
    for step in (1, 2):
        run.write_scalars(step, {"loss": float(step)})
    assert each.calls == [("r", [("loss", 1.0, 1)]), ("r", [("loss", 2.0, 2)])]
    assert jreg.writers.MLflow(every=0)._pace is None
    for bad in (-1, float("nan"), "5", True):
        with pytest.raises(jreg.JregTypeError, match="every must be a finite number of seconds"):
            jreg.writers.MLflow(every=bad)


def test_a_cross_validation_writes_one_run_per_fold_and_the_mean_over_the_folds(tmp_path):
    """Each (setting, fold) member is a run named by both, written as it trains; then one run per setting holds
    the mean over the folds and its standard error, as ``cv.mean`` and ``cv.se`` give them."""
    path = tmp_path / "cv.jsonl"
    cv = jreg.cross_validate(
        build, PARAMS, TRAIN, hparams={"lmbda": [0.01, 1.0], "eta": [0.3, 0.3]}, folds=2, epochs=2, batch_size=8,
        key=jax.random.key(1), writers=[JSONL(path)],
    )  # fmt: skip
    records = jsonl(path)
    runs = {r["run"] for r in records}
    names = ["lmbda=0.01,eta=0.3", "lmbda=1,eta=0.3"]
    assert runs == {f"{n},fold={f}" for n in names for f in ("0", "1", "mean")}
    for s, name in enumerate(names):
        mean = [r for r in records if r["run"] == f"{name},fold=mean" and "scalars" in r]
        assert [r["step"] for r in mean] == cv.measured_epochs.tolist()
        np.testing.assert_allclose([r["scalars"]["evaluation_cost"] for r in mean], cv.mean[s], rtol=1e-6)
        np.testing.assert_allclose([r["scalars"]["evaluation_cost_se"] for r in mean], cv.se[s], rtol=1e-6)
        fold = [r for r in records if r["run"] == f"{name},fold=1" and "scalars" in r]
        member = np.asarray(cv.history["evaluation_cost"])[cv.member(s, 1)]
        np.testing.assert_allclose([r["scalars"]["evaluation_cost"] for r in fold], member, rtol=1e-6)
