"""Experiment 4: Nielsen's default weight initialization vs the large one (ch. 3).

[784, 30, 10] sigmoid, cross-entropy, η = 0.1, mini-batch 10, λ = 5.0, 30 epochs
on the 50,000 training images, accuracy on the 10,000 validation images.
Default: w ~ N(0, 1/n_in), b ~ N(0, 1); large: w, b ~ N(0, 1). Both inits of a
seed train side by side in one sweep (stacked params). Book: both end near
96 %, the default init gets there much sooner (it does not saturate the hidden
neurons).

    python experiments/e4_init.py [--seeds 3] [--out results/e4]
"""

from __future__ import annotations

import jax
import optax
from _common import epochs, full_data, mean_std, parser, pct, save, sweep_seeds

import jreg

INITS = ["default", "large"]


def main() -> None:
    args = parser(__doc__.splitlines()[0], "e4").parse_args()
    train, validation, _ = full_data(args)
    n = train.x.shape[0]
    n_epochs = epochs(args, 30)
    models = {name: jreg.mlp([784, 30, 10], init=name) for name in INITS}
    model = models["default"]  # same apply for both

    def build(hp):
        del hp  # the two runs differ only in their initial params
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / n))
        return obj, optax.sgd(0.1)

    def init(key):
        stacked = [models[name].init(key) for name in INITS]
        return jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *stacked)

    results = sweep_seeds(
        model,
        build,
        {"run": [0.0, 1.0]},
        train,
        validation,
        seeds=args.seeds,
        epochs=n_epochs,
        batch_size=10,
        monitor=("evaluation_accuracy",),
        init=init,
    )
    summary, runs = {}, {}
    for i, name in enumerate(INITS):
        per_seed = [r.history.run(i) for r in results]
        summary[name] = {
            "validation_accuracy_epoch_1": mean_std([h["evaluation_accuracy"][0] for h in per_seed]),
            "final_validation_accuracy": mean_std([h["evaluation_accuracy"][-1] for h in per_seed]),
        }
        runs[f"{name} init"] = per_seed[0].to_dict()
        print(
            f"{name}: epoch 1 {pct(summary[name]['validation_accuracy_epoch_1'])}, "
            f"final {pct(summary[name]['final_validation_accuracy'])}"
        )
    jreg.plotting.plot_histories(
        runs,
        args.out / "curves.png",
        series=("evaluation_accuracy",),
        title="[784, 30, 10]: default vs large init, seed 0",
        evaluation_data="validation",
    )
    save(
        args.out,
        {
            "experiment": "e4_init",
            "epochs": n_epochs,
            "seeds": args.seeds,
            "n": n,
            "book": "both about 96 % after 30 epochs; the default init is ahead early",
            "summary": summary,
            "histories_seed0": runs,
        },
    )


if __name__ == "__main__":
    main()
