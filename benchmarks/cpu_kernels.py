"""Probes of XLA's CPU kernels behind issue 14's speed items: what one step of [784, 30, 10] is made of.

    python benchmarks/cpu_kernels.py [--steps 2000] [--rounds 2]
    JREG_DATA_DIR=/path/to/mnist python benchmarks/cpu_kernels.py --epochs   # also the whole-epoch variants

Each probe is a jitted ``lax.scan`` of ``--steps`` iterations doing one piece of a batch-10 step; the figure is
the minimum over 5 calls, in µs per iteration (per model-iteration for the K = 64 probes), every probe timed
once per round, rounds interleaved. Groups:

  update   the SGD update ``w - η g`` of a (784, 30) matrix, of the same numbers laid out (30, 784) or flat,
           and of K = 64 stacked (64, 784, 30) matrices
  dW       the first layer's weight gradient ``xᵀ δ`` ((10, 784)ᵀ · (10, 30)) in each form XLA can be given:
           JAX's (a transposed left operand, XLA's Eigen dot), ``xᵀ`` already in memory (XNNPACK's dot),
           and the transposed product ``δᵀ x`` (30, 784); then the largest difference between the first two
           (their last bits differ)
  wide     forward matmul, weight gradient and update of K = 64 first layers: stacked (64, 784, 30) einsums
           against one (784, 64·30) matrix
  epochs   (with --epochs, MNIST) a hand-written single-model epoch on 20,000 images with its params carried
           as they are, flat (each leaf raveled in the loop's carry), or transposed ((30, 784))
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp


def scan_probe(step, carry, xs):
    return jax.jit(lambda c: jax.lax.scan(lambda c, b: (step(c, b), None), c, xs)[0])


def seconds(fn, arg) -> float:
    jax.block_until_ready(fn(arg))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - t)
    return min(times)


def probes(steps: int) -> dict[str, tuple]:
    kx, kd = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(kx, (steps, 10, 784))
    xt = jnp.swapaxes(x, 1, 2).copy()
    d = jax.random.normal(kd, (steps, 10, 30))
    w, wk, wide = jnp.zeros((784, 30)), jnp.zeros((64, 784, 30)), jnp.zeros((784, 64 * 30))
    batch = (x, xt, d)
    pick = lambda g: g[3, 5]  # noqa: E731  (one element: the product itself is what is timed)
    return {
        "update (784, 30)": (lambda c, b: c * 0.99 - 0.1 * b[2][0, 0], w, batch, 1),
        "update (30, 784)": (lambda c, b: c * 0.99 - 0.1 * b[2][0, 0], w.T, batch, 1),
        "update (23520,)": (lambda c, b: c * 0.99 - 0.1 * b[2][0, 0], w.reshape(-1), batch, 1),
        "update (64, 784, 30)": (lambda c, b: c * 0.99 - 0.1 * b[2][0, 0], wk, batch, 64),
        "dW x.T @ d (JAX's form)": (lambda c, b: c + pick(b[0].T @ b[2]), jnp.float32(0), batch, 1),
        "dW xt @ d (xt in memory)": (lambda c, b: c + pick(b[1] @ b[2]), jnp.float32(0), batch, 1),
        "dW d.T @ x (30, 784)": (lambda c, b: c + pick(b[2].T @ b[0]), jnp.float32(0), batch, 1),
        "wide stacked (64, 784, 30)": (
            lambda c, b: c * 0.99 - 0.1 * jnp.einsum("bi,kbo->kio", b[0], jnp.tanh(jnp.einsum("bi,kio->kbo", b[0], c))),
            wk,
            batch,
            64,
        ),
        "wide one (784, 64*30) matrix": (lambda c, b: c * 0.99 - 0.1 * (b[0].T @ jnp.tanh(b[0] @ c)), wide, batch, 64),
    }


def epoch_variants(n: int) -> dict[str, tuple]:
    import jreg

    train, _, _ = jreg.data.load_mnist(download=False)
    x, y = jnp.asarray(train.x[:n]), jnp.asarray(train.y[:n])
    params = jreg.mlp([784, 30, 10]).init(jax.random.key(0))

    def loss(p, xb, yb):
        z = jax.nn.sigmoid(xb @ p[0]["w"] + p[0]["b"]) @ p[1]["w"] + p[1]["b"]
        t = jax.nn.one_hot(yb, 10)
        data = jnp.mean(jnp.sum(jax.nn.softplus(z) - t * z, axis=-1))
        return data + 0.5 * 5.0 / n * (jnp.sum(p[0]["w"] ** 2) + jnp.sum(p[1]["w"] ** 2))

    grad = jax.grad(loss)
    shapes = jax.tree.map(jnp.shape, params)
    flip = lambda tree: jax.tree.map(lambda a: a.T if a.ndim == 2 else a, tree)  # noqa: E731

    def make(carry: str):
        to, back = {
            "as given": (lambda p: p, lambda c: c),
            "flat": (lambda p: jax.tree.map(jnp.ravel, p), lambda c: jax.tree.map(jnp.reshape, c, shapes)),
            "transposed": (flip, flip),
        }[carry]

        @functools.partial(jax.jit, donate_argnums=0)
        def epoch(p, key):
            perm = jax.random.permutation(key, n)
            xb, yb = x[perm].reshape(-1, 10, 784), y[perm].reshape(-1, 10)

            def body(c, b):
                g = to(grad(back(c), *b))
                return jax.tree.map(lambda w, dw: w - 0.5 * dw, c, g), None

            return back(jax.lax.scan(body, to(p), (xb, yb))[0])

        return lambda key: epoch(jax.tree.map(jnp.copy, params), key)

    return {f"epoch, params {c}": make(c) for c in ("as given", "flat", "transposed")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", action="store_true", help="also time whole single-model epochs (needs MNIST)")
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {args.steps} iterations per probe")
    compiled = {name: (scan_probe(step, c, xs), c, k) for name, (step, c, xs, k) in probes(args.steps).items()}
    epochs = epoch_variants(args.n) if args.epochs else {}
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, (fn, carry, k) in compiled.items():
            us = 1e6 * seconds(fn, carry) / args.steps / k
            best[name] = min(best.get(name, us), us)
        for name, run in epochs.items():
            s = seconds(run, jax.random.key(1))
            best[name] = min(best.get(name, s), s)
    for name, (_, _, k) in compiled.items():
        print(f"  {name:>30}: {best[name]:7.2f} µs per {'model-' if k > 1 else ''}iteration")
    for name in epochs:
        print(f"  {name:>30}: {1000 * best[name]:7.2f} ms per epoch ({args.n} images)")
    print(f"the weight-gradient forms' largest difference (one product): {gradient_forms_differ():.3g}")


def gradient_forms_differ() -> float:
    """Largest |difference| between JAX's form of ``xᵀ δ`` (Eigen's dot) and the same product with ``xᵀ`` in
    memory (XNNPACK's): the kernels sum in different orders, so their last bits differ."""
    x = jax.random.uniform(jax.random.key(0), (10, 784))
    d = jax.random.normal(jax.random.key(1), (10, 30))
    eigen = jax.jit(lambda x, d: x.T @ d)(x, d)
    xnnpack = jax.jit(lambda x, d: jax.lax.optimization_barrier(x.T) @ d)(x, d)
    return float(jnp.max(jnp.abs(eigen - xnnpack)))


if __name__ == "__main__":
    main()
