"""Which K-model formulation wins at which K: the measurements behind ``vectorize="auto"``'s rules.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/auto_rules.py [--ks 2 3 4 8 16 32 64] [--n 10000]
        [--rounds 2] [--epochs 2] [--only vmap map wide] [--unroll 1]

Workload of issue 25: [784, 30, 10] sigmoid, cross-entropy, l2(λ/n) with a different λ per model, η = 0.5,
mini-batch 10, the same data order for every model, the first N MNIST training images (the embedded subset,
tiled, where the full set is absent). For each K, one round times ``jreg.sweep(monitor=(), vectorize=v,
unroll=u)`` for each formulation ``v`` one after the other (interleaved); an epoch is timed between two
``callback`` calls (after compilation and the first epoch), the figure is the minimum over the round's epochs,
and the table prints the minimum over rounds in ms per model-epoch with each formulation's ratio to the
fastest. ``--unroll 0`` leaves ``unroll`` at its default.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 8, 16, 32, 64])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    ap.add_argument("--only", nargs="+", default=["vmap", "map", "wide"])
    ap.add_argument("--unroll", type=int, nargs="+", default=[1], help="unroll values (0: the default)")
    args = ap.parse_args()
    try:
        train, _, _ = jreg.data.load_mnist(download=False)
        x, y = np.asarray(train.x[: args.n]), np.asarray(train.y[: args.n])
    except jreg.JregError:
        small, _ = jreg.data.load_mnist_small()
        reps = -(-args.n // len(small.y))
        x = np.tile(np.asarray(small.x), (reps, 1))[: args.n]
        y = np.tile(np.asarray(small.y), reps)[: args.n]
    x, y = jnp.asarray(x), jnp.asarray(y)
    n = x.shape[0]
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))

    def build(hp):
        objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return objective, optax.sgd(0.5)

    def seconds(vectorize: str, k: int, unroll: int) -> float:
        stamps: list[float] = []
        options = {} if unroll == 0 else {"unroll": unroll}
        jreg.sweep(
            build,
            params,
            (x, y),
            hparams={"lmbda": np.linspace(0, 5, k)},
            vectorize=vectorize,
            epochs=args.epochs + 1,
            batch_size=10,
            key=jax.random.key(1),
            monitor=(),
            callback=lambda *a: stamps.append(time.perf_counter()),
            **options,
        )
        return float(np.diff(stamps).min())

    names = [(v, u) for v in args.only for u in args.unroll]
    label = {(v, u): v if u == 1 else f"{v}/u{u or 'default'}" for v, u in names}
    print(f"[784, 30, 10], batch 10, {n} images; jax {jax.__version__} on {jax.devices()[0].device_kind}")
    print(f"{'K':>4} " + " ".join(f"{label[name]:>14}" for name in names) + "   (ms / model-epoch; ratio to fastest)")
    for k in args.ks:
        best = {name: float("inf") for name in names}
        for _ in range(args.rounds):
            for name in names:
                best[name] = min(best[name], seconds(name[0], k, name[1]) / k)
        fastest = min(best.values())
        cells = " ".join(f"{1000 * best[name]:7.2f} ({best[name] / fastest:.2f})" for name in names)
        print(f"{k:>4} {cells}", flush=True)


if __name__ == "__main__":
    main()
