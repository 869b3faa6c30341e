"""Run by tests/test_sharding.py in its own process, with 8 virtual CPU devices set before jax is imported.

Prints one JSON line of measurements; the test asserts on them.
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jreg  # noqa: E402
from jreg.train.epoch import run_epoch  # noqa: E402 - to read the compiled program
from jreg.train.plan import EpochPlan  # noqa: E402
from jreg.train.state import TrainState  # noqa: E402
from jreg.train.step import make_update  # noqa: E402


def gap(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main() -> None:
    out: dict = {"devices": jax.device_count()}
    (x, y), test = jreg.data.load_mnist_small()
    x, y = x[:504], y[:504]  # 31 batches of 16 and a last one of 8 (one example per device), as 1,000 images gave
    test = jreg.data.Split(test.x[:2000], test.y[:2000])
    model = jreg.mlp([784, 30, 10])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.1 / 1000))
    p0 = model.init(jax.random.key(0))
    common = dict(epochs=2, batch_size=16, key=jax.random.key(1), evaluation=test)
    on_one_device = {}
    for name, opt in (("sgd", optax.sgd(0.5)), ("adam", optax.adam(1e-3))):
        one, h1 = jreg.fit(obj, opt, p0, (x, y), **common)
        on_one_device[name] = one
        mesh = jax.make_mesh((8,), ("data",))
        dp, h8 = jreg.fit(obj, opt, p0, (x, y), parallel=jreg.DataParallel(mesh), **common)
        out[f"{name}_data_parallel_gap"] = gap(one, dp)
        out[f"{name}_accuracy"] = [h1.evaluation_accuracy, h8.evaluation_accuracy]
        out[f"{name}_sharding"] = list(dp[0]["w"].sharding.spec)
    mesh2 = jax.make_mesh((4, 2), ("data", "model"))
    specs = [{"w": P(None, "model"), "b": P("model")}, P()]
    parallel = jreg.DataParallel(mesh2, param_specs=specs)
    tp, _ = jreg.fit(obj, optax.sgd(0.5), p0, (x, y), parallel=parallel, **common)
    sgd_one = on_one_device["sgd"]  # the same fit as above: sgd(0.5) on one device
    out["model_sharded_gap"] = gap(sgd_one, tp)
    out["model_sharded_spec"] = list(tp[0]["w"].sharding.spec)
    out["model_sharded_shard_shape"] = list(tp[0]["w"].addressable_shards[0].data.shape)
    # the compiled epoch really splits the batch: per-device work and a cross-device reduction
    auto = jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=(jax.sharding.AxisType.Auto,))
    update = make_update(obj, optax.sgd(0.5), with_metrics=False)

    def epoch(params, opt_state, data, key):
        state = TrainState(params, opt_state)
        return run_epoch(update, EpochPlan(x.shape[0], 16), state, data, key, keyed=True, sharding=sharding)

    sharding = NamedSharding(auto, P("data"))
    hlo = jax.jit(epoch).lower(p0, optax.sgd(0.5).init(p0), (x, y), jax.random.key(0)).compile().as_text()
    out["all_reduce_in_program"] = "all-reduce" in hlo
    try:
        parallel = jreg.DataParallel(mesh)
        jreg.fit(obj, optax.sgd(0.5), p0, (x, y), parallel=parallel, epochs=1, batch_size=12, key=jax.random.key(0))
    except jreg.JregError as e:
        out["indivisible_error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
