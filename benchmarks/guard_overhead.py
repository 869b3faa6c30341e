"""What the divergence guard costs jreg.fit: the same fit with the guard and with it patched out.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/guard_overhead.py [--reps 3]

[784, 30, 10], batch 10, one epoch over 50,000 images, no monitoring. Each figure is
(warm 8-epoch fit - warm 1-epoch fit) / 7 seconds per epoch; guarded and unguarded
runs alternate. The guard is one finiteness reduction over the params, optimizer state,
model state and guarded figures and a select per epoch inside the compiled program,
plus one host read of a flag per epoch. `--optimizer adam` adds an optimizer state
twice the params' size to the reduction.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jreg
import jreg.train.guard as guard_module  # to patch the guard out, for this measurement only


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    args = ap.parse_args()
    try:
        train, _, _ = jreg.data.load_mnist(download=False)
    except jreg.JregError:
        small, _ = jreg.data.load_mnist_small()
        train = jreg.data.Split(jnp.tile(small.x, (50, 1)), jnp.tile(small.y, 50))
    model = jreg.mlp([784, 30, 10])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-4))
    opt = optax.sgd(0.5) if args.optimizer == "sgd" else optax.adam(1e-3)
    guarded = guard_module.check

    def unguarded(old, new, figures, alive=None):  # the new state as it is, reported finite
        return new, jnp.asarray(True), alive

    def fit_seconds(epochs: int) -> float:
        t = time.perf_counter()
        p, _ = jreg.fit(
            obj,
            opt,
            model.init(jax.random.key(0)),
            train,
            epochs=epochs,
            batch_size=10,
            key=jax.random.key(0),
            monitor=(),
        )
        jax.block_until_ready(p)
        return time.perf_counter() - t

    results: dict[str, list[float]] = {"with guard": [], "without guard": []}
    for _ in range(args.reps):
        for name, wrap in (("with guard", guarded), ("without guard", unguarded)):
            guard_module.check = wrap
            one = min(fit_seconds(1) for _ in range(2))
            results[name].append((fit_seconds(8) - one) / 7)
    guard_module.check = guarded
    for name, values in results.items():
        print(f"{name:<14} s/epoch: median {statistics.median(values):.4f}  runs {[round(v, 4) for v in values]}")


if __name__ == "__main__":
    main()
