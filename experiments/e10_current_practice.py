"""Experiment 10: regularizers from current practice beside plain L2, on [784, 100, 10] (issue 15).

Sigmoid, cross-entropy, mini-batch 10, large weight initialization, η = 0.5, 30
epochs on the 50,000 training images (Nielsen's chapter-3 setting of
experiment 3), accuracy on the 10,000 test images. Six models per seed, trained
in ONE compiled sweep: every regularizer is present in every model's objective
and optimizer with a traced coefficient, and each row switches some on:

    L2 (λ = 5)          l2(λ/n): the book's regularizer, the baseline
    none                nothing (λ = 0)
    SAM + L2            jreg.sam(..., ρ = 0.05) on the L2 objective (Foret et al. 2021)
    mixup + L2          jreg.with_mixup(..., α = 0.2) on the L2 objective (Zhang et al. 2018)
    L2-init             l2(λ/n, center=θ₀): toward the initial weights, not zero (Kumar et al. 2023)
    cautious decay      decoupled_weight_decay(sgd, λ/n, η, mode="cautious"), no L2 (Chen et al. 2025)

The coefficient of every regularizer is λ/n with λ = 5 where it is on, so each
row spends the same "strength" as the baseline. SAM's two gradients are taken
for every model (ρ = 0 where it is off: the same gradient twice), so the sweep
costs about twice one without SAM. Needs the full MNIST files (or --quick).

    python experiments/e10_current_practice.py [--seeds 3] [--epochs 30] [--out results/e10]
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
from _common import epochs, full_data, mean_std, parser, pct, save, weight_norm

import jreg

LMBDA, ETA, RHO, ALPHA = 5.0, 0.5, 0.05, 0.2
ROWS = ["L2 (λ = 5)", "none", "SAM + L2", "mixup + L2", "L2-init", "cautious decay"]


def hparams(n: int) -> dict[str, list[float]]:
    c = LMBDA / n
    #             L2   none  SAM  mixup  init  cautious
    return {
        "l2": [c, 0.0, c, c, 0.0, 0.0],
        "rho": [0.0, 0.0, RHO, 0.0, 0.0, 0.0],
        "alpha": [0.0, 0.0, 0.0, ALPHA, 0.0, 0.0],
        "l2_init": [0.0, 0.0, 0.0, 0.0, c, 0.0],
        "decay": [0.0, 0.0, 0.0, 0.0, 0.0, c],
    }


def main() -> None:
    cli = parser(__doc__.splitlines()[0], "e10")
    args = cli.parse_args()
    train, _, test = full_data(args)
    n = train.x.shape[0]
    n_epochs = epochs(args, 30)
    model = jreg.mlp([784, 100, 10], init="large")
    grid = hparams(n)

    per_row: dict[str, list[jreg.History]] = {row: [] for row in ROWS}
    seconds = []
    for seed in range(args.seeds):
        initial = model.init(jax.random.key(seed))

        def build(hp, initial=initial):
            penalty = jreg.penalties.l2(hp["l2"]) + jreg.penalties.l2(hp["l2_init"], center=initial, name="l2_init")
            objective = jreg.objective(model.apply, jreg.losses.cross_entropy, penalty)
            objective = jreg.sam(jreg.with_mixup(objective, hp["alpha"]), hp["rho"])
            optimizer = jreg.decoupled_weight_decay(optax.sgd(ETA), hp["decay"], ETA, mode="cautious")
            return objective, optimizer

        started = time.perf_counter()
        result = jreg.sweep(
            build,
            initial,
            train,
            hparams=grid,
            epochs=n_epochs,
            batch_size=10,
            key=jax.random.key(1000 + seed),
            evaluation=test,
            monitor=("evaluation_accuracy", "training_cost"),
        )
        seconds.append(time.perf_counter() - started)
        print(f"  seed {seed}: {n_epochs} epochs x {len(ROWS)} models in {seconds[-1]:.1f} s", flush=True)
        for i, row in enumerate(ROWS):
            per_row[row].append(result.history.run(i))
            assert i not in result.history.diverged, f"{row} diverged: {result.history.diverged[i]}"
        if seed == 0:
            norms = {row: weight_norm(result.select(i).params) for i, row in enumerate(ROWS)}

    summary = {}
    for row, runs in per_row.items():
        acc = [np.asarray(h["evaluation_accuracy"]) for h in runs]
        summary[row] = {
            "final_test_accuracy": mean_std([a[-1] for a in acc]),
            "best_test_accuracy": mean_std([a.max() for a in acc]),
            "final_training_cost": mean_std([h["training_cost"][-1] for h in runs]),
            "weight_norm_seed0": norms[row],
        }
        print(f"{row:>15}: final test accuracy {pct(summary[row]['final_test_accuracy'])}")
    jreg.plotting.plot_histories(
        {row: runs[0].to_dict() for row, runs in per_row.items()},
        args.out / "curves.png",
        series=("evaluation_accuracy", "training_cost"),
        title=f"[784, 100, 10], η = {ETA}, {n} MNIST images, seed 0: current practice beside L2",
    )
    save(
        args.out,
        {
            "experiment": "e10_current_practice",
            "seeds": args.seeds,
            "n": n,
            "epochs": n_epochs,
            "hparams": grid,
            "seconds_per_seed": seconds,
            "summary": summary,
            "histories_seed0": {row: runs[0].to_dict() for row, runs in per_row.items()},
        },
    )


if __name__ == "__main__":
    main()
