"""vectorize="wide" against "vmap" for jreg.sweep, interleaved: ms per model-epoch.

    JREG_DATA_DIR=/path/to/mnist python benchmarks/sweep_wide.py K N

[784, 30, 10], batch 10, l2(λ/n) with K values of λ, η = 0.5, the first N MNIST training images,
monitor=(); each figure is (time of a (1 + 2)-epoch sweep - a 1-epoch sweep) / 2, so compilation
and validation cancel; the two modes alternate, twice, and the minima are compared.
"""

import sys
import time

import jax
import numpy as np
import optax

import jreg

k = int(sys.argv[1])
n = int(sys.argv[2])
E = 2
train, _, _ = jreg.data.load_mnist(download=False)
x, y = jax.numpy.asarray(train.x[:n]), jax.numpy.asarray(train.y[:n])
model = jreg.mlp([784, 30, 10])
params = model.init(jax.random.key(0))


def build(hp):
    return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n)), optax.sgd(0.5)


def run(mode, epochs):
    t = time.perf_counter()
    p = jreg.sweep(
        build,
        params,
        (x, y),
        hparams={"lmbda": np.linspace(0, 5, k)},
        epochs=epochs,
        batch_size=10,
        key=jax.random.key(1),
        monitor=(),
        vectorize=mode,
    ).params
    jax.block_until_ready(p)
    return time.perf_counter() - t


res = {"vmap": [], "wide": []}
for r in range(2):
    for mode in ("vmap", "wide"):
        one = run(mode, 1)
        more = run(mode, 1 + E)
        res[mode].append((more - one) / E)
        print(mode, r, f"{1000 * res[mode][-1] / k:.2f} ms/model-epoch", flush=True)
for mode, v in res.items():
    print(mode, "min", f"{1000 * min(v) / k:.2f} ms/model-epoch")
print("wide/vmap", min(res["wide"]) / min(res["vmap"]))
