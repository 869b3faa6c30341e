"""Experiment 7: L1 sparsity on MNIST: proximal SGD (exact zeros) vs L1 in the objective (subgradient).

[784, 100, 10] sigmoid, cross-entropy, default init, η = 0.5, mini-batch 10, 10 epochs
on 50,000 images; L1 strength c on the weight matrices (penalty c·Σ|w|). Proximal:
optax.chain(sgd(η), jreg.proximal(l1(c), η)), the penalty out of the objective.
Subgradient: l1(c) in the objective, plain SGD. Each method's models (one per c) are
one sweep. Reported: test accuracy, the fraction of weights exactly zero, and the
fraction below 1e-3 in magnitude.

    python experiments/e7_l1_sparsity.py [--out results/e7]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from _common import epochs, full_data, parser, save

import jreg

STRENGTHS = [1e-5, 1e-4, 3e-4, 1e-3]
ETA = 0.5


def main() -> None:
    args = parser(__doc__.splitlines()[0], "e7").parse_args()
    train, _, test = full_data(args)
    n_epochs = epochs(args, 10)
    model = jreg.mlp([784, 100, 10])
    data_obj = jreg.objective(model.apply, jreg.losses.cross_entropy)

    def prox_build(hp):
        return data_obj, optax.chain(optax.sgd(ETA), jreg.proximal(jreg.penalties.l1(hp["c"]), ETA))

    def sub_build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l1(hp["c"])), optax.sgd(ETA)

    params = model.init(jax.random.key(0))
    summary = {}
    for method, build in (("proximal", prox_build), ("subgradient", sub_build)):
        result = jreg.sweep(
            build,
            params,
            train,
            hparams={"c": STRENGTHS},
            epochs=n_epochs,
            batch_size=10,
            key=jax.random.key(1),
            evaluation=test,
            monitor=("evaluation_accuracy",),
        )
        for i, c in enumerate(STRENGTHS):
            ws = [p["w"] for p in result.select(i).params]
            total = sum(w.size for w in ws)
            summary[f"{method} c={c:g}"] = {
                "method": method,
                "c": c,
                "test_accuracy": float(result.history["evaluation_accuracy"][i, -1]),
                "exact_zeros": float(sum(jnp.sum(w == 0) for w in ws) / total),
                "below_1e-3": float(sum(jnp.sum(jnp.abs(w) < 1e-3) for w in ws) / total),
            }
    print(f"{'method':>12} {'c':>7} {'test acc':>9} {'exact zeros':>12} {'|w| < 1e-3':>11}")
    for s in summary.values():
        print(
            f"{s['method']:>12} {s['c']:>7g} {100 * s['test_accuracy']:>8.2f}% {100 * s['exact_zeros']:>11.2f}% "
            f"{100 * s['below_1e-3']:>10.2f}%"
        )
    save(args.out, {"experiment": "e7_l1_sparsity", "epochs": n_epochs, "eta": ETA, "summary": summary})


if __name__ == "__main__":
    main()
