"""Placement on a mesh: fit's data parallelism (:func:`place`) and a sweep's models split across devices
(:func:`check_models`, :func:`place_models`, :func:`gathered`)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .._errors import JregError, JregTypeError
from .config import DataParallel, ModelParallel
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


def _auto(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """The same devices and axis names with Auto axes (XLA's partitioner places the collectives)."""
    return jax.sharding.Mesh(
        mesh.devices, mesh.axis_names, axis_types=(jax.sharding.AxisType.Auto,) * mesh.devices.ndim
    )


def check_models(parallel: Any, models: int, batch_size: int, vectorize: str) -> None:
    """Before any work: ``sweep``'s ``parallel=`` is a :class:`ModelParallel` whose axes split K and the batch."""
    if parallel is None:
        return
    if not isinstance(parallel, ModelParallel):
        raise JregTypeError(
            f"sweep: parallel must be a jreg.ModelParallel(mesh, model_axis='model', data_axis=None), got {parallel!r}"
        )
    ways = parallel.mesh.shape[parallel.model_axis]
    if models % ways:
        raise JregError(
            f"sweep: the {models} models (hparams' length K) must split evenly over the mesh's "
            f"{parallel.model_axis!r} axis ({ways} devices); give a multiple of {ways} models, or a smaller axis"
        )
    if parallel.data_axis is not None and batch_size % parallel.mesh.shape[parallel.data_axis]:
        ways = parallel.mesh.shape[parallel.data_axis]
        raise JregError(
            f"batch_size must be a multiple of the mesh's {parallel.data_axis!r} axis ({ways} devices) to split every "
            f"mini-batch evenly, got {batch_size}"
        )
    if vectorize in ("map", "wide"):
        why = "runs the models one after another" if vectorize == "map" else "carries the model axis second"
        raise JregError(
            f"sweep: vectorize={vectorize!r} {why}, which cannot split the models across devices; "
            "use vectorize='vmap' (or 'auto') with parallel=ModelParallel(...)"
        )


def place_models(parallel: ModelParallel, state: TrainState, stacked: tuple, replicated: tuple):
    """``(state, stacked, replicated, batch sharding)`` on ``parallel.mesh``.

    Every leaf of ``state`` and of ``stacked`` (the hyperparameters, the alive
    flags: leading axis K) is split along ``model_axis``; ``replicated`` (the
    data) is on every device. The batch sharding splits a mini-batch along
    ``data_axis``, or is None without one.
    """
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = _auto(parallel.mesh)
    by_model = NamedSharding(mesh, PartitionSpec(parallel.model_axis))
    everywhere = NamedSharding(mesh, PartitionSpec())
    split = lambda tree: jax.tree.map(lambda a: _put(a, by_model), tree)  # noqa: E731
    state, stacked = split(state), split(stacked)
    replicated = jax.tree.map(lambda a: _put(a, everywhere), replicated)
    batch = None if parallel.data_axis is None else NamedSharding(mesh, PartitionSpec(parallel.data_axis))
    return state, stacked, replicated, batch


def gathered(parallel: ModelParallel) -> Any:
    """A jitted identity whose outputs are replicated on every device of the mesh (so every process reads them)."""
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(_auto(parallel.mesh), PartitionSpec()))


def by_model(parallel: ModelParallel) -> Any:
    """The sharding that splits a leading model axis over ``parallel``'s ``model_axis`` (replicated over the rest)."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(_auto(parallel.mesh), PartitionSpec(parallel.model_axis))


def member_arrays(parallel: ModelParallel) -> Any:
    """``put(array, split)`` for per-member data's index sets (:meth:`jreg.train.members.Members.arrays`) on the mesh
    of ``parallel``: split along ``model_axis`` as the stacked state is when the array's leading axis holds every
    member in order (each device then gathers its own members' examples: no traffic across devices), else
    replicated (a group of some members, trained from the members gathered out of the stacked state)."""
    from jax.sharding import NamedSharding, PartitionSpec

    split_models, everywhere = by_model(parallel), NamedSharding(_auto(parallel.mesh), PartitionSpec())
    return lambda a, split: _put(a, split_models if split else everywhere)


def member_epoch_keys(parallel: ModelParallel, keys: jax.Array) -> Any:
    """``epoch_keys(epoch)``: the members' (K,) shuffle keys of an epoch, ``fold_in(keys[i], epoch)`` (as
    :meth:`jreg.train.members.Members.epoch_keys`, the same bits), split along ``model_axis`` as the stacked
    state is, computed on the mesh (safe in multi-process runs: every process holds the same ``keys``)."""
    split_models = by_model(parallel)
    typed = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)  # else raw (K, 2) uint32 keys
    impl = jax.random.key_impl(keys) if typed else None
    data = _put(jax.random.key_data(keys) if typed else keys, split_models)  # raw key bits: a host value _put places

    def fold(bits, epoch):
        members = jax.random.wrap_key_data(bits, impl=impl) if typed else bits
        return jax.vmap(lambda k: jax.random.fold_in(k, epoch))(members)

    fold = jax.jit(fold, out_shardings=split_models)
    return lambda epoch: fold(data, np.uint32(epoch))
