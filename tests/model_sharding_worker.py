"""Run by tests/test_model_sharding.py in its own process, with 8 virtual CPU devices set before jax is used.

A sweep split across devices (``jreg.ModelParallel``) against the same sweep on one device, the collectives
in its compiled epoch, and the meshes it refuses. Prints one JSON line of measurements; the test asserts on them.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
from sharding_checks import COLLECTIVE, SWEEP, gap, history_gap, refusals, small_problem  # noqa: E402 - tests/, the script's folder

import jreg  # noqa: E402


def reduced_axes(hlo: str, mesh: jax.sharding.Mesh) -> list[list[str]]:
    """For each collective in the compiled program, the mesh axes it communicates over."""
    found = []
    for line in hlo.splitlines():
        if not COLLECTIVE.search(line):
            continue
        named = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
        if named:  # replica_groups=mesh['axis_0'=4,'axis_1'=2,...] {'axis_1'}: over the named positional axes
            axes = re.findall(r"'axis_(\d+)'", named.group(2))
            found.append(sorted(mesh.axis_names[int(i)] for i in axes))
            continue
        groups = re.search(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", line)
        assert groups, f"unreadable collective: {line.strip()[:300]}"
        ids = np.vectorize(lambda d: d.id)(mesh.devices)
        axes = set()
        for group in re.findall(r"\{([\d,]*)\}", groups.group(1)):
            where = np.array([np.argwhere(ids == int(d))[0] for d in group.split(",") if d])
            axes |= {mesh.axis_names[i] for i in range(ids.ndim) if len(set(where[:, i])) > 1}
        found.append(sorted(axes))
    return found


def main() -> None:
    out: dict = {"devices": jax.device_count()}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 12)).astype(np.float32)
    y = rng.integers(0, 4, 80)
    model, p0, build, hparams = small_problem()

    common = dict(
        epochs=2, batch_size=16, key=jax.random.key(1), evaluation=(x[:24], y[:24]), monitor=jreg.train.NETWORK2
    )
    captured = {}
    program = SWEEP.program

    def spy(*args, **kwargs):  # keep the compiled epoch's arguments (as shapes and shardings) to read its HLO
        epoch = program(*args, **kwargs)

        def call(*a, **kw):
            spec = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)  # noqa: E731
            placed = lambda v: isinstance(v, jax.Array) and len(v.sharding.device_set) > 1  # noqa: E731
            captured.update(epoch=epoch, args=jax.tree.map(lambda v: spec(v) if placed(v) else v, a), kw=kw)
            return epoch(*a, **kw)

        return call

    SWEEP.program = spy
    cases = {
        "model8_k8": ((8,), ("model",), None, 8, None),
        "model4_data2_k16": ((4, 2), ("model", "data"), "data", 16, jreg.EMA(0.9)),
    }
    for name, (shape, axes, data_axis, k, ema) in cases.items():
        one, h1 = jreg.sweep(build, p0, (x, y), hparams=hparams(k), ema=ema, **common)
        mesh = jax.make_mesh(shape, axes)
        parallel = jreg.ModelParallel(mesh, model_axis="model", data_axis=data_axis)
        split, hs = jreg.sweep(build, p0, (x, y), hparams=hparams(k), ema=ema, parallel=parallel, **common)
        hlo = captured["epoch"].lower(*captured["args"], **captured["kw"]).compile().as_text()
        out[name] = {
            "gap": gap(one, split),
            "history_gap": history_gap(h1, hs),
            "series": sorted(h1.keys()),
            "spec": list(split[0]["w"].sharding.spec),
            "shard_rows": split[0]["w"].addressable_shards[0].data.shape[0],
            "collectives": reduced_axes(hlo, mesh),
        }
    SWEEP.program = program

    # a model that diverges is frozen and named the same way when the models are split across devices; with
    # early stopping (every other model stops at epoch 2, keeping its epoch-1 params) and a checkpoint resumed
    wild = {"lmbda": np.zeros(8), "eta": [0.01, 0.02, 1e30, 0.03, 0.01, 0.005, 0.04, 0.02]}
    rule = jreg.EarlyStopping(patience=1, monitor="evaluation_cost", min_delta=100.0, restore_best=True)
    one, h1 = jreg.sweep(build, p0, (x, y), hparams=wild, early_stopping=rule, **common)
    parallel = jreg.ModelParallel(jax.make_mesh((8,), ("model",)))
    folder = Path(tempfile.mkdtemp()) / "ckpt"
    split, hs = jreg.sweep(
        build, p0, (x, y), hparams=wild, parallel=parallel, early_stopping=rule,
        checkpoint=jreg.Checkpointing(folder), **common,
    )  # fmt: skip
    resumed, hr = jreg.sweep(
        build, p0, (x, y), hparams=wild, parallel=parallel, early_stopping=rule, resume=folder / "ckpt-000001.npz",
        **common,
    )  # fmt: skip
    shutil.rmtree(folder.parent)
    finite = lambda tree: [np.asarray(leaf)[np.arange(8) != 2] for leaf in jax.tree.leaves(tree)]  # noqa: E731
    out["diverged"] = {
        "one": {str(k): v for k, v in h1.diverged.items()},
        "split": {str(k): v for k, v in hs.diverged.items()},
        "gap": gap(finite(one), finite(split)),
        "nan_rows": [int(i) for i in np.flatnonzero(np.isnan(np.asarray(hs["training_cost"])).any(axis=1))],
        "stopped": sorted(hs.stopped) if hs.stopped.keys() == h1.stopped.keys() else "differ",
        "best_epochs": sorted({v["best_epoch"] for v in hs.stopped.values()}),
        "resumed_gap": gap(finite(one), finite(resumed)),
        "resumed_history_gap": float(
            max(np.nanmax(np.abs(np.asarray(hr[k]) - np.asarray(h1[k])), initial=0.0) for k in h1.keys())
        ),
        "resumed_events": hr.stopped.keys() == h1.stopped.keys() and hr.diverged == h1.diverged,
    }

    mesh8 = jax.make_mesh((8,), ("model",))
    mesh42 = jax.make_mesh((4, 2), ("model", "data"))
    attempts = {
        "axis_missing": lambda: jreg.ModelParallel(mesh8, model_axis="models"),
        "data_axis_missing": lambda: jreg.ModelParallel(mesh8, data_axis="data"),
        "same_axis": lambda: jreg.ModelParallel(mesh8, data_axis="model"),
        "not_a_mesh": lambda: jreg.ModelParallel("model"),
        "indivisible_k": lambda: jreg.sweep(
            build, p0, (x, y), hparams=hparams(6), parallel=jreg.ModelParallel(mesh8), **common
        ),
        "indivisible_batch": lambda: jreg.sweep(
            build,
            p0,
            (x, y),
            hparams=hparams(4),
            parallel=jreg.ModelParallel(mesh42, data_axis="data"),
            **{**common, "batch_size": 15},
        ),
        "data_parallel": lambda: jreg.sweep(
            build, p0, (x, y), hparams=hparams(8), parallel=jreg.DataParallel(mesh42), **common
        ),
        "map": lambda: jreg.sweep(
            build, p0, (x, y), hparams=hparams(8), parallel=jreg.ModelParallel(mesh8), vectorize="map", **common
        ),
    }
    out["errors"] = refusals(attempts)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
