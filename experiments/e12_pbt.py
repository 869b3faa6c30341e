"""Experiment 12: population-based training over (λ, η) vs a grid of the same compute, on MNIST [784, 30, 10].

[784, 30, 10] sigmoid, cross-entropy, default init, plain SGD with L2 (l2(λ/n), Nielsen's
convention), mini-batch 10, 10 epochs on the first 10,000 training images; the
validation set (10,000) ranks and selects, the test set (10,000) reports.

* grid: jreg.sweep over λ ∈ {0.1, 1, 10, 100} × η ∈ {0.1, 1}: 8 models × 10 epochs;
* PBT: jreg.pbt from the same 8 points, every 2 epochs the worst quarter (2 members)
  copies a best-quarter member (params, optimizer and model state) and multiplies each of
  its λ and η by 0.8 or 1.25 (clipped to [1e-3, 1e3] and [1e-3, 10]): also 8 × 10 model-epochs.

Each method's chosen model is its best member by final validation accuracy; reported: its
test accuracy and hyperparameters, and the wall time. Seed s initializes with key(s),
shuffles with key(1000 + s) (PBT draws its exploit/explore choices from the same key).

    python experiments/e12_pbt.py [--seeds 3] [--train-size N] [--out results/e12]
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
from _common import epochs, full_data, mean_std, parser, pct, save

import jreg

LMBDAS = [0.1, 1.0, 10.0, 100.0]
ETAS = [0.1, 1.0]
EXPLORE = {"lmbda": (0.8, 1.25), "eta": (0.8, 1.25)}
BOUNDS = {"lmbda": (1e-3, 1e3), "eta": (1e-3, 10.0)}


def main() -> None:
    p = parser(__doc__.splitlines()[0], "e12")
    p.add_argument("--train-size", type=int, default=10_000, help="training images used (default 10,000)")
    p.add_argument("--every", type=int, default=2, help="PBT's exploit/explore period in epochs (default 2)")
    args = p.parse_args()
    train, validation, test = full_data(args)
    size = min(args.train_size, len(train.x))
    train = jreg.data.Split(train.x[:size], train.y[:size])
    n_epochs = epochs(args, 10)
    model = jreg.mlp([784, 30, 10])

    def build(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / size))
        return obj, optax.sgd(hp["eta"])

    warm_up(model, train, test)  # JAX's one-time start-up costs, outside every timed method
    grid = jreg.grid(lmbda=LMBDAS, eta=ETAS)  # every λ with every η: 8 members
    common = dict(epochs=n_epochs, batch_size=10, evaluation=validation, monitor=("evaluation_accuracy",))
    per_seed: dict[str, list] = {"grid": [], "pbt": []}
    times: dict[str, list[float]] = {"grid": [], "pbt": []}
    curves = None
    for seed in range(args.seeds):
        params, key = model.init(jax.random.key(seed)), jax.random.key(1000 + seed)
        started = time.perf_counter()
        swept = jreg.sweep(build, params, train, hparams=grid, key=key, **common)
        jax.block_until_ready(swept.params)
        times["grid"].append(time.perf_counter() - started)
        best = int(np.nanargmax(swept.history["evaluation_accuracy"][:, -1]))  # by final validation accuracy
        per_seed["grid"].append(_chosen(model, swept, best, {k: v[best] for k, v in grid.items()}, test))

        started = time.perf_counter()
        result = jreg.pbt(build, params, train, hparams=grid, explore=EXPLORE, bounds=BOUNDS, every=args.every,
                          fraction=0.25, key=key, **common)  # fmt: skip
        jax.block_until_ready(result.params)
        times["pbt"].append(time.perf_counter() - started)
        final = {k: float(v[result.best]) for k, v in result.final_hparams().items()}
        per_seed["pbt"].append(_chosen(model, result, result.best, final, test))
        per_seed["pbt"][-1]["copies"] = len(result.lineage)
        curves = curves or (swept.history, result)
        for method in per_seed:
            c = per_seed[method][-1]
            print(f"seed {seed} {method:>4}: best member {c['member']} (λ = {c['lmbda']:.3g}, η = {c['eta']:.3g}) "
                  f"validation {c['validation_accuracy']:.2%} test {c['test_accuracy']:.2%} "
                  f"in {times[method][-1]:.1f} s")  # fmt: skip
    summary = {}
    for method, runs in per_seed.items():
        summary[method] = {
            "test_accuracy": mean_std([r["test_accuracy"] for r in runs]),
            "validation_accuracy": mean_std([r["validation_accuracy"] for r in runs]),
            "seconds": mean_std(times[method]),
            "chosen": runs,
        }
        s = summary[method]
        print(f"{method:>4}: test {pct(s['test_accuracy'])}, validation {pct(s['validation_accuracy'])}, "
              f"{s['seconds']['mean']:.1f} s per seed")  # fmt: skip
    ratio = summary["pbt"]["seconds"]["mean"] / summary["grid"]["seconds"]["mean"]
    print(f"wall time PBT / grid: {ratio:.2f}")
    _figure(args.out, *curves, n_epochs)
    save(args.out, {"experiment": "e12_pbt", "epochs": n_epochs, "train_size": size, "every": args.every,
                    "grid": grid, "explore": EXPLORE, "bounds": BOUNDS, "summary": summary,
                    "pbt_hparams_seed0": {k: v.tolist() for k, v in curves[1].hparams.items()},
                    "pbt_lineage_seed0": curves[1].lineage})  # fmt: skip


def warm_up(model, train, test) -> None:
    """One untimed tiny fit: the first compilation in a process pays JAX's one-time costs; keep them out of the
    timings, so that the method timed first is not charged for them."""
    small = jreg.data.Split(train.x[:100], train.y[:100])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy)
    jreg.fit(obj, optax.sgd(0.1), model.init(jax.random.key(99)), small, epochs=1, batch_size=10,
             key=jax.random.key(99), evaluation=jreg.data.Split(test.x[:100], test.y[:100]))  # fmt: skip


def _chosen(model, result, i, hp, test) -> dict:
    return {
        "member": i,
        "lmbda": float(hp["lmbda"]),
        "eta": float(hp["eta"]),
        "validation_accuracy": float(result.history["evaluation_accuracy"][i, -1]),
        "test_accuracy": float(jreg.accuracy(model.apply, result.select(i).params, test)),
    }


def _figure(out, grid_history, result, n_epochs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io as _io

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    x = np.arange(1, n_epochs + 1)
    for i in range(result.hparams["lmbda"].shape[0]):
        axes[0].semilogy(x, result.hparams["lmbda"][i], drawstyle="steps-post", lw=1)
        axes[1].semilogy(x, result.hparams["eta"][i], drawstyle="steps-post", lw=1)
    axes[2].plot(x, 100 * np.nanmax(grid_history["evaluation_accuracy"], axis=0), "o-", ms=3, label="grid: best member")
    axes[2].plot(
        x, 100 * np.nanmax(result.history["evaluation_accuracy"], axis=0), "o-", ms=3, label="PBT: best member"
    )
    axes[0].set_ylabel("λ (PBT members)")
    axes[1].set_ylabel("η (PBT members)")
    axes[2].set_ylabel("validation accuracy (%)")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    jreg.io.write_bytes(out / "curves.png", buffer.getvalue())


if __name__ == "__main__":
    main()
