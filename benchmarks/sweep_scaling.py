"""Cost per model-epoch of jreg.sweep as the number of models K grows.

Workload: [784, 30, 10] sigmoid, cross-entropy, l2(λ/n) with a different λ per
model, η = 0.5, mini-batch 10, all models on the same data order, one epoch
over the training images (default 10,000 of them: --n), no per-epoch monitoring.

    python benchmarks/sweep_scaling.py [--ks 1 8 64] [--n 10000] [--epochs 3] [--vectorize map vmap] [--hand]

Prints seconds per epoch for the whole sweep and per model-epoch, for each K and
vectorize mode: (time of a warm (1 + E)-epoch sweep - a warm 1-epoch sweep) / E,
so validation and compilation cancel out; the last column is the first, cold call.
With --hand, each K is followed by a hand-written baseline: the same K models as
one jitted epoch (lax.scan over mini-batches, jax.vmap over the models, donated
params), the median of E warm epochs (row "hand-vmap").
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import jax
import numpy as np
import optax

import jreg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--vectorize", nargs="+", default=["map", "vmap"])
    ap.add_argument("--hand", action="store_true", help="also time a hand-written vmapped epoch for each K")
    args = ap.parse_args()
    try:
        train, _, _ = jreg.data.load_mnist(download=False)
    except jreg.JregError:
        train, _ = jreg.data.load_mnist_small()
        train = jreg.data.Split(np.tile(np.asarray(train.x), (50, 1)), np.tile(np.asarray(train.y), 50))
    x, y = jax.numpy.asarray(train.x[: args.n]), jax.numpy.asarray(train.y[: args.n])
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    n = x.shape[0]

    def build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n)), optax.sgd(
            0.5
        )

    print(
        f"[784, 30, 10], batch 10, {n} images; jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )
    print(f"{'vectorize':>9} {'K':>6} {'s / epoch (all K)':>18} {'ms / model-epoch':>17} {'compile+1st (s)':>16}")

    def seconds(mode: str, k: int, epochs: int) -> float:
        t = time.perf_counter()
        trained = jreg.sweep(
            build,
            params,
            (x, y),
            hparams={"lmbda": np.linspace(0, 5, k)},
            epochs=epochs,
            batch_size=10,
            key=jax.random.key(1),
            monitor=(),
            vectorize=mode,
        ).params
        jax.block_until_ready(trained)
        return time.perf_counter() - t

    for mode in args.vectorize:
        for k in args.ks:
            cold = seconds(mode, k, 1)  # compiles
            one = min(seconds(mode, k, 1) for _ in range(2))  # warm: the compiled program is reused
            per_epoch = (seconds(mode, k, 1 + args.epochs) - one) / args.epochs
            print(f"{mode:>9} {k:>6} {per_epoch:>18.4f} {1000 * per_epoch / k:>17.3f} {cold:>16.2f}", flush=True)
            if args.hand and mode == args.vectorize[-1]:
                cold, per_epoch = hand_seconds(params, x, y, k, args.epochs)
                print(
                    f"{'hand-vmap':>9} {k:>6} {per_epoch:>18.4f} {1000 * per_epoch / k:>17.3f} {cold:>16.2f}",
                    flush=True,
                )


def hand_seconds(params, x, y, k: int, epochs: int) -> tuple[float, float]:
    """(first call, median warm seconds per epoch) of a hand-written vmapped sweep epoch."""
    n = x.shape[0]
    lmbdas = jax.numpy.asarray(np.linspace(0, 5, k), jax.numpy.float32)

    def loss(p, lmbda, xb, yb):
        a1 = jax.nn.sigmoid(xb @ p[0]["w"] + p[0]["b"])
        z = a1 @ p[1]["w"] + p[1]["b"]
        t = jax.nn.one_hot(yb, 10)
        data = jax.numpy.mean(jax.numpy.sum(jax.nn.softplus(z) - t * z, axis=-1))
        return data + 0.5 * lmbda / n * (jax.numpy.sum(p[0]["w"] ** 2) + jax.numpy.sum(p[1]["w"] ** 2))

    grads = jax.vmap(jax.grad(loss), in_axes=(0, 0, None, None))

    @functools.partial(jax.jit, donate_argnums=0)
    def epoch(ps, key):
        perm = jax.random.permutation(key, n)
        xb = x[perm].reshape(-1, 10, x.shape[1])
        yb = y[perm].reshape(-1, 10)

        def body(ps, b):
            return jax.tree.map(lambda w, d: w - 0.5 * d, ps, grads(ps, lmbdas, *b)), None

        return jax.lax.scan(body, ps, (xb, yb))[0]

    ps = jax.tree.map(lambda a: jax.numpy.broadcast_to(a, (k, *a.shape)).copy(), params)
    t = time.perf_counter()
    ps = jax.block_until_ready(epoch(ps, jax.random.key(0)))
    cold = time.perf_counter() - t
    times = []
    for e in range(max(epochs, 2)):
        t = time.perf_counter()
        ps = jax.block_until_ready(epoch(ps, jax.random.key(e + 1)))
        times.append(time.perf_counter() - t)
    return cold, statistics.median(times)


if __name__ == "__main__":
    main()
