"""Mixed precision: float32 master params, bfloat16 (or float16 with loss scaling) compute, float32 loss.

    python examples/mixed_precision.py [--policy bf16|f16|f32] [--epochs 3] [--quick]

Trains Nielsen's [784, 30, 10] network with L2 under a precision policy and checks
what the policy promises: params, gradients, the loss and every penalty part in
float32, the model itself run in the compute dtype. Any model gets the same
treatment with ``jreg.mixed_precision(apply, policy)``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

import jreg


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", default="bf16", help="bf16, f16, f32 or 'params=float32,compute=bfloat16,...'")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="the embedded 1,000 images, one epoch")
    args = p.parse_args(argv)
    if args.quick:
        train, test = jreg.data.load_mnist_small()
        train, test, epochs = (train.x, train.y), (test.x[:500], test.y[:500]), 1
    else:
        train, validation, _ = jreg.data.load_mnist()
        train, test, epochs = (train.x, train.y), (validation.x, validation.y), args.epochs

    policy = jreg.precision.as_policy(args.policy)
    model = jreg.mlp([784, 30, 10], policy=policy)
    params = model.init(jax.random.key(0))
    n = len(train[1])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / n))
    optimizer = optax.sgd(0.5)
    if policy.loss_scale != 1.0:  # a loss scale can overflow: skip such a step instead of applying it
        optimizer = jreg.precision.skip_nonfinite(optimizer)

    batch = (test[0][:10], test[1][:10])
    (total, parts), grads = jax.jit(jax.value_and_grad(lambda p: objective(p, batch), has_aux=True))(params)
    print(f"policy {policy}")
    print(
        f"  params {sorted({str(a.dtype) for a in jax.tree.leaves(params)})}, "
        f"gradients {sorted({str(a.dtype) for a in jax.tree.leaves(grads)})}"
    )
    print(f"  loss {total.dtype}, parts " + ", ".join(f"{k}: {v.dtype}" for k, v in parts.items()))

    result = jreg.fit(
        objective, optimizer, params, train, epochs=epochs, batch_size=10, key=jax.random.key(1), evaluation=test
    )
    trained, history = result.params, result.history
    accuracy = float(history.evaluation_accuracy[-1])
    print(f"  after {epochs} epoch(s): evaluation accuracy {accuracy:.4f}")
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(trained))  # the master weights stayed float32
    return {"policy": policy, "params": trained, "history": history, "parts": parts, "grads": grads}


if __name__ == "__main__":
    main()
