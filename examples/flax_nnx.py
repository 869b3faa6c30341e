"""A Flax NNX MLP with dropout and BatchNorm, L2 on its kernels, trained by jreg through jreg.frameworks.from_nnx.

    python examples/flax_nnx.py            # 5 epochs on the embedded 1,000 MNIST images
    python examples/flax_nnx.py --quick    # a tiny run (the test suite's)

``from_nnx`` splits the model: ``nnx.Param`` variables are trained (a plain
dict, ``{"dense": {"kernel": ...}}``), ``nnx.BatchStat`` is jreg's model state.
In training the step's key reseeds the model's RNG streams, so ``nnx.Dropout``
draws a fresh mask per step; in evaluation the model is viewed with
``deterministic=True, use_running_average=True``. ``rebuild`` gives back an
NNX model with the trained values.
"""

from __future__ import annotations

import argparse

import jax
import optax
from flax import nnx

import jreg
from jreg import selectors as S


class MLP(nnx.Module):
    """784 -> width (BatchNorm, ReLU, dropout) -> 10 logits."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(784, width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)  # rngs=: the stream jreg reseeds with each step's key
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.norm(self.dense(x)))
        return self.out(self.drop(h))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    (x, y), test = jreg.data.load_mnist_small()
    epochs, width = (1, 16) if args.quick else (args.epochs, 100)
    if args.quick:
        (x, y), test = (x[:256], y[:256]), (test.x[:256], test.y[:256])
    model = jreg.frameworks.from_nnx(MLP(width, rngs=nnx.Rngs(params=0, dropout=1)))
    objective = jreg.objective(
        model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(1e-4, mask=S.name("kernel"))
    )
    print(jreg.describe(objective.penalty, model.params))
    result = jreg.fit(
        objective,
        optax.adam(3e-3),
        model.params,
        (x, y),
        model_state=model.model_state,
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(2),
        evaluation=test,
        verbose=True,
    )
    trained = model.rebuild(result.params, result.model_state)  # an MLP again
    trained.eval()
    print(f"test accuracy: {100 * result.history.evaluation_accuracy[-1]:.2f} %")
    return {"model": trained, "history": result.history}


if __name__ == "__main__":
    main()
