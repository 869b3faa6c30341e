"""Device memory while streaming jreg.data.expand's 250,000 images: bounded by the chunk, not the data set.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/stream_memory.py [--epochs 1] [--chunk 64]

The 50,000 MNIST training images expanded by one-pixel shifts (``jreg.data.expand``)
are moved to host memory (NumPy, 784 MB of float32 pixels) and streamed in
mini-batches of 10 through ``jreg.Stream(source, chunk=S)`` into Nielsen's
[784, 30, 10] network. A sampling thread records the peak of
``sum(a.nbytes for a in jax.live_arrays())`` (every array JAX holds on the
device; on CPU that is host memory too) every 20 ms during training, and the
process's peak RSS is read at the end. For comparison the same measurement
is made for in-memory ``fit`` on the same data (which has to hold it on the
device), unless ``--no-baseline``. Skipped, with a message, when MNIST is absent.
"""

from __future__ import annotations

import argparse
import gc
import resource
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg


def live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays() if not a.is_deleted())


class Peak:
    """Samples live_bytes() in a thread until stopped."""

    def __init__(self) -> None:
        self.peak, self.stop = 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, live_bytes())
            time.sleep(0.02)

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--tiled", action="store_true", help="without MNIST, tile the embedded 1,000 images")
    args = ap.parse_args(argv)
    try:
        train, _, _ = jreg.data.load_mnist(download=False)
    except jreg.JregError as exc:
        if not args.tiled:
            print(f"skipped: MNIST is not available ({exc}); set JREG_DATA_DIR (or --tiled)")
            return
        small, _ = jreg.data.load_mnist_small()  # memory does not depend on pixel values
        train = (jnp.tile(small.x, (50, 1)), jnp.tile(small.y, 50))
        print("MNIST absent: the embedded 1,000 images tiled to 50,000")
    with jax.default_device(jax.devices("cpu")[0]):  # on a GPU, keep the expansion off its allocator's peak
        ex, ey = jreg.data.expand(jax.device_put(tuple(train), jax.devices("cpu")[0]))
    x, y = np.array(ex), np.array(ey)  # copies: on CPU np.asarray would alias the device buffers
    del ex, ey, train
    gc.collect()
    n, batch = x.shape[0], 10
    data_bytes = x.nbytes + y.nbytes
    model = jreg.mlp([784, 30, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / n))
    params = model.init(jax.random.key(0))
    param_bytes = sum(a.nbytes for a in jax.tree.leaves(params))

    def source(epoch: int):
        order = np.random.default_rng([7, epoch]).permutation(n)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            yield x[idx], y[idx]

    chunk_bytes = args.chunk * batch * (784 * 4 + 4)
    kw = dict(epochs=args.epochs, batch_size=batch, key=jax.random.key(1), monitor=())
    before = live_bytes()
    t = time.perf_counter()
    with Peak() as streamed:
        jreg.fit(objective, optax.sgd(0.5), params, jreg.Stream(source, chunk=args.chunk), **kw)
    elapsed = time.perf_counter() - t
    rss_stream = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = jax.devices()[0].memory_stats() or {}  # on a GPU: the allocator's own peak
    if "peak_bytes_in_use" in stats:
        print(f"{jax.devices()[0]}: allocator peak while streaming {stats['peak_bytes_in_use'] / 2**20:.1f} MiB")
    print(f"{n:,} images, data set {data_bytes / 2**20:.1f} MiB (host), params {param_bytes / 2**10:.1f} KiB")
    print(
        f"streamed (chunk {args.chunk}, one chunk {chunk_bytes / 2**20:.2f} MiB): peak live device arrays "
        f"{(streamed.peak - before) / 2**20:.2f} MiB above the {before / 2**20:.2f} MiB before training "
        f"({(streamed.peak - before) / data_bytes:.4f} x the data set); peak RSS {rss_stream / 2**20:.0f} MiB; "
        f"{elapsed:.1f} s for {args.epochs} epoch(s)"
    )
    if not args.no_baseline:
        gc.collect()
        before = live_bytes()
        with Peak() as memory:
            jreg.fit(objective, optax.sgd(0.5), params, (x, y), **kw)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(
            f"in memory: peak live device arrays {(memory.peak - before) / 2**20:.2f} MiB above the "
            f"{before / 2**20:.2f} MiB before ({(memory.peak - before) / data_bytes:.2f} x the data set); "
            f"peak RSS {rss / 2**20:.0f} MiB (process peak so far)"
        )


if __name__ == "__main__":
    main()
