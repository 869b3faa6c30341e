"""An Equinox MLP with dropout, L2 on its weight matrices, trained by jreg through jreg.frameworks.from_equinox.

    python examples/equinox_mlp.py            # 5 epochs on the embedded 1,000 MNIST images
    python examples/equinox_mlp.py --quick    # a tiny run (the test suite's)

``from_equinox`` trains the module's floating-point arrays and keeps the rest
(activation functions, sizes) aside; ``apply`` combines them again and vmaps
the per-example module over the batch, with one dropout key per example split
from the step's key (training mode, ``eqx.nn.inference_mode(module, False)``)
and none in evaluation (``inference_mode(module)``). Passing the module itself
as params is a jreg error that points here.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import optax

import jreg
from jreg import selectors as S


class MLP(eqx.Module):
    """784 -> width (ReLU, dropout) -> 10 logits, for one example."""

    hidden: eqx.nn.Linear
    drop: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, width: int, key: jax.Array):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(784, width, key=k1)
        self.drop = eqx.nn.Dropout(0.3)
        self.out = eqx.nn.Linear(width, 10, key=k2)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        return self.out(self.drop(jax.nn.relu(self.hidden(x)), key=key))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    (x, y), test = jreg.data.load_mnist_small()
    epochs, width = (1, 16) if args.quick else (args.epochs, 100)
    if args.quick:
        (x, y), test = (x[:256], y[:256]), (test.x[:256], test.y[:256])
    model = jreg.frameworks.from_equinox(MLP(width, jax.random.key(0)))
    objective = jreg.objective(
        model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(1e-4, mask=S.name("weight"))
    )
    result = jreg.fit(
        objective,
        optax.adam(3e-3),
        model.params,
        (x, y),
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(1),
        evaluation=test,
        verbose=True,
    )
    trained = model.rebuild(result.params)  # an MLP again
    print(f"test accuracy: {100 * result.history.evaluation_accuracy[-1]:.2f} %")
    return {"model": trained, "history": result.history}


if __name__ == "__main__":
    main()
