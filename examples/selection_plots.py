"""Which λ? The figures of ``jreg.plotting``: a regularization path along its strength, a grid's heat map, and a
cross-validation with its two choices (λ_min, λ_1se), all on the embedded 1,000 MNIST training images (offline).

    python examples/selection_plots.py --out docs/figures   # the figures of docs/plots.md
    python examples/selection_plots.py --quick --out /tmp/p # a tiny run (the test suite's)

* ``plot-path.png``: an L1 path (proximal SGD, L1 on the first layer's weights) for Nielsen's [784, 30, 10],
  8 strengths from ``λ_max`` down, warm-started from dense to sparse in one compiled program;
  ``jreg.plotting.path`` draws the test accuracy, each layer's weight norm, and the first layer's exact
  zeros and pixels left (its rows with a non-zero weight).
* ``plot-sweep.png``: L2 strength λ (``l2(λ / n)``) × learning rate η, 5 × 4 models in one program;
  ``jreg.plotting.sweep`` draws each model's best test accuracy in its cell.
* ``plot-cv.png`` (when ``jreg.cross_validate`` is there): 5-fold cross-validation over 8 L2 strengths, the mean
  held-out cost with one standard error bars, ``λ_min`` and ``λ_1se``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import optax

import jreg


def main(argv: list[str] | None = None) -> dict[str, Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("figures"), help="the folder to write the PNGs to")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    train, test = jreg.data.load_mnist_small()
    size, held, epochs = (100, 200, 2) if args.quick else (len(train.x), 1000, args.epochs)
    train, test = (train.x[:size], train.y[:size]), (test.x[:held], test.y[:held])
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    common = dict(epochs=epochs, batch_size=10, key=jax.random.key(1), evaluation=test)
    wrote = {"path": args.out / "plot-path.png", "sweep": args.out / "plot-sweep.png"}
    path = l1_path(model, params, train, 3 if args.quick else 8, common)
    print(path.table())
    jreg.plotting.path(path, wrote["path"], title="L1 path on the first layer: [784, 30, 10], 1,000 MNIST images")
    result = l2_grid(model, params, train, args.quick, common)
    jreg.plotting.sweep(result, x="lmbda", y="eta", file=wrote["sweep"],
                        title="best test accuracy (%) per (λ, η): L2 λ/n, SGD η, 1,000 MNIST images")  # fmt: skip
    if hasattr(jreg, "cross_validate"):  # issue 26's k-fold cross-validation
        wrote["cv"] = args.out / "plot-cv.png"
        cv = l2_cv(model, params, train, args.quick, common)
        jreg.plotting.path(cv, wrote["cv"], title="5-fold cross-validation of the L2 strength λ (l2(λ / n))")
    for name, file in wrote.items():
        print(f"{name}: {file}")
    return wrote


def l1_path(model: jreg.Model, params, train, strengths: int, common: dict) -> jreg.train.Path:
    """Proximal SGD with L1 on the first layer's weights: exact zeros, whole pixels (rows) switched off."""
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy)

    def build(hp):
        return objective, optax.chain(optax.sgd(0.5), jreg.proximal(jreg.penalties.l1(hp["lmbda"], mask="0/w"), 0.5))

    return jreg.regularization_path(build, params, train, n_strengths=strengths, ratio=1e-3, mask="0/w",
                                    selectors={"first layer": "0/w"}, groups="rows", **common)  # fmt: skip


def l2_build(model: jreg.Model, n: int):
    def build(hp):
        objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return objective, optax.sgd(hp["eta"])

    return build


def l2_grid(model: jreg.Model, params, train, quick: bool, common: dict) -> jreg.Result:
    lmbdas, etas = ([0.0, 10.0], [0.1, 1.0]) if quick else ([0.0, 0.1, 1.0, 10.0, 100.0], [0.05, 0.2, 0.8, 3.2])
    grid = jreg.grid(lmbda=lmbdas, eta=etas)
    return jreg.sweep(l2_build(model, len(train[0])), params, train, hparams=grid, **common)


def l2_cv(model: jreg.Model, params, train, quick: bool, common: dict):
    lmbdas = [0.1, 10.0] if quick else list(np.geomspace(0.01, 100.0, 8))
    common = {k: v for k, v in common.items() if k != "evaluation"}  # each fold's held-out part evaluates
    hparams = jreg.grid(lmbda=lmbdas, eta=[0.5])
    return jreg.cross_validate(l2_build(model, len(train[0])), params, train, hparams=hparams, folds=2 if quick else 5,
                               monitor="evaluation_cost", **common)  # fmt: skip


if __name__ == "__main__":
    main()
