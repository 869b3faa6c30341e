"""A 4 × 4 (λ, η) sweep logged to TensorBoard and MLflow: 16 runs each, named by their hyperparameters.

    python examples/trackers.py                    # 16 models, Nielsen's [784, 30, 10], 10 epochs
    python examples/trackers.py --quick            # a tiny run (the test suite's)
    tensorboard --logdir jreg-trackers/tensorboard # then open http://localhost:6006
    mlflow ui --backend-store-uri sqlite:///jreg-trackers/mlflow.db

One compiled program trains the 16 models (``jreg.sweep``); after each epoch the host loop writes every
member's figures, which it already holds, to one run per member: ``jreg-trackers/tensorboard/lmbda=1,eta=0.5``
and the MLflow run of the same name, with λ and η recorded (TensorBoard's HParams tab, MLflow's params). A
resumed sweep (``resume=``) appends to the same runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import optax

import jreg


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default="jreg-trackers", help="folder for the event files and the MLflow database")
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    train, test = jreg.data.load_mnist_small()
    (x, y), held_out = (train.x, train.y), (test.x[:1000], test.y[:1000])
    epochs, sizes = args.epochs, [784, 30, 10]
    if args.quick:
        (x, y), held_out, epochs, sizes = (x[:200], y[:200]), (test.x[:200], test.y[:200]), 2, [784, 10]
    model, n = jreg.mlp(sizes), x.shape[0]

    def build(hp):
        objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return objective, optax.sgd(hp["eta"])

    out = Path(args.out)
    writers = [
        jreg.writers.TensorBoard(out / "tensorboard"),  # one folder per member
        jreg.writers.MLflow(out / "mlflow.db", experiment="trackers"),  # a SQLite database; any tracking URI works
    ]
    result = jreg.sweep(
        build,
        model.init(jax.random.key(0)),
        (x, y),
        hparams=jreg.grid(lmbda=[0.0, 1.0, 5.0, 20.0], eta=[0.05, 0.2, 0.5, 2.0]),  # 16 members
        epochs=epochs,
        batch_size=10,
        key=jax.random.key(1),
        evaluation=held_out,
        writers=writers,
    )
    best = result.best("evaluation_accuracy")
    hp = {k: float(v[best.member]) for k, v in result.hparams.items()}
    print(f"{result.models} runs each in TensorBoard and MLflow; the best, {hp}: {best.value[best.member]:.4f}")
    print(f"view: tensorboard --logdir {out / 'tensorboard'}")
    return {
        "result": result,
        "tensorboard": out / "tensorboard",
        "mlflow": f"sqlite:///{(out / 'mlflow.db').resolve()}",
    }


if __name__ == "__main__":
    main()
