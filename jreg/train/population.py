"""A population of K models on the sweep's compiled epoch, with a compiled transfer between epochs.

What :func:`jreg.regularization_path` and :func:`jreg.pbt` share. The population
is a sweep (``engine.program`` over K models, hyperparameters traced in ``hp``)
whose host loop calls, after chosen epochs, a *transfer*: a jitted function of
the stacked device state, the ``alive`` flags and the ``hp`` arrays that moves
state between members (a warm start from a neighbour; PBT's exploit) and may
change ``hp`` (PBT's explore). Params never come to the host; since ``hp`` is
a traced argument of the epoch program, new values recompile nothing.

A member whose training became non-finite is frozen by the engine (as in a
sweep) and its figures are blanked with NaN until a transfer gives it another
member's state, which revives it. As a sweep does, the history records it:
``history.diverged[i] = {"epoch", "step", "quantity"}`` (1-based; the epoch is
replayed step by step to name the step), the slot's latest divergence; a
transfer that revives the slot adds ``"revived": e``, the 1-based epoch after
which it took another member's state (a record without it: the slot ended
frozen). A live member that a transfer gives a frozen member's state is frozen
too: its record has the next epoch (its first NaN figures), ``"step": None``
and a ``quantity`` that says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import JregError, JregTypeError
from .._types import ModelState, Params
from ..penalties import mask_tree
from . import divergence, stream
from . import members as per_member
from .engine import VECTORIZE, Build, program
from .history import History
from .loop import Hook, Run, progress, record, run_epochs
from .prepare import check_hparams, default_vectorize, initial_state, prepared_models
from .setup import Setup
from .state import TrainState
from .validate import check_loop_args


@dataclasses.dataclass
class Population:
    """A prepared population: checked setup, ``hp`` on the device, the compiled epoch and the initial state."""

    build: Build
    hp: dict[str, jax.Array]
    models: int
    setup: Setup
    epoch: Callable[..., Any]  # engine.program's jitted epoch
    state: TrainState
    epochs: int
    key: jax.Array
    stateful: bool

    def init_opt(self, params: Params, hp: dict[str, jax.Array]) -> Any:
        """Fresh optimizer states for stacked ``params`` under stacked ``hp`` (traced: usable inside a transfer)."""
        return jax.vmap(lambda h, p: self.build(h)[1].init(p))(hp, params)


#: :func:`jreg.sweep` arguments that the population's loop (path, PBT) does not run
UNSUPPORTED = ("callback", "ema", "parallel", "early_stopping", "checkpoint", "resume")


def check_unknown(unknown: Mapping[str, Any], function: str) -> None:
    """A clear error for keyword arguments ``function`` does not take, naming the sweep's it does not support."""
    if not unknown:
        return
    missing = sorted(k for k in unknown if k in UNSUPPORTED)
    if missing:
        raise JregTypeError(
            f"{function}() does not support {', '.join(f'{k}=' for k in missing)} (jreg.sweep does): its loop "
            "moves state between members, which these would have to follow; train the chosen member(s) again "
            "with jreg.fit or jreg.sweep for them"
        )
    raise JregTypeError(f"{function}() got unexpected keyword argument(s) {sorted(unknown)}")


def check_names(value: Any, allowed: Iterable[str], what: str) -> None:
    """Every key of the mapping ``value`` names an hyperparameter of the population."""
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise JregError(
            f"{what} names {unknown}, which are not hyperparameters; the hyperparameters are {sorted(allowed)}"
        )


def start(
    build: Build,
    params: Params,
    train: Any,
    hparams: Mapping[str, Any],
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    evaluation: Any,
    model_state: ModelState,
    stacked_params: bool,
    vectorize: str,
    monitor: Iterable[str] | str | None,
    partial_batch: str,
    sets: Mapping[str, Any] | None = None,
) -> Population:
    """Check everything (as :func:`jreg.sweep` does) and build the population's epoch and initial state.

    ``sets``: per-member training and evaluation index sets (:mod:`jreg.train.members`: a cross-validated
    path's folds), as :func:`jreg.cross_validate` gives the sweep."""
    if not callable(build):
        raise JregTypeError(f"build must be callable build(hp) -> (objective, optimizer), got {build!r}")
    if vectorize not in VECTORIZE:
        raise JregError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    if stream.is_stream(train):  # the population's epoch and its divergence replay read the data whole
        raise JregTypeError(
            "train: jreg.pbt and jreg.regularization_path train on data held in memory (a pair (x, y) or a pytree "
            f"of arrays), not a stream of batches ({type(train).__name__}); jreg.fit and jreg.sweep take streams"
        )
    hp, models = check_hparams(hparams)
    epochs, batch_size = check_loop_args(epochs, batch_size, key, None)
    train, evaluation, members = per_member.prepare(
        train, evaluation, key, models, batch_size, partial_batch, "shared", None, sets, vectorize
    )
    params, model_state, stacked_params, setup = prepared_models(
        build, params, model_state, train, evaluation, hp, models, stacked_params, batch_size, key, partial_batch,
        monitor,
    )  # fmt: skip
    setup = per_member.attach(setup, members, sets)
    vectorize = default_vectorize(vectorize, models, members=members, params=params, stacked=stacked_params)
    state = initial_state(build, hp, models, stacked_params)(params, model_state)
    measured = dataclasses.replace(setup.monitor, memory=setup.monitor.memory // models)
    epoch = program(build, setup.plan, measured, models=models, vectorize=vectorize, members=setup.members)
    return Population(build, hp, models, setup, epoch, state, epochs, key, model_state is not None)


#: ``transfer(run, population) -> None``: changes ``run.state``, ``run.alive`` and ``population.hp`` on the device
Transfer = Callable[[Run, Population], None]


def run(
    population: Population,
    history: History,
    transfer: Transfer | None,
    due: Callable[[int], bool],
    *,
    verbose: bool = False,
    start_epoch: int = 0,
    epochs: int | None = None,
    after: Sequence[Hook] = (),
) -> Run:
    """Epochs ``start_epoch .. epochs - 1``; after each: blank the dead, record, print, ``transfer`` when due, then
    the hooks ``after`` (the trackers: they see the figures and the hyperparameters the epoch trained with)."""
    pop = population

    members = pop.setup.members
    indices = None if members is None else members.arrays()

    def one_epoch(state: TrainState, alive: Any, e: int):
        evaluate = pop.setup.schedule.due(e, pop.epochs)
        data = (pop.setup.train, pop.setup.evaluation)
        if members is None:
            return pop.epoch(pop.hp, state, alive, *data, jax.random.fold_in(pop.key, e), evaluate=evaluate)
        # per-member data (a cross-validated path's folds): the members' index sets and epoch keys
        return pop.epoch(pop.hp, state, alive, *data, members.epoch_keys(pop.key, e), indices, evaluate=evaluate)

    def blank(r: Run) -> None:  # a frozen member's figures are not measurements of training: NaN, as in a sweep
        dead = np.flatnonzero(~np.asarray(jax.device_get(r.alive)))
        if dead.size:
            r.values = {k: _nan_at(v, dead) for k, v in r.values.items()}

    def maybe_transfer(r: Run) -> None:
        if transfer is not None and due(r.epoch):
            transfer(r, pop)

    diverged, transferred = divergence.population(pop)
    hooks: list[Hook] = [diverged, blank, record] + ([progress(pop.setup.monitor)] if verbose else [])
    hooks += [maybe_transfer, transferred, *after]
    alive = jnp.ones((pop.models,), bool)
    last = pop.epochs if epochs is None else epochs
    return run_epochs(one_epoch, Run(pop.state, alive, last, history), start_epoch, hooks, np.asarray)


def _nan_at(values: Any, rows: np.ndarray) -> np.ndarray:
    out = np.array(values, dtype=np.float64 if np.asarray(values).dtype == np.float64 else np.float32)
    out[rows] = np.nan
    return out


def take_rows(tree: Any, sources: jax.Array) -> Any:
    """``tree`` with member ``i`` replaced by member ``sources[i]`` (a gather along the model axis)."""
    return jax.tree.map(lambda a: jnp.take(a, sources, axis=0), tree)


def weight_layers(params: Params) -> list[bool]:
    """Per leaf of (unstacked) ``params``: a weight matrix or kernel (the default mask, rank >= 2), a layer."""
    flags = jax.tree.leaves(mask_tree(params, None))
    return [bool(on) and jnp.ndim(w) >= 2 for w, on in zip(jax.tree.leaves(params), flags)]


def zeroed_layers(stacked: Params, layers: list[bool]) -> jax.Array:
    """``(K,)``: whether each member of the ``stacked`` params has a layer (``layers``) whose weights are all 0."""
    leaves = jax.tree.leaves(stacked)
    out = jnp.zeros((leaves[0].shape[0],), bool)
    for a, on in zip(leaves, layers):
        if on:
            out = out | jnp.all(a.reshape(a.shape[0], -1) == 0, axis=1)
    return out
