"""Shared plumbing for the experiment scripts (public jreg API only)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

import jreg


def parser(description: str, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=Path("results") / out, help=f"output folder (default results/{out})")
    p.add_argument("--seeds", type=int, default=3, help="independent runs (init and data order), default 3")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $JREG_DATA_DIR, cache)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny configuration for smoke tests: embedded subset, 1,000 test images, few epochs",
    )
    return p


def add_cost_convention(p: argparse.ArgumentParser) -> None:
    """``--cost-convention``: how the monitored costs count the penalty (``jreg.Evaluation(cost_convention=...)``)."""
    p.add_argument(
        "--cost-convention",
        choices=("jreg", "network2"),
        default="jreg",
        help="jreg (default): every set's cost carries the training set's penalty λ/(2n)Σw²; network2: network2.py's "
        "total_cost, λ/(2·len(set))Σw² (the book's cost curves). Training is the same under both.",
    )


def full_data(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(train, validation, test): Nielsen's split, or with --quick the embedded subset (test cut to 1,000)."""
    if args.quick:
        train, test = jreg.data.load_mnist_small()
        small = jreg.data.Split(test.x[:1000], test.y[:1000])
        return train, small, small
    return jreg.data.load_mnist(args.data_dir)


def epochs(args: argparse.Namespace, default: int, quick: int = 2) -> int:
    if args.epochs is not None:
        return args.epochs
    return quick if args.quick else default


def sweep_seeds(
    model: jreg.Model,
    build: Any,
    hparams: dict[str, Sequence[float]],
    train: Any,
    evaluation: Any,
    *,
    seeds: int,
    epochs: int,
    batch_size: int,
    monitor: Sequence[str] | None = None,
    init: Any = None,
) -> list[jreg.Result]:
    """One sweep over ``hparams`` per seed: seed s initializes with key(s) and shuffles with key(1000 + s).

    ``init(key) -> stacked params`` gives each model its own initial params (default: ``model.init``, shared).
    Returns one :class:`jreg.Result` per seed (``.params`` stacked, ``.history``, ``.select(i)`` model i).
    """
    results = []
    for seed in range(seeds):
        key = jax.random.key(seed)
        params = model.init(key) if init is None else init(key)
        started = time.perf_counter()
        result = jreg.sweep(
            build,
            params,
            train,
            hparams=hparams,
            epochs=epochs,
            batch_size=batch_size,
            key=jax.random.key(1000 + seed),
            evaluation=evaluation,
            monitor=monitor,
            stacked_params=init is not None,
        )
        print(f"  seed {seed}: {epochs} epochs x {result.models} models in {time.perf_counter() - started:.1f} s")
        results.append(result)
    return results


def weight_norm(params: Any) -> float:
    """sqrt(sum w^2) over the weight matrices: l2(1) is 1/2 sum w^2."""
    return float(jax.numpy.sqrt(2 * jreg.penalties.l2(1.0)(params)))


def mean_std(values: Sequence[float]) -> dict[str, float]:
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def pct(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f} %"


def save(out: Path, results: dict[str, Any]) -> None:
    jreg.io.write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'}")
