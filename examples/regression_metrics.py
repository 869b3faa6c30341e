"""Regression with jreg: y = sin(x) + noise, custom metrics, evaluation in batches every few epochs.

    python examples/regression_metrics.py            # 200 epochs
    python examples/regression_metrics.py --quick    # a tiny run (the test suite's)

Targets of shape ``(N,)`` against a model with one output ``(N, 1)`` work with
the quadratic cost; no accuracy is reported (the targets are not classes).
The metrics are functions of ``(outputs, targets)``: jreg's MSE and MAE, and
one written here, the fraction of predictions within 0.1 of the target.
Evaluation runs in batches of 256 inside the compiled program, every 10
epochs; early stopping watches the held-out MSE.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import jreg


def within(tolerance: float):
    """A metric: 1 where ``|prediction - target| < tolerance``, per example."""

    def metric(outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return (jnp.abs(outputs[:, 0] - targets) < tolerance).astype(jnp.float32)

    return metric


def data(n: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    kx, kn = jax.random.split(key)
    x = jax.random.uniform(kx, (n, 1), minval=-3.0, maxval=3.0)
    return x, jnp.sin(x[:, 0]) + 0.05 * jax.random.normal(kn, (n,))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    epochs = 10 if args.quick else args.epochs
    train, held_out = data(2_000, jax.random.key(0)), data(1_000, jax.random.key(1))
    model = jreg.mlp([1, 32, 32, 1], activation=jnp.tanh, init="glorot")
    objective = jreg.objective(model.apply, jreg.losses.quadratic, jreg.penalties.l2(1e-5))
    evaluation = jreg.Evaluation(
        held_out,
        metrics={"mse": jreg.metrics.mse, "mae": jreg.metrics.mae, "within_tolerance": within(0.1)},
        batch_size=256,
        every=10 if not args.quick else 5,
    )
    result = jreg.fit(
        objective,
        optax.adam(3e-3),
        model.init(jax.random.key(2)),
        train,
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(3),
        evaluation=evaluation,
        early_stopping=jreg.EarlyStopping(patience=5, monitor="evaluation_mse", restore_best=True),
        verbose=True,
    )
    params, history = result.params, result.history
    last = history.epochs("evaluation_mse")[-1]
    print(
        f"after epoch {last}: held-out MSE {history.evaluation_mse[-1]:.4f}, MAE {history.evaluation_mae[-1]:.4f}, "
        f"{100 * history.evaluation_within_tolerance[-1]:.1f} % within 0.1 (noise std 0.05)"
    )
    return {"params": params, "history": history}


if __name__ == "__main__":
    main()
