"""A Flax linen CNN with BatchNorm and dropout, L2 on its kernels only, trained by jreg.fit.

    python examples/flax_cnn_batchnorm.py            # 5 epochs on the embedded 1,000 MNIST images
    python examples/flax_cnn_batchnorm.py --quick    # a tiny run (the test suite's)

The model's BatchNorm running statistics are jreg *model state*: they go into
``apply`` with ``state=`` and come back updated in training mode, are read
(never written) in evaluation mode, and are saved in checkpoints beside the
params. The step's key reaches dropout through Flax's ``rngs``;
``jreg.frameworks.from_linen`` does the splitting and the wiring. The penalty
is the objective's, so the gradient of ``c/2 * sum kernel^2`` lands on the
kernels alone; biases and BatchNorm's scale and offset are left alone.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import optax

import jreg
from jreg import selectors as S


class CNN(nn.Module):
    """Two conv blocks (conv, BatchNorm, ReLU, average pool), dropout, a dense layer: logits for 10 classes."""

    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.reshape((-1, 28, 28, 1))
        for features in (self.width, 2 * self.width):
            x = nn.Conv(features, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.avg_pool(nn.relu(x), (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(10)(x)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    (x, y), test = jreg.data.load_mnist_small()
    if args.quick:
        (x, y), test, epochs, width = (x[:256], y[:256]), (test.x[:512], test.y[:512]), 1, 4
    else:
        epochs, width = args.epochs, 16
    model = jreg.frameworks.from_linen(CNN(width), x[:1], key=jax.random.key(0))  # params + batch_stats
    params, model_state = model.params, model.model_state
    objective = jreg.objective(
        model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(1e-4, mask=S.name("kernel"))
    )
    print(jreg.describe(objective.penalty, params))
    result = jreg.fit(
        objective,
        optax.adam(1e-3),
        params,
        (x, y),
        model_state=model_state,
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(1),
        evaluation=jreg.Evaluation(test, batch_size=500),
        verbose=True,
    )
    print(f"test accuracy (running BatchNorm statistics): {100 * result.history.evaluation_accuracy[-1]:.2f} %")
    return {"params": result.params, "model_state": result.model_state, "history": result.history}


if __name__ == "__main__":
    main()
