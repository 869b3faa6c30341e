"""What mid-epoch checkpoints cost: seconds per streamed epoch of Nielsen's [784, 30, 10] on a shuffled grain pipeline,
without checkpoints, with one at each epoch's end, and with ``Checkpointing(every_steps=S)`` for each ``S``.

    python benchmarks/grain_midepoch.py [--n 50000] [--chunk 64] [--every 64,1024] [--reps 3] [--epochs 3]

The pipeline is ``grain.MapDataset.source(records).shuffle(seed=7 + epoch).batch(10)`` over the embedded 1,000
MNIST images tiled to ``--n`` examples (no download). An epoch's time is the gap between two ``callback`` calls
(compilation and the first epoch excluded); each configuration runs ``--reps`` times, interleaved, and the medians
are printed with their ratio to the run without checkpoints. ``every_steps=chunk`` checkpoints after every chunk
(the worst case: each waits for the chunk before it, then writes the params, optimizer state and history).
Figures must be measured on a quiet machine; ``--n 2000 --reps 1 --epochs 2`` only proves the script runs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
import optax

import jreg

ETA, LMBDA, BATCH = 0.5, 5.0, 10


def pipeline(x: np.ndarray, y: np.ndarray):
    import grain

    records = [(x[i], y[i]) for i in range(len(x))]
    return lambda epoch: grain.MapDataset.source(records).shuffle(seed=7 + epoch).batch(BATCH)


def epoch_times(source, chunk: int, epochs: int, objective, params, checkpoint) -> list[float]:
    stamps: list[float] = []
    jreg.fit(
        objective,
        optax.sgd(ETA),
        params,
        jreg.Stream(source, chunk=chunk),
        epochs=epochs,
        batch_size=BATCH,
        key=jax.random.key(1),
        monitor=(),
        checkpoint=checkpoint,
        callback=lambda epoch, metrics: stamps.append(time.perf_counter()),
    )
    return list(np.diff(stamps))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="examples (the embedded 1,000 tiled)")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--every", default="64,1024", help="every_steps values to time")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per fit call (the first is not timed)")
    args = ap.parse_args(argv)
    (x, y), _ = jreg.data.load_mnist_small()
    reps = -(-args.n // len(x))
    x, y = np.tile(np.asarray(x), (reps, 1))[: args.n], np.tile(np.asarray(y), reps)[: args.n]
    model = jreg.mlp([784, 30, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(LMBDA / len(x)))
    params = model.init(jax.random.key(0))
    source = pipeline(x, y)
    configs: dict[str, int | None | str] = {"no checkpoint": None, "epoch ends only": "epoch"}
    configs.update({f"every_steps={s}": int(s) for s in args.every.split(",")})
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.reps):
        for name, every in configs.items():
            with tempfile.TemporaryDirectory() as folder:
                checkpoint = None
                if every is not None:
                    checkpoint = jreg.Checkpointing(folder, every_steps=None if every == "epoch" else every)
                times[name] += epoch_times(source, args.chunk, args.epochs, objective, params, checkpoint)
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.devices()[0].platform}")
    print(f"n = {args.n}, batch {BATCH}, chunk {args.chunk}, {args.reps} reps x {args.epochs - 1} timed epochs")
    base = statistics.median(times["no checkpoint"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:>22}: {median:.3f} s per epoch ({median / base:.2f}x)")


if __name__ == "__main__":
    main()
