"""Peak memory (RSS) of jreg.fit on a small CNN, with and without per-epoch evaluation of 10,000 images.

    python benchmarks/eval_memory.py [--reps 2] [--epochs 2]

Each configuration runs in a fresh Python process (peak RSS is per process),
the configurations interleaved, ``--reps`` times each:

  no evaluation             monitor=(): training only
  evaluation, automatic     evaluation=test (jreg's default: batches within 64 MiB of intermediates)
  evaluation, 1000          evaluation=Evaluation(test, batch_size=1000)
  evaluation, full batch    evaluation=Evaluation(test, batch_size=10000) (one batch: how jreg evaluated before)

Model: conv 3x3x32 - ReLU - conv 3x3x64 - ReLU - 2x2 average pool - dense 10, in plain
JAX (lax.conv); softmax cross-entropy, L2, Adam, mini-batch 32, on the embedded 1,000
MNIST training images; evaluation on the 10,000 test images and the training set.
Target (issue 11): peak RSS with evaluation <= 1.3x without.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {"no evaluation": -1, "evaluation, automatic": 0, "evaluation, 1000": 1000, "evaluation, full batch": 10_000}


def cnn():
    import jax
    import jax.numpy as jnp

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "conv1": {"kernel": jax.random.normal(k1, (3, 3, 1, 32)) * (2 / 9) ** 0.5, "bias": jnp.zeros(32)},
            "conv2": {"kernel": jax.random.normal(k2, (3, 3, 32, 64)) * (2 / 288) ** 0.5, "bias": jnp.zeros(64)},
            "dense": {"kernel": jax.random.normal(k3, (14 * 14 * 64, 10)) * (1 / 12544) ** 0.5, "bias": jnp.zeros(10)},
        }

    def conv(x, layer):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, layer["kernel"], (1, 1), "SAME", dimension_numbers=dims) + layer["bias"]

    def apply(params, x):
        x = x.reshape((-1, 28, 28, 1))
        x = jax.nn.relu(conv(x, params["conv1"]))
        x = jax.nn.relu(conv(x, params["conv2"]))
        x = x.reshape((x.shape[0], 14, 2, 14, 2, 64)).mean(axis=(2, 4)).reshape((x.shape[0], -1))
        return x @ params["dense"]["kernel"] + params["dense"]["bias"]

    return init, apply


def automatic_batches() -> None:
    """Print the evaluation batch jreg picks by default for this CNN and for Nielsen's [784, 30, 10]."""
    import jax

    import jreg
    from jreg.train.evaluate import MEMORY_BUDGET, auto_batch_size, make_chunk  # internals, to show the choice

    init, apply = cnn()
    mlp = jreg.mlp([784, 30, 10])
    _, test = jreg.data.load_mnist_small()
    for name, model_apply, params in (
        ("this CNN", apply, init(jax.random.key(0))),
        ("[784, 30, 10]", mlp.apply, mlp.init(jax.random.key(0))),
    ):
        objective = jreg.objective(model_apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(1e-4))
        chunk = make_chunk(objective, cost=True, metrics={"accuracy": jreg.metrics.accuracy})
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct((10**6, *a.shape[1:]), a.dtype), tuple(test))
        size = auto_batch_size(chunk, params, None, shapes, None)  # a million examples: no cap at the data's size
        print(
            f"automatic evaluation batch for {name}: {size} examples "
            f"(about {MEMORY_BUDGET / size / 1024:.1f} KiB of intermediate values per example)"
        )


def child(eval_batch: int, epochs: int) -> None:
    """Train once and print the process's peak RSS (MiB) as JSON."""
    import jax
    import optax

    import jreg

    init, apply = cnn()
    (x, y), test = jreg.data.load_mnist_small()
    objective = jreg.objective(apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(1e-4))
    kw = dict(epochs=epochs, batch_size=32, key=jax.random.key(1))
    if eval_batch < 0:
        kw["monitor"] = ()
    else:
        kw["evaluation"] = jreg.Evaluation(test, batch_size=eval_batch or None)
    started = time.perf_counter()
    result = jreg.fit(objective, optax.adam(1e-3), init(jax.random.key(0)), (x, y), **kw)
    params, history = result.params, result.history
    jax.block_until_ready(params)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    accuracy = history.evaluation_accuracy[-1] if "evaluation_accuracy" in history else None
    print(json.dumps({"peak_mib": peak_kib / 1024, "accuracy": accuracy, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(int(args.child), args.epochs)
        return
    automatic_batches()
    peaks: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.reps):
        for name, batch in CONFIGS.items():
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "none" if batch is None else str(batch),
                    "--epochs",
                    str(args.epochs),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            peaks[name].append(result["peak_mib"])
            acc = "" if result["accuracy"] is None else f", test accuracy {100 * result['accuracy']:.2f} %"
            print(f"{name:<24} peak RSS {result['peak_mib']:8.0f} MiB, fit {result['seconds']:.1f} s{acc}", flush=True)
    base = statistics.median(peaks["no evaluation"])
    print(f"\nmedian peak RSS over {args.reps} runs each ({os.cpu_count()} cores, {platform.machine()}):")
    for name, values in peaks.items():
        median = statistics.median(values)
        print(f"  {name:<24} {median:8.0f} MiB   {median / base:5.2f}x no evaluation")


if __name__ == "__main__":
    main()
