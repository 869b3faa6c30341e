"""``sweep``: K models that differ in hyperparameters, trained in one compiled program on the same loop as fit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_optimizer
from .._errors import JregError, JregTypeError
from .._types import ModelState, Params
from . import calls, guard
from .config import EMA, as_ema, check_decay
from .engine import VECTORIZE, Build, program
from .history import SweepHistory
from .loop import Hook, Run, progress, record, run_epochs, user_callback
from .setup import Setup, prepare
from .state import TrainState
from .validate import check_loop_args


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


def _built(build: Build, hp: dict[str, jax.Array], models: int) -> list[tuple[Callable[..., Any], Any]]:
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
        check_optimizer(pair[1])
    return built


def _first(tree: Any, stacked: bool, models: int, name: str) -> Any:
    """Model 0's tree from a stacked one (checking the leading axis), or the shared tree itself."""
    if not stacked or tree is None:
        return tree
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(tree)}
    if sizes != {models}:
        raise JregError(f"stacked_params=True needs a leading axis of size {models} on every leaf of {name}")
    return jax.tree.map(lambda a: a[0], tree)


def sweep(
    build: Build,
    params: Params,
    train: Any,
    *,
    hparams: Mapping[str, Any],
    epochs: int,
    batch_size: int,
    key: jax.Array,
    evaluation: Any = None,
    model_state: ModelState = None,
    stacked_params: bool = False,
    vectorize: str = "auto",
    monitor: Iterable[str] | None = None,
    partial_batch: str = "include",
    verbose: bool = False,
    callback: Callable[..., None] | None = None,
    ema: EMA | None = None,
    **unknown: Any,
) -> tuple[Params, SweepHistory] | tuple[Params, ModelState, SweepHistory]:
    """Train K models that differ in hyperparameters in one compiled program; the same loop as :func:`fit`.

    ``build(hp) -> (objective, optimizer)`` receives one model's hyperparameters
    as scalars (``hp["lmbda"]``, ``hp["eta"]``...) and returns its objective and
    optimizer. Under the sweep those scalars are traced, so one program serves
    every value: penalty coefficients and optax learning rates accept traced
    values, nothing is recompiled per value. ``build`` is also called once per
    model with concrete values first, so bad values (a negative ``lmbda``)
    raise the usual clear error.

    Every model sees the same data order (the shuffles come from ``key``, as
    in :func:`fit`), so model ``i`` of a sweep equals :func:`fit` run with
    ``build({k: v[i]})`` alone (up to float reassociation).

    A model whose training becomes non-finite (params, optimizer or model
    state, or a monitored cost) is frozen at its last finite params while the
    others go on; ``history.diverged`` says which, at which epoch and step, and
    what went bad, and its series hold NaN from then on.

    Args:
        build: ``build(hp) -> (objective, optimizer)``.
        params: initial params shared by every model, or, with
            ``stacked_params=True``, params with a leading axis of size K
            (e.g. ``jax.vmap(model.init)(jax.random.split(key, K))`` for seeds).
        train: in-memory data as in :func:`fit`, or a stream of mini-batches
            (:class:`jreg.Stream`; docs/streaming.md): every model trains on
            the same chunks, in one compiled program per chunk.
        hparams: ``{name: K values}``; every entry has the same length K.
        model_state: a stateful model's initial state, shared (or stacked with
            ``stacked_params=True``); each model keeps its own. Then ``sweep``
            returns ``(params, model_state, history)``.
        vectorize: how the K models' training steps share the program:
            ``"vmap"`` batches them (best on GPU/TPU and for large K),
            ``"map"`` runs them one after another inside the same compiled
            program (``lax.map``; faster on CPU, where XLA's small batched
            matmuls are slow at small K). The per-epoch evaluations are batched
            either way. ``"auto"`` (default): ``"map"`` on CPU for K = 2 or 3,
            ``"vmap"`` otherwise (measured crossover: docs/benchmarks.md).
        evaluation: held-out data, or a :class:`jreg.Evaluation` (metrics,
            evaluation batch size, every k epochs), as in :func:`fit`.
        ema: a :class:`jreg.EMA`, as in :func:`fit`, for every model: one
            shared decay (``EMA(decay=0.999)``), or each model's own from an
            ``hparams`` entry (``EMA(decay="ema_decay")`` with
            ``hparams={"ema_decay": [...], ...}``; traced, one program serves
            every value; ``build`` receives that entry too and may ignore it).
            With ``returned`` the stacked params returned are the EMAs.
        The rest as in :func:`fit`.

    Returns:
        Params stacked along a leading axis of size K (and the model states,
        likewise, when given), and a :class:`SweepHistory` whose series have
        shape ``(K, measurements)``.
    """
    if unknown:
        raise JregTypeError(f"sweep() got unexpected keyword argument(s) {sorted(unknown)}")
    if not callable(build):
        raise JregTypeError(f"build must be callable build(hp) -> (objective, optimizer), got {build!r}")
    if vectorize not in VECTORIZE:
        raise JregError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    hp, models = check_hparams(hparams)
    ema = as_ema(ema)
    if ema is not None and isinstance(ema.decay, str):
        if ema.decay not in hp:
            raise JregError(f"ema: EMA.decay={ema.decay!r} names no hparams entry; the entries are {sorted(hp)}")
        for i, value in enumerate(np.asarray(hp[ema.decay]).tolist()):
            check_decay(value, f"hparams[{ema.decay!r}][{i}] (the EMA decay)")
    if vectorize == "auto":
        vectorize = "map" if jax.default_backend() == "cpu" and 2 <= models <= 3 else "vmap"
    epochs, batch_size = check_loop_args(epochs, batch_size, key, callback)
    model_state = calls.as_model_state(model_state)
    first = _first(params, stacked_params, models, "params")
    first_state = _first(model_state, stacked_params, models, "model_state")
    built = _built(build, hp, models)
    setup = prepare(
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

    @jax.jit
    def initial(params, model_state, hp):
        if not stacked_params:
            params, model_state = jax.tree.map(
                lambda a: jnp.broadcast_to(a, (models, *jnp.shape(a))), (params, model_state)
            )
        opt_state = jax.vmap(lambda h, p: build(h)[1].init(p))(hp, params)
        averaged = None if ema is None else jax.tree.map(jnp.copy, params)  # the EMA starts at the initial params
        return TrainState(params, opt_state, model_state, jnp.zeros((models,), jnp.int32), None, averaged)

    state = initial(params, model_state, hp)  # fresh buffers, safe to donate
    monitor = dataclasses.replace(setup.monitor, memory=setup.monitor.memory // models)  # K models evaluate at once
    epoch = program(build, setup.plan, monitor, models=models, vectorize=vectorize, ema=ema, feed=setup.feed)
    if setup.feed is not None:  # a one-shot iterator gives one epoch
        setup.feed.check_epochs(epochs)

    def one_epoch(state: TrainState, alive: Any, e: int):
        due = setup.schedule.due(e, epochs)
        data = setup.train if setup.feed is None else setup.feed.epoch(e)  # a stream: epoch e opened
        return epoch(hp, state, alive, data, setup.evaluation, jax.random.fold_in(key, e), evaluate=due)

    history = SweepHistory(cost_convention=setup.monitor.cost_convention, ema=None if ema is None else ema.meta())
    hooks: list[Hook] = [_flag_divergence(build, hp, setup, key, ema), record]
    hooks += [progress(setup.monitor)] if verbose else []
    hooks += [user_callback(callback)] if callback is not None else []
    run = run_epochs(one_epoch, Run(state, jnp.ones((models,), bool), epochs, history), 0, hooks, np.asarray)
    params = run.state.ema if ema is not None and ema.returned else run.state.params
    if model_state is not None:
        return params, run.state.model_state, history
    return params, history


def _flag_divergence(build: Build, hp: dict[str, jax.Array], setup: Setup, key: Any, ema: EMA | None = None) -> Hook:
    """Record each newly diverged model (replaying its epoch to name the step) and blank its figures with NaN."""

    def hook(run: Run) -> None:
        history: SweepHistory = run.history  # type: ignore[assignment]
        ok = np.asarray(run.ok)
        for i in np.flatnonzero(~ok):
            if int(i) in history.diverged:
                continue
            values = {k: v[i] for k, v in hp.items()}
            objective, optimizer = build(values)
            decay = None if ema is None else ema.decay_of(values)
            state = jax.tree.map(lambda a, i=i: a[i], run.state)  # frozen: the state the bad epoch started from
            epoch_key = jax.random.fold_in(key, run.epoch)
            keyed = calls.takes_key(objective)
            if setup.feed is not None:  # a stream: the failing chunk was replayed as the epoch ran
                found = setup.feed.found.get(int(i))
            else:
                found = guard.locate(objective, optimizer, setup.plan, state, setup.train, epoch_key, keyed, decay)
            figures = {k: v[i] for k, v in run.values.items() if setup.monitor.guarded(k)}
            step, quantity, _ = guard.describe(found, figures, run.epoch, run.epochs)
            history.diverged[int(i)] = {
                "epoch": run.epoch + 1,
                "step": None if step is None else step + 1,
                "quantity": quantity,
            }
            if found is not None:  # frozen at the last finite state, as fit's DivergenceError holds it
                run.state = jax.tree.map(lambda a, b, i=i: a.at[i].set(b), run.state, found[2])
        dead = sorted(history.diverged)
        if dead:
            run.values = {k: _blank(v, dead) for k, v in run.values.items()}

    return hook


def _blank(values: np.ndarray, dead: list[int]) -> np.ndarray:
    values = np.array(values, dtype=np.float64 if np.asarray(values).dtype == np.float64 else np.float32)
    values[dead] = np.nan
    return values
