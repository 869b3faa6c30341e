"""What the host spends per streamed batch, stage by stage, and the streamed / in-memory epoch ratio.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/stream_host.py [--n 50000] [--chunk 64] [--reps 3] [--tiled]

Nielsen's [784, 30, 10] on MNIST, batch 10, the source of ``benchmarks/stream_speed.py``
(a NumPy generator yielding ``x[idx], y[idx]``). Each stage of the reader thread
(:class:`jreg.train.stream.Feed`) is timed on its own, single-threaded, by calling the
stream's own code over one epoch of batches, and reported in microseconds per batch:

- ``read``: ``next()`` on the source (the source's own cost: the fancy indexing);
- ``check``: the batch checked against the first (the common-case ``quick`` check, else
  ``convert``); ``check (full)``: ``convert`` on every batch, what each batch cost before;
- ``fill``: the batch copied into its chunk's reused host buffers (``_Slot.fill``);
  ``np.stack + cast``: the previous way (a fresh chunk per ``chunk`` batches);
- ``finite``: the finiteness check, once per chunk;
- ``put``: ``device_put`` of the chunk (to completion), from the reused aligned buffers, and
  ``put (fresh)`` of a freshly stacked chunk, the previous way;
- ``reader``: the whole reader (``Feed._produce``, a chunk released as soon as it is on the
  device), whose excess over the stages is the reader's Python per-batch overhead.

Then whole epochs of ``fit`` (``monitor=()``), in memory and streamed, interleaved ``--reps``
times: wall and CPU seconds per epoch (epochs 2.. of each call), the ratio of the medians,
the CPU a streamed batch costs beyond an in-memory one, and how long the training loop
waited for the reader's next chunk (host-bound when that is not near zero). Only relative shares mean
anything on a loaded machine: measure on a quiet one. Without MNIST, ``--tiled`` tiles the
embedded 1,000 images (timings do not depend on pixel values); otherwise skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
import optax

import jreg
from jreg.train.stream import CHUNK, Feed
from jreg.train.stream import feed as feed_module
from jreg.train.stream.batches import cast, check_finite, convert, quick

ETA, LMBDA, BATCH = 0.5, 5.0, 10


def load(n: int, tiled: bool) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        train, _, _ = jreg.data.load_mnist(download=False)
        x, y = np.asarray(train.x), np.asarray(train.y)
    except jreg.JregError as exc:
        if not tiled:
            print(f"skipped: MNIST is not available ({exc}); set JREG_DATA_DIR (or --tiled)")
            return None
        small, _ = jreg.data.load_mnist_small()
        reps = -(-n // small.x.shape[0])
        x, y = np.tile(np.asarray(small.x), (reps, 1)), np.tile(np.asarray(small.y), reps)
        print(f"MNIST absent: the embedded 1,000 images tiled to {n:,}")
    return x[:n], y[:n]


def per_batch(seconds: float, batches: int) -> float:
    return seconds / batches * 1e6


def stages(source: Callable, n_batches: int, chunk: int) -> dict[str, float]:
    """Microseconds per batch of each reader stage over epoch 1's batches."""
    feed = Feed(jreg.Stream(source, chunk=chunk), BATCH, "drop")
    feed.place(None)
    spec, out = feed.spec, {}
    t = time.perf_counter()
    batches = list(source(1))
    out["read"] = per_batch(time.perf_counter() - t, len(batches))
    t = time.perf_counter()
    leaves = [quick(b, spec) or convert(b, spec, 1, i) for i, b in enumerate(batches)]
    out["check"] = per_batch(time.perf_counter() - t, len(batches))
    t = time.perf_counter()
    for i, b in enumerate(batches):
        convert(b, spec, 1, i)
    out["check (full)"] = per_batch(time.perf_counter() - t, len(batches))
    groups = [leaves[i : i + chunk] for i in range(0, len(leaves) - chunk + 1, chunk)]
    slot = feed.pool.take()
    fill = finite = put = 0.0
    for group in groups:
        t0 = time.perf_counter()
        for row, arrays in enumerate(group):
            slot.fill(row, arrays)
        t1 = time.perf_counter()
        check_finite(slot.arrays, spec, 1, 0)
        t2 = time.perf_counter()
        jax.block_until_ready(feed._put(slot.arrays))
        fill, finite, put = fill + t1 - t0, finite + t2 - t1, put + time.perf_counter() - t2
    used = len(groups) * chunk
    out["fill"], out["finite"], out["put"] = (per_batch(s, used) for s in (fill, finite, put))
    stack = fresh = 0.0
    for group in groups:
        t0 = time.perf_counter()
        stacked = cast([np.stack(leaf) for leaf in zip(*group)], spec)
        t1 = time.perf_counter()
        jax.block_until_ready(jax.device_put(stacked, donate=True))
        stack, fresh = stack + t1 - t0, fresh + time.perf_counter() - t1
    out["np.stack + cast"], out["put (fresh)"] = per_batch(stack, used), per_batch(fresh, used)

    def emit(item):
        if item is not None:
            jax.block_until_ready(item.batches)
            item.release()
        return True

    t = time.perf_counter()
    feed._produce(1, emit)
    out["reader"] = per_batch(time.perf_counter() - t, n_batches)
    return out


class Waits:
    """Seconds the training loop spends waiting for the reader's next chunk, per epoch (wraps ``_Prefetch``)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []

    def __enter__(self) -> Waits:
        self.original = feed_module._Prefetch.__iter__
        original, epochs = self.original, self.epochs

        def timed(prefetch):
            epochs.append(0.0)
            chunks = original(prefetch)
            while True:
                t = time.perf_counter()
                try:
                    item = next(chunks)
                except StopIteration:
                    epochs[-1] += time.perf_counter() - t
                    return
                epochs[-1] += time.perf_counter() - t
                yield item

        feed_module._Prefetch.__iter__ = timed
        return self

    def __exit__(self, *exc) -> None:
        feed_module._Prefetch.__iter__ = self.original


def epochs(train, count: int, objective, params, key) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (all threads) of epochs 2.. of one fit call."""
    stamps: list[tuple[float, float]] = []
    jreg.fit(
        objective,
        optax.sgd(ETA),
        params,
        train,
        epochs=count,
        batch_size=BATCH,
        key=key,
        monitor=(),
        callback=lambda epoch, metrics: stamps.append((time.perf_counter(), time.process_time())),
    )
    wall, cpu = zip(*stamps)
    return list(np.diff(wall)), list(np.diff(cpu))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="training examples (a multiple of 10)")
    ap.add_argument("--chunk", type=int, default=CHUNK)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per fit call (the first is not timed)")
    ap.add_argument("--tiled", action="store_true", help="without MNIST, tile the embedded 1,000 images")
    args = ap.parse_args(argv)
    data = load(args.n, args.tiled)
    if data is None:
        return
    x, y = data
    n = x.shape[0] - x.shape[0] % BATCH
    key = jax.random.key(1)

    def source(epoch: int):
        full, _ = jreg.data.batch_indices(n, BATCH, jax.random.fold_in(key, epoch))
        for idx in np.asarray(full):
            yield x[idx], y[idx]

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
        f"{jax.devices()[0]}; {n:,} examples, batch {BATCH}, chunk {args.chunk}"
    )
    table = [stages(source, n // BATCH, args.chunk) for _ in range(args.reps + 1)][1:]  # the first warms up
    print("host stages, microseconds per batch (median of the repetitions):")
    medians = {k: statistics.median(t[k] for t in table) for k in table[0]}
    parts = ("read", "check", "fill", "finite", "put")
    for name, value in medians.items():
        print(f"  {name:16s} {value:8.2f}")
    print(f"  {'overhead':16s} {medians['reader'] - sum(medians[p] for p in parts):8.2f}  (reader - its stages)")
    before = medians["read"] + medians["check (full)"] + medians["np.stack + cast"] + medians["finite"]
    print(
        f"  the reader's stages now {sum(medians[p] for p in parts):.2f}, the previous way "
        f"{before + medians['put (fresh)']:.2f} (full check, np.stack + cast, fresh put)"
    )
    model = jreg.mlp([784, 30, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(LMBDA / n))
    params = model.init(jax.random.key(0))
    memory, streamed, memory_cpu, streamed_cpu, waited, waits = [], [], [], [], [], Waits()
    train = (x[:n], y[:n])
    for _ in range(args.reps):
        wall, cpu = epochs(train, args.epochs, objective, params, key)
        memory, memory_cpu = memory + wall, memory_cpu + cpu
        with waits:
            wall, cpu = epochs(jreg.Stream(source, chunk=args.chunk), args.epochs, objective, params, key)
        waited += waits.epochs[-len(wall) :]
        streamed, streamed_cpu = streamed + wall, streamed_cpu + cpu
    m, s = statistics.median(memory), statistics.median(streamed)
    mc, sc = statistics.median(memory_cpu), statistics.median(streamed_cpu)
    steps = n // BATCH
    print(f"epochs ({len(memory)} timed each, medians):")
    print(f"  in memory  {m:.3f} s wall, {mc:.3f} s CPU ({per_batch(m, steps):.1f} us per step)")
    print(f"  streamed   {s:.3f} s wall, {sc:.3f} s CPU ({per_batch(s, steps):.1f} us per step)")
    print(f"  ratio streamed / in memory: wall {s / m:.2f}, CPU {sc / mc:.2f}")
    print(
        f"  the streamed epoch's CPU beyond the in-memory one: {per_batch(sc - mc, steps):.1f} us per batch "
        f"(the reader alone: {medians['reader']:.1f})"
    )
    print(
        f"  the training loop waited for the reader {per_batch(statistics.median(waited), steps):.1f} us per batch "
        "(near 0: the device, not the host, bounds the streamed epoch)"
    )


if __name__ == "__main__":
    main()
