"""The wide sweep's first-layer weight gradient ``aᵀ·g`` on the CPU: XLA's transposed-operand dot against a plain
product with ``aᵀ`` put in memory first.

    python benchmarks/weight_gradient_kernel.py [--k 64] [--steps 1000] [--rounds 5]

In a ``"wide"`` sweep of K models of [784, 30, 10] with mini-batch 10, each step's first-layer weight gradient is
``xᵀ · δ``: ``(784 × 10) · (10 × 30K)``, with the mini-batch ``x`` stored ``(10, 784)``. XLA keeps the transpose
in the dot's dimension numbers (a "TN" product, which goes to Eigen's kernel). Behind an optimization barrier,
``xᵀ`` is written to memory (31 KB) and the product is a plain "NN" one, which goes to XNNPACK. Each variant runs
a ``lax.scan`` of ``--steps`` steps, unrolled 8 at a time as jreg's is: slice a mini-batch, take the product,
update a ``(784, 30K)`` weight with it. The script prints µs per step for each variant, the minimum over
interleaved rounds, and the largest difference between their results: the two kernels sum in different orders.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax import lax


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    x = jax.random.normal(jax.random.key(0), (10 * args.steps, 784))
    delta = jax.random.normal(jax.random.key(1), (10, 30 * args.k))
    w0 = jnp.zeros((784, 30 * args.k))

    def transposed_operand(xb, d):  # what XLA makes of aᵀ·g: the transpose folded into the dot
        return lax.dot_general(xb, d, (((0,), (0,)), ((), ())))

    def plain_product(xb, d):  # aᵀ written to memory first, then an NN product
        return lax.optimization_barrier(xb.T) @ d

    def epoch_of(product):
        @jax.jit
        def run(w, d):
            def body(w, i):
                xb = lax.dynamic_slice_in_dim(x, i * 10, 10)
                return w - 0.001 * product(xb, d * (1 + i.astype(jnp.float32) * 1e-6)), None

            return lax.scan(body, w, jnp.arange(args.steps), unroll=8)[0]

        return run

    runs = {"transposed operand (jreg's)": epoch_of(transposed_operand), "aᵀ in memory": epoch_of(plain_product)}
    results = {name: jax.block_until_ready(run(w0, delta)) for name, run in runs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run(w0, delta))
            seconds[name].append(time.perf_counter() - start)
    print(f"(784 x 10) . (10 x {30 * args.k}) per step, K = {args.k}; jax {jax.__version__} on {jax.devices()[0]}")
    for name in runs:
        print(f"  {name:>28}: {1e6 * min(seconds[name]) / args.steps:.1f} µs per step")
    a, b = results.values()
    print(f"  largest difference of the two results: {float(jnp.max(jnp.abs(a - b))):.2e}")


if __name__ == "__main__":
    main()
