"""Experiment 11: an L1 regularization path on MNIST: the warm-started population path vs cold-started fits.

[784, 30, 10] sigmoid, cross-entropy, default init, proximal SGD
(optax.chain(sgd(η), jreg.proximal(l1(λ), η)), η = 0.5), mini-batch 10, 10 epochs
on the first 10,000 training images; L1 on the first layer's weights (mask "0/w": a
pixel is unused when its row of weights is all 0), 8 strengths from jreg.lambda_max
(of that layer) down to 1e-3 · lambda_max (geometric). ``--mask all`` puts L1 on both
weight matrices instead (then lambda_max zeroes the output layer too, where the first
layer's gradient is exactly 0). Four ways to get the same 8 models (80 model-epochs each):

* population path: jreg.regularization_path (one compiled program; every epoch each
  member restarts from its weaker neighbour: the pipelined warm-start chain, from dense
  to sparse; it used to run from the strong end down: docs/results.md section 11);
* sequential path: mode="sequential", 10 epochs per strength from the weaker one's params;
* cold sweep: jreg.sweep over the 8 strengths, every model from the init;
* cold fits: jreg.fit once per strength, each from the init (8 compilations).

Reported per method and strength: test accuracy, first-layer weights exactly zero,
pixels (first-layer rows) and hidden units (its columns) left; each method's wall time
(the CPU is shared: read the ratios).

    python experiments/e11_regularization_path.py [--train-size N] [--out results/e11]
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
from _common import epochs, full_data, parser, save

import jreg

ETA = 0.5
STRENGTHS = 8
RATIO = 1e-3


def main() -> None:
    p = parser(__doc__.splitlines()[0], "e11")
    p.add_argument("--train-size", type=int, default=10_000, help="training images used (default 10,000)")
    p.add_argument("--mask", choices=("0/w", "all"), default="0/w", help="L1 on the first layer (default) or all")
    args = p.parse_args()
    mask = None if args.mask == "all" else args.mask
    train, _, test = full_data(args)
    size = min(args.train_size, len(train.x))
    train = jreg.data.Split(train.x[:size], train.y[:size])
    n_epochs = epochs(args, 10)
    model = jreg.mlp([784, 30, 10])
    data_obj = jreg.objective(model.apply, jreg.losses.cross_entropy)

    def build(hp):
        return data_obj, optax.chain(optax.sgd(ETA), jreg.proximal(jreg.penalties.l1(hp["lmbda"], mask=mask), ETA))

    warm_up(model, train, test)  # JAX's one-time start-up costs, outside every timed method
    params = model.init(jax.random.key(0))
    common = dict(epochs=n_epochs, batch_size=10, key=jax.random.key(1), evaluation=test)
    watched = ("evaluation_accuracy", "training_cost")
    rows, times, after = {}, {}, {}
    for mode in ("population", "sequential"):
        started = time.perf_counter()
        path = jreg.regularization_path(
            build,
            params,
            train,
            n_strengths=3 if args.quick else STRENGTHS,
            ratio=RATIO,
            mask=mask,
            selectors={"first layer": "0/w"},
            groups="rows",
            mode=mode,
            monitor=watched,
            **common,
        )
        times[f"{mode} path"] = time.perf_counter() - started
        after[f"{mode} path"] = path.seconds  # without computing lambda_max and the grid
        rows[f"{mode} path"] = _rows(path.strengths, path.params, path.metrics["evaluation_accuracy"])
        print(f"{mode} path ({times[f'{mode} path']:.1f} s):\n{path.table()}")
    strengths = path.strengths.tolist()

    started = time.perf_counter()
    swept = jreg.sweep(build, params, train, hparams={"lmbda": strengths}, monitor=watched, **common)
    jax.block_until_ready(swept.params)
    times["cold sweep"] = time.perf_counter() - started
    rows["cold sweep"] = _rows(strengths, swept.params, swept.history["evaluation_accuracy"][:, -1])

    started, fitted, accs = time.perf_counter(), [], []
    for lam in strengths:
        fit = jreg.fit(*build({"lmbda": lam}), params, train, monitor=watched, **common)
        fitted.append(fit.params)
        accs.append(fit.history["evaluation_accuracy"][-1])
    times["cold fits"] = time.perf_counter() - started
    rows["cold fits"] = _rows(strengths, jax.tree.map(lambda *a: np.stack(a), *fitted), np.asarray(accs))

    base = times["cold fits"]
    print("after lambda_max and the grid: " + ", ".join(f"{m} {t:.1f} s" for m, t in after.items()))
    print(
        f"\ntest accuracy, first-layer weights exactly 0, pixels left, hidden units left\n{'lambda':>9} "
        + " ".join(f"{m:>22}" for m in rows)
    )
    for i, lam in enumerate(strengths):
        cells = [
            f"{r[i]['test_accuracy']:.2%} {r[i]['zeros']:.1%} {r[i]['pixels']:d} {r[i]['units']:d}"
            for r in rows.values()
        ]
        print(f"{lam:>9.3g} " + " ".join(f"{c:>22}" for c in cells))
    print("wall time: " + ", ".join(f"{m} {t:.1f} s ({t / base:.2f}x cold fits)" for m, t in times.items()))
    _figure(args.out, strengths, rows)
    summary = {m: {"seconds": times[m], "per_strength": rows[m]} for m in rows}
    for m, t in after.items():
        summary[m]["seconds_after_the_grid"] = t
    save(args.out, {"experiment": "e11_regularization_path", "epochs": n_epochs, "eta": ETA, "train_size": size,
                    "mask": args.mask,
                    "strengths": strengths, "summary": summary})  # fmt: skip


def warm_up(model, train, test) -> None:
    """One untimed tiny fit: the first compilation in a process pays JAX's one-time costs; keep them out of the
    timings, so that the method timed first is not charged for them."""
    small = jreg.data.Split(train.x[:100], train.y[:100])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy)
    jreg.fit(obj, optax.sgd(0.1), model.init(jax.random.key(99)), small, epochs=1, batch_size=10,
             key=jax.random.key(99), evaluation=jreg.data.Split(test.x[:100], test.y[:100]))  # fmt: skip


def _rows(strengths, stacked, accuracy) -> list[dict[str, float]]:
    w1 = np.asarray(stacked[0]["w"])
    return [
        {
            "lmbda": float(lam),
            "test_accuracy": float(accuracy[i]),
            "zeros": float(np.mean(w1[i] == 0)),
            "pixels": int(np.sum(np.any(w1[i] != 0, axis=1))),
            "units": int(np.sum(np.any(w1[i] != 0, axis=0))),
        }
        for i, lam in enumerate(strengths)
    ]


def _figure(out, strengths, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io as _io

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for method, r in rows.items():
        axes[0].semilogx(strengths, [100 * x["test_accuracy"] for x in r], "o-", label=method, ms=3)
        axes[1].semilogx(strengths, [100 * x["zeros"] for x in r], "o-", label=method, ms=3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_ylabel("first-layer weights exactly 0 (%)")
    for ax in axes:
        ax.set_xlabel("L1 strength λ")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    jreg.io.write_bytes(out / "curves.png", buffer.getvalue())


if __name__ == "__main__":
    main()
