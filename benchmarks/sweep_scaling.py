"""Cost per model-epoch of jreg.sweep as the number of models K grows.

Workload: [784, 30, 10] sigmoid, cross-entropy, l2(λ/n) with a different λ per
model, η = 0.5, mini-batch 10, all models on the same data order, one epoch
over the training images (default 10,000 of them: --n), no per-epoch monitoring.

    python benchmarks/sweep_scaling.py [--ks 1 8 64] [--n 10000] [--epochs 3] [--vectorize map vmap]

Prints seconds per epoch for the whole sweep and per model-epoch, for each K and
vectorize mode: (time of a warm (1 + E)-epoch sweep - a warm 1-epoch sweep) / E,
so validation and compilation cancel out; the last column is the first, cold call.
"""

from __future__ import annotations

import argparse
import os
import platform
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
        trained, _ = jreg.sweep(
            build,
            params,
            (x, y),
            hparams={"lmbda": np.linspace(0, 5, k)},
            epochs=epochs,
            batch_size=10,
            key=jax.random.key(1),
            monitor=(),
            vectorize=mode,
        )
        jax.block_until_ready(trained)
        return time.perf_counter() - t

    for mode in args.vectorize:
        for k in args.ks:
            cold = seconds(mode, k, 1)  # compiles
            one = min(seconds(mode, k, 1) for _ in range(2))  # warm: the compiled program is reused
            per_epoch = (seconds(mode, k, 1 + args.epochs) - one) / args.epochs
            print(f"{mode:>9} {k:>6} {per_epoch:>18.4f} {1000 * per_epoch / k:>17.3f} {cold:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
