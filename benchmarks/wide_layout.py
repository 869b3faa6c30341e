"""Transposes in the "wide" sweep's compiled step, on this backend: what XLA moves in each step besides computing.

    python benchmarks/wide_layout.py [--k 1024] [--optimizer sgd adam]

Compiles (does not run) one ``vectorize="wide"`` training epoch of the issue's workload ([784, 30, 10] sigmoid,
cross-entropy + l2(λ/n), ``optax.sgd(η)`` with η traced (or Adam), mini-batch 10, K models) for the default backend,
and prints, for the loop over mini-batches (its body and the fusions it calls), the ``transpose`` ops and the
layout-changing ``copy`` ops with their shapes, split into those shaped like a carried weight ((784, K, 30) or
(30, K, 10) in some order) and the rest (activations: (B, K, 30) in some order; at B = 10 the two coincide, so it
also compiles with a mini-batch of 5). On the CPU ``tests/test_wide_layout.py`` asserts the same
at K = 4; on a GPU this is where its own layout assignment shows (``benchmarks/gpu.sh`` runs it). Timings:
``sweep_formulations.py --only jreg-wide ...``.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its tests' HLO reader

from tests.test_wide_layout import compiled_wide_epoch, layout_moves, matmul_loop_bodies  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--n", type=int, default=1000, help="training examples (the step does not depend on it)")
    ap.add_argument("--batch", type=int, nargs="+", default=[10, 5], help="mini-batch sizes (at 10 activations and "
                    "the second layer share a shape; at 5 none does)")  # fmt: skip
    ap.add_argument("--optimizer", nargs="+", default=["sgd", "adam"], choices=["sgd", "sgd 0.5", "adam", "momentum"])
    args = ap.parse_args()
    k = args.k
    print(f"[784, 30, 10], K = {k}; jax {jax.__version__} on {jax.devices()[0].device_kind}")
    for batch in args.batch:
        weights = {tuple(sorted(s)) for s in ((784, k, 30), (30, k, 10))}
        for optimizer in args.optimizer:
            bodies = matmul_loop_bodies(compiled_wide_epoch(optimizer, batch_size=batch, k=k, n=args.n))
            for i, body in enumerate(bodies):
                moves = collections.Counter(layout_moves(body))
                weight = {m: c for m, c in moves.items() if tuple(sorted(m[1])) in weights}
                other = {m: c for m, c in moves.items() if m not in weight}
                print(
                    f"batch {batch:>3} {optimizer:>8} loop {i + 1}/{len(bodies)}: {sum(weight.values())} moves of "
                    f"weight-shaped arrays, {sum(other.values())} of others (activations)"
                )
                for (op, shape), count in sorted(weight.items()) + sorted(other.items()):
                    print(f"    {count} x {op} {shape}")


if __name__ == "__main__":
    main()
