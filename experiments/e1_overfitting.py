"""Experiment 1: overfitting on 1,000 images, and L2 against it (Nielsen ch. 3).

[784, 30, 10] sigmoid, cross-entropy, η = 0.5, mini-batch 10, 400 epochs on the
first 1,000 MNIST training images (the embedded subset: runs offline), large
weight initialization, λ = 0 and λ = 0.1 (penalty λ/(2n)·Σw², n = 1,000).
Every curve the book shows: training cost, test cost, test accuracy, training
accuracy. Book: about 82-83 % without and about 87 % with regularization.
``--cost-convention network2`` measures the costs as network2.py's total_cost
does (the penalty over the size of the set measured: the book's test-cost
curves); the training, and every accuracy, are the same either way.

    python experiments/e1_overfitting.py [--seeds 3] [--out results/e1] [--cost-convention network2]
"""

from __future__ import annotations

import optax
from _common import add_cost_convention, mean_std, parser, pct, save, sweep_seeds

import jreg

LMBDAS = [0.0, 0.1]


def main() -> None:
    cli = parser(__doc__.splitlines()[0], "e1")
    add_cost_convention(cli)
    args = cli.parse_args()
    train, test = jreg.data.load_mnist_small()
    if args.quick:
        test = jreg.data.Split(test.x[:1000], test.y[:1000])
    epochs = args.epochs or (3 if args.quick else 400)
    n = train.x.shape[0]
    model = jreg.mlp([784, 30, 10], init="large")

    def build(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return obj, optax.sgd(0.5)

    evaluation = jreg.Evaluation(test, cost_convention=args.cost_convention)
    histories = sweep_seeds(
        model,
        build,
        {"lmbda": LMBDAS},
        train,
        evaluation,
        seeds=args.seeds,
        epochs=epochs,
        batch_size=10,
        monitor=jreg.train.NETWORK2,  # network2.py's four series: the training-set ones are asked for
    )
    summary, runs = {}, {}
    for i, lmbda in enumerate(LMBDAS):
        per_seed = [r.history.run(i) for r in histories]
        summary[f"lmbda={lmbda:g}"] = {
            "final_test_accuracy": mean_std([h["evaluation_accuracy"][-1] for h in per_seed]),
            "best_test_accuracy": mean_std([max(h["evaluation_accuracy"]) for h in per_seed]),
            "final_training_accuracy": mean_std([h["training_accuracy"][-1] for h in per_seed]),
            "final_training_cost": mean_std([h["training_cost"][-1] for h in per_seed]),
            "final_test_cost": mean_std([h["evaluation_cost"][-1] for h in per_seed]),
            "min_test_cost": mean_std([min(h["evaluation_cost"]) for h in per_seed]),
            "epoch_of_min_test_cost": [1 + h["evaluation_cost"].index(min(h["evaluation_cost"])) for h in per_seed],
        }
        runs[f"λ = {lmbda:g}"] = per_seed[0].to_dict()
        print(f"λ = {lmbda:g}: final test accuracy {pct(summary[f'lmbda={lmbda:g}']['final_test_accuracy'])}")
    jreg.plotting.plot_histories(
        runs,
        args.out / "curves.png",
        series=("training_cost", "evaluation_cost", "evaluation_accuracy", "training_accuracy"),
        title=f"[784, 30, 10] on {n} MNIST images, seed 0, {args.cost_convention} cost convention",
    )
    save(
        args.out,
        {
            "experiment": "e1_overfitting",
            "epochs": epochs,
            "seeds": args.seeds,
            "n": n,
            "cost_convention": histories[0].history.cost_convention,  # as the history records it
            "book": {"lmbda=0": "about 82-83 %", "lmbda=0.1": "about 87 %"},
            "summary": summary,
            "histories_seed0": runs,
        },
    )


if __name__ == "__main__":
    main()
