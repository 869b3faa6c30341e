"""Which formulation of a K-model SGD sweep epoch is fastest: a probe for issue 14's speed items.

Workload as benchmarks/sweep_scaling.py: [784, 30, 10] sigmoid, cross-entropy, l2(λ/n) with a
different λ per model, η = 0.5, mini-batch 10, the same data order for every model.

    python benchmarks/sweep_formulations.py [--ks 64 1024 2048] [--n 50000] [--reps 3] [--unrolls 1 8]
        [--only vmap mid jreg-vmap jreg-wide ...] [--no-single]

Formulations (each one jitted epoch: lax.scan over the mini-batches, params donated):
  vmap      jax.vmap(jax.grad(loss)) over stacked params (K, 784, 30): the hand-written baseline
  vmap-mid  the same vmap, with every weight matrix stored (784, K, 30): the model axis second
  vmap-mid-left  vmap-mid whose matmuls take the weight gradient as aᵀ·g (a custom VJP, what jreg's
            "wide" sweep does with jreg.mlp): one GEMM whose output is already in the (784, K·30) layout
  vmap-mid-loss  vmap-mid with each model's loss value computed every step and folded into one
            finite flag per model (what jreg's divergence guard reads): the value's price at large K
  einsum    every model's layers as one einsum over a model axis (K, 784, 30); grad of the sum of
            the K losses (the models are independent, so it is each model's own gradient)
  mid       as einsum, with the first layer stored (784, K, 30): the shared mini-batch meets all
            K weight matrices in one wide matmul without a transpose
  mid-fold  as mid, with each model's learning rate folded into its loss (grad of Σ η_k L_k), so
            the update is w - g: a dot followed by one subtraction (XLA may fuse it into the GEMM)
  jreg-vmap jreg.sweep(monitor=()), vectorize="vmap"
  jreg-wide jreg.sweep(monitor=()), vectorize="wide"
and, for one model, the epoch of: a hand-written scan; the same with the loss value stacked per
step (the guard's series before issue 14); with a running scalar sum of the loss; jreg.fit(monitor=()).
Each runs once per --unrolls value (lax.scan's unroll; jreg's `unroll=`), suffixed "/u<n>".
Prints seconds per epoch and ms per model-epoch (median of --reps warm epochs).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg

ETA = 0.5


def data(n: int):
    try:
        train, _, _ = jreg.data.load_mnist(download=False)
    except jreg.JregError:
        train, _ = jreg.data.load_mnist_small()
        train = jreg.data.Split(np.tile(np.asarray(train.x), (50, 1)), np.tile(np.asarray(train.y), 50))
    return jnp.asarray(train.x[:n]), jnp.asarray(train.y[:n])


def xent(z, yb):
    t = jax.nn.one_hot(yb, 10)
    return jnp.mean(jnp.sum(jax.nn.softplus(z) - t * z, axis=-1))


def timed(epoch, state, reps: int):
    state = jax.block_until_ready(epoch(state, jax.random.key(0)))
    times = []
    for r in range(reps):
        t = time.perf_counter()
        state = jax.block_until_ready(epoch(state, jax.random.key(r + 1)))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def batches(x, y, key):
    perm = jax.random.permutation(key, x.shape[0])
    return x[perm].reshape(-1, 10, x.shape[1]), y[perm].reshape(-1, 10)


def scan_epoch(x, y, step, unroll: int = 1):
    @functools.partial(jax.jit, donate_argnums=0)
    def epoch(ps, key):
        return jax.lax.scan(step, ps, batches(x, y, key), unroll=unroll)[0]

    return epoch


def sweeps(x, y, k: int, params, lmbdas, reps: int, unroll: int = 1, only=None) -> dict[str, float]:
    n = x.shape[0]

    def want(name: str) -> bool:
        return only is None or name in only

    etas = jnp.full((k,), ETA, jnp.float32)
    out = {}

    def loss_one(p, lmbda, xb, yb):
        z = jax.nn.sigmoid(xb @ p[0]["w"] + p[0]["b"]) @ p[1]["w"] + p[1]["b"]
        return xent(z, yb) + 0.5 * lmbda / n * (jnp.sum(p[0]["w"] ** 2) + jnp.sum(p[1]["w"] ** 2))

    grads = jax.vmap(jax.grad(loss_one), in_axes=(0, 0, None, None))

    def fresh():
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (k, *a.shape)).copy(), params)

    stacked = fresh()
    if want("vmap"):
        step = lambda ps, b: (jax.tree.map(lambda w, d: w - ETA * d, ps, grads(ps, lmbdas, *b)), None)  # noqa: E731
        out["vmap"] = timed(scan_epoch(x, y, step, unroll), stacked, reps)

    def loss_all(p, xb, yb, scale, mid: bool):
        w1 = p[0]["w"]
        h = jnp.einsum("bi,ikh->kbh", xb, w1) if mid else jnp.einsum("bi,kih->kbh", xb, w1)
        a1 = jax.nn.sigmoid(h + p[0]["b"][:, None, :])
        z = jnp.einsum("kbh,kho->kbo", a1, p[1]["w"]) + p[1]["b"][:, None, :]
        t = jax.nn.one_hot(yb, 10)
        data_ = jnp.mean(jnp.sum(jax.nn.softplus(z) - t * z, axis=-1), axis=-1)  # (K,)
        sq = jnp.sum(w1**2, axis=(0, 2)) if mid else jnp.sum(w1**2, axis=(1, 2))
        pen = 0.5 * lmbdas / n * (sq + jnp.sum(p[1]["w"] ** 2, axis=(1, 2)))
        return jnp.sum(scale * (data_ + pen))

    def einsum_step(mid: bool, fold: bool):
        def step(ps, b):
            g = jax.grad(loss_all)(ps, *b, etas if fold else 1.0, mid)
            return jax.tree.map(lambda w, d: w - d if fold else w - ETA * d, ps, g), None

        return step

    def axes(tree):  # the model axis after the first axis of every leaf with two or more axes
        return jax.tree.map(lambda a: 1 if a.ndim >= 3 else 0, tree)

    def to_mid(tree):
        return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).copy() if a.ndim >= 3 else a, tree)

    mid_axes = axes(stacked)
    grads_mid = jax.vmap(jax.grad(loss_one), in_axes=(mid_axes, 0, None, None), out_axes=mid_axes)
    if want("vmap-mid"):
        step = lambda ps, b: (jax.tree.map(lambda w, d: w - ETA * d, ps, grads_mid(ps, lmbdas, *b)), None)  # noqa: E731
        out["vmap-mid"] = timed(scan_epoch(x, y, step, unroll), to_mid(fresh()), reps)
    if want("vmap-mid-left"):

        @jax.custom_vjp
        def left(a, w):
            return a @ w

        left.defvjp(lambda a, w: (a @ w, (a, w)), lambda res, g: (g @ res[1].T, res[0].T @ g))

        def loss_left(p, lmbda, xb, yb):
            z = left(jax.nn.sigmoid(left(xb, p[0]["w"]) + p[0]["b"]), p[1]["w"]) + p[1]["b"]
            return xent(z, yb) + 0.5 * lmbda / n * (jnp.sum(p[0]["w"] ** 2) + jnp.sum(p[1]["w"] ** 2))

        grads_left = jax.vmap(jax.grad(loss_left), in_axes=(mid_axes, 0, None, None), out_axes=mid_axes)
        step = lambda ps, b: (jax.tree.map(lambda w, d: w - ETA * d, ps, grads_left(ps, lmbdas, *b)), None)  # noqa: E731
        out["vmap-mid-left"] = timed(scan_epoch(x, y, step, unroll), to_mid(fresh()), reps)
    if want("vmap-mid-loss"):
        values_mid = jax.vmap(jax.value_and_grad(loss_one), in_axes=(mid_axes, 0, None, None), out_axes=(0, mid_axes))

        def step_loss(carry, b):
            ps, finite = carry
            value, g = values_mid(ps, lmbdas, *b)
            return (jax.tree.map(lambda w, d: w - ETA * d, ps, g), finite & jnp.isfinite(value)), None

        @functools.partial(jax.jit, donate_argnums=0)
        def epoch_loss(carry, key):
            return jax.lax.scan(step_loss, carry, batches(x, y, key), unroll=unroll)[0]

        out["vmap-mid-loss"] = timed(epoch_loss, (to_mid(fresh()), jnp.ones((k,), bool)), reps)
    if want("einsum"):
        out["einsum"] = timed(scan_epoch(x, y, einsum_step(False, False), unroll), fresh(), reps)

    def fresh_mid():
        s = fresh()
        return [{"w": jnp.transpose(s[0]["w"], (1, 0, 2)).copy(), "b": s[0]["b"]}, s[1]]

    if want("mid"):
        out["mid"] = timed(scan_epoch(x, y, einsum_step(True, False), unroll), fresh_mid(), reps)
    if want("mid-fold"):
        out["mid-fold"] = timed(scan_epoch(x, y, einsum_step(True, True), unroll), fresh_mid(), reps)

    model = jreg.mlp([784, 30, 10])

    def build(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return obj, optax.sgd(ETA)

    def run(epochs, vectorize):
        t = time.perf_counter()
        trained = jreg.sweep(
            build,
            params,
            (x, y),
            hparams={"lmbda": np.asarray(lmbdas)},
            epochs=epochs,
            batch_size=10,
            key=jax.random.key(1),
            monitor=(),
            vectorize=vectorize,
            unroll=unroll,
        ).params
        jax.block_until_ready(trained)
        return time.perf_counter() - t

    for vectorize in ("vmap", "wide"):
        if want(f"jreg-{vectorize}"):
            run(1, vectorize)
            one = min(run(1, vectorize) for _ in range(2))
            out[f"jreg-{vectorize}"] = (run(1 + reps, vectorize) - one) / reps
    return out


def single(x, y, params, reps: int, unroll: int = 1) -> dict[str, float]:
    n = x.shape[0]

    def loss(p, xb, yb):
        z = jax.nn.sigmoid(xb @ p[0]["w"] + p[0]["b"]) @ p[1]["w"] + p[1]["b"]
        return xent(z, yb) + 0.5 * 5.0 / n * (jnp.sum(p[0]["w"] ** 2) + jnp.sum(p[1]["w"] ** 2))

    def plain(ps, b):
        return jax.tree.map(lambda w, d: w - ETA * d, ps, jax.grad(loss)(ps, *b)), None

    def stacked(ps, b):
        value, g = jax.value_and_grad(loss)(ps, *b)
        return jax.tree.map(lambda w, d: w - ETA * d, ps, g), value

    def running(carry, b):
        ps, total = carry
        value, g = jax.value_and_grad(loss)(ps, *b)
        return (jax.tree.map(lambda w, d: w - ETA * d, ps, g), total + value), None

    @functools.partial(jax.jit, donate_argnums=0)
    def stacked_epoch(ps, key):
        ps, losses = jax.lax.scan(stacked, ps, batches(x, y, key), unroll=unroll)
        return ps, jnp.all(jnp.isfinite(losses))

    @functools.partial(jax.jit, donate_argnums=0)
    def running_epoch(ps, key):
        (ps, total), _ = jax.lax.scan(running, (ps, jnp.float32(0)), batches(x, y, key), unroll=unroll)
        return ps, jnp.isfinite(total)

    out = {"hand scan": timed(scan_epoch(x, y, plain, unroll), jax.tree.map(jnp.copy, params), reps)}
    out["+ loss per step"] = timed(lambda s, k: stacked_epoch(s[0], k), (jax.tree.map(jnp.copy, params), 0), reps)
    out["+ running loss"] = timed(lambda s, k: running_epoch(s[0], k), (jax.tree.map(jnp.copy, params), 0), reps)
    model = jreg.mlp([784, 30, 10])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / n))

    def fit(epochs):
        t = time.perf_counter()
        p = jreg.fit(
            obj,
            optax.sgd(ETA),
            params,
            (x, y),
            epochs=epochs,
            batch_size=10,
            key=jax.random.key(1),
            monitor=(),
            unroll=unroll,
        ).params
        jax.block_until_ready(p)
        return time.perf_counter() - t

    fit(1)
    one = min(fit(1) for _ in range(2))
    out["jreg.fit"] = (fit(1 + reps) - one) / reps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[64, 1024, 2048])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-single", action="store_true")
    ap.add_argument("--unrolls", type=int, nargs="+", default=[1], help="lax.scan unroll / jreg's unroll= values")
    ap.add_argument("--only", nargs="+", help="sweep formulations to time (default: all)")
    args = ap.parse_args()
    x, y = data(args.n)
    params = jreg.mlp([784, 30, 10]).init(jax.random.key(0))
    print(f"[784, 30, 10], batch 10, {x.shape[0]} images; jax {jax.__version__} on {jax.devices()[0].device_kind}")
    if not args.no_single:
        for u in args.unrolls:
            for name, s in single(x, y, params, args.reps, u).items():
                print(f"single  {name + f'/u{u}':>19}: {s:.4f} s / epoch", flush=True)
    for k in args.ks:
        lmbdas = jnp.asarray(np.linspace(0, 5, k), jnp.float32)
        for u in args.unrolls:
            for name, s in sweeps(x, y, k, params, lmbdas, args.reps, u, args.only).items():
                label = f"{name}/u{u}"
                print(f"K={k:<5} {label:>13}: {s:.4f} s / epoch, {1000 * s / k:.3f} ms / model-epoch", flush=True)


if __name__ == "__main__":
    main()
