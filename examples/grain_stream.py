"""A grain pipeline as jreg's training source, checkpointed mid-epoch and resumed from that step.

    python examples/grain_stream.py            # MNIST, 3 epochs, batches of 10 (pip install 'jreg[grain]')
    python examples/grain_stream.py --quick    # the embedded subset, a tiny run (the test suite's)

The source is a callable ``epoch -> grain dataset``: epoch ``e`` is shuffled
with seed ``7 + e``, which is grain's own epoch ``e`` of ``shuffle(seed=7)``.
``jreg.Checkpointing(folder, every_steps=...)`` checkpoints inside each epoch
too, at compiled-chunk boundaries, with the grain iterator's state
(``ckpt-<epochs done>-<step>.npz``). The first run's data source fails in the
middle of epoch 2 (standing in for a preempted host or a network file system
that went away): jreg stops with a ``JregError`` and the checkpoints written
before stay. ``resume="auto"`` then continues from the newest one, inside
epoch 2, and the result equals an uninterrupted run bit for bit.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax

import jreg


def grain_source(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, fail_at: int | None = None):
    """``source(epoch)``: that epoch's shuffled grain pipeline; with ``fail_at``, reading the ``fail_at``-th record
    (counted over the whole run) raises."""
    import grain

    records = [(x[i], y[i]) for i in range(len(x))]
    read = [0]

    def count(record):
        read[0] += 1
        if fail_at is not None and read[0] == fail_at:
            raise OSError("the data went away (a simulated failure)")
        return record

    def source(epoch: int):
        shuffled = grain.MapDataset.source(records).shuffle(seed=seed + epoch).map(count)
        # read in this thread, record by record: the failure comes where the record is (no read-ahead threads)
        return shuffled.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).batch(batch_size)

    return source


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64, help="steps per compiled call")
    ap.add_argument("--every-steps", type=int, default=1024, help="a mid-epoch checkpoint every so many steps")
    ap.add_argument("--quick", action="store_true", help="the embedded subset, a tiny run")
    args = ap.parse_args(argv)
    if args.quick:
        train, test = jreg.data.load_mnist_small()
        args.epochs, args.chunk, args.every_steps = 2, 8, 16
    else:
        train, _, test = jreg.data.load_mnist()
    x, y = np.asarray(train.x), np.asarray(train.y)
    model = jreg.mlp([784, 30, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / len(x)))
    kw = dict(epochs=args.epochs, batch_size=10, key=jax.random.key(1), evaluation=test)

    def run(source, **more):
        stream = jreg.Stream(source, chunk=args.chunk, prefetch=1)
        return jreg.fit(objective, optax.sgd(0.5), model.init(jax.random.key(0)), stream, **kw, **more)

    straight = run(grain_source(x, y, 10, seed=7))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = jreg.Checkpointing(Path(tmp) / "ck", every_steps=args.every_steps)
        try:  # fails at three quarters of epoch 2
            run(grain_source(x, y, 10, seed=7, fail_at=len(x) + 3 * len(x) // 4), checkpoint=checkpoint)
        except jreg.JregError as exc:
            print(f"the first run stopped: {str(exc)[:100]}...")
        kept = sorted(p.name for p in checkpoint.folder.glob("ckpt-*"))
        print(f"checkpoints kept: {', '.join(kept)}")
        resumed = run(grain_source(x, y, 10, seed=7), checkpoint=checkpoint, resume="auto")
    same = all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)))
    history = resumed.history
    print(
        f"{args.epochs} epochs: test accuracy {100 * history.evaluation_accuracy[-1]:.2f} %; resumed mid-epoch "
        f"{'equals' if same else 'DIFFERS FROM'} the uninterrupted run"
    )
    return {"params": resumed.params, "history": history, "kept": kept, "resumed_equal": same}


if __name__ == "__main__":
    main()
