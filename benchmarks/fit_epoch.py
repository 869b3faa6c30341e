"""Seconds per epoch of jreg.fit(monitor=()) alone: [784, 30, 10], batch 10, the first N MNIST images.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/fit_epoch.py [N] [EPOCHS]

Epochs are timed between two ``callback`` calls (fit syncs with the host once per epoch anyway), so
validation, compilation and the first epoch are excluded; prints the median and the minimum. The
single-model figure that issue 14's CPU targets compare a sweep's cost per model-epoch with
(docs/benchmarks.md, "Sweeps: cost per model as K grows (CPU)").
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import numpy as np
import optax

import jreg


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    train, _, _ = jreg.data.load_mnist(download=False)
    x, y = jax.numpy.asarray(train.x[:n]), jax.numpy.asarray(train.y[:n])
    model = jreg.mlp([784, 30, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(2.5 / n))
    stamps: list[float] = []
    jreg.fit(
        objective,
        optax.sgd(0.5),
        model.init(jax.random.key(0)),
        (x, y),
        epochs=epochs,
        batch_size=10,
        key=jax.random.key(1),
        monitor=(),
        callback=lambda e, m: stamps.append(time.perf_counter()),
    )
    gaps = np.diff(stamps)
    print(f"fit(monitor=()), {n} images: median {statistics.median(gaps):.4f} s / epoch, min {gaps.min():.4f}")


if __name__ == "__main__":
    main()
