"""Where a training step's time goes: XLA's ops in one jreg epoch, from JAX's own profiler.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/profile_step.py [--vectorize wide] [--k 64] [--n 5000]
    JREG_DATA_DIR=/path/to/mnist python benchmarks/profile_step.py --fit

Workload of issue 14: [784, 30, 10] sigmoid, cross-entropy, l2(λ/n), η = 0.5, mini-batch 10, no monitoring.
Runs a 2-epoch ``jreg.sweep`` (K models, ``--vectorize``) or ``jreg.fit`` once to compile, then once under
``jax.profiler.trace``, and prints the busiest compiled ops (fusions, dots, copies) of XLA's CPU threads in
microseconds per model-step (summed over threads). The script dumps XLA's optimized program of the compiled
epoch and groups the ops by what they compute, read from it: the instruction's opcode, its output shape and the
JAX operation it came from (``--by-name``: by XLA's instruction names instead; an unrolled loop gives each
copy of the step its own names). The profiler adds a few µs to every small op, so read the figures as shares.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg

#: where XLA dumps its optimized programs (set before the backend starts, in main)
DUMP = tempfile.mkdtemp(prefix="jreg-profile-hlo-")


def main() -> None:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=NONE"
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectorize", default="wide", choices=["vmap", "map", "wide"])
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--fit", action="store_true", help="profile jreg.fit (one model) instead of a sweep")
    ap.add_argument("--top", type=int, default=16)
    ap.add_argument("--by-name", action="store_true", help="group by XLA's instruction names, not by what they compute")
    args = ap.parse_args()
    train, _, _ = jreg.data.load_mnist(download=False)
    x, y = jnp.asarray(train.x[: args.n]), jnp.asarray(train.y[: args.n])
    n = x.shape[0]
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    epochs, k = 2, 1 if args.fit else args.k

    def build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n)), optax.sgd(
            0.5
        )

    def run() -> None:
        options = dict(epochs=epochs, batch_size=10, key=jax.random.key(1), monitor=())
        if args.fit:
            trained = jreg.fit(*build({"lmbda": 5.0}), params, (x, y), **options).params
        else:
            hparams = {"lmbda": np.linspace(0, 5, k)}
            trained = jreg.sweep(build, params, (x, y), hparams=hparams, vectorize=args.vectorize, **options).params
        jax.block_until_ready(trained)

    run()  # compile
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            run()
        profile = jax.profiler.ProfileData.from_file(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0])
    busy: collections.Counter[str] = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # XLA's CPU worker threads
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "while")):  # containers, not ops
                    busy[event.name] += event.duration_ns
    per = 1e3 * epochs * (n // 10) * k  # ns -> µs per model-step
    what = "jreg.fit" if args.fit else f"jreg.sweep(vectorize={args.vectorize!r}), K = {k}"
    print(f"{what}, {n} images, batch 10; jax {jax.__version__} on {jax.devices()[0].device_kind}")
    print(f"all ops: {sum(busy.values()) / per:.2f} µs per model-step")
    if not args.by_name:
        busy = _grouped(busy)
    shutil.rmtree(DUMP, ignore_errors=True)
    for name, ns in busy.most_common(args.top):
        print(f"  {ns / per:7.2f} µs  {name}")


_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(.*?op_name=\"([^\"]*)\"")


def _grouped(busy: collections.Counter) -> collections.Counter:
    """``busy`` summed by what each instruction computes (opcode, output shape, the JAX operation), read from the
    dumped optimized program of the compiled epoch; an instruction not found there keeps its name."""
    what: dict[str, str] = {}
    for path in glob.glob(f"{DUMP}/*jit_epoch*after_optimizations.txt"):
        with open(path) as f:
            for line in f:
                m = _INSTRUCTION.match(line)
                if m:
                    name, shape, opcode, op = m.groups()
                    op = re.sub(r"jit\(epoch\)/|while/body/|closed_call/", "", op)
                    what.setdefault(name, f"{opcode} {shape.split('{')[0]} {op[-60:]}")
    out: collections.Counter = collections.Counter()
    for name, ns in busy.items():
        out[what.get(name, name)] += ns
    return out


if __name__ == "__main__":
    main()
