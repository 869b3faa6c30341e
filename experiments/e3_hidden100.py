"""Experiment 3: [784, 100, 10] with L2 on the full training set (Nielsen ch. 3).

Sigmoid, cross-entropy, mini-batch 10, large weight initialization, λ = 5.0
(n = 50,000): η = 0.5 for 30 epochs (book: 97.92 % on the validation data), and
η = 0.1 for 60 epochs (book: 98.04 % on the validation data). Needs the full
MNIST files. The per-epoch accuracy is measured on the test images by default;
``--evaluate-on validation`` measures it on the 10,000 validation images (the
book's figures are validation accuracies) and adds the final test accuracy.

    python experiments/e3_hidden100.py [--seeds 3] [--out results/e3] [--evaluate-on validation]
"""

from __future__ import annotations

import optax
from _common import full_data, mean_std, parser, pct, save, sweep_seeds

import jreg

CONFIGS = [
    ("eta=0.5, 30 epochs", 0.5, 30, "97.92 % validation accuracy"),
    ("eta=0.1, 60 epochs", 0.1, 60, "98.04 % validation accuracy"),
]


def main() -> None:
    cli = parser(__doc__.splitlines()[0], "e3")
    cli.add_argument(
        "--evaluate-on",
        choices=("test", "validation"),
        default="test",
        help="the held-out set measured after each epoch (default test; the book quotes validation accuracy)",
    )
    args = cli.parse_args()
    train, validation, test = full_data(args)
    on = args.evaluate_on
    held_out = validation if on == "validation" else test
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
            held_out,
            seeds=args.seeds,
            epochs=n_epochs,
            batch_size=10,
            monitor=("evaluation_accuracy", "training_cost"),
        )
        per_seed = [r.history.run(0) for r in results]
        summary[label] = {
            "epochs": n_epochs,
            "book": book,
            f"final_{on}_accuracy": mean_std([h["evaluation_accuracy"][-1] for h in per_seed]),
            f"best_{on}_accuracy": mean_std([max(h["evaluation_accuracy"]) for h in per_seed]),
        }
        if on == "validation":  # the trained params on the test images too
            summary[label]["final_test_accuracy"] = mean_std(
                [float(jreg.accuracy(model.apply, r.select(0).params, test)) for r in results]
            )
        runs[label] = per_seed[0].to_dict()
        print(f"{label}: final {on} accuracy {pct(summary[label][f'final_{on}_accuracy'])} (book {book})")
    jreg.plotting.plot_histories(
        runs,
        args.out / "curves.png",
        series=("evaluation_accuracy", "training_cost"),
        title=f"[784, 100, 10], λ = 5, {n} MNIST images, seed 0, accuracy on the {on} images",
        evaluation_data=on,
    )
    save(
        args.out,
        {
            "experiment": "e3_hidden100",
            "seeds": args.seeds,
            "n": n,
            "evaluated_on": on,
            "summary": summary,
            "histories_seed0": runs,
        },
    )


if __name__ == "__main__":
    main()
