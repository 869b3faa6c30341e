"""Experiment 3: [784, 100, 10] with L2 on the full training set (Nielsen ch. 3).

Sigmoid, cross-entropy, mini-batch 10, large weight initialization, λ = 5.0
(n = 50,000): η = 0.5 for 30 epochs (book: about 97.9 %), and η = 0.1 for
60 epochs (book: about 98.0 %). Needs the full MNIST files.

    python experiments/e3_hidden100.py [--seeds 3] [--out results/e3]
"""

from __future__ import annotations

import optax
from _common import full_data, mean_std, parser, pct, save, sweep_seeds

import jreg

CONFIGS = [("eta=0.5, 30 epochs", 0.5, 30, "about 97.9 %"), ("eta=0.1, 60 epochs", 0.1, 60, "about 98.0 %")]


def main() -> None:
    args = parser(__doc__.splitlines()[0], "e3").parse_args()
    train, _, test = full_data(args)
    n = train.x.shape[0]
    model = jreg.mlp([784, 100, 10], init="large")

    def build(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / n))
        return obj, optax.sgd(hp["eta"])

    summary, runs = {}, {}
    for label, eta, n_epochs, book in CONFIGS:
        n_epochs = args.epochs or (2 if args.quick else n_epochs)
        print(label)
        results = sweep_seeds(
            model,
            build,
            {"eta": [eta]},
            train,
            test,
            seeds=args.seeds,
            epochs=n_epochs,
            batch_size=10,
            monitor=("evaluation_accuracy", "training_cost"),
        )
        per_seed = [h.run(0) for _, h in results]
        summary[label] = {
            "epochs": n_epochs,
            "book": book,
            "final_test_accuracy": mean_std([h["evaluation_accuracy"][-1] for h in per_seed]),
            "best_test_accuracy": mean_std([max(h["evaluation_accuracy"]) for h in per_seed]),
        }
        runs[label] = per_seed[0].to_dict()
        print(f"{label}: final test accuracy {pct(summary[label]['final_test_accuracy'])} (book {book})")
    jreg.plotting.plot_histories(
        runs,
        args.out / "curves.png",
        series=("evaluation_accuracy", "training_cost"),
        title=f"[784, 100, 10], λ = 5, {n} MNIST images, seed 0",
    )
    save(
        args.out,
        {"experiment": "e3_hidden100", "seeds": args.seeds, "n": n, "summary": summary, "histories_seed0": runs},
    )


if __name__ == "__main__":
    main()
