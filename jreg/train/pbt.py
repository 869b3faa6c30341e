r"""Population-based training (Jaderberg et al., 2017) inside the sweep's compiled program.

``pbt(build, params, train, hparams={...}, explore={...}, every=M, ...)``
trains K members (a sweep: one compiled program, hyperparameters traced).
After every ``M``-th epoch (not after the last):

* **exploit**: the members are ranked by the series ``rank_by`` (its latest
  measurement; higher is better unless the name says cost, loss or error; a
  diverged member ranks last). Each of the worst ``n = max(1, floor(fraction·K))``
  copies the whole training state (params, optimizer state, model state, step
  count) and the hyperparameters of a member drawn uniformly from the best
  ``n``.
* **explore**: each copied member multiplies each hyperparameter named in
  ``explore`` by a factor drawn uniformly from that entry's factors (PBT's
  ``(0.8, 1.2)``), then clips it to ``bounds``.

Both run as one jitted function of the stacked device state, the ``hp``
arrays, the K scores and a key (``fold_in(fold_in(key, 1), epoch)``): no
params leave the device, and since ``hp`` is a traced argument of the epoch
program, the new values recompile nothing. The same ``key`` gives the same
run, bit for bit. The data order is the sweep's: every member sees epoch
``e``'s shuffle from ``fold_in(key, e)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int
from .._errors import JregError, JregTypeError
from .._signature import checked
from .._types import ModelState, Params
from ..writers import Runs, Writer, check_writers
from . import checkpoint_folder
from . import optimizer as optimizer_
from . import population as pop_
from .engine import Build
from .history import History
from .loop import Run
from .monitor import EPOCH_LOSS
from .prepare import check_hparams
from .result import Result
from .state import TrainState

MINIMIZED = ("cost", "loss", "error")


@dataclasses.dataclass(eq=False, kw_only=True, repr=False)
class PBTResult(Result):
    """What :func:`jreg.pbt` returns: a :class:`jreg.Result` of K members (``params``, ``opt_state``,
    ``model_state``, ``history``) with the population's own record.

    Attributes:
        params: the final params, stacked along a leading axis of size K (``opt_state`` and ``model_state``
            likewise).
        history: a K-model :class:`History`: ``history[series]`` is ``(K, measurements)``; member ``i``'s row is
            the record of whoever occupied slot ``i`` (after an exploit, the copy's continuation). A member
            whose training became non-finite is frozen (at the state its bad epoch started from), shows NaN
            figures and ranks last, so the next exploit replaces it (when it is among the worst ``n``); as in
            a sweep, ``history.diverged[i]`` records it (``{"epoch", "step", "quantity"}``, 1-based, the
            slot's latest divergence), with ``"revived": e`` once the exploit after epoch ``e`` replaced it.
        hparams: ``{name: (K, epochs)}``: the value each member trained with in each epoch (the last column is
            :meth:`final_hparams`).
        lineage: one entry per copy: ``{"epoch": e, "member": i, "from": j}`` (1-based epoch after which
            member ``i`` took member ``j``'s state and hyperparameters).
        best: the index of the best member by ``rank_by`` at the end (``result.select(result.best)`` takes it
            out).
        rank_by: the series it ranked on; ``maximize`` whether higher was better.
    """

    lineage: list[dict[str, int]]
    best: int  # type: ignore[assignment]
    rank_by: str
    maximize: bool

    __iter__ = None  # type: ignore[assignment]  # never a tuple: no old form to unpack

    def __getitem__(self, i: Any) -> Any:
        raise TypeError("a PBTResult is not indexable; take member k out with result.select(k)")

    def __len__(self) -> int:
        return int(self.models or 0)

    def final_hparams(self) -> dict[str, np.ndarray]:
        """``{name: (K,)}``: each member's hyperparameters in the last epoch."""
        return {k: v[:, -1] for k, v in self.hparams.items()}


@checked("pbt", passthrough=pop_.UNSUPPORTED)
def pbt(
    build: Build,
    params: Params,
    train: Any,
    *,
    hparams: Mapping[str, Any],
    explore: Mapping[str, Iterable[float]],
    every: int,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    fraction: float = 0.25,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    rank_by: str | None = None,
    maximize: bool | None = None,
    evaluation: Any = None,
    model_state: ModelState = None,
    stacked_params: bool = False,
    vectorize: str = "auto",
    monitor: Iterable[str] | str | None = None,
    partial_batch: str = "include",
    verbose: bool = False,
    writers: Sequence[Writer] | None = None,
    **unknown: Any,
) -> PBTResult:
    """Population-based training of K members in one compiled program (see the module docstring).

    Args:
        build: ``build(hp) -> (objective, optimizer)``, as for :func:`jreg.sweep`.
        hparams: the initial population, ``{name: K values}``.
        explore: ``{name: factors}``: the hyperparameters explore perturbs and the multiplicative factors
            it draws from, e.g. ``{"lmbda": (0.8, 1.25), "eta": (0.8, 1.25)}``; factors finite and > 0.
        every: exploit and explore after every ``every``-th epoch (not after the last).
        fraction: the share of the population replaced each time, in (0, 0.5].
        bounds: ``{name: (low, high)}`` each explored value is clipped to (default: unbounded).
        rank_by: the series to rank on (it must be monitored and measured at every exploit epoch); default
            the first measured of ``evaluation_accuracy``, ``training_accuracy``, ``evaluation_cost``,
            ``training_cost`` and ``epoch_loss`` (with the default ``monitor``: ``evaluation_accuracy`` or
            ``evaluation_cost`` with evaluation data, else ``epoch_loss``).
        maximize: whether higher is better (default: not when ``rank_by`` names a cost, loss or error).
        writers: trackers (:mod:`jreg.writers`): one run per member slot (``member=3``), its initial
            hyperparameters recorded and, each epoch, the values it trained with as scalars ``hparams/<name>``
            (its hyperparameter trajectory, exploits and explores included).
        The rest as in :func:`jreg.sweep`; the sweep's ``callback``, ``ema``, ``parallel``, ``early_stopping``,
        ``checkpoint`` and ``resume`` are not supported (a clear error).
    """
    pop_.check_unknown(unknown, "pbt")
    writers = check_writers(writers, "pbt")
    every = _check_options(maximize, every, fraction, hparams)
    factors = _factors(explore, hparams)
    limits = _bounds(bounds, explore)
    population = pop_.start(
        build, params, train, hparams, epochs=epochs, batch_size=batch_size, key=key, evaluation=evaluation,
        model_state=model_state, stacked_params=stacked_params, vectorize=vectorize, monitor=monitor,
        partial_batch=partial_batch,
    )  # fmt: skip
    for name in explore:
        if not jnp.issubdtype(population.hp[name].dtype, jnp.floating):
            raise JregError(f"explore[{name!r}]: only real-valued hyperparameters can be perturbed; give floats")
    rank_by, maximize = _ranking(rank_by, maximize, population, every)
    n = max(1, int(fraction * population.models))
    step = _exploit_explore(population.models, n, factors, limits, maximize)
    trajectory: list[dict[str, np.ndarray]] = []
    lineage: list[dict[str, int]] = []
    pbt_key = jax.random.fold_in(key, 1)

    def transfer(run: Run, population: pop_.Population) -> None:
        score = jnp.asarray(np.asarray(run.values[rank_by], np.float32))
        run.state, run.alive, population.hp, losers, donors = step(
            run.state, run.alive, population.hp, score, jax.random.fold_in(pbt_key, run.epoch)
        )
        for i, j in zip(*jax.device_get((losers, donors))):
            lineage.append({"epoch": run.epoch + 1, "member": int(i), "from": int(j)})

    def due(e: int) -> bool:
        trajectory.append(jax.device_get(population.hp))  # the values epoch e trained with (before any change)
        return (e + 1) % every == 0 and e + 1 < population.epochs

    history = History(cost_convention=population.setup.monitor.cost_convention, models=population.models)
    names = [f"member={i:0{len(str(population.models - 1))}d}" for i in range(population.models)]
    tracked = Runs.of_members(writers, jax.device_get(population.hp), names=names, group=checkpoint_folder.new_run(),
                              start=0, function="pbt")  # fmt: skip
    try:  # the trackers write after the transfer hook, when trajectory[-1] holds the epoch's hyperparameters
        after = (
            [tracked.hook(extra=lambda run: {f"hparams/{k}": v for k, v in trajectory[-1].items()})] if tracked else []
        )
        done = pop_.run(population, history, transfer, due, verbose=verbose, after=after)
    finally:
        if tracked is not None:
            tracked.close()
    return _result(done, history, population, trajectory, lineage, rank_by, maximize)


def _check_options(maximize: Any, every: Any, fraction: Any, hparams: Any) -> int:
    """:func:`pbt`'s own options checked before any work; ``every`` as an int."""
    if maximize is not None and not isinstance(maximize, (bool, np.bool_)):
        raise JregTypeError(f"maximize must be True, False or None (from rank_by's name), got {maximize!r}")
    every = check_positive_int(every, "every")
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction <= 0.5):
        raise JregError(f"fraction must be a number in (0, 0.5] (the share replaced each time), got {fraction!r}")
    if not isinstance(hparams, Mapping):
        raise JregTypeError(f"hparams must be a mapping {{name: K values}}, got {type(hparams).__name__}")
    if check_hparams(hparams)[1] < 2:
        raise JregError("pbt needs a population of at least 2 members; hparams holds one value per name")
    return every


def _result(done: Run, history: History, population: pop_.Population, trajectory, lineage, rank_by, maximize):
    """The :class:`PBTResult`: the final members, each one's hyperparameters per epoch, the lineage, the best."""
    last = np.asarray(history[rank_by])[:, -1]
    ranked = np.where(np.isnan(last), -np.inf, last if maximize else -last)
    return PBTResult(
        params=optimizer_.state_params(done.state, stacked=True),
        history=history,
        opt_state=done.state.opt_state,
        hparams={k: np.stack([np.asarray(t[k]) for t in trajectory], axis=1) for k in population.hp},
        lineage=lineage,
        best=int(np.argmax(ranked)),
        rank_by=rank_by,
        maximize=maximize,
        model_state=done.state.model_state if population.stateful else None,
        stateful=population.stateful,
    )


def _factors(explore: Any, hparams: Mapping[str, Any]) -> dict[str, jax.Array]:
    if not isinstance(explore, Mapping) or not explore:
        raise JregTypeError(
            f"explore must be a non-empty mapping {{name: factors}}, e.g. {{'lmbda': (0.8, 1.25)}}; got {explore!r}"
        )
    pop_.check_names(explore, hparams, "explore")
    out = {}
    for name, values in explore.items():
        try:
            arr = np.asarray(values, np.float64)
        except (TypeError, ValueError) as exc:
            raise JregError(
                f"explore[{name!r}] must be a sequence of factors, e.g. (0.8, 1.25); got {values!r}"
            ) from exc
        if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise JregError(f"explore[{name!r}] must be a non-empty 1-D sequence of finite factors > 0, got {values!r}")
        out[name] = jnp.asarray(arr, jnp.float32)
    return out


def _bounds(bounds: Any, explore: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    if bounds is None:
        return {}
    if not isinstance(bounds, Mapping):
        raise JregTypeError(f"bounds must be a mapping {{name: (low, high)}}, got {type(bounds).__name__}")
    pop_.check_names(bounds, explore, "bounds (of explored hyperparameters)")
    out = {}
    for name, pair in bounds.items():
        try:
            low, high = (float(v) for v in pair)
        except (TypeError, ValueError) as exc:
            raise JregError(f"bounds[{name!r}] must be a pair (low, high), got {pair!r}") from exc
        if np.isnan(low) or np.isnan(high) or low > high:
            raise JregError(f"bounds[{name!r}] must be (low, high) with low <= high, got {pair!r}")
        out[name] = (low, high)
    return out


def _ranking(rank_by: Any, maximize: Any, population: pop_.Population, every: int) -> tuple[str, bool]:
    wanted = population.setup.monitor.wanted
    if rank_by is None:
        has_eval = population.setup.evaluation is not None
        order = ("evaluation_accuracy", "training_accuracy", "evaluation_cost", "training_cost", EPOCH_LOSS)
        rank_by = next((s for s in order if s in wanted and (has_eval or not s.startswith("evaluation"))), None)
        if rank_by is None:
            raise JregError(f"pbt: give rank_by= (a monitored series); the monitored series are {sorted(wanted)}")
    if not isinstance(rank_by, str) or rank_by not in wanted:
        raise JregError(f"rank_by={rank_by!r} is not a monitored series; the monitored series are {sorted(wanted)}")
    schedule = population.setup.schedule
    missed = [e + 1 for e in range(every - 1, population.epochs - 1, every) if not schedule.due(e, population.epochs)]
    if missed:
        raise JregError(
            f"rank_by={rank_by!r} is not measured after epoch(s) {missed[:5]}, where PBT ranks: make every={every} "
            f"a multiple of the Evaluation's every={schedule.every}"
        )
    if maximize is None:
        maximize = not any(word in rank_by for word in MINIMIZED)
    return rank_by, bool(maximize)


def _exploit_explore(models: int, n: int, factors: dict[str, jax.Array], limits: dict, maximize: bool):
    """``(state, alive, hp, score, key) -> (state, alive, hp, losers, donors)``, one jitted program.

    The program is compiled once per process for each population size, ``n``, direction, bounds and tree
    structure (module-level jit, the factors traced), so repeated :func:`pbt` calls reuse it."""
    bounded = tuple(sorted((k, float(lo), float(hi)) for k, (lo, hi) in limits.items()))
    del models  # the score's length says it

    def step(state: TrainState, alive: jax.Array, hp: dict[str, jax.Array], score: jax.Array, key: jax.Array):
        return _step(state, alive, hp, score, key, factors, n=n, maximize=maximize, bounded=bounded)

    return step


@functools.partial(jax.jit, static_argnames=("n", "maximize", "bounded"))
def _step(state, alive, hp, score, key, factors, *, n: int, maximize: bool, bounded: tuple):
    models = score.shape[0]
    limits = {k: (lo, hi) for k, lo, hi in bounded}
    signed = score if maximize else -score
    signed = jnp.where(jnp.isnan(signed) | ~alive, -jnp.inf, signed)
    order = jnp.argsort(signed, stable=True)  # worst first
    losers, best = order[:n], order[models - n :]
    pick, *perturb = jax.random.split(key, 1 + len(factors))
    donors = best[jax.random.randint(pick, (n,), 0, n)]
    sources = jnp.arange(models).at[losers].set(donors)
    copied = jnp.zeros((models,), bool).at[losers].set(True)
    hp = {k: v[sources] for k, v in hp.items()}
    for sub, (name, choices) in zip(perturb, sorted(factors.items())):
        factor = choices[jax.random.randint(sub, (models,), 0, choices.shape[0])]
        moved = hp[name] * factor.astype(hp[name].dtype)
        if name in limits:
            moved = jnp.clip(moved, *limits[name])
        hp[name] = jnp.where(copied, moved, hp[name])
    return pop_.take_rows(state, sources), alive[sources], hp, losers, donors
