"""One of the processes of tests/test_member_sharding.py's two-process check: JAX's distributed runtime on
127.0.0.1 (gloo CPU collectives), 2 virtual CPU devices each, 4 in all.

``python tests/member_distributed_worker.py PROCESS_ID PORT OUT_DIR`` (twice, process ids 0 and 1). The processes
run, together, over a ``model`` axis of the 4 devices (which crosses the two processes: 2 members on each):

* a bootstrap sweep of K=4 members, each shuffling with its own key (``data_order="per_member"``), measured out of
  bag, with early stopping (``restore_best``: every member stops at epoch 2) and orbax checkpoints (no process
  holds the arrays whole);
* a 4-setting x 2-fold ``jreg.cross_validate`` of 41 examples (training sets of 20 and 21: two groups of 4
  members, each gathered out of the split state and split over the 4 devices of both processes again).

Process 0 writes the results (gathered with ``process_allgather``) to ``OUT_DIR/results.npz``. Exit code 3: this
jaxlib has no gloo CPU collectives (the test skips).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

EPOCHS, BATCH = 3, 8


def problem():
    """The data, model and runs' keywords shared by the workers and the test's single-process references."""
    import jax
    import optax

    import jreg

    rng = np.random.default_rng(0)
    x = rng.normal(size=(41, 10)).astype(np.float32)
    y = rng.integers(0, 3, 41)
    model = jreg.mlp([10, 8, 3])

    def build(hp):
        penalty = jreg.penalties.l2(hp["lmbda"])
        return jreg.objective(model.apply, jreg.losses.cross_entropy, penalty), optax.adam(hp["eta"])

    # every member stops at epoch 2 (no gain can beat min_delta), its params those of epoch 1 (restore_best)
    rule = jreg.EarlyStopping(patience=1, monitor="evaluation_cost", min_delta=100.0, restore_best=True)
    common = dict(epochs=EPOCHS, batch_size=BATCH, key=jax.random.key(1), vectorize="vmap")
    bagged = dict(hparams={"lmbda": np.linspace(0.0, 0.01, 4), "eta": np.linspace(0.01, 0.05, 4)},
                  resample="bootstrap", evaluation="out_of_bag", data_order="per_member", early_stopping=rule,
                  **common)  # fmt: skip
    cv = dict(hparams={"lmbda": [0.0, 0.003, 0.01, 0.03], "eta": [0.02, 0.05, 0.02, 0.05]}, folds=2, **common)
    return dict(train=(x, y), params=model.init(jax.random.key(0)), build=build, bagged=bagged, cv=cv)


def main(process_id: int, port: int, out: Path) -> None:
    from two_processes import start  # tests/, the script's folder (this runs only as a script)

    start(process_id, port, devices=2)
    import jax
    from jax.experimental import multihost_utils

    import jreg

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    p = problem()
    gather = lambda tree: jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))  # noqa: E731
    parallel = jreg.ModelParallel(jax.make_mesh((4,), ("model",)))
    bagged = jreg.sweep(p["build"], p["params"], p["train"], parallel=parallel,
                        checkpoint=jreg.Checkpointing(out / "bagged", keep=1), **p["bagged"])  # fmt: skip
    cv = jreg.cross_validate(p["build"], p["params"], p["train"], parallel=parallel, **p["cv"])
    flat = {f"bagged/{i:02d}": leaf for i, leaf in enumerate(gather(jax.tree.leaves(bagged.params)))}
    flat |= {f"cv/{i:02d}": leaf for i, leaf in enumerate(gather(jax.tree.leaves(cv.params)))}
    for name in bagged.history.keys():
        flat[f"bagged_history/{name}"] = np.asarray(bagged.history[name])
    flat["cv_mean"] = np.asarray(cv.mean)
    if jax.process_index() == 0:
        flat["bagged_stopped"] = np.asarray(sorted(bagged.history.stopped), np.int64)
        flat["bagged_best_epochs"] = np.asarray([v["best_epoch"] for _, v in sorted(bagged.history.stopped.items())])
        flat["checkpoints"] = np.asarray(sorted(q.name for q in (out / "bagged").iterdir()))
        np.savez(out / "results.npz", **flat)
    multihost_utils.sync_global_devices("jreg member test done")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
