"""Streamed epochs vs in-memory epochs: seconds per epoch of Nielsen's [784, 30, 10] on MNIST 50k, batch 10.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/stream_speed.py [--reps 3] [--chunks 1,8,64,256]

Both train on exactly the same mini-batches: in memory, ``jreg.fit((x, y), monitor=())``
shuffles epoch ``e`` with ``fold_in(key, e)``; the stream is a NumPy generator
(``source(e)``) yielding ``x[idx], y[idx]`` in that same order, fed by
``jreg.Stream(source, chunk=S)``. An epoch's time is the gap between two
``callback`` calls (so compilation, the first epoch and setup are excluded);
the two are interleaved, ``--reps`` times, and the ratio of the medians is
printed. Then the chunk-size ablation: the streamed epoch for each ``S``.
Skipped, with a message, when MNIST is absent.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
import optax

import jreg

N, ETA, LMBDA, BATCH = 50_000, 0.5, 5.0, 10


def epoch_times(train, epochs: int, objective, params, key, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of epochs 2.. of one fit call; their CPU seconds (all threads) appended to ``cpu``."""
    stamps: list[float] = []
    clocks: list[float] = []
    jreg.fit(
        objective,
        optax.sgd(ETA),
        params,
        train,
        epochs=epochs,
        batch_size=BATCH,
        key=key,
        monitor=(),
        callback=lambda epoch, metrics: (stamps.append(time.perf_counter()), clocks.append(time.process_time())),
    )
    if cpu is not None:
        cpu += list(np.diff(clocks))
    return list(np.diff(stamps))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per fit call (the first is not timed)")
    ap.add_argument("--chunks", default="1,8,64,256")
    ap.add_argument("--tiled", action="store_true", help="without MNIST, tile the embedded 1,000 images")
    args = ap.parse_args(argv)
    try:
        train, _, _ = jreg.data.load_mnist(download=False)
        x, y = np.asarray(train.x), np.asarray(train.y)
    except jreg.JregError as exc:
        if not args.tiled:
            print(f"skipped: MNIST is not available ({exc}); set JREG_DATA_DIR (or --tiled)")
            return
        small, _ = jreg.data.load_mnist_small()  # speed does not depend on pixel values
        reps = N // small.x.shape[0]
        x, y = np.tile(np.asarray(small.x), (reps, 1)), np.tile(np.asarray(small.y), reps)
        print("MNIST absent: the embedded 1,000 images tiled to 50,000")
    key = jax.random.key(1)
    model = jreg.mlp([784, 30, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(LMBDA / N))
    params = model.init(jax.random.key(0))

    def source(epoch: int):
        full, _ = jreg.data.batch_indices(N, BATCH, jax.random.fold_in(key, epoch))
        for idx in np.asarray(full):
            yield x[idx], y[idx]

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__}, {jax.devices()[0]}"
    )
    memory, streamed, memory_cpu, streamed_cpu, ratios = [], [], [], [], []
    for rep in range(args.reps):
        a = epoch_times((x, y), args.epochs, objective, params, key, memory_cpu)
        b = epoch_times(jreg.Stream(source), args.epochs, objective, params, key, streamed_cpu)
        memory, streamed = memory + a, streamed + b
        ratios.append(statistics.median(b) / statistics.median(a))
        print(
            f"rep {rep + 1}: in memory {statistics.median(a):.3f} s, streamed {statistics.median(b):.3f} s, "
            f"ratio {ratios[-1]:.2f}",
            flush=True,
        )
    m, s = statistics.median(memory), statistics.median(streamed)
    print(f"in-memory epoch   median {m:.3f} s (min {min(memory):.3f}, max {max(memory):.3f})")
    print(f"streamed epoch    median {s:.3f} s (min {min(streamed):.3f}, max {max(streamed):.3f}), chunk 64")
    print(
        f"ratio streamed / in-memory: median of the per-rep ratios {statistics.median(ratios):.2f}, of the mins "
        f"{min(streamed) / min(memory):.2f}"
    )
    mc, sc = statistics.median(memory_cpu), statistics.median(streamed_cpu)
    print(f"CPU seconds per epoch (all threads): in memory {mc:.3f}, streamed {sc:.3f}, ratio {sc / mc:.2f}")
    print("chunk-size ablation (streamed epoch, median of the timed epochs; in-memory rerun beside each):")
    for chunk in [int(c) for c in args.chunks.split(",")]:
        base = statistics.median(epoch_times((x, y), args.epochs, objective, params, key))
        t = statistics.median(epoch_times(jreg.Stream(source, chunk=chunk), args.epochs, objective, params, key))
        print(f"  S = {chunk:4d}: {t:.3f} s per epoch, {t / base:.2f} x the in-memory epoch ({base:.3f} s)", flush=True)


if __name__ == "__main__":
    main()
