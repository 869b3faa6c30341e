"""An Equinox model with ``eqx.nn.BatchNorm`` and ``eqx.nn.State``, trained by jreg.fit.

    python examples/equinox_state.py            # 5 epochs on the embedded 1,000 MNIST images
    python examples/equinox_state.py --quick    # a tiny run (the test suite's)

Equinox keeps a module's arrays and its static parts together; jreg trains
the arrays: ``jreg.frameworks.from_equinox`` splits them off
(``eqx.partition(model, eqx.is_inexact_array)``) and its ``apply`` combines
them again. The ``eqx.nn.State`` that ``eqx.nn.make_with_state`` returns is
jreg's *model state*: updated in
training mode, read in evaluation mode (``eqx.nn.inference_mode``), one per
model in a sweep, saved in checkpoints.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import optax

import jreg


class Net(eqx.Module):
    """784 -> hidden (BatchNorm, ReLU) -> 10 logits, for one example; jreg vmaps it over the batch."""

    hidden: eqx.nn.Linear
    norm: eqx.nn.BatchNorm
    out: eqx.nn.Linear

    def __init__(self, width: int, key: jax.Array):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(784, width, key=k1)
        self.norm = eqx.nn.BatchNorm(width, axis_name="batch", momentum=0.9, mode="batch")
        self.out = eqx.nn.Linear(width, 10, key=k2)

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        h, state = self.norm(self.hidden(x), state)
        return self.out(jax.nn.relu(h)), state


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    (x, y), test = jreg.data.load_mnist_small()
    epochs = 1 if args.quick else args.epochs
    if args.quick:
        (x, y), test = (x[:256], y[:256]), (test.x[:512], test.y[:512])
    model, model_state = eqx.nn.make_with_state(Net)(32, jax.random.key(0))
    adapted = jreg.frameworks.from_equinox(model, state=model_state)  # vmapped over the batch, axis "batch"
    params = adapted.params
    objective = jreg.objective(adapted.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(1e-4))
    result = jreg.fit(
        objective,
        optax.adam(1e-3),
        params,
        (x, y),
        model_state=model_state,
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(1),
        evaluation=test,
        verbose=True,
    )
    trained, model_state = adapted.rebuild(result.params, result.model_state)  # one Equinox module and its state
    print(f"test accuracy (inference mode): {100 * result.history.evaluation_accuracy[-1]:.2f} %")
    return {"model": trained, "model_state": model_state, "history": result.history}


if __name__ == "__main__":
    main()
