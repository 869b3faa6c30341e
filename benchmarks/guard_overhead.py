"""What the divergence guard costs jreg.fit: the same fit with the guard and with it patched out.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/guard_overhead.py [--reps 3]

[784, 30, 10], batch 10, one epoch over 50,000 images, no monitoring. Each figure is
(warm 8-epoch fit - warm 1-epoch fit) / 7 seconds per epoch; guarded and unguarded
runs alternate. The guard is one finiteness reduction over the params, optimizer state,
model state and guarded figures and a select per epoch inside the compiled program,
plus one host read of a flag per epoch, and the loss value of every step (the guard needs
it even when nothing is monitored: a loss can become inf while its gradient stays finite).
"without guard" patches out both: the check, and the loss value (gradient only, as before
2026-11-27). `--optimizer adam` adds an optimizer state twice the params' size to the
reduction.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jreg
import jreg.train.engine as engine_module  # to patch the guard out, for this measurement only
import jreg.train.guard as guard_module


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

    with_loss = engine_module.make_update

    def gradient_only(objective, optimizer, *, with_metrics=True):  # steps that compute no loss value
        update = with_loss(objective, optimizer, with_metrics=False)

        def step(state, batch, key):
            return update(state, batch, key)[0], {"loss": jnp.zeros(())}

        return step

    def fit_seconds(epochs: int) -> float:
        t = time.perf_counter()
        p = jreg.fit(
            obj,
            opt,
            model.init(jax.random.key(0)),
            train,
            epochs=epochs,
            batch_size=10,
            key=jax.random.key(0),
            monitor=(),
        ).params
        jax.block_until_ready(p)
        return time.perf_counter() - t

    results: dict[str, list[float]] = {"with guard": [], "without guard": []}
    for _ in range(args.reps):
        for name, wrap, make in (("with guard", guarded, with_loss), ("without guard", unguarded, gradient_only)):
            guard_module.check, engine_module.make_update = wrap, make
            one = min(fit_seconds(1) for _ in range(2))
            results[name].append((fit_seconds(8) - one) / 7)
    guard_module.check, engine_module.make_update = guarded, with_loss
    for name, values in results.items():
        print(f"{name:<14} s/epoch: median {statistics.median(values):.4f}  runs {[round(v, 4) for v in values]}")


if __name__ == "__main__":
    main()
