"""Goldens: every front end's results on CPU, bit for bit, against SHA-256 digests recorded in tests/goldens/.

A refactor moves code, not arithmetic: these digests must not change. A change that moves bits on purpose
(for speed or accuracy) re-records them in its own commit that says so::

    JREG_RECORD_GOLDENS=1 python -m pytest tests/test_goldens.py

Each case hashes every leaf of the params, optimizer state and model state (dtype, shape and bytes) and every
history series (as float64), plus the early-stopping and divergence records.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="goldens are recorded on CPU")

FOLDER = Path(__file__).parent / "goldens"
RECORD = os.environ.get("JREG_RECORD_GOLDENS") == "1"

MODEL = jreg.mlp([6, 8, 3])
PARAMS = MODEL.init(jax.random.key(0))
MONITOR = ("training_cost", "training_accuracy", "evaluation_cost", "evaluation_accuracy")


def toy(n, seed):
    x = jax.random.uniform(jax.random.key(seed), (n, 6))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(jax.random.key(9), (6, 3)), axis=1)


TRAIN, TEST = toy(40, 0), toy(30, 1)
HP = {"lmbda": [0.0, 0.01, 0.1], "eta": [0.3, 0.5, 1.0]}


def build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(hp["eta"], momentum=0.9)


def prox_build(hp):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)
    return obj, optax.chain(optax.sgd(hp["eta"]), jreg.proximal(jreg.penalties.l1(hp["lmbda"]), hp["eta"]))


def stateful_init(key, d=6, classes=3):
    return {"w": 0.3 * jax.random.normal(key, (d, classes)), "b": jnp.zeros(classes)}, {"mean": jnp.zeros(d)}


def stateful_apply(params, x, *, state, train):
    mean = x.mean(axis=0) if train else state["mean"]
    state = {"mean": 0.8 * state["mean"] + 0.2 * x.mean(axis=0)} if train else state
    return (x - mean) @ params["w"] + params["b"], state


def digest(a) -> str:
    a = np.asarray(a)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()[:24]


def tree_digests(tree) -> dict[str, str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): digest(leaf) for path, leaf in flat}


def plain(value):
    """JSON-ready form of a stopping/divergence record (floats as their repr so no bit is lost)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return plain(np.asarray(value).tolist())
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def history_digests(history) -> dict[str, str]:
    return {name: digest(np.asarray(history[name], np.float64)) for name in sorted(history.keys())}


def record(params, history, opt_state=None, model_state=None, **extra) -> dict:
    out = {"params": tree_digests(params), "history": history_digests(history)}
    if opt_state is not None:  # in flatten order: a checkpoint's plain containers and optax's named tuples agree
        out["opt_state"] = [digest(leaf) for leaf in jax.tree.leaves(opt_state)]
    if model_state is not None:
        out["model_state"] = tree_digests(model_state)
    stopped = getattr(history, "stopped", None)
    if stopped is not None:
        out["stopped"] = plain(stopped if isinstance(stopped, dict) else dict(enumerate(stopped)))
    diverged = getattr(history, "diverged", None)
    if diverged:
        out["diverged"] = plain(dict(diverged))
    return out | {k: plain(v) for k, v in extra.items()}


def parts(out):
    """(params, model_state, opt_state, history) from a front end's result, whatever its shape."""
    if hasattr(out, "params") and hasattr(out, "history"):
        return out.params, getattr(out, "model_state", None), getattr(out, "opt_state", None), out.history
    if len(out) == 3:
        return out[0], out[1], None, out[2]
    return out[0], None, None, out[1]


def last_checkpoint(folder):
    found = sorted(Path(folder).glob("ckpt-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    return jreg.load(found[-1])


# -- the cases ---------------------------------------------------------------------------------------------


def case_fit(tmp):
    obj, opt = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.01)), optax.adam(0.05)
    out = jreg.fit(
        obj, opt, PARAMS, TRAIN, epochs=4, batch_size=8, key=jax.random.key(1), evaluation=TEST, monitor=MONITOR,
        early_stopping=jreg.EarlyStopping(monitor="evaluation_cost", patience=10),
        checkpoint=jreg.Checkpointing(tmp / "fit"),
    )  # fmt: skip
    params, state, opt_state, history = parts(out)
    opt_state = opt_state if opt_state is not None else last_checkpoint(tmp / "fit").opt_state
    return record(params, history, opt_state, state)


def case_fit_resumed(tmp):
    obj, opt = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.01)), optax.adam(0.05)
    kw = dict(epochs=4, batch_size=8, key=jax.random.key(1), evaluation=TEST, monitor=MONITOR)
    with pytest.raises(KeyboardInterrupt):

        def stop(epoch, metrics):
            if epoch == 1:
                raise KeyboardInterrupt

        jreg.fit(obj, opt, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(tmp / "res"), callback=stop, **kw)
    out = jreg.fit(obj, opt, PARAMS, TRAIN, checkpoint=jreg.Checkpointing(tmp / "res"), resume=tmp / "res", **kw)
    params, state, opt_state, history = parts(out)
    opt_state = opt_state if opt_state is not None else last_checkpoint(tmp / "res").opt_state
    return record(params, history, opt_state, state)


def case_fit_streamed(tmp):
    obj, opt = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.01)), optax.sgd(0.5)
    x, y = TRAIN
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]
    out = jreg.fit(
        obj, opt, PARAMS, batches, epochs=3, batch_size=8, key=jax.random.key(2), evaluation=TEST,
        monitor=("epoch_loss", "evaluation_cost", "evaluation_accuracy"), checkpoint=jreg.Checkpointing(tmp / "st"),
    )  # fmt: skip
    params, state, opt_state, history = parts(out)
    opt_state = opt_state if opt_state is not None else last_checkpoint(tmp / "st").opt_state
    return record(params, history, opt_state, state)


def case_fit_stateful(tmp):
    params, state = stateful_init(jax.random.key(4))
    obj = jreg.objective(stateful_apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))
    out = jreg.fit(
        obj, optax.sgd(0.3, momentum=0.9), params, TRAIN, model_state=state, epochs=3, batch_size=8,
        key=jax.random.key(5), evaluation=TEST, monitor=MONITOR, checkpoint=jreg.Checkpointing(tmp / "sf"),
    )  # fmt: skip
    params, state, opt_state, history = parts(out)
    opt_state = opt_state if opt_state is not None else last_checkpoint(tmp / "sf").opt_state
    return record(params, history, opt_state, state)


def sweep_case(vectorize):
    def case(tmp):
        out = jreg.sweep(
            build, PARAMS, TRAIN, hparams=HP, epochs=4, batch_size=8, key=jax.random.key(6), evaluation=TEST,
            monitor=MONITOR, vectorize=vectorize, checkpoint=jreg.Checkpointing(tmp / vectorize),
            early_stopping=jreg.EarlyStopping(monitor="evaluation_cost", patience=1),
        )  # fmt: skip
        params, state, opt_state, history = parts(out)
        opt_state = opt_state if opt_state is not None else last_checkpoint(tmp / vectorize).opt_state[0]
        return record(params, history, opt_state, state)

    return case


def path_case(mode):
    def case(tmp):
        path = jreg.regularization_path(
            prox_build, PARAMS, TRAIN, strengths=[0.05, 0.01, 0.002], hparams={"eta": 0.5}, mode=mode, epochs=4,
            warm_every=None if mode == "sequential" else 1, batch_size=8, key=jax.random.key(7), evaluation=TEST,
            monitor=("evaluation_accuracy", "training_cost"),
        )  # fmt: skip
        extra = {"strengths": path.strengths, "zeros": path.zeros}
        return record(path.params, path.history, getattr(path, "opt_state", None), path.model_state, **extra)

    return case


def case_pbt(tmp):
    result = jreg.pbt(
        build, PARAMS, TRAIN, hparams={"lmbda": [0.0, 0.01, 0.1, 1.0], "eta": [0.05, 0.3, 1.0, 3.0]},
        explore={"lmbda": (0.8, 1.25), "eta": (0.5, 2.0)}, bounds={"eta": (0.1, 2.5)}, every=1, epochs=4,
        batch_size=8, key=jax.random.key(3), evaluation=TEST, monitor=("evaluation_accuracy",),
    )  # fmt: skip
    extra = {"hparams": result.hparams, "lineage": result.lineage, "best": result.best}
    return record(result.params, result.history, getattr(result, "opt_state", None), result.model_state, **extra)


CASES = {
    "fit": case_fit,
    "fit_resumed": case_fit_resumed,
    "fit_streamed": case_fit_streamed,
    "fit_stateful": case_fit_stateful,
    "sweep_vmap": sweep_case("vmap"),
    "sweep_map": sweep_case("map"),
    "sweep_wide": sweep_case("wide"),
    "path_sequential": path_case("sequential"),
    "path_population": path_case("population"),
    "pbt": case_pbt,
}


def compare(expected: dict, got: dict, where: str = "") -> None:
    """Every digest recorded must be reproduced; fields recorded later (e.g. an opt_state a result newly
    returns) may be added to the golden but never change."""
    for key, value in expected.items():
        assert key in got, f"{where}{key}: recorded in the golden, missing now"
        if isinstance(value, dict):
            assert isinstance(got[key], dict), f"{where}{key}: {got[key]!r}"
            compare(value, got[key], f"{where}{key}.")
        elif isinstance(value, list) and key == "opt_state":
            assert got[key] == value, f"{where}{key}: bits moved"
        else:
            assert got[key] == value, f"{where}{key}: bits moved ({value!r} -> {got[key]!r})"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, tmp_path):
    got = json.loads(json.dumps(CASES[name](tmp_path)))
    file = FOLDER / f"{name}.json"
    if RECORD:
        FOLDER.mkdir(exist_ok=True)
        file.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return
    assert file.exists(), f"no golden {file.name}: record with JREG_RECORD_GOLDENS=1"
    compare(json.loads(file.read_text()), got)
