"""Checkpoints of jreg.sweep: atomic, resumed bit for bit on CPU (here and in a new process), foreign ones refused."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jreg

from .test_train import toy

ROOT = Path(__file__).resolve().parents[1]
MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
TRAIN, TEST = toy(40, seed=0), toy(30, seed=1)
KEY = jax.random.key(7)
HP = {"lmbda": [0.0, 0.01, 0.3], "eta": [0.5, 5e6, 2.0]}  # model 1 diverges in epoch 1; model 0 stops in epoch 9
RULE = jreg.EarlyStopping(patience=1, monitor="evaluation_cost", lr_factor=0.5, min_lr_scale=1 / 128, restore_best=True)
# with an EMA of the params (returned, so the best params kept are the EMA's; the stops watch the live params)
KW = dict(
    hparams=HP,
    epochs=12,
    batch_size=7,
    key=KEY,
    evaluation=TEST,
    early_stopping=RULE,
    ema=jreg.EMA(0.9, evaluate=False),
)


def build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(hp["eta"])


class Interrupted(Exception):
    pass


def interrupt_after(epoch):
    def callback(e, metrics):
        if e + 1 == epoch:
            raise Interrupted

    return callback


@functools.cache
def uninterrupted():
    return jreg.sweep(build, PARAMS, TRAIN, **KW)


def partial(folder: Path, epochs_done: int, **kwargs):
    with pytest.raises(Interrupted):
        jreg.sweep(
            build, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(folder), callback=interrupt_after(epochs_done), **KW
        )


def assert_same(result, expected):
    (params, hist), (want, want_hist) = result, expected
    for u, v in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))  # bit for bit (NaN equal to NaN)
    assert sorted(hist.keys()) == sorted(want_hist.keys())
    for name in want_hist.keys():
        np.testing.assert_array_equal(hist[name], want_hist[name], err_msg=name)
        assert hist[name].dtype == want_hist[name].dtype and hist.epochs(name) == want_hist.epochs(name)
    assert hist.stopped == want_hist.stopped and hist.diverged == want_hist.diverged


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A sweep interrupted after its first model stopped, checkpointing into its folder (tests copy it, or only
    read it)."""
    want = uninterrupted()
    assert set(want[1].diverged) == {1} and 0 in want[1].stopped  # the state to carry: a frozen and a stopped model
    stop_epoch = want[1].stopped[0]["epochs"]
    path = tmp_path_factory.mktemp("sweep") / "ck"
    partial(path, stop_epoch + 1)  # interrupted by the callback, before that epoch's save
    names = [f"ckpt-{e:06d}.npz" for e in range(stop_epoch - 2, stop_epoch + 1)]
    assert sorted(p.name for p in path.iterdir()) == names  # keep=3; atomic writes: no temporary file left
    return path


def test_resume_is_bit_exact_with_stopped_and_diverged_models(folder, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(folder, copy)
    got = jreg.sweep(build, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(copy), resume=copy, **KW)
    assert_same(got, uninterrupted())
    assert len(list(copy.iterdir())) == 3  # keep=3: the run's newest three


def test_resume_in_a_new_process_is_bit_exact(folder, tmp_path):
    want = uninterrupted()
    oldest = sorted(folder.iterdir())[0]  # before the first model stopped
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import jax, numpy as np, jreg
        from tests import test_sweep_checkpoint as t
        params, hist = jreg.sweep(t.build, t.PARAMS, t.TRAIN, resume={str(oldest)!r}, **t.KW)
        out = {{f"p{{i}}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(params))}}
        out.update({{f"h_{{k}}": hist[k] for k in hist.keys()}})
        np.savez({str(tmp_path / "out.npz")!r}, **out)
        """
    )
    # the new process runs on this one's backend (a GPU here gives a GPU there, not memory taken up front)
    # ("gpu" is no JAX_PLATFORMS value a CUDA-only jaxlib takes: it asks for ROCm too; the GPU is found unasked)
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    env.pop("JAX_PLATFORMS", None)
    if jax.default_backend() == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # bit for bit on CPU (what the docs promise); elsewhere reductions may be ordered otherwise from run to run
    same = np.testing.assert_array_equal if jax.default_backend() == "cpu" else _close
    with np.load(tmp_path / "out.npz") as saved:
        for i, leaf in enumerate(jax.tree.leaves(want[0])):
            same(saved[f"p{i}"], np.asarray(leaf))
        for name in want[1].keys():
            same(saved[f"h_{name}"], want[1][name], err_msg=name)


def _close(actual, desired, err_msg=""):
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-5, err_msg=err_msg)  # NaN equal to NaN


@pytest.mark.parametrize(
    "change, match",
    [
        (
            dict(hparams={"lmbda": [0.0, 0.01, 0.2], "eta": [0.5, 5e6, 2.0]}),
            r"trained hparams=.*0\.3.*this sweep.*0\.2",
        ),
        (dict(hparams={"lmbda": [0.0, 0.01], "eta": [0.5, 5e6]}), r"a sweep of 3 models, this sweep has 2"),
        (dict(batch_size=8), r"batch_size 8 differs from the run's 7"),
        (dict(key=jax.random.key(8)), r"key differs"),
        (dict(evaluation=jreg.Evaluation(TEST, cost_convention="network2")), r"cost_convention='jreg'"),
        (dict(ema=None), r"kept an EMA of the params, but this run keeps none"),
        (dict(ema=jreg.EMA(0.8, evaluate=False)), r"EMA.decay=0.9, this run with 0.8"),
    ],
)
def test_resume_with_another_setting_is_refused(folder, change, match):
    with pytest.raises(jreg.JregError, match=match):
        jreg.sweep(build, PARAMS, TRAIN, resume=folder, **{**KW, **change})


def test_foreign_folders_and_checkpoints_are_refused(folder, tmp_path):
    with pytest.raises(jreg.JregError, match=r"already holds checkpoints"):  # another run's folder
        jreg.sweep(build, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(folder), **KW)
    obj, opt = build({"lmbda": 0.0, "eta": 0.5})
    with pytest.raises(jreg.JregError, match=r"written by jreg.sweep .*resume it with jreg.sweep"):
        jreg.fit(obj, opt, PARAMS, TRAIN, epochs=12, batch_size=7, key=KEY, resume=folder)
    fitted = tmp_path / "fit"
    jreg.fit(obj, opt, PARAMS, TRAIN, epochs=1, batch_size=7, key=KEY, checkpoint=jreg.Checkpointing(fitted))
    with pytest.raises(jreg.JregError, match=r"written by jreg.fit \(one model\), not by jreg.sweep"):
        jreg.sweep(build, PARAMS, TRAIN, resume=fitted, **KW)
    plain = {k: v for k, v in KW.items() if k != "early_stopping"}
    without = tmp_path / "plain"
    with pytest.raises(Interrupted):
        jreg.sweep(build, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(without), callback=interrupt_after(2), **plain)
    with pytest.raises(jreg.JregError, match=r"saved without early stopping"):
        jreg.sweep(build, PARAMS, TRAIN, resume=without, **KW)


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(folder, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(folder, copy)
    newest = sorted(copy.iterdir())[-1]
    newest.write_bytes(newest.read_bytes()[:200])  # truncated, as by a crash of the disk, not of jreg
    with pytest.warns(jreg.JregWarning, match=rf"skipped {newest.name}"):
        got = jreg.sweep(build, PARAMS, TRAIN, resume=copy, **KW)
    assert_same(got, uninterrupted())  # from the one before it, to the same end


def test_resumed_without_early_stopping_the_stopped_models_go_on(folder):
    """As fit ignores a checkpoint's early-stopping state when resumed without early_stopping."""
    plain = {k: v for k, v in KW.items() if k != "early_stopping"}
    params, hist = jreg.sweep(build, PARAMS, TRAIN, resume=folder, **plain)
    stop_epoch = uninterrupted()[1].stopped[0]["epochs"]
    assert hist.stopped == {} and set(hist.diverged) == {1}  # a diverged model stays frozen
    assert len(hist) == KW["epochs"] and np.isfinite(hist["evaluation_cost"][0, stop_epoch:]).all()
    assert np.isnan(hist["evaluation_cost"][1]).all()


SMALL = dict(hparams={"lmbda": [0.0, 0.01], "eta": [0.5, 0.05]}, batch_size=7, key=KEY, evaluation=TEST)
SMALL_RULE = jreg.EarlyStopping(patience=1, monitor="evaluation_cost", restore_best=True)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A two-model sweep's checkpoint after its first epoch, with early stopping (restore_best)."""
    path = tmp_path_factory.mktemp("small") / "ck"
    jreg.sweep(build, PARAMS, TRAIN, epochs=1, early_stopping=SMALL_RULE, checkpoint=jreg.Checkpointing(path), **SMALL)
    return path / "ckpt-000001.npz"


def _forged(source: Path, target: Path, edit) -> Path:
    """``source`` with its header's ``meta["sweep"]`` replaced by ``edit(meta["sweep"])``, written to ``target``."""
    import json

    with np.load(source) as stored:
        members = {k: stored[k] for k in stored.files}
    header = json.loads(members["__header__"].tobytes())
    header["meta"]["sweep"] = edit(header["meta"]["sweep"])
    members["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(target, **members)
    return target


STOP = {"epochs": 1, "reason": "r", "best_epoch": 1, "best": 1.0, "monitor": "evaluation_cost"}


@pytest.mark.parametrize(
    "forgery, field",
    [
        (dict(history_epochs=None, history_dtypes={}), "history_epochs"),
        (dict(stopped={"²": STOP}), "stopped"),  # a digit to str.isdigit and int(), not a model number
        (dict(stopped={"0": {}}), "stopped"),  # read later by history.run and the loop
        (dict(stopped={"0": {**STOP, "epochs": "1"}}), "stopped"),
        (dict(diverged={"1": {"epoch": 5, "step": None, "quantity": "x"}}), "diverged"),  # beyond epoch 1
        (dict(stopped={"1": STOP}, diverged={"1": {"epoch": 1, "step": 2, "quantity": "x"}}), "stopped"),
    ],
)
def test_a_forged_sweep_record_is_refused(small_checkpoint, tmp_path, forgery, field):
    forged = _forged(small_checkpoint, tmp_path / "ckpt-000001.npz", lambda sweep: {**sweep, **forgery})
    with pytest.raises(jreg.CheckpointError, match=rf"meta 'sweep.{field}'"):
        jreg.sweep(build, PARAMS, TRAIN, epochs=1, early_stopping=SMALL_RULE, resume=forged, **SMALL)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = ["models", "hparams", "diverged", "stopped", "history_epochs", "history_dtypes", "early_stopping"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), value=_JSON, model=st.sampled_from(["0", "1", "9", "²", "-1"]))
def test_a_forged_sweep_record_is_a_checkpoint_error(small_checkpoint, tmp_path, field, value, model):
    """Whatever a forged ``meta["sweep"]`` holds, a resume refuses it with a jreg error (or resumes), never a raw
    traceback; fields are replaced whole, or an event of one model forged."""

    def edit(sweep):
        sweep = dict(sweep)
        if field in ("diverged", "stopped") and isinstance(value, dict) and value and model != "0":
            sweep[field] = {model: value}
        else:
            sweep[field] = value
        if field == "history_epochs" and value is None:
            sweep["history_dtypes"] = {}
        return sweep

    forged = _forged(small_checkpoint, tmp_path / "ckpt-000001.npz", edit)
    try:
        jreg.sweep(build, PARAMS, TRAIN, epochs=1, early_stopping=SMALL_RULE, resume=forged, **SMALL)
    except jreg.JregError:
        pass


@pytest.mark.parametrize("field, value", [("cuts", [0, 99]), ("stopped", [5, -1]), ("best_epoch", [-2, 0])])
def test_forged_early_stopping_arrays_are_refused(field, value, tmp_path):
    """The per-model arrays are bounded by the checkpoint's epoch and the scale table (an index JAX would clamp)."""
    from jreg.stopping import PerModel
    from jreg.train import sweep_checkpoint
    from jreg.train.early_stopping import SweepStopper
    from jreg.train.history import History

    stopper = SweepStopper(RULE, 2, 1, False)
    per = {f: np.zeros(2, np.float32 if f == "best" else np.int32) for f in PerModel._fields}
    per[field] = np.asarray(value, np.int32)
    arrays = {"step": np.zeros(2), "alive": np.ones(2, bool), "history": {}, "stopping": per}
    meta = {"history_epochs": {}, "diverged": {}, "stopped": {}}
    with pytest.raises(jreg.CheckpointError, match=rf"sweep.stopping.{field}"):
        sweep_checkpoint.unpack(arrays, meta, stopper, History(models=2), 3, tmp_path / "ckpt-000003.npz")
