"""What the trackers cost a sweep: interleaved sweeps with and without ``writers=``, the ratio per epoch.

    python benchmarks/writers_cost.py                          # K = 64, the issue's case
    python benchmarks/writers_cost.py --k 4 --epochs 2 --rounds 1 --n 100   # a tiny run: does it work

K models of Nielsen's [784, 30, 10] (cross-entropy + L2 of strength λ/n, SGD with rate η; λ and η on a grid),
batch 10, on the embedded 1,000 MNIST training images (``--n`` of them), evaluated after every epoch on 1,000
embedded test images. Each round runs one sweep per configuration, one after another (so a load on the machine
falls on all of them alike): ``none`` (no writers), then each of ``--writers`` alone (``tensorboard``,
``jsonl``, ``mlflow``: a SQLite file) and ``all`` of them together, every writer into a fresh temporary folder.
An epoch is timed between two ``callback`` calls (the callback runs before the trackers' hook, so each interval
holds one epoch's compiled call and the previous epoch's writes; the first epoch and its compilation are not
timed), in wall and in CPU seconds of this process. The table: per epoch, the median over rounds of each
configuration's time over ``none``'s, and the median over epochs and rounds; and the seconds spent inside the
writers' calls per epoch (a proxy around each writer) over ``none``'s epoch: the trackers' own share, which the
issue bounds at 5 %. Figures from a loaded machine mean nothing: measure on a quiet one (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax

import jreg


class Timed:
    """A writer (or a multi-run writer) whose calls add their wall seconds to ``clock[0]``."""

    def __init__(self, writer, clock):
        self.writer, self.clock = writer, clock

    def _timed(self, name, *args, **kw):
        start = time.perf_counter()
        try:
            return getattr(self.writer, name)(*args, **kw)
        finally:
            self.clock[0] += time.perf_counter() - start

    def run(self, name, *, group=None, start=0):
        return Timed(self._timed("run", name, group=group, start=start), self.clock)

    def write_scalars(self, step, scalars):
        self._timed("write_scalars", step, scalars)

    def write_hparams(self, hparams):
        self._timed("write_hparams", hparams)

    def flush(self):
        self._timed("flush")

    def close(self):
        self._timed("close")


def writers_of(kind: str, folder: Path, clock: list) -> list:
    made = {
        "tensorboard": lambda: jreg.writers.TensorBoard(folder / "tb"),
        "jsonl": lambda: jreg.writers.JSONL(folder / "log.jsonl"),
        "mlflow": lambda: jreg.writers.MLflow(folder / "mlflow.db", experiment="cost"),
    }
    kinds = list(made) if kind == "all" else [kind]
    return [Timed(made[k](), clock) for k in kinds]


def seconds(case: dict, kind: str, epochs: int) -> tuple[list[float], list[float], float, float]:
    """``(wall seconds per epoch, CPU seconds per epoch, seconds in the writers per timed epoch, wall seconds of the
    whole call)``: the call's time includes compilation, the first epoch and closing the runs (the last sends)."""
    stamps: list[tuple[float, float, float]] = []
    clock = [0.0]
    call = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        writers = None if kind == "none" else writers_of(kind, Path(folder), clock)
        jreg.sweep(
            case["build"],
            case["params"],
            case["train"],
            hparams=case["hparams"],
            epochs=epochs,
            batch_size=10,
            key=jax.random.key(1),
            evaluation=case["held_out"],
            callback=lambda e, m: stamps.append((time.perf_counter(), time.process_time(), clock[0])),
            writers=writers,
        )
        call = time.perf_counter() - call
    wall, cpu, inside = np.diff(np.asarray(stamps), axis=0).T
    return list(wall), list(cpu), float(np.mean(inside)) if len(inside) else 0.0, call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=64, help="models in the sweep (a square grid of λ and η when it is one)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per sweep (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000, help="training images (of the embedded 1,000)")
    ap.add_argument("--writers", default="tensorboard,jsonl,mlflow")
    args = ap.parse_args()
    train, test = jreg.data.load_mnist_small()
    x, y = train.x[: args.n], train.y[: args.n]
    model, n = jreg.mlp([784, 30, 10]), len(y)

    def build(hp):
        objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return objective, optax.sgd(hp["eta"])

    side = max(1, int(round(args.k**0.5)))
    lmbda = np.resize(np.repeat(np.geomspace(0.1, 10.0, side), side), args.k)
    eta = np.resize(np.tile(np.geomspace(0.05, 1.0, side), side), args.k)
    held_out = (test.x[:1000], test.y[:1000])
    case = dict(build=build, params=model.init(jax.random.key(0)), train=(x, y), held_out=held_out,
                hparams={"lmbda": lmbda, "eta": eta})  # fmt: skip
    kinds = ["none", *args.writers.split(","), "all"]
    wall = {k: [] for k in kinds}
    cpu = {k: [] for k in kinds}
    inside = {k: [] for k in kinds}
    calls = {k: [] for k in kinds}
    print(
        f"K = {args.k} models of [784, 30, 10], batch 10, {n} embedded images, {args.epochs} epochs, {jax.devices()[0]}"
    )
    for r in range(args.rounds):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:  # each round starts with the next one
            w, c, s, t = seconds(case, kind, args.epochs)
            calls[kind].append(t)
            wall[kind].append(w)
            cpu[kind].append(c)
            inside[kind].append(s)
    base = np.asarray(wall["none"])  # (rounds, timed epochs)
    print(
        "wall time over none's, per timed epoch (median over rounds); the median of all; the CPU ratio; the writers' "
        "own share; the sum of the timed epochs' wall time over none's (median over rounds: the amortized cost); the "
        "whole call's (compilation, first epoch and closing the runs included)"
    )
    epochs = base.shape[1]
    cols = " ".join(f"{'epoch ' + str(e + 2):>9}" for e in range(epochs)) if epochs <= 12 else "(per epoch: > 12)"
    print(f"{'writers':>12} {cols} {'median':>8} {'cpu':>8} {'in calls':>9} {'total':>8} {'call':>8}")
    for kind in kinds[1:]:
        ratio = np.asarray(wall[kind]) / base
        cpu_ratio = np.median(np.asarray(cpu[kind]) / np.asarray(cpu["none"]))
        share = statistics.median(inside[kind]) / float(np.median(base))
        cells = " ".join(f"{v:9.3f}" for v in np.median(ratio, axis=0)) if epochs <= 12 else " " * 17
        total = np.median(np.asarray(wall[kind]).sum(axis=1) / base.sum(axis=1))
        call = np.median(np.asarray(calls[kind]) / np.asarray(calls["none"]))
        print(
            f"{kind:>12} {cells} {np.median(ratio):8.3f} {cpu_ratio:8.3f} {100 * share:8.2f}% {total:8.3f} {call:8.3f}"
        )
    print(f"none's epoch: {np.median(base):.3f} s wall (median)")


if __name__ == "__main__":
    main()
