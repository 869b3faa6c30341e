"""One of the processes of tests/test_distributed.py: JAX's distributed runtime on 127.0.0.1, CPU collectives (gloo).

``python tests/distributed_worker.py PROCESS_ID PORT OUT_DIR`` (twice, process ids 0 and 1), 4 virtual CPU
devices each, 8 in all. Every process holds the whole (small) data set; jreg places it on the global mesh.
The processes run, together:

* a data-parallel ``fit`` over all 8 devices (mesh axis ``data``), checkpointing every epoch: its arrays
  span both processes, so the checkpoints are orbax folders (``OUT_DIR/ckpt/ckpt-<epoch>.orbax``);
* a sweep of K=8 models split over a ``model`` axis of 4 devices (which crosses the two processes: each
  holds 4 models), each mini-batch over a ``data`` axis of 2, with early stopping (``restore_best``) and
  checkpoints (orbax folders);
* the fit resumed from its epoch-2 checkpoint for one more epoch (restored onto 2 processes);
* a data-parallel ``fit`` on a stream (``problem()["stream"]``) where each process's source yields only its
  own half of every global batch (docs/streaming.md), the last batch one that 8 devices cannot split evenly.

Process 0 writes the results (gathered with ``process_allgather``) to ``OUT_DIR/results.npz``. Exit code 3:
this jaxlib has no gloo CPU collectives (the test skips).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

EPOCHS, BATCH = 2, 16


def stopping():
    """Every model stops at epoch 2 (no gain can beat min_delta), its params those of epoch 1 (restore_best)."""
    import jreg

    return jreg.EarlyStopping(patience=1, monitor="evaluation_cost", min_delta=100.0, restore_best=True)


def problem():
    """The data, model, objective and sweep shared by the workers and the test's single-process references."""
    import jax
    import optax

    import jreg

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 10)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = jreg.mlp([10, 8, 3])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-3))

    def build(hp):
        penalty = jreg.penalties.l2(hp["lmbda"])
        return jreg.objective(model.apply, jreg.losses.cross_entropy, penalty), optax.sgd(hp["eta"])

    hparams = {"lmbda": np.linspace(0.0, 0.01, 8), "eta": np.linspace(0.05, 0.4, 8)}

    def stream(process: int, processes: int) -> jreg.Stream:
        """54 examples in global batches of 16 (the last holds 6, which 8 devices cannot split evenly), the order
        seeded by the epoch; process ``process`` yields its contiguous part of every global batch."""

        def source(epoch):
            order = np.random.default_rng([5, epoch]).permutation(54)
            for start in range(0, 54, BATCH):
                idx = order[start : start + BATCH]
                part = len(idx) // processes
                idx = idx[process * part : (process + 1) * part]
                yield x[idx], y[idx]

        return jreg.Stream(source, chunk=2)

    common = dict(batch_size=BATCH, key=jax.random.key(1), evaluation=(x[:16], y[:16]))
    return dict(
        train=(x, y),
        params=model.init(jax.random.key(0)),
        objective=objective,
        optimizer=optax.adam(1e-2),
        build=build,
        hparams=hparams,
        common=common,
        stream=stream,
    )


def main(process_id: int, port: int, out: Path) -> None:
    from two_processes import start  # tests/, the script's folder (this runs only as a script)

    start(process_id, port, devices=4)
    import jax
    from jax.experimental import multihost_utils

    import jreg

    began = time.perf_counter()
    lap = lambda what: print(f"{what}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)  # noqa: E731
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    p = problem()
    gather = lambda tree: jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))  # noqa: E731

    data_parallel = jreg.DataParallel(jax.make_mesh((8,), ("data",)))
    folder = out / "ckpt"
    fitted, history = jreg.fit(
        p["objective"], p["optimizer"], p["params"], p["train"], epochs=EPOCHS, parallel=data_parallel,
        checkpoint=jreg.Checkpointing(folder, keep=2), **p["common"],
    )  # fmt: skip
    lap("fit")
    written = sorted(q.name for q in folder.iterdir())
    resumed, resumed_history = jreg.fit(
        p["objective"], p["optimizer"], p["params"], p["train"], epochs=EPOCHS + 1, parallel=data_parallel,
        checkpoint=jreg.Checkpointing(out / "resumed"), resume=folder / "ckpt-000002.orbax", **p["common"],
    )  # fmt: skip

    lap("resumed fit")
    mesh = jax.make_mesh((4, 2), ("model", "data"))  # the model axis crosses the processes: 4 models on each
    parallel = jreg.ModelParallel(mesh, model_axis="model", data_axis="data")
    swept, sweep_history = jreg.sweep(
        p["build"], p["params"], p["train"], hparams=p["hparams"], epochs=EPOCHS, parallel=parallel,
        early_stopping=stopping(), checkpoint=jreg.Checkpointing(out / "sweep", keep=1), **p["common"],
    )  # fmt: skip
    lap("sweep")
    streamed, streamed_history = jreg.fit(
        p["objective"], p["optimizer"], p["params"], p["stream"](jax.process_index(), 2), epochs=EPOCHS,
        parallel=data_parallel, **p["common"],
    )  # fmt: skip
    lap("streamed fit")
    held = out / "held"  # a folder another run holds (process 0 takes its lock as that run would)
    held.mkdir(exist_ok=True)
    if jax.process_index() == 0:
        from jreg import io
        from jreg.train.checkpoint_folder import LOCK

        holder, _ = io.try_lock(held / LOCK, {"pid": 4242, "host": "elsewhere", "run": "0" * 32})
    refused = ""
    try:  # every process refuses it before any work, none waits for the others in a collective
        jreg.fit(
            p["objective"], p["optimizer"], p["params"], p["train"], epochs=EPOCHS, parallel=data_parallel,
            checkpoint=jreg.Checkpointing(held), **p["common"],
        )  # fmt: skip
    except jreg.FolderInUseError as exc:
        refused = str(exc)
    multihost_utils.sync_global_devices("jreg held folder refused")
    if jax.process_index() == 0:
        io.unlock(holder, held / LOCK)
    lap("held folder")
    local_models = swept[0]["w"].addressable_shards[0].data.shape[0]
    process_models = len({s.index[0].start for s in swept[0]["w"].addressable_shards}) * local_models
    runs = {
        "fit": fitted,
        "resumed": resumed,
        "sweep": swept,
        "streamed": streamed,
    }  # each run's leaves, in jax.tree.leaves order
    flat = {
        f"{name}/{i:02d}": leaf for name, tree in runs.items() for i, leaf in enumerate(gather(jax.tree.leaves(tree)))
    }
    flat["fit_accuracy"] = np.asarray(history.evaluation_accuracy)
    flat["resumed_accuracy"] = np.asarray(resumed_history.evaluation_accuracy)
    flat["sweep_accuracy"] = np.asarray(sweep_history["evaluation_accuracy"])
    flat["streamed_loss"] = np.asarray(streamed_history.epoch_loss)
    refusals = multihost_utils.process_allgather(np.int32(bool(refused) and "pid 4242" in refused))
    flat["held_refused"] = np.asarray(refusals).reshape(-1)
    if jax.process_index() == 0:
        flat["sweep_stopped"] = np.asarray(sorted(sweep_history.stopped))
        flat["sweep_best_epochs"] = np.asarray([v["best_epoch"] for _, v in sorted(sweep_history.stopped.items())])
        np.savez(
            out / "results.npz", written=np.array(written), local_models=local_models, process_models=process_models,
            **flat,
        )  # fmt: skip
    multihost_utils.sync_global_devices("jreg test done")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
