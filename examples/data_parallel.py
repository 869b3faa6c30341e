"""Data-parallel training with jreg on every device JAX sees: one host or many.

One host (all local GPUs, or CPU devices):

    python examples/data_parallel.py
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/data_parallel.py   # try it on a CPU

Several hosts: start the same command on every host, each with its process id
(JAX's own runtime connects them; jreg adds no communication code):

    python examples/data_parallel.py --coordinator HOST0:1234 --num-processes 2 --process-id 0   # on host 0
    python examples/data_parallel.py --coordinator HOST0:1234 --num-processes 2 --process-id 1   # on host 1

(On Cloud TPU, under Slurm or Open MPI, and on Kubernetes with jax[k8s],
jax.distributed.initialize() finds these values itself: `srun python
examples/data_parallel.py --distributed`; see docs/scaling.md.) Every process loads the same data and
builds the same mesh over all global devices; jreg.fit splits each mini-batch
along the mesh's "data" axis and XLA reduces the gradients across devices and
hosts. Results equal one-device training up to float reassociation.
"""

from __future__ import annotations

import argparse

import jax
import optax

import jreg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() from the environment")
    ap.add_argument("--coordinator", help="address:port of process 0 (multi-host)")
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="embedded subset instead of the full training set")
    args = ap.parse_args()
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()  # Slurm, Open MPI, Kubernetes (jax[k8s]), Cloud TPU

    devices = jax.device_count()
    mesh = jax.make_mesh((devices,), ("data",))
    if args.quick:
        train, test = jreg.data.load_mnist_small()
    else:
        train, _, test = jreg.data.load_mnist()
    n = train.x.shape[0]
    model = jreg.mlp([784, 100, 10])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(5.0 / n))
    batch_size = 10 * devices  # 10 examples per device and step
    history = jreg.fit(
        objective,
        optax.sgd(0.5),
        model.init(jax.random.key(0)),
        train,
        epochs=args.epochs,
        batch_size=batch_size,
        key=jax.random.key(1),
        evaluation=test,
        monitor=("evaluation_accuracy",),
        parallel=jreg.DataParallel(mesh),
        verbose=jax.process_index() == 0,
    ).history
    if jax.process_index() == 0:
        print(
            f"{jax.process_count()} process(es), {devices} devices, mini-batch {batch_size}: "
            f"test accuracy {100 * history.evaluation_accuracy[-1]:.2f} % after {args.epochs} epochs"
        )


if __name__ == "__main__":
    main()
