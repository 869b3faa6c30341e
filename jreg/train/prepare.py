"""One preparation of K models for every K-model front end (sweep, path, PBT): the hyperparameters checked,
each model built with concrete values and once traced, the params (shared, stacked, or one init per seed) and
the data checked on model 0 (:func:`jreg.train.setup.prepare`), and the stacked initial state."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._errors import JregError, JregTypeError
from .._types import ModelState, Params
from . import calls, memory
from . import optimizer as optimizer_
from .engine import VECTORIZE, Build
from .setup import Setup, prepare
from .state import TrainState


def check_hparams(hparams: Any) -> tuple[dict[str, jax.Array], int]:
    """``({name: (K,) array}, K)`` from ``{name: K values}``; finite reals, one value per model each."""
    if not isinstance(hparams, Mapping) or not hparams:
        raise JregTypeError(
            "hparams must be a non-empty mapping from names to 1-D arrays of values, one per model, "
            f"e.g. {{'lmbda': [0.0, 0.1]}}; got {hparams!r}"
        )
    out, sizes = {}, set()
    for name, values in hparams.items():
        try:
            arr = np.asarray(values)
        except (ValueError, TypeError) as exc:  # ragged or otherwise not an array
            raise JregError(f"hparams[{name!r}] must be a 1-D array of numbers, one per model ({exc})") from exc
        if arr.ndim != 1 or arr.size == 0:
            raise JregError(f"hparams[{name!r}] must be a non-empty 1-D array (one value per model), got {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise JregTypeError(f"hparams[{name!r}] must hold real numbers, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise JregError(f"hparams[{name!r}] must be finite, got {arr.tolist()}")
        dtype = np.float32 if np.issubdtype(arr.dtype, np.floating) else np.int32
        with np.errstate(over="ignore", invalid="ignore"):
            cast = arr.astype(dtype)
        if not np.all(np.isfinite(cast)) or (dtype == np.int32 and not np.array_equal(cast, arr)):
            raise JregError(f"hparams[{name!r}] holds values beyond the range of {np.dtype(dtype).name}")
        sizes.add(arr.size)
        out[name] = jnp.asarray(cast)
    if len(sizes) != 1:
        lengths = {k: int(v.shape[0]) for k, v in out.items()}
        raise JregError(f"every hparams entry must hold one value per model (same length), got lengths {lengths}")
    return out, sizes.pop()


def built_models(build: Build, hp: dict[str, jax.Array], models: int) -> list[tuple[Callable[..., Any], Any]]:
    """Build each model once with concrete values (validation runs, the types are checked), then once traced."""
    built = []
    for i in range(models):
        values = {k: v[i] for k, v in hp.items()}
        try:
            built.append(build(values))
        except JregError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's build failing: say for which model
            shown = ", ".join(f"{k!r}: {float(v):g}" for k, v in values.items())
            raise JregError(f"build(hp) fails for model {i}, hp = {{{shown}}}: {type(exc).__name__}: {exc}") from exc
    try:  # under the sweep the hyperparameters are traced: float(hp["eta"]) and friends fail there
        jax.make_jaxpr(lambda h: (build(h), jnp.zeros(()))[1])({k: v[0] for k, v in hp.items()})
    except JregError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise JregError(
            "build(hp) must work with traced hyperparameters (the sweep traces them so that one program serves "
            "every value): pass hp[...] to penalties and optax as it is, do not convert it with float() or int(); "
            f"it fails with {type(exc).__name__}: {exc}"
        ) from exc
    for i, pair in enumerate(built):
        if not (isinstance(pair, tuple) and len(pair) == 2) or isinstance(pair, optax.GradientTransformation):
            raise JregTypeError(f"build must return (objective, optimizer), got {type(pair).__name__} for model {i}")
        calls.check_objective(pair[0])
        optimizer_.check(pair[1])
    return built


SEED = "seed"


def is_init_function(params: Any) -> bool:
    """Whether ``params`` is an init function of a key (a function, a method, a jitted function, a
    ``functools.partial``), not params: a callable pytree (an Equinox module) holds params and is passed as it is."""
    return inspect.isroutine(params) or isinstance(params, (functools.partial, jax.stages.Wrapped))


def seeded(init: Callable[[jax.Array], Params], hp: dict[str, jax.Array], model_state: Any, stacked: bool) -> Params:
    """Params stacked along the models: member ``i`` is ``init(jax.random.key(hp["seed"][i]))``."""
    if SEED not in hp:
        raise JregError(
            f"params is an init function of a key ({getattr(init, '__name__', init)!r}): add a seed to hparams "
            "(e.g. hparams=jreg.grid(lmbda=[...], seed=range(3))) so each member has its own initialization, "
            "or pass initialized params"
        )
    if stacked:
        raise JregError("stacked_params=True: params must already be stacked; an init function stacks them itself")
    seeds = np.asarray(hp[SEED])
    if not np.issubdtype(seeds.dtype, np.integer) or np.any(seeds < 0):
        raise JregError(f"hparams['seed'] must hold non-negative integers, got {seeds.tolist()}")
    made: dict[int, Params] = {}
    for s in dict.fromkeys(seeds.tolist()):  # each distinct seed once (a grid repeats them)
        try:
            made[s] = init(jax.random.key(s))
        except JregError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's init: say which call failed
            raise JregError(f"params: init(jax.random.key({s})) failed: {type(exc).__name__}: {exc}") from exc
    return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *[made[s] for s in seeds.tolist()])


def _first(tree: Any, stacked: bool, models: int, name: str) -> Any:
    """Model 0's tree from a stacked one (checking the leading axis), or the shared tree itself."""
    if not stacked or tree is None:
        return tree
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(tree)}
    if sizes != {models}:
        raise JregError(f"stacked_params=True needs a leading axis of size {models} on every leaf of {name}")
    return jax.tree.map(lambda a: a[0], tree)


#: the fewest models for which ``vectorize="auto"`` picks ``"wide"``: on a CPU (measured: from K = 4 it beats ``"map"``
#: and ``"vmap"``; at K = 2–3 ``"map"`` is faster, ``benchmarks/auto_rules.py``), on an accelerator (measured at
#: K = 2,048 on an H200; below K = 1,024 not measured)
WIDE_FROM = {"cpu": 4, "accelerator": 1024}


def default_vectorize(
    vectorize: str, models: int, *, members: Any = None, params: Params = None, stacked: bool = False
) -> str:
    """``vectorize`` checked, ``"auto"`` resolved: ``"wide"`` when the members share their mini-batches in sets of at
    least :data:`WIDE_FROM` models (all K of them, or with per-member data ``members`` each fold's settings:
    :meth:`jreg.train.members.Members.shared_sets`) and every param is a vector or a matrix per model (dense
    layers: what it was measured on); otherwise ``"map"`` on a CPU for K = 2 or 3, else ``"vmap"``.
    docs/scaling.md has the measurements behind each rule."""
    if vectorize not in VECTORIZE:
        raise JregError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    if vectorize != "auto":
        return vectorize
    cpu = jax.default_backend() == "cpu"
    if members is None:
        width = models
    else:
        sets = members.shared_sets()
        width = 0 if sets is None else min(len(ids) for _, ids, _ in sets)
    if width >= WIDE_FROM["cpu" if cpu else "accelerator"] and _dense(params, stacked):
        return "wide"
    return "map" if cpu and 2 <= models <= 3 else "vmap"


def _dense(params: Params, stacked: bool) -> bool:
    """Whether every leaf of ``params`` is at most a matrix per model (None: not known yet, taken as yes)."""
    extra = 1 if stacked else 0
    return all(np.ndim(leaf) <= 2 + extra for leaf in jax.tree.leaves(params))


def prepare_models(
    built: list[tuple[Callable[..., Any], Any]],
    params: Params,
    model_state: ModelState,
    train: Any,
    evaluation: Any,
    hp: dict[str, jax.Array],
    models: int,
    *,
    stacked_params: bool,
    batch_size: int,
    key: Any,
    partial_batch: str,
    monitor: Iterable[str] | str | None,
) -> Setup:
    """What every K-model front end checks before any work (the ``built`` models from :func:`built_models`):
    the data and model 0's objective, optimizer, params and state (a stacked leading axis checked) on the data."""
    first = _first(params, stacked_params, models, "params")
    first_state = _first(model_state, stacked_params, models, "model_state")
    return prepare(
        built[0][0],
        first,
        first_state,
        train,
        evaluation,
        batch_size=batch_size,
        key=key,
        partial_batch=partial_batch,
        monitor=monitor,
        optimizer=built[0][1],
    )


def initial_state(
    build: Build, hp: dict[str, jax.Array], models: int, stacked: bool, ema: bool = False, scaled: bool = False
) -> Callable[[Params, ModelState], TrainState]:
    """``initial(params, model_state) -> TrainState`` of K models (jitted, fresh buffers, safe to donate):
    shared params broadcast (unless ``stacked``), each optimizer state from its own ``build(hp)``, step 0; with
    ``ema`` the EMA starts at the initial params, with ``scaled`` early stopping's learning-rate scale at 1."""

    @jax.jit
    def initial(params: Params, model_state: ModelState, hp: dict[str, jax.Array]) -> TrainState:
        if not stacked:
            params, model_state = jax.tree.map(
                lambda a: jnp.broadcast_to(a, (models, *jnp.shape(a))), (params, model_state)
            )
        opt_state = jax.vmap(lambda h, p: build(h)[1].init(p))(hp, params)
        averaged = jax.tree.map(jnp.copy, params) if ema else None
        scale = jnp.ones((models,), jnp.float32) if scaled else None
        return TrainState(params, opt_state, model_state, jnp.zeros((models,), jnp.int32), scale, averaged)

    return lambda params, model_state: initial(params, model_state, hp)


def prepared_models(build, params, model_state, train, evaluation, hp, models, stacked_params, batch_size, key,
                    partial_batch, monitor, copies=(False, False), who=None):  # fmt: skip
    """``(params, model_state, stacked_params, setup)``: each model built, an init function made into one init
    per seed, then :func:`prepare_models`'s checks of the builds, the params and the data. Before any of that
    is allocated, and again with the data's share once they are checked, the run's size is checked
    (:mod:`jreg.train.memory`; ``copies``: whether an EMA and a best-params copy are kept)."""
    model_state = calls.as_model_state(model_state)
    built = built_models(build, hp, models)
    who = who or f"this run of {models} models"
    init = is_init_function(params)
    one = memory.init_spec(params) if init else memory.one_model(params, stacked_params)
    parts = [] if one is None else memory.state_parts(built[0][1], one, models, ema=copies[0], best=copies[1])
    memory.check(parts, who)
    if init:  # one init per seed (a callable model, an Equinox module, is params)
        params, stacked_params = seeded(params, hp, model_state, stacked_params), True
        if model_state is not None:  # a shared initial state: each member keeps its own copy
            model_state = jax.tree.map(lambda a: jnp.broadcast_to(a, (models, *jnp.shape(a))), model_state)
    setup = prepare_models(
        built,
        params,
        model_state,
        train,
        evaluation,
        hp,
        models,
        stacked_params=stacked_params,
        batch_size=batch_size,
        key=key,
        partial_batch=partial_batch,
        monitor=monitor,
    )
    first, first_state = memory.one_model(params, stacked_params), memory.one_model(model_state, stacked_params)
    memory.check(parts + memory.data_parts(built[0][0], first, first_state, setup), who)
    return params, model_state, stacked_params, setup
