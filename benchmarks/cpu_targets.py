"""Issue 25's CPU speed targets, measured with jreg's defaults, side by side in one run, interleaved round by round.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/cpu_targets.py [--n 20000] [--k 64] [--rounds 3]

Workload of the issue: [784, 30, 10] sigmoid, cross-entropy, l2(λ/n), η = 0.5, mini-batch 10, the same
data order for every model, the first N MNIST training images. Each round times, one after the other:

  hand-scan     one model, a hand-written jitted epoch (lax.scan, donated params; benchmarks/epoch_speed.py)
  fit           jreg.fit(monitor=()) with every other argument at its default (the target)
  fit-0.2       the same with the previous release's program: the plain one-model epoch, unroll=1
  hand-vmap     K models, a hand-written jitted epoch (jax.vmap of the gradient inside lax.scan;
                benchmarks/sweep_scaling.py)
  sweep         jreg.sweep(monitor=()) of K models with every other argument at its default (the target)
  sweep-0.2     the same with the previous release's default: vectorize="vmap", unroll=1

jreg's epochs are timed between two ``callback`` calls (after compilation and the first epoch), the
hand-written ones around each warm call; each figure is the minimum over a round's epochs. Prints the
per-round figures and the targets' ratios (minimum over rounds and median of the per-round ratios):
sweep ms per model-epoch / fit epoch (target <= 0.5), sweep / hand-vmap (<= 0.8), fit / hand-scan (<= 0.8).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg
from jreg.train import engine

sys.path.insert(0, str(Path(__file__).parent))
import epoch_speed  # noqa: E402
import sweep_scaling  # noqa: E402

ETA = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement")
    args = ap.parse_args()
    train, _, _ = jreg.data.load_mnist(download=False)
    x, y = jnp.asarray(train.x[: args.n]), jnp.asarray(train.y[: args.n])
    n, k = x.shape[0], args.k
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    lmbdas = np.linspace(0, 5, k)
    epoch_speed.N = n  # the hand-written single-model loss reads the module's N for its l2(λ/n)
    hand = epoch_speed.hand_jax_epoch_fn()

    def hand_scan() -> float:
        p = jax.tree.map(jnp.array, params)
        p = jax.block_until_ready(hand(p, x, y, jax.random.key(0)))
        times = []
        for e in range(args.epochs):
            t = time.perf_counter()
            p = jax.block_until_ready(hand(p, x, y, jax.random.key(e + 1)))
            times.append(time.perf_counter() - t)
        return min(times)

    def between_epochs(run) -> float:
        stamps: list[float] = []
        run(lambda *a: stamps.append(time.perf_counter()))
        return float(np.diff(stamps).min())

    def loop_options(callback, **options) -> dict:
        return dict(
            epochs=args.epochs + 1, batch_size=10, key=jax.random.key(1), monitor=(), callback=callback, **options
        )

    def fit(**options) -> float:
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / n))
        return between_epochs(lambda cb: jreg.fit(obj, optax.sgd(ETA), params, (x, y), **loop_options(cb, **options)))

    def fit_previous() -> float:  # the previous release's fit: the plain one-model program, unroll=1
        engine.ONE_AS_VMAP = False
        try:
            return fit(unroll=1)
        finally:
            engine.ONE_AS_VMAP = None

    def build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n)), optax.sgd(
            ETA
        )

    def sweep(**options) -> float:
        hparams = {"lmbda": lmbdas}
        return between_epochs(
            lambda cb: jreg.sweep(build, params, (x, y), hparams=hparams, **loop_options(cb, **options))
        )

    def hand_vmap() -> float:
        return sweep_scaling.hand_seconds(params, x, y, k, args.epochs)[1]  # median of warm epochs

    runs = {
        "hand-scan": hand_scan,
        "fit": fit,
        "fit-0.2": fit_previous,
        "hand-vmap": hand_vmap,
        "sweep": sweep,
        "sweep-0.2": lambda: sweep(vectorize="vmap", unroll=1),
    }
    print(f"[784, 30, 10], batch 10, {n} images, K = {k}; jax {jax.__version__} on {jax.devices()[0].device_kind}")
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            seconds[name].append(run())
        print(f"round {r + 1}: " + ", ".join(f"{name} {s[-1]:.4f}" for name, s in seconds.items()), flush=True)

    def per_model(name: str) -> list[float]:
        return [s / k if name.startswith(("sweep", "hand-vmap")) else s for s in seconds[name]]

    def ratio(a: str, b: str) -> str:
        per_round = [u / v for u, v in zip(per_model(a), per_model(b))]
        return f"{min(per_model(a)) / min(per_model(b)):.3f} (median of rounds {statistics.median(per_round):.3f})"

    print("seconds per epoch (min over rounds; sweeps and hand-vmap: ms per model-epoch):")
    for name in runs:
        scale = 1000 if name.startswith(("sweep", "hand-vmap")) else 1
        unit = "ms / model-epoch" if scale == 1000 else "s / epoch"
        print(f"  {name:>14}: {scale * min(per_model(name)):.4f} {unit}")
    for name in ("fit", "fit-0.2"):
        print(f"{name} / hand-scan (target <= 0.8): {ratio(name, 'hand-scan')}")
    for name in ("sweep", "sweep-0.2"):
        print(f"{name} per model / hand-vmap (target <= 0.8): {ratio(name, 'hand-vmap')}")
        print(f"{name} per model / fit epoch (target <= 0.5): {ratio(name, 'fit')}")


if __name__ == "__main__":
    main()
