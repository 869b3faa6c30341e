"""k-fold cross-validation in one program against the S x k separate ``fit`` calls of a hand-written loop.

Workload: Nielsen's [784, 30, 10] sigmoid network, cross-entropy, l2(λ/n), SGD η = 0.5, mini-batch 10, on the
embedded MNIST subset (1,000 images; ``--full`` reads ../shared/data/mnist's 50,000 when present), S values of
λ x k folds. Prints the wall time of ``jreg.cross_validate`` (compilation included, and a second warm call)
and of the loop of ``jreg.fit`` calls (each compiling its own program, as a user's loop does), and the
ratio. Figures depend on the machine and its load: measure on a quiet one (docs/benchmarks.md).

    python benchmarks/cross_validation.py [--settings 8] [--folds 5] [--epochs 3] [--vectorize auto] [--full]
        [--n 1000] [--no-loop]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import jreg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="use the first n training images")
    parser.add_argument("--vectorize", default="auto")
    parser.add_argument("--full", action="store_true", help="the 50,000 MNIST training images")
    parser.add_argument("--no-loop", action="store_true", help="time cross_validate only")
    args = parser.parse_args()
    if args.full:
        (x, y), _, _ = jreg.data.load_mnist()
    else:
        (x, y), _ = jreg.data.load_mnist_small()
    if args.n is not None:
        x, y = x[: args.n], y[: args.n]
    n = int(x.shape[0])
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    lmbdas = np.geomspace(0.01, 20.0, args.settings).tolist()

    def build(hp):
        objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return objective, optax.sgd(0.5)

    kw = dict(epochs=args.epochs, batch_size=10, key=jax.random.key(1))
    times = []
    for _ in range(2):  # cold (compiles), then warm
        start = time.perf_counter()
        cv = jreg.cross_validate(build, params, (x, y), hparams={"lmbda": lmbdas}, folds=args.folds,
                                 vectorize=args.vectorize, **kw)  # fmt: skip
        jax.block_until_ready(cv.params)
        times.append(time.perf_counter() - start)
    print(cv.table())
    print(f"cross_validate: {times[0]:.2f} s cold, {times[1]:.2f} s warm ({args.settings} x {args.folds} members)")
    if args.no_loop:
        return
    start = time.perf_counter()
    for lmbda in lmbdas:
        for f in range(args.folds):
            rest = cv.train_indices(f)
            result = jreg.fit(*build({"lmbda": lmbda}), params, (x[rest], y[rest]),
                              evaluation=(x[cv.folds[f]], y[cv.folds[f]]), **kw)  # fmt: skip
            jax.block_until_ready(result.params)
    loop = time.perf_counter() - start
    print(f"loop of {args.settings * args.folds} fit calls: {loop:.2f} s; cross_validate / loop: {times[0] / loop:.2f}")


if __name__ == "__main__":
    main()
