"""The aᵀ·g rule for any model's dense layers (jreg.train.left_products): a framework MLP's sweep, ms per model-epoch.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/frameworks_wide.py --k 64 --n 20000 --rounds 3
    python benchmarks/frameworks_wide.py --small --k 4 --n 200 --rounds 1   # a quick check that it runs

A Flax linen MLP [784, 30, 10] (sigmoid, as Nielsen's network; ``--frameworks linen equinox`` adds the same
network as an Equinox ``eqx.nn.MLP``, whose ``(n_out, n_in)`` weights the wide sweep also carries model axis
first), adapted by ``jreg.frameworks``, trained by ``jreg.sweep`` over K values of λ (``l2(λ/n)``, SGD η = 0.5,
batch 10, the first N MNIST training images, the same data order for every mode, ``monitor=()``), in three
modes, interleaved round by round:

* ``wide``: ``vectorize="wide"`` with the rule (the default);
* ``wide-jax``: ``vectorize="wide"`` with JAX's own weight-gradient rule and the default layout
  (``jreg.train.left_products.ENABLED = False``: what a ``"wide"`` sweep of this model did before);
* ``vmap``: ``vectorize="vmap"``.

Each figure is (time of a (1 + E)-epoch sweep - a 1-epoch sweep) / E / K, so compilation and validation
cancel; the minimum over the rounds is printed, and each mode's ratio to ``wide``. Timings need a quiet
machine: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg
from jreg.train import left_products

MODES = ("wide", "wide-jax", "vmap")


def data(n: int, small: bool):
    if small:
        (x, y), _ = jreg.data.load_mnist_small()
    else:
        train, _, _ = jreg.data.load_mnist(download=False)
        x, y = train.x, train.y
    if n > len(x):
        raise SystemExit(f"--n {n}: only {len(x)} training images here")
    return jnp.asarray(x[:n]), jnp.asarray(y[:n])


def model_of(framework: str, x):
    if framework == "linen":
        import flax.linen as nn

        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(10)(nn.sigmoid(nn.Dense(30)(x)))

        return jreg.frameworks.from_linen(MLP(), x[:1], key=jax.random.key(0))
    import equinox as eqx

    return jreg.frameworks.from_equinox(eqx.nn.MLP(784, 10, 30, 1, activation=jax.nn.sigmoid, key=jax.random.key(0)))


def timer(model, x, y, k: int):
    n = len(x)

    def build(hp):
        objective = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return objective, optax.sgd(0.5)

    def run(mode: str, epochs: int) -> float:
        left_products.ENABLED = mode != "wide-jax"
        try:
            t = time.perf_counter()
            result = jreg.sweep(
                build,
                model.params,
                (x, y),
                hparams={"lmbda": np.linspace(0, 5, k)},
                epochs=epochs,
                batch_size=10,
                key=jax.random.key(1),
                monitor=(),
                vectorize="vmap" if mode == "vmap" else "wide",
            )
            jax.block_until_ready(result.params)
            return time.perf_counter() - t
        finally:
            left_products.ENABLED = True

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=64, help="models in the sweep")
    parser.add_argument("--n", type=int, default=20000, help="training images")
    parser.add_argument("--epochs", type=int, default=2, help="E: epochs timed beyond the first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frameworks", nargs="+", default=["linen"], choices=["linen", "equinox"])
    parser.add_argument("--small", action="store_true", help="the embedded MNIST subset (no JREG_DATA_DIR needed)")
    args = parser.parse_args()
    x, y = data(args.n, args.small)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; K = {args.k}, N = {args.n}, E = {args.epochs}")
    for framework in args.frameworks:
        run = timer(model_of(framework, x), x, y, args.k)
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode in MODES:
                one = run(mode, 1)
                more = run(mode, 1 + args.epochs)
                times[mode].append(1000 * (more - one) / args.epochs / args.k)
                print(f"{framework} round {r} {mode:8s} {times[mode][-1]:.2f} ms per model-epoch", flush=True)
        best = {m: min(v) for m, v in times.items()}
        for mode in MODES:
            print(
                f"{framework} {mode:8s} min {best[mode]:.2f} ms per model-epoch ({best[mode] / best['wide']:.2f}x wide)"
            )


if __name__ == "__main__":
    main()
