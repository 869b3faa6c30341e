"""Experiment 2: the full training set, with and without L2 (Nielsen ch. 3).

[784, 30, 10] sigmoid, cross-entropy, η = 0.5, mini-batch 10, 30 epochs on the
50,000 training images, large weight initialization, λ = 0 and λ = 5.0
(n = 50,000). Book: about 95.5 % without and about 96.5 % with regularization.
Needs the full MNIST files ($JREG_DATA_DIR, --data-dir, or the download).
``--cost-convention network2`` measures the costs as network2.py's total_cost
does (the penalty over the size of the set measured); the training, and the
accuracies, are the same either way.

    python experiments/e2_full_l2.py [--seeds 3] [--out results/e2] [--cost-convention network2]
"""

from __future__ import annotations

import optax
from _common import add_cost_convention, epochs, full_data, mean_std, parser, pct, save, sweep_seeds

import jreg

LMBDAS = [0.0, 5.0]


def main() -> None:
    cli = parser(__doc__.splitlines()[0], "e2")
    add_cost_convention(cli)
    args = cli.parse_args()
    train, _, test = full_data(args)
    n = train.x.shape[0]
    n_epochs = epochs(args, 30)
    model = jreg.mlp([784, 30, 10], init="large")

    def build(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return obj, optax.sgd(0.5)

    histories = sweep_seeds(
        model,
        build,
        {"lmbda": LMBDAS},
        train,
        jreg.Evaluation(test, cost_convention=args.cost_convention),
        seeds=args.seeds,
        epochs=n_epochs,
        batch_size=10,
        monitor=("evaluation_accuracy", "evaluation_cost", "training_cost"),
    )
    summary, runs = {}, {}
    for i, lmbda in enumerate(LMBDAS):
        per_seed = [r.history.run(i) for r in histories]
        summary[f"lmbda={lmbda:g}"] = {
            "final_test_accuracy": mean_std([h["evaluation_accuracy"][-1] for h in per_seed]),
            "best_test_accuracy": mean_std([max(h["evaluation_accuracy"]) for h in per_seed]),
            "final_training_cost": mean_std([h["training_cost"][-1] for h in per_seed]),
            "final_test_cost": mean_std([h["evaluation_cost"][-1] for h in per_seed]),
        }
        runs[f"λ = {lmbda:g}"] = per_seed[0].to_dict()
        print(f"λ = {lmbda:g}: final test accuracy {pct(summary[f'lmbda={lmbda:g}']['final_test_accuracy'])}")
    jreg.plotting.plot_histories(
        runs,
        args.out / "curves.png",
        series=("evaluation_accuracy", "training_cost", "evaluation_cost"),
        title=f"[784, 30, 10] on {n} MNIST images, seed 0, {args.cost_convention} cost convention",
    )
    save(
        args.out,
        {
            "experiment": "e2_full_l2",
            "epochs": n_epochs,
            "seeds": args.seeds,
            "n": n,
            "cost_convention": histories[0].history.cost_convention,  # as the history records it
            "book": {"lmbda=0": "about 95.5 %", "lmbda=5": "about 96.5 %"},
            "summary": summary,
            "histories_seed0": runs,
        },
    )


if __name__ == "__main__":
    main()
