"""README's first example: a Flax MLP, 4 strengths of L2 x 3 seeds = 12 models in one compiled program.

    python examples/readme_quickstart.py            # 20 epochs, then 10 more, on the embedded MNIST subset
    python examples/readme_quickstart.py --quick    # a tiny run (the test suite's)

Each model stops on its own when its held-out accuracy has not improved for 3 epochs (keeping its best
params), the others go on. ``jreg.describe`` shows which leaves the penalty touches; the result ranks the
members, takes the best one out, and continues the whole sweep, exactly, from where it stopped
(``resume=result``). The code between the ``# --- README`` markers is README.md's first snippet, with
``epochs=epochs`` and ``epochs=more`` written as 20 and 30 there (tests/test_examples.py checks it).
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import optax

import jreg
from jreg import selectors as S


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests: 2 epochs, then 1 more")
    args = ap.parse_args(argv)
    epochs, more = (2, 3) if args.quick else (20, 30)  # the README's snippet reads epochs=20, then epochs=30

    # --- README
    class MLP(nn.Module):  # your model, as you would write it for Flax
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.relu(nn.Dense(100)(x)))

    (x, y), test = jreg.data.load_mnist_small()  # 1,000 MNIST training images + 10,000 test images, offline
    model = jreg.frameworks.from_linen(MLP(), x[:1], key=jax.random.key(0))

    def build(hp):  # one (objective, optimizer) per setting; hp["lmbda"] is traced: one program serves all
        l2 = jreg.penalties.l2(hp["lmbda"], mask=S.name("kernel"))  # kernels only, not biases
        return jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, l2), optax.adam(1e-3)

    print(jreg.describe(build({"lmbda": 1e-4})[0].penalty, model.params))  # which leaves L2 touches, and not

    settings = dict(
        hparams=jreg.grid(lmbda=[0.0, 1e-4, 1e-3, 1e-2], seed=range(3)),  # 12 models: every λ with 3 inits
        batch_size=32,
        key=jax.random.key(1),
        evaluation=test,
        early_stopping=jreg.EarlyStopping(patience=3, restore_best=True),  # per model
    )

    def init(key):  # member i starts from init(jax.random.key(seed[i]))
        return model.init(key)[0]  # from_linen's init gives (params, model_state)

    result = jreg.sweep(build, init, (x, y), epochs=epochs, **settings)
    print(result.summary())  # one row per model: λ, seed, best accuracy and epoch, stopped or not
    best = result.select(result.best().member)  # the best model as a one-model jreg.Result
    print(best.hparams, best.history.best())
    result = jreg.sweep(build, init, (x, y), epochs=more, resume=result, **settings)  # to epoch 30: as one 30-epoch run
    # --- README

    print(f"after {more} epochs: best member {result.best().member}, accuracy {result.best().value.max():.4f}")
    return {"result": result, "best": best, "model": model}


if __name__ == "__main__":
    main()
