"""Experiment 5: where does L2 enter backprop? A numerical answer, as a short report.

For a trained [784, 30, 10] network (trained with λ = 0.1 on the 1,000-image
subset), in float64:

1. ∂J/∂a at the output (the logits) and at the hidden layer is the same with
   and without the penalty λ/(2n)·Σw²: the penalty depends on the weights, not
   on the activations, so the output error δ is untouched;
2. ∂J/∂w = ∂C₀/∂w + (λ/n)·w for every weight matrix, and the bias gradients
   are unchanged;
3. one SGD step on the regularized objective is weight decay:
   w ← (1 − ηλ/n)·w − η·∂C₀/∂w.

    python experiments/e5_where_l2_enters.py [--out results/e5]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from _common import parser, save

import jreg


def max_abs(a, b) -> float:
    return float(max(jnp.max(jnp.abs(u - v)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def main() -> None:
    args = parser(__doc__.splitlines()[0], "e5").parse_args()
    lmbda, eta = 0.1, 0.5
    with jax.enable_x64(True):
        (x, y), _ = jreg.data.load_mnist_small()
        x = x.astype(jnp.float64)
        n = x.shape[0]
        model = jreg.mlp([784, 30, 10], init="large", dtype=jnp.float64)
        penalty = jreg.penalties.l2(lmbda / n)
        trained = jreg.fit(
            jreg.objective(model.apply, jreg.losses.cross_entropy, penalty),
            optax.sgd(eta),
            model.init(jax.random.key(0)),
            (x, y),
            epochs=2 if args.quick else 30,
            batch_size=10,
            key=jax.random.key(1),
            monitor=(),
        ).params
        batch = (x[:10], y[:10])
        w1, b1 = trained[0]["w"], trained[0]["b"]
        hidden = jax.nn.sigmoid(batch[0] @ w1 + b1)
        logits = model.apply(trained, batch[0])

        # 1. gradients with respect to the activations: an "apply" that starts from them
        def from_logits(params, z):
            return z

        def from_hidden(params, a):
            return a @ params[1]["w"] + params[1]["b"]

        report = {}
        for name, apply, act in (
            ("output (logits z)", from_logits, logits),
            ("hidden activations a", from_hidden, hidden),
        ):
            grads = []
            for pen in (None, penalty):
                obj = jreg.objective(apply, jreg.losses.cross_entropy, pen)
                grads.append(jax.grad(lambda a, obj=obj: obj(trained, (a, batch[1]))[0])(act))
            report[f"max |dJ/d {name}: with - without penalty|"] = max_abs(grads[0], grads[1])
            report[f"max |dJ/d {name}|"] = float(jnp.max(jnp.abs(grads[0])))

        # 2. weight and bias gradients
        with_pen = jreg.objective(model.apply, jreg.losses.cross_entropy, penalty)
        without = jreg.objective(model.apply, jreg.losses.cross_entropy)
        gj = jax.grad(lambda p: with_pen(p, batch)[0])(trained)
        gc = jax.grad(lambda p: without(p, batch)[0])(trained)
        for layer in range(2):
            w = trained[layer]["w"]
            report[f"layer {layer}: max |dJ/dw - dC0/dw - (λ/n) w|"] = float(
                jnp.max(jnp.abs(gj[layer]["w"] - gc[layer]["w"] - lmbda / n * w))
            )
            report[f"layer {layer}: max |(λ/n) w| (the size of the difference)"] = float(
                jnp.max(jnp.abs(lmbda / n * w))
            )
            report[f"layer {layer}: max |dJ/db - dC0/db|"] = float(jnp.max(jnp.abs(gj[layer]["b"] - gc[layer]["b"])))

        # 3. an SGD step is weight decay
        opt = optax.sgd(eta)
        stepped, _, _ = jreg.make_step(with_pen, opt)(trained, opt.init(trained), batch)
        decayed = [
            {"w": (1 - eta * lmbda / n) * p["w"] - eta * g["w"], "b": p["b"] - eta * g["b"]}
            for p, g in zip(trained, gc)
        ]
        report["max |SGD step on J - weight-decay update (1 - ηλ/n) w - η dC0/dw|"] = max_abs(stepped, decayed)
        report["weight decay factor 1 - ηλ/n"] = 1 - eta * lmbda / n

    print(f"Where does L2 enter backprop?  [784, 30, 10], λ = {lmbda:g}, n = {n}, η = {eta:g}, float64")
    for k, v in report.items():
        print(f"  {k:75s} {v:.3e}" if v < 1e-3 or v > 1e3 else f"  {k:75s} {v:.6f}")
    print(
        "The penalty leaves dJ/da untouched (differences are exactly 0), adds (λ/n)·w to dJ/dw (agreement to\n"
        "rounding), and with plain SGD the step is weight decay by (1 - ηλ/n)."
    )
    save(args.out, {"experiment": "e5_where_l2_enters", "lmbda": lmbda, "n": n, "eta": eta, "summary": report})


if __name__ == "__main__":
    main()
