"""Experiment 8: group lasso removes whole hidden units: accuracy vs units left.

[784, 100, 10] sigmoid, cross-entropy, default init, η = 0.5, mini-batch 10, 10
epochs on 50,000 images; proximal group lasso on the first layer's columns (one
group per hidden unit: its 784 incoming weights), strength c, one sweep over c.
A unit is gone when its incoming weights are all exactly zero.

    python experiments/e8_group_lasso_units.py [--strengths C ...] [--out results/e8]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from _common import epochs, full_data, parser, save

import jreg

STRENGTHS = [0.0, 2e-3, 4e-3, 8e-3, 1.2e-2, 1.6e-2, 2.4e-2, 3.2e-2]
ETA = 0.5


def main() -> None:
    p = parser(__doc__.splitlines()[0], "e8")
    p.add_argument("--strengths", type=float, nargs="+", default=STRENGTHS, help=f"values of c (default {STRENGTHS})")
    args = p.parse_args()
    strengths = args.strengths
    train, _, test = full_data(args)
    n_epochs = epochs(args, 10)
    model = jreg.mlp([784, 100, 10])
    data_obj = jreg.objective(model.apply, jreg.losses.cross_entropy)

    def build(hp):
        units = jreg.penalties.group_lasso(hp["c"], mask="0/w")
        return data_obj, optax.chain(optax.sgd(ETA), jreg.proximal(units, ETA))

    result = jreg.sweep(
        build,
        model.init(jax.random.key(0)),
        train,
        hparams={"c": strengths},
        epochs=n_epochs,
        batch_size=10,
        key=jax.random.key(1),
        evaluation=test,
        monitor=("evaluation_accuracy",),
    )
    summary = {}
    for i, c in enumerate(strengths):
        w = result.select(i).params[0]["w"]
        left = int(jnp.sum(jnp.any(w != 0, axis=0)))
        summary[f"c={c:g}"] = {
            "c": c,
            "units_left": left,
            "test_accuracy": float(result.history["evaluation_accuracy"][i, -1]),
        }
        print(
            f"c = {c:<8g} units left {left:>3} / 100   test accuracy {100 * summary[f'c={c:g}']['test_accuracy']:.2f}%"
        )
    import matplotlib

    matplotlib.use("Agg")
    import io as _io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4))
    rows = sorted(summary.values(), key=lambda r: r["units_left"])
    ax.plot([r["units_left"] for r in rows], [100 * r["test_accuracy"] for r in rows], "o-")
    for r in rows:
        ax.annotate(
            f"c={r['c']:g}",
            (r["units_left"], 100 * r["test_accuracy"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, -10),
        )
    ax.set_xlabel("hidden units left (of 100)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Proximal group lasso on the hidden units")
    ax.grid(alpha=0.3)
    buffer = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    jreg.io.write_bytes(args.out / "curves.png", buffer.getvalue())
    save(args.out, {"experiment": "e8_group_lasso_units", "epochs": n_epochs, "eta": ETA, "summary": summary})


if __name__ == "__main__":
    main()
