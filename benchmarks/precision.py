"""Nielsen's N30 ([784, 30, 10], sigmoid, cross-entropy, η = 0.5, mini-batch 10) under three precision policies.

    python benchmarks/precision.py [--train 50000] [--epochs 30] [--policies f32,bf16,f16] [--seed 0]

Each policy trains from the same initial params and data order (``jreg.make_epoch``,
validation accuracy after every epoch): ``f32`` (no policy, the plain model), ``bf16``
(float32 master params, bfloat16 compute, float32 loss) and ``f16`` (float16 compute
with the static loss scale 2**15 and ``jreg.precision.skip_nonfinite``). The runs
interleave epoch by epoch (round-robin over the policies), so a machine shared with other work slows them alike.
Printed: final and best validation accuracy, the difference to f32 in points, and
the median seconds per epoch with its ratio to f32 (the first epoch, with the compile, is excluded).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

import jreg

SIZES, ETA, BATCH = [784, 30, 10], 0.5, 10


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=50_000, help="training images (the first n of Nielsen's 50,000)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--policies", default="f32,bf16,f16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    train, validation, _ = jreg.data.load_mnist(args.data_dir)
    train = (train.x[: args.train], train.y[: args.train])
    names = args.policies.split(",")
    runs = {}
    for name in names:
        model = jreg.mlp(SIZES, policy=None if name == "f32" else name)
        opt = optax.sgd(ETA) if name != "f16" else jreg.precision.skip_nonfinite(optax.sgd(ETA))
        params = model.init(jax.random.key(args.seed))
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy)
        epoch_fn = jreg.make_epoch(obj, opt, BATCH, metrics=False)
        runs[name] = dict(apply=model.apply, epoch=epoch_fn, state=(params, opt.init(params)), times=[], accuracy=[])
    for epoch in range(args.epochs):
        key = jax.random.fold_in(jax.random.key(args.seed + 1), epoch)
        for name in names:  # one epoch of each in turn: the same data order for every policy
            r = runs[name]
            start = time.perf_counter()
            params, opt_state, _ = r["epoch"](*r["state"], train, key)
            jax.block_until_ready(params)
            r["times"].append(time.perf_counter() - start)
            r["state"] = (params, opt_state)
            r["accuracy"].append(float(jreg.accuracy(r["apply"], params, (validation.x, validation.y))))
        print(f"epoch {epoch + 1}: " + "  ".join(f"{n} {runs[n]['accuracy'][-1]:.4f}" for n in names), flush=True)
    out = {}
    base = runs[names[0]]
    t0 = statistics.median(base["times"][1:] or base["times"])
    for name in names:
        r = runs[name]
        t = statistics.median(r["times"][1:] or r["times"])
        out[name] = dict(final=r["accuracy"][-1], best=max(r["accuracy"]), seconds=t)
        print(
            f"{name:5s} final {r['accuracy'][-1]:.4f} best {max(r['accuracy']):.4f} "
            f"({100 * (r['accuracy'][-1] - base['accuracy'][-1]):+.2f} points vs {names[0]})  "
            f"{t:.2f} s/epoch (x{t / t0:.2f})"
        )
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {args.train} training images, {args.epochs} epochs")
    return out


if __name__ == "__main__":
    main()
