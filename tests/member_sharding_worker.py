"""Run by tests/test_member_sharding.py in its own process, with 4 virtual CPU devices set before jax is used.

Per-member data (``data_order="per_member"``, ``resample="bootstrap"`` with out-of-bag evaluation, the folds of
``jreg.cross_validate``) with the members split across devices (``jreg.ModelParallel``) against the same runs on
one device; the collectives in the compiled epoch; early stopping and a checkpoint resumed on the mesh; the
refusals. Prints one JSON line of measurements; the test asserts on them.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402
from sharding_checks import COLLECTIVE, SWEEP, gap, history_gap, refusals, small_problem  # noqa: E402 - tests/, the script's folder

import jreg  # noqa: E402


def same_nans(a, b) -> bool:
    return all(np.array_equal(np.isnan(np.asarray(a[k])), np.isnan(np.asarray(b[k]))) for k in a.keys())


def compare(one, split) -> dict:
    """The gaps between a one-device result and the split one, and how the split one is laid out."""
    return {
        "gap": gap(one.params, split.params),
        "history_gap": history_gap(one.history, split.history),
        "same_nans": same_nans(one.history, split.history),
        "series": sorted(one.history.keys()),
        "spec": list(split.params[0]["w"].sharding.spec),
        "devices": len(split.params[0]["w"].sharding.device_set),
        "stopped": [sorted(one.history.stopped), sorted(split.history.stopped)],
    }


class Spy:
    """Keeps the compiled epoch's last arguments (as shapes and shardings) to read its HLO."""

    def __init__(self):
        self.program, self.captured = SWEEP.program, {}

    def __enter__(self):
        def spy(*args, **kwargs):
            epoch = self.program(*args, **kwargs)
            self.captured["members"], self.captured["vectorize"] = kwargs.get("members"), kwargs.get("vectorize")

            def call(*a, **kw):
                spec = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)  # noqa: E731
                placed = lambda v: isinstance(v, jax.Array) and len(v.sharding.device_set) > 1  # noqa: E731
                self.captured.update(epoch=epoch, args=jax.tree.map(lambda v: spec(v) if placed(v) else v, a), kw=kw)
                self.captured["index_specs"] = [
                    list(v.sharding.spec) for v in jax.tree.leaves(a[6]) if isinstance(v, jax.Array)
                ]
                self.captured["key_spec"] = list(getattr(a[5].sharding, "spec", []) or [])
                return epoch(*a, **kw)

            return call

        SWEEP.program = spy
        return self

    def __exit__(self, *exc):
        SWEEP.program = self.program

    def hlo(self) -> str:
        c = self.captured
        return c["epoch"].lower(*c["args"], **c["kw"]).compile().as_text()

    def collectives(self) -> int:
        return sum(1 for line in self.hlo().splitlines() if COLLECTIVE.search(line))

    def looped(self) -> dict:
        """The collectives inside the compiled loops (per step) and outside them (once an epoch), and the number
        of members each device's training loops carry (the leading axis of the first layer's (12, 8) weight)."""
        where, computation = {"entry": 0, "loops": 0}, None
        rows = set()
        for line in self.hlo().splitlines():
            if line and not line.startswith(" ") and line.rstrip().endswith("{"):
                computation = "entry" if line.startswith("ENTRY") else "loops"
            if COLLECTIVE.search(line):
                where[computation] += 1
            if " while(" in line:
                rows |= {int(r) for r in re.findall(r"f32\[(\d+),12,8\]", line)}
        return {**where, "loop_rows": sorted(rows)}


def main() -> None:
    out: dict = {"devices": jax.device_count()}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(61, 12)).astype(np.float32)
    y = rng.integers(0, 4, 61)
    model, p0, build, hparams = small_problem()

    mesh4 = jax.make_mesh((4,), ("model",))
    by4 = jreg.ModelParallel(mesh4)
    common = dict(epochs=2, batch_size=10, key=jax.random.key(1), vectorize="vmap")

    # each member shuffles with its own key; the held-out data shared
    kw = dict(hparams=hparams(4), data_order="per_member", evaluation=(x[:20], y[:20]), **common)
    one = jreg.sweep(build, p0, (x[20:], y[20:]), monitor=jreg.train.NETWORK2, **kw)
    with Spy() as spy:
        split = jreg.sweep(build, p0, (x[20:], y[20:]), monitor=jreg.train.NETWORK2, parallel=by4, **kw)
    out["per_member"] = {**compare(one, split), "collectives": spy.collectives(), "key_spec": spy.captured["key_spec"]}

    # a member that diverges is frozen and named as on one device, the others train on
    wild = {"lmbda": np.zeros(4), "eta": [0.01, 1e30, 0.02, 0.03]}
    kw = dict(hparams=wild, data_order="per_member", resample="bootstrap", evaluation="out_of_bag", **common)
    one = jreg.sweep(build, p0, (x, y), **kw)
    split = jreg.sweep(build, p0, (x, y), parallel=by4, **kw)
    finite = lambda tree: [np.asarray(leaf)[np.arange(4) != 1] for leaf in jax.tree.leaves(tree)]  # noqa: E731
    out["diverged"] = {
        "one": {str(k): v for k, v in one.history.diverged.items()},
        "split": {str(k): v for k, v in split.history.diverged.items()},
        "gap": gap(finite(one.params), finite(split.params)),
        "history_gap": history_gap(one.history, split.history),
        "nan_rows": [int(i) for i in np.flatnonzero(np.isnan(np.asarray(split.history["evaluation_cost"])).any(1))],
    }

    # bootstrap resamples measured out of bag, early stopping (restore_best) and a checkpoint resumed on the mesh
    rule = jreg.EarlyStopping(patience=1, monitor="evaluation_cost", min_delta=0.02, restore_best=True)  # 2 stop
    kw = dict(hparams=hparams(4), resample="bootstrap", evaluation="out_of_bag", early_stopping=rule,
              **{**common, "epochs": 4})  # fmt: skip
    one = jreg.sweep(build, p0, (x, y), **kw)
    folder = Path(tempfile.mkdtemp()) / "ckpt"
    with Spy() as spy:
        split = jreg.sweep(build, p0, (x, y), parallel=by4, checkpoint=jreg.Checkpointing(folder), **kw)
    resumed = jreg.sweep(build, p0, (x, y), parallel=by4, resume=folder / "ckpt-000002.npz", **kw)
    shutil.rmtree(folder.parent)
    out["bootstrap"] = {
        **compare(one, split),
        "collectives": spy.collectives(),
        "index_specs": spy.captured["index_specs"],
        "stop_epochs": sorted(v["epochs"] for v in one.history.stopped.values()),
        "best_epochs": [split.history.stopped[i]["best_epoch"] for i in sorted(split.history.stopped)],
        "resumed": compare(one, resumed),
        "resumed_bitwise_as_uninterrupted": gap(split.params, resumed.params) == 0.0
        and history_gap(split.history, resumed.history) == 0.0,
    }

    # cross-validation: 2 settings x 3 folds of 61 examples (folds of 21, 20, 20: two training-set sizes, two groups
    # of members) over a (model 2, data 2) mesh: the mini-batches split over the data axis too
    mesh22 = jax.make_mesh((2, 2), ("model", "data"))
    by22 = jreg.ModelParallel(mesh22, model_axis="model", data_axis="data")
    cv_kw = dict(hparams={"lmbda": [0.0, 0.01], "eta": [0.02, 0.05]}, folds=3, **common)
    one = jreg.cross_validate(build, p0, (x, y), **cv_kw)
    with Spy() as spy:
        auto = {k: v for k, v in cv_kw.items() if k != "vectorize"}  # "auto" means "vmap" with parallel=
        split = jreg.cross_validate(build, p0, (x, y), parallel=by22, **auto)
    out["cv"] = {
        **compare(one, split),
        "mean_gap": float(np.max(np.abs(one.mean - split.mean))),
        "se_gap": float(np.max(np.abs(one.se - split.se))),
        "choices": [[one.best_index, one.one_se_index], [split.best_index, split.one_se_index]],
        "vectorize": spy.captured["vectorize"],
        "training_sizes": sorted({61 - len(f) for f in one.folds}),  # two sizes: two groups of members
        "collectives": spy.collectives(),
    }
    # the same folds with each (setting, fold) member shuffling on its own key, over the 4 devices' model axis
    # (12 members: groups of 4 and 8, each split over the 4 devices again, 1 and 2 members a device)
    one = jreg.cross_validate(build, p0, (x, y), data_order="per_member", **{**cv_kw, "hparams": hparams(4)})
    with Spy() as spy:
        split = jreg.cross_validate(build, p0, (x, y), data_order="per_member", parallel=by4,
                                    **{**cv_kw, "hparams": hparams(4)})  # fmt: skip
    out["cv_per_member"] = {
        **compare(one, split),
        "mean_gap": float(np.max(np.abs(one.mean - split.mean))),
        "group_sizes": [len(g.members) for g in spy.captured["members"].groups],
        **spy.looped(),
    }

    # 2 settings x 6 folds (one fold of 11, five of 10): groups of 2 and 10 members, which do not split over 4
    # devices: each trains whole on every device (right, but no faster), the groups' figures still in member order
    uneven = {**cv_kw, "hparams": hparams(2), "folds": 6}
    one = jreg.cross_validate(build, p0, (x, y), **uneven)
    with Spy() as spy:
        split = jreg.cross_validate(build, p0, (x, y), parallel=by4, **uneven)
    out["cv_uneven"] = {
        **compare(one, split),
        "mean_gap": float(np.max(np.abs(one.mean - split.mean))),
        "group_sizes": [len(g.members) for g in spy.captured["members"].groups],
        **spy.looped(),
    }

    def never(*args):
        raise AssertionError("trained")

    attempts = {
        "indivisible_k": lambda: jreg.sweep(
            build, p0, (x, y), hparams=hparams(6), data_order="per_member", parallel=by4, callback=never, **common
        ),
        "indivisible_bootstrap": lambda: jreg.sweep(
            build,
            p0,
            (x, y),
            hparams=hparams(2),
            resample="bootstrap",
            evaluation="out_of_bag",
            parallel=by4,
            callback=never,
            **common,
        ),  # fmt: skip
        "indivisible_cv": lambda: jreg.cross_validate(
            build, p0, (x, y), hparams=hparams(1), folds=3, parallel=by4, callback=never, **common
        ),
        "map": lambda: jreg.sweep(
            build,
            p0,
            (x, y),
            hparams=hparams(4),
            data_order="per_member",
            parallel=by4,
            callback=never,
            **{**common, "vectorize": "map"},
        ),  # fmt: skip
    }
    out["errors"] = refusals(attempts)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
