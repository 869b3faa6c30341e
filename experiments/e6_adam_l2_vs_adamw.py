"""Experiment 6: coupled L2 vs decoupled weight decay under Adam (Adam + L2 is not AdamW).

[784, 30, 10] sigmoid, cross-entropy, default init, Adam (learning rate 1e-3),
mini-batch 100, 10 epochs on the 50,000 training images. For each strength c:
coupled: l2(c) in the objective (its gradient c·w goes through Adam's
per-coordinate normalization); decoupled: optax.adamw(weight_decay=c) (the
update gains -lr·c·w after normalization). Under SGD these two are identical
(tests/test_identities.py, identity 4); under Adam they are not. Every model of
a seed, both methods and every c, is one traced program: the coupled and
decoupled strengths are hyperparameters of the same sweep. AdamW also runs at
c = 1 and 10, where its decay (lr·c·w per step) starts to matter.

    python experiments/e6_adam_l2_vs_adamw.py [--seeds 3] [--out results/e6]
"""

from __future__ import annotations

import optax
from _common import epochs, full_data, mean_std, parser, save, sweep_seeds, weight_norm

import jreg

STRENGTHS = [1e-4, 1e-3, 1e-2, 1e-1]
ADAMW_ONLY = [1.0, 10.0]  # AdamW's decay is lr*c*w per step: it needs much larger c to bite
LR = 1e-3


def main() -> None:
    args = parser(__doc__.splitlines()[0], "e6").parse_args()
    train, _, test = full_data(args)
    n_epochs = epochs(args, 10)
    model = jreg.mlp([784, 30, 10])
    configs = [("none", 0.0)] + [(m, c) for m in ("adam+l2", "adamw") for c in STRENGTHS]
    configs += [("adamw", c) for c in ADAMW_ONLY]
    hp = {
        "coupled": [c if m == "adam+l2" else 0.0 for m, c in configs],
        "decoupled": [c if m == "adamw" else 0.0 for m, c in configs],
    }

    def build(h):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(h["coupled"]))
        return obj, optax.adamw(LR, weight_decay=h["decoupled"], mask=jreg.penalties.mask_tree)

    results = sweep_seeds(
        model,
        build,
        hp,
        train,
        test,
        seeds=args.seeds,
        epochs=n_epochs,
        batch_size=100,
        monitor=("evaluation_accuracy", "training_cost"),
    )
    summary = {}
    for i, (method, c) in enumerate(configs):
        summary[f"{method} c={c:g}"] = {
            "method": method,
            "c": c,
            "final_test_accuracy": mean_std([r.history["evaluation_accuracy"][i, -1] for r in results]),
            "weight_norm": mean_std([weight_norm(r.select(i).params) for r in results]),
        }
    print(f"{'method':>9} {'c':>7} {'test accuracy':>18} {'weight norm':>16}")
    for s in summary.values():
        a, w = s["final_test_accuracy"], s["weight_norm"]
        print(
            f"{s['method']:>9} {s['c']:>7g} {100 * a['mean']:>11.2f} ± {100 * a['std']:.2f} "
            f"{w['mean']:>10.2f} ± {w['std']:.2f}"
        )
    runs = {
        f"{m} c={c:g}": results[0].history.run(i).to_dict() for i, (m, c) in enumerate(configs) if c in (0.0, 1e-2, 1.0)
    }
    jreg.plotting.plot_histories(
        runs,
        args.out / "curves.png",
        series=("evaluation_accuracy", "training_cost"),
        title="Adam + L2 vs AdamW at c = 0.01, seed 0",
    )
    save(
        args.out,
        {"experiment": "e6_adam_l2_vs_adamw", "epochs": n_epochs, "seeds": args.seeds, "lr": LR, "summary": summary},
    )


if __name__ == "__main__":
    main()
