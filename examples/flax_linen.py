"""A Flax linen MLP with dropout and BatchNorm, L2 on its kernels, trained by jreg through jreg.frameworks.from_linen.

    python examples/flax_linen.py            # 5 epochs on the embedded 1,000 MNIST images
    python examples/flax_linen.py --quick    # a tiny run (the test suite's)

``from_linen`` splits the module's variables: the ``params`` collection is
trained, ``batch_stats`` is jreg's model state (updated in training, read in
evaluation). ``__call__``'s ``train`` flag is found by name; in training the
step's key reaches ``nn.Dropout`` as ``rngs={"dropout": key}``. The hidden
activations the module ``sow``s feed an activity penalty.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import optax

import jreg
from jreg import selectors as S


class MLP(nn.Module):
    """784 -> width (BatchNorm, ReLU, dropout) -> 10 logits."""

    width: int = 100
    drop_rate: float = 0.3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = nn.Dense(self.width)(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
        self.sow("intermediates", "hidden", h)  # for the activity penalty
        h = nn.Dropout(self.drop_rate, deterministic=not train)(h)
        return nn.Dense(10)(h)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    (x, y), test = jreg.data.load_mnist_small()
    epochs, width = (1, 16) if args.quick else (args.epochs, 100)
    if args.quick:
        (x, y), test = (x[:256], y[:256]), (test.x[:256], test.y[:256])
    model = jreg.frameworks.from_linen(MLP(width), x[:1], key=jax.random.key(0))
    objective = jreg.objective(
        model.apply,
        jreg.losses.softmax_cross_entropy,
        jreg.penalties.l2(1e-4, mask=S.name("kernel")),
        activity=jreg.penalties.l1(1e-5),
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
        key=jax.random.key(1),
        evaluation=test,
        # the default series and training_cost, which comes with its parts (training_l2, training_activity_l1...)
        monitor=("epoch_loss", "training_cost", "evaluation_cost", "evaluation_accuracy"),
        verbose=True,
    )
    variables = model.rebuild(result.params, result.model_state)  # {"params": ..., "batch_stats": ...}, for MLP.apply
    print(f"test accuracy: {100 * result.history.evaluation_accuracy[-1]:.2f} %")
    return {"variables": variables, "history": result.history}


if __name__ == "__main__":
    main()
