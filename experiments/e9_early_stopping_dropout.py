"""Experiment 9: early stopping, Nielsen's learning-rate schedule, and dropout on MNIST.

Part A, [784, 30, 10] sigmoid, cross-entropy, L2 λ = 5 (``l2(5/n)``), η = 0.5,
mini-batch 10, validation set monitored (10,000 images), test set reported:

* ``fixed-30``: η fixed for 30 epochs (Nielsen's chapter-3 setting);
* ``no-improvement-in-10``: stop when validation accuracy has not improved for
  10 epochs (at most ``--max-epochs``), returning the best epoch's params;
* ``halving``: Nielsen's schedule: halve η each time the no-improvement-in-10
  rule fires, stop when η has fallen to η₀/128 (at most ``--max-epochs``).

Part B, dropout: [784, 100, 10], L2 λ = 5, η = 0.5, 30 epochs, hidden
``drop_rate`` 0 vs 0.5 (inverted dropout; evaluation without it).

    python experiments/e9_early_stopping_dropout.py [--seeds 3] [--max-epochs 200] [--out results/e9]
"""

from __future__ import annotations

import time

import jax
import optax
from _common import epochs, full_data, mean_std, parser, pct, save

import jreg

ETA, LMBDA = 0.5, 5.0


def main() -> None:
    p = parser(__doc__.splitlines()[0], "e9")
    p.add_argument("--max-epochs", type=int, default=200, help="cap for the early-stopping runs (default 200)")
    args = p.parse_args()
    train, valid, test = full_data(args)
    n = train.x.shape[0]
    fixed_epochs = epochs(args, 30)
    cap = 4 if args.quick else args.max_epochs
    patience = 1 if args.quick else 10
    results: dict = {"experiment": "e9_early_stopping_dropout", "eta": ETA, "lmbda": LMBDA, "parts": {}}

    curves = {}

    def run(name, sizes, epochs_, seed, drop_rate=0.0, stopping=None):
        model = jreg.mlp(sizes, drop_rate=drop_rate)
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(LMBDA / n))
        started = time.perf_counter()
        result = jreg.fit(
            obj,
            optax.sgd(ETA),
            model.init(jax.random.key(seed)),
            (train.x, train.y),
            epochs=epochs_,
            batch_size=10,
            key=jax.random.key(1000 + seed),
            evaluation=(valid.x, valid.y),
            monitor=("evaluation_accuracy",),
            early_stopping=stopping,
        )
        params, history = result.params, result.history
        if seed == 0:
            curves[name] = history.to_dict()
        row = {
            "epochs_run": len(history),
            "best_validation": max(history.evaluation_accuracy),
            "test_accuracy": float(jreg.accuracy(model.apply, params, (test.x, test.y))),
            "stopped": history.stopped,
            "seconds": time.perf_counter() - started,
        }
        print(
            f"  {name} seed {seed}: {row['epochs_run']} epochs, best validation "
            f"{100 * row['best_validation']:.2f}%, test {100 * row['test_accuracy']:.2f}% ({row['seconds']:.1f} s)"
        )
        return row

    configs = {
        "fixed-30": dict(sizes=[784, 30, 10], epochs_=fixed_epochs),
        "no-improvement-in-10": dict(
            sizes=[784, 30, 10], epochs_=cap, stopping=jreg.EarlyStopping(patience=patience, restore_best=True)
        ),
        "halving": dict(sizes=[784, 30, 10], epochs_=cap, stopping=jreg.EarlyStopping.nielsen(patience)),
        "dropout 0": dict(sizes=[784, 100, 10], epochs_=fixed_epochs, drop_rate=0.0),
        "dropout 0.5": dict(sizes=[784, 100, 10], epochs_=fixed_epochs, drop_rate=0.5),
    }
    for name, cfg in configs.items():
        rows = [run(name, seed=s, **cfg) for s in range(args.seeds)]
        results["parts"][name] = {
            "runs": rows,
            "test_accuracy": mean_std([r["test_accuracy"] for r in rows]),
            "epochs_run": mean_std([r["epochs_run"] for r in rows]),
        }
    results["summary"] = {name: part["test_accuracy"]["mean"] for name, part in results["parts"].items()}
    jreg.plotting.plot_histories(
        curves,
        args.out / "curves.png",
        series=("evaluation_accuracy", "learning_rate_scale"),
        title="Validation accuracy; learning-rate scale (halving run), seed 0",
        evaluation_data="validation",
    )
    print(f"\n{'setting':>22} {'epochs run':>12} {'test accuracy':>18}")
    for name, part in results["parts"].items():
        e = part["epochs_run"]
        print(f"{name:>22} {e['mean']:>7.1f} ± {e['std']:<4.1f} {pct(part['test_accuracy']):>18}")
    save(args.out, results)


if __name__ == "__main__":
    main()
