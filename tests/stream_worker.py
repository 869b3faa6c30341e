"""Run by tests/test_stream.py in its own process, with 4 virtual CPU devices set before jax is imported.

Streams data-parallel (DataParallel on a 4-device mesh) and on one device; prints one JSON line.
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jreg  # noqa: E402
from jreg.train.stream import Feed  # noqa: E402 - to read how a chunk is laid out


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(54, 6)).astype(np.float32)
    y = rng.integers(0, 3, 54).astype(np.int32)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 54, 8)]  # the last holds 6: 4 devices split it unevenly
    model = jreg.mlp([6, 8, 3])
    obj = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy)
    params = model.init(jax.random.key(0))
    mesh = jax.make_mesh((4,), ("data",))
    kw = dict(epochs=2, batch_size=8, key=jax.random.key(1))
    one, h1 = jreg.fit(obj, optax.sgd(0.1), params, jreg.Stream(batches, chunk=4), **kw)
    four, h4 = jreg.fit(
        obj, optax.sgd(0.1), params, jreg.Stream(batches, chunk=4), parallel=jreg.DataParallel(mesh), **kw
    )
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)))
    feed = Feed(jreg.Stream(batches, chunk=4), 8, "include")
    feed.place(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    slot = feed.pool.take()
    for i, b in enumerate(batches[:4]):
        slot.fill(i, [b[0], b[1]])
    chunk = feed._chunk(slot, 4, 0, 0)
    x_chunk = jax.tree.leaves(chunk.batches)[0]
    shards = sorted({tuple(s.data.shape) for s in x_chunk.addressable_shards})
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "gap": gap,
                "loss_gap": float(np.max(np.abs(np.subtract(h1["epoch_loss"], h4["epoch_loss"])))),
                "shards": shards,
            }
        )
    )


if __name__ == "__main__":
    main()
