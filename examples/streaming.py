"""Streaming with jreg: train on batches read one at a time, never the whole data set in memory at once.

    python examples/streaming.py            # MNIST, 3 epochs, batches of 10 from a NumPy generator
    python examples/streaming.py --quick    # the embedded subset, a tiny run (the test suite's)

The source here is a callable ``epoch -> iterator of (x, y) NumPy batches``
that shuffles with a seed derived from the epoch, so every epoch is
reproducible and a resumed run (``resume=`` the checkpoint folder) restarts at
the beginning of the first epoch not completed and equals the uninterrupted
run bit for bit. ``jreg.Stream(source, chunk=64)`` runs 64 steps per compiled
call while a background thread stacks and prefetches the next chunks to the
device. Any re-iterable works as well: a list of batches, an object whose
``__iter__`` makes a fresh generator, a PyTorch ``DataLoader`` (see
docs/streaming.md).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator

import jax
import numpy as np
import optax

import jreg


def numpy_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    """A source: ``source(epoch)`` yields that epoch's shuffled mini-batches (the last one may be smaller)."""

    def source(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return source


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64, help="steps per compiled call")
    ap.add_argument("--quick", action="store_true", help="the embedded subset, a tiny run")
    args = ap.parse_args(argv)
    if args.quick:
        train, test = jreg.data.load_mnist_small()
        args.epochs, args.chunk = 2, 8
    else:
        train, _, test = jreg.data.load_mnist()
    x, y = np.asarray(train.x), np.asarray(train.y)  # host memory: the stream reads from here
    model = jreg.mlp([784, 30, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / len(x)))
    source = jreg.Stream(numpy_batches(x, y, 10, seed=7), chunk=args.chunk)
    kw = dict(batch_size=10, key=jax.random.key(1), evaluation=test)
    with tempfile.TemporaryDirectory() as folder:
        result = jreg.fit(
            objective,
            optax.sgd(0.5),
            model.init(jax.random.key(0)),
            source,
            epochs=args.epochs,
            checkpoint=jreg.Checkpointing(folder),
            verbose=True,
            **kw,
        )
        # continue from the checkpoint after the first epoch: the same result, bit for bit
        resumed = jreg.fit(
            objective, optax.sgd(0.5), model.init(jax.random.key(0)), source, epochs=args.epochs,
            resume=f"{folder}/ckpt-000001.npz", **kw,
        ).params  # fmt: skip
    params, history = result.params, result.history
    same = all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed)))
    print(
        f"streamed {args.epochs} epochs: test accuracy {100 * history.evaluation_accuracy[-1]:.2f} %, "
        f"resumed after epoch 1 {'equals' if same else 'DIFFERS FROM'} the uninterrupted run"
    )
    return {"params": params, "history": history, "resumed_equal": same}


if __name__ == "__main__":
    main()
