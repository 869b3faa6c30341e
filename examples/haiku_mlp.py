"""A Haiku MLP with dropout and BatchNorm, L2 on its weight matrices, trained by jreg via jreg.frameworks.from_haiku.

    python examples/haiku_mlp.py            # 5 epochs on the embedded 1,000 MNIST images
    python examples/haiku_mlp.py --quick    # a tiny run (the test suite's)

``from_haiku`` takes ``hk.transform_with_state(forward)``: Haiku's params are
trained, its state (BatchNorm's moving averages) is jreg's model state.
``forward``'s ``is_training`` flag is found by name; in training the step's
key is Haiku's ``rng`` (``hk.next_rng_key()`` draws from it), in evaluation
``rng`` is ``None``, so the function must skip dropout there (the adapter
checks that once).
"""

from __future__ import annotations

import argparse

import haiku as hk
import jax
import optax

import jreg
from jreg import selectors as S


def make_forward(width: int):
    def forward(x: jax.Array, is_training: bool) -> jax.Array:
        h = hk.Linear(width)(x)
        h = jax.nn.relu(hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.9)(h, is_training))
        if is_training:
            h = hk.dropout(hk.next_rng_key(), 0.3, h)
        return hk.Linear(10)(h)

    return hk.transform_with_state(forward)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests")
    args = ap.parse_args(argv)
    (x, y), test = jreg.data.load_mnist_small()
    epochs, width = (1, 16) if args.quick else (args.epochs, 100)
    if args.quick:
        (x, y), test = (x[:256], y[:256]), (test.x[:256], test.y[:256])
    model = jreg.frameworks.from_haiku(make_forward(width), x[:1], key=jax.random.key(0))
    objective = jreg.objective(
        model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(1e-4, mask=S.name("w"))
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
        verbose=True,
    )
    print(f"test accuracy: {100 * result.history.evaluation_accuracy[-1]:.2f} %")
    return {"params": result.params, "model_state": result.model_state, "history": result.history}


if __name__ == "__main__":
    main()
