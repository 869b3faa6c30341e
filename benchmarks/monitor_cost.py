"""What jreg.fit's default monitoring costs over monitor=(): interleaved rounds, seconds per epoch and ratios.

    python benchmarks/monitor_cost.py mlp [--rounds 3] [--epochs 4] [--eval]
    python benchmarks/monitor_cost.py cnn [--rounds 3] [--epochs 4] [--eval]

``mlp``: Nielsen's [784, 30, 10], sigmoid, cross-entropy + L2, SGD, batch 10, on the first ``--n``
(10,000) MNIST training images (``../shared/data/mnist`` or ``$JREG_DATA_DIR`` when present; else the
embedded t10k set, 10,000 images). ``cnn``: the Flax linen CNN of examples/flax_cnn_batchnorm.py (two
conv/BatchNorm/ReLU/pool blocks, dropout, width 16; Adam, batch 32) on the embedded 1,000 images.

Each round runs one fit per configuration, one after another (so a load on the machine falls on all of
them alike): ``none`` (``monitor=()``), ``default`` (``monitor`` left out) and ``old default`` (the
series the default measured before: the whole-training-set ``training_cost`` and ``training_accuracy``,
plus the evaluation series with ``--eval``). With ``--eval`` (held-out data: ``--eval-n`` images, 1,000
by default) also ``evaluation`` (``monitor`` naming the evaluation series alone). An epoch is timed
between two ``callback`` calls (compilation and the first epoch excluded), in wall seconds and in CPU
seconds of this process (every thread's, ``time.process_time``); a configuration's figure is the median
over its epochs and rounds; each round starts with the next configuration. Ratios are to ``none``. On a
machine shared with other work the CPU seconds are the steady measure (they do not count the time other
processes hold the cores); the wall seconds say how noisy the machine was.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def mnist(n: int, eval_n: int) -> tuple[tuple, tuple, str]:
    folder = os.environ.get("JREG_DATA_DIR") or (SHARED if SHARED.is_dir() else None)
    if folder is not None:
        try:
            train, validation, _ = jreg.data.load_mnist(folder, download=False, progress=False)
            return (train.x[:n], train.y[:n]), (validation.x[:eval_n], validation.y[:eval_n]), f"MNIST ({folder})"
        except jreg.JregError:
            pass
    small, test = jreg.data.load_mnist_small()
    return (test.x[:n], test.y[:n]), (small.x[:eval_n], small.y[:eval_n]), "embedded MNIST (t10k to train)"


def mlp_case(n: int, eval_n: int) -> tuple[dict, str]:
    train, held_out, source = mnist(n, eval_n)
    model = jreg.mlp([784, 30, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / len(train[1])))
    kw = dict(objective=objective, optimizer=optax.sgd(0.5), params=model.init(jax.random.key(0)), train=train)
    return dict(kw, batch_size=10, held_out=held_out), f"[784, 30, 10], batch 10, {len(train[1])} images of {source}"


def cnn_case(n: int, eval_n: int) -> tuple[dict, str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cnn", Path(__file__).resolve().parents[1] / "examples/flax_cnn_batchnorm.py"
    )
    example = importlib.util.module_from_spec(spec)
    sys.modules["cnn"] = example  # flax's dataclasses look their module up
    spec.loader.exec_module(example)
    (x, y), test = jreg.data.load_mnist_small()
    model = jreg.frameworks.from_linen(example.CNN(16), x[:1], key=jax.random.key(0))
    objective = jreg.objective(
        model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(1e-4, mask=jreg.selectors.name("kernel"))
    )
    kw = dict(objective=objective, optimizer=optax.adam(1e-3), params=model.params, train=(x[:n], y[:n]))
    held_out = (test.x[:eval_n], test.y[:eval_n])
    described = f"Flax CNN (examples/flax_cnn_batchnorm.py, width 16), batch 32, {min(n, len(y))} embedded images"
    return dict(kw, batch_size=32, model_state=model.model_state, held_out=held_out), described


def seconds_per_epoch(case: dict, monitor, evaluation, epochs: int) -> tuple[list[float], list[float]]:
    """``(wall seconds, CPU seconds of this process)`` of each epoch after the first."""
    stamps: list[tuple[float, float]] = []
    kw = {k: v for k, v in case.items() if k != "held_out"}
    jreg.fit(
        kw.pop("objective"),
        kw.pop("optimizer"),
        kw.pop("params"),
        kw.pop("train"),
        epochs=epochs,
        key=jax.random.key(1),
        evaluation=evaluation,
        monitor=monitor,
        callback=lambda e, m: stamps.append((time.perf_counter(), time.process_time())),
        **kw,
    )
    wall, cpu = np.diff(np.asarray(stamps), axis=0).T
    return list(wall), list(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["mlp", "cnn"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="epochs per fit (the first is not timed)")
    ap.add_argument("--n", type=int, default=None, help="training images (mlp: 10,000; cnn: 1,000)")
    ap.add_argument("--eval", action="store_true", help="give held-out data (then default measures its series)")
    ap.add_argument("--eval-n", type=int, default=1000)
    args = ap.parse_args()
    n = args.n or (10_000 if args.model == "mlp" else 1000)
    case, described = (mlp_case if args.model == "mlp" else cnn_case)(n, args.eval_n)
    held_out = jreg.Evaluation(case["held_out"], batch_size=500) if args.eval else None
    evaluation_series = ("evaluation_cost", "evaluation_accuracy")
    configs = {
        "none": (),
        "default": None,
        "old default": ("training_cost", "training_accuracy", *(evaluation_series if args.eval else ())),
    }
    if args.eval:
        configs["evaluation"] = evaluation_series
    wall: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):  # each round starts with the next configuration: no one always runs first
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c = seconds_per_epoch(case, configs[name], held_out, args.epochs)
            wall[name] += w
            cpu[name] += c
    jnp.zeros(()).block_until_ready()
    where = f"held-out {args.eval_n} images" if args.eval else "no held-out data"
    print(
        f"{described}; {where}; {args.rounds} interleaved rounds x {args.epochs - 1} timed epochs, {jax.devices()[0]}"
    )
    for label, times in (("CPU", cpu), ("wall", wall)):
        base = statistics.median(times["none"])
        print(f" {label} seconds per epoch (median, min-max), ratio of medians to none:")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:<12} {median:.4f} ({min(values):.4f}-{max(values):.4f})  {median / base:.3f}")


if __name__ == "__main__":
    main()
