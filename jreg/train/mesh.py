"""Data-parallel placement: the training state and the data on a mesh, and the mini-batch sharding."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .._errors import JregError
from .config import DataParallel
from .state import TrainState


def _put(value: Any, sharding: Any) -> jax.Array:
    """A global array with ``sharding`` from a host value: safe in multi-process runs too."""
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(parallel: DataParallel, batch_size: int, state: TrainState, fresh_opt_state, train, evaluation):
    """``(state, train, evaluation, batch sharding)`` on ``parallel.mesh``.

    ``fresh_opt_state(params)`` builds the optimizer state when the caller gave
    none (so it follows the params' layout).
    """
    from jax.sharding import NamedSharding, PartitionSpec

    mesh, axis = parallel.mesh, parallel.data_axis
    # The same devices and axis names with Auto axes: XLA's partitioner places the gradient all-reduce
    # (jax.make_mesh gives Explicit axes by default, which would need an out_sharding on every contraction).
    auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
    ways = mesh.shape[axis]
    if batch_size % ways:
        raise JregError(
            f"batch_size must be a multiple of the mesh's {axis!r} axis ({ways} devices) to split every "
            f"mini-batch evenly, got {batch_size}"
        )
    replicated = NamedSharding(mesh, PartitionSpec())
    if parallel.param_specs is None:
        shardings = jax.tree.map(lambda _: replicated, state.params)
    else:
        try:
            specs = jax.tree.broadcast(
                parallel.param_specs, state.params, is_leaf=lambda s: isinstance(s, PartitionSpec)
            )
            shardings = jax.tree.map(lambda _, spec: NamedSharding(mesh, spec), state.params, specs)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise JregError(
                "param_specs must be PartitionSpecs over the mesh's axes, in a pytree matching params or a prefix "
                f"of it (e.g. [{{'w': P(None, 'model'), 'b': P('model')}}, P()]); got {parallel.param_specs!r} ({exc})"
            ) from exc
    try:
        params = jax.tree.map(_put, state.params, shardings)
    except ValueError as exc:  # e.g. a dimension that the mesh axis does not divide
        raise JregError(f"param_specs do not fit the params on this mesh: {exc}") from exc
    if fresh_opt_state is not None:
        opt_state = jax.jit(fresh_opt_state)(params)  # follows the params' layout
    else:
        opt_state = jax.tree.map(lambda a: _put(a, replicated), state.opt_state)

    def replicate(tree):
        return jax.tree.map(lambda a: _put(a, replicated), tree)

    ema = None if state.ema is None else jax.tree.map(_put, state.ema, shardings)  # laid out as the params
    state = TrainState(
        params, opt_state, replicate(state.model_state), replicate(state.step), replicate(state.lr_scale), ema
    )
    evaluation = None if evaluation is None else replicate(evaluation)
    return state, replicate(train), evaluation, NamedSharding(mesh, PartitionSpec(axis))
