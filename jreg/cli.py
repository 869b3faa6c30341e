"""The ``jreg`` command line. ``jreg demo`` is the main job: Nielsen's chapter-3
overfitting experiment, with and without L2, offline on the embedded MNIST subset."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def demo_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--lmbda",
        type=_nonnegative_float,
        nargs="+",
        default=[0.0, 0.1],
        help="L2 strengths λ, penalty λ/(2n)·Σw² (default: 0 0.1)",
    )
    parser.add_argument("--epochs", type=_positive_int, default=400, help="epochs (default 400)")
    parser.add_argument("--hidden", type=_positive_int, default=30, help="hidden units (default 30)")
    parser.add_argument("--eta", type=_positive_float, default=0.5, help="learning rate η (default 0.5)")
    parser.add_argument("--batch-size", type=_positive_int, default=10, help="mini-batch size (default 10)")
    parser.add_argument(
        "--init",
        choices=["large", "default"],
        default="large",
        help="weight initialization: the book's 'large' N(0,1) (default) or N(0,1/n_in)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for init and shuffling (default 0)")
    parser.add_argument("--out", type=Path, default=Path("jreg-demo"), help="output folder (default ./jreg-demo)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def weight_norm(params: Any) -> float:
    """``sqrt(sum w^2)`` over the weight matrices (the leaves an L2 penalty touches by default)."""
    from .penalties import l2

    return float(np.sqrt(2 * l2(1.0)(params)))  # l2(1) = 1/2 sum w^2


def demo(args: argparse.Namespace) -> dict[str, Any]:
    """Train the book's network once per λ (one compiled sweep), print a table, write JSON and a PNG."""
    started = time.perf_counter()
    import jax
    import optax
    from tqdm.auto import tqdm

    import jreg
    from jreg import io, plotting

    (x, y), test = jreg.data.load_mnist_small()
    n = x.shape[0]
    model = jreg.mlp([784, args.hidden, 10], init=args.init)
    params = model.init(jax.random.key(args.seed))
    lmbdas = [float(v) for v in args.lmbda]

    def build(hp):
        penalty = jreg.penalties.l2(hp["lmbda"] / n)
        return jreg.objective(model.apply, jreg.losses.cross_entropy, penalty), optax.sgd(args.eta)

    bar = tqdm(total=args.epochs, unit="epoch", disable=args.quiet, desc="training", file=sys.stderr)

    def progress(epoch: int, metrics: dict[str, np.ndarray]) -> None:
        accs = metrics["evaluation_accuracy"]
        bar.set_postfix_str("test acc " + "  ".join(f"λ={lm:g}: {100 * a:.2f}%" for lm, a in zip(lmbdas, accs)))
        bar.update(1)

    trained, history = jreg.sweep(
        build,
        params,
        (x, y),
        hparams={"lmbda": lmbdas},
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=jax.random.key(args.seed + 1),
        evaluation=test,
        callback=progress,
    )
    bar.close()
    elapsed = time.perf_counter() - started

    runs = [_run_summary(lm, history, i, trained) for i, lm in enumerate(lmbdas)]
    results = {
        "experiment": f"Nielsen ch. 3: [784, {args.hidden}, 10] sigmoid, cross-entropy, "
        f"on the first {n} MNIST training images",
        "config": {
            "sizes": [784, args.hidden, 10],
            "eta": args.eta,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "n": int(n),
            "init": args.init,
            "seed": args.seed,
            "penalty": "l2(lmbda / n) = lmbda/(2n) * sum w^2",
            "evaluation": "MNIST t10k (10,000 images)",
        },
        "runs": runs,
        "seconds": round(elapsed, 2),
    }
    out = args.out
    io.write_json(out / "results.json", results)
    labelled = {f"λ = {r['lmbda']:g}": r["history"] for r in runs if r["history"].get("evaluation_accuracy")}
    if labelled:  # every run that trained for at least one epoch
        plotting.plot_histories(
            labelled,
            out / "overfitting.png",
            series=("evaluation_accuracy", "training_cost"),
            title=f"[784, {args.hidden}, 10] on {n} MNIST images: L2 regularization against overfitting",
        )

    print(
        f"\n[784, {args.hidden}, 10], η={args.eta}, mini-batch {args.batch_size}, {args.epochs} epochs, "
        f"n={n} training images, test on 10,000"
    )
    header = f"{'λ':>7} {'final test acc':>15} {'best test acc':>15} {'final train cost':>17} {'weight norm':>12}"
    print(header)
    print("-" * len(header))
    for r in runs:
        if "diverged" in r:
            print(f"{r['lmbda']:>7g}   diverged: {r['diverged']['message']}")
            continue
        print(
            f"{r['lmbda']:>7g} {100 * r['final_test_accuracy']:>14.2f}% "
            f"{100 * r['best_test_accuracy']:>9.2f}% (@{r['best_epoch']:>3}) "
            f"{r['final_training_cost']:>17.4f} {r['weight_norm']:>12.2f}"
        )
    wrote = " and ".join(str(out / f) for f in ("results.json", "overfitting.png") if (out / f).exists())
    print(f"\ntrained in {elapsed:.1f} s; wrote {wrote}")
    return results


def _run_summary(lmbda: float, history: Any, i: int, trained: Any) -> dict[str, Any]:
    """One λ's row of results.json: final and best figures, or where its training diverged."""
    import jax

    h = history.run(i)
    row: dict[str, Any] = {"lmbda": lmbda}
    bad = history.diverged.get(i)
    if bad is not None:
        step = "" if bad["step"] is None else f", step {bad['step']}"
        row["diverged"] = {**bad, "message": f"training diverged in epoch {bad['epoch']}{step}: {bad['quantity']}"}
        row["history"] = h.to_dict()
        return row
    acc = np.asarray(h["evaluation_accuracy"])
    row.update(
        final_test_accuracy=float(acc[-1]),
        best_test_accuracy=float(acc.max()),
        best_epoch=int(acc.argmax()) + 1,
        final_training_accuracy=float(h["training_accuracy"][-1]),
        final_training_cost=float(h["training_cost"][-1]),
        weight_norm=weight_norm(jax.tree.map(lambda a: a[i], trained)),
        history=h.to_dict(),
    )
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jreg", description="jreg: regularized neural networks in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser(sub.add_parser("demo", help="Nielsen's overfitting experiment with and without L2 (offline)"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        results = demo(args)
        diverged = [r for r in results["runs"] if "diverged" in r]
        for r in diverged:
            print(f"jreg demo: λ = {r['lmbda']:g}: {r['diverged']['message']}", file=sys.stderr)
        if diverged:
            print(
                f"jreg demo: {len(diverged)} of {len(results['runs'])} runs diverged; try a smaller --eta",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
