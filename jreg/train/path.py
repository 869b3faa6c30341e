r"""Regularization paths: one penalty strength per member, warm-started from dense to sparse, glmnet's report.

``regularization_path(build, params, train, strength="lmbda", ...)`` trains
one model per strength ``λ_0 > λ_1 > ... > λ_{K-1}`` (by default from
``λ_max``, at which the build's L1 or group-lasso penalty zeroes every selected
weight, down to ``ratio · λ_max``, geometrically, as glmnet's
``lambda_min_ratio``), and reports per strength (strongest first) the final
monitored figures, the weight norms, the exact zeros and the units left of
each selector (:class:`Path`).

The direction: from weak to strong. For the lasso, glmnet runs from
``λ_max`` down, each solution warm-starting the next (a convex problem: the
start only shortens the way). A network is not convex, and a warm start decides
where training ends: started from the strong end, every weaker member inherits
layers that are all zero, whose hidden units get identical gradients and can
never become different again (an L1 path on 600 MNIST images, [784, 16, 10],
ended at 13 % accuracy where a cold-started fit at the same strength reaches
90 %). So the path runs as LassoNet's does, from dense to sparse: the weakest
strength trains from ``params`` (a cold start, the model nearest the
unregularized one), and each stronger strength starts from its weaker
neighbour's params, which the stronger penalty then thins out. And a member
never warm-starts from a neighbour that has a layer (a weight leaf of rank >= 2)
whose weights are all zero: it keeps its own state instead (population mode) or
starts from ``params`` (sequential mode). Every member is then within a few
points of a cold-started fit at its strength (tests/test_path.py checks it on the
embedded MNIST subset).

Two modes:

* ``mode="sequential"``: the warm start, literally. Strength ``i`` is a fresh
  fit (new optimizer state, step 0) of ``epochs`` epochs starting from strength
  ``i+1``'s final params (the weakest, ``K-1``, from ``params``), its data order
  from ``fold_in(key, i)``: exactly
  ``fit(*build({strength: λ_i}), previous, ..., key=fold_in(key, i))`` (up to
  float reassociation), in one compiled program reused for every strength.
* ``mode="population"`` (default): every strength trains at once in one
  compiled program (a sweep), and every ``warm_every = M`` epochs each member
  ``i < K-1`` restarts from its weaker neighbour ``i+1``'s params and model
  state (fresh optimizer state and step count, as a new fit). The weakest
  member never restarts. Unrolled, member ``i`` ends as: strength ``λ_{K-1}``
  from ``params`` for ``E - (K-1-i)·M`` epochs, then ``M`` epochs at each of
  ``λ_{K-2}, ..., λ_i`` in turn, each started from the previous one's params:
  the sequential warm-started path with ``M`` epochs per strength, computed as a
  pipeline, preceded by extra epochs at the weakest strength. Members with
  ``(K-1-i)·M >= E`` begin mid-way; choose ``M <= E / K`` for the full chain
  (the default, ``max(1, E // K)``). It costs ``K·E`` model-epochs, the same as
  ``K`` cold-started fits of ``E`` epochs, in one program. With ``warm_every >=
  epochs`` no restart happens: it is :func:`jreg.sweep`.

The transfer (gather member ``i+1`` into member ``i``, re-initialize the
optimizer state) is one jitted function of the stacked device state: no
params leave the device, nothing is recompiled.

Before any training, the build is read (:mod:`jreg.train.strength`): which
penalty terms ``hp[strength]`` scales, in the objective and in
:func:`jreg.proximal`. The default ``top`` is their ``λ_max`` (L1 and group lasso
only); a penalty without one (L2...) needs ``top=`` a number (a
:class:`jreg.JregError` otherwise), and a strength applied in both places warns
(:class:`jreg.JregWarning`). So does a path whose members are all useless: at
chance accuracy, or with a layer all zero.

Exact zeros need a proximal optimizer (``optax.chain(optax.sgd(η),
jreg.proximal(jreg.penalties.l1(hp["lmbda"]), η))``): a subgradient step
almost never lands on 0.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int
from .._errors import JregError, JregTypeError
from .._signature import checked
from .._types import ModelState, Params
from ..penalties import mask_tree
from ..writers import Runs, Writer, check_writers, member_names
from . import checkpoint_folder, path_cv
from . import population as pop_
from . import strength as strength_
from .engine import Build
from .history import History
from .inputs import check_data, data_size
from .loop import Run
from .path_result import Path, _summarize, _warn_useless
from .path_result import _alive_units as _alive_units
from .path_result import _majority as _majority
from .path_result import _units_of as _units_of
from .prepare import built_models, check_hparams
from .state import TrainState
from .validate import check_loop_args

MODES = ("population", "sequential")
TOPS = ("l1", "group_lasso")


@checked("regularization_path", passthrough=pop_.UNSUPPORTED)
def regularization_path(
    build: Build,
    params: Params,
    train: Any,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    strength: str = "lmbda",
    strengths: Iterable[float] | None = None,
    n_strengths: int = 10,
    top: float | str | None = None,
    ratio: float = 1e-3,
    mask: Any = None,
    groups: str = "columns",
    hparams: Mapping[str, float] | None = None,
    mode: str = "population",
    warm_every: int | None = None,
    selectors: Mapping[str, Any] | None = None,
    evaluation: Any = None,
    model_state: ModelState = None,
    vectorize: str = "auto",
    monitor: Iterable[str] | str | None = None,
    partial_batch: str = "include",
    verbose: bool = False,
    writers: Sequence[Writer] | None = None,
    folds: int | Sequence[Any] | None = None,
    cv_monitor: str = "evaluation_cost",
    stratify: bool | str = "auto",
    **unknown: Any,
) -> Path:
    """A warm-started path over decreasing strengths of one penalty (see the module docstring for the modes).

    Args:
        build: ``build(hp) -> (objective, optimizer)``, as for :func:`jreg.sweep`; ``hp[strength]`` is the
            penalty's strength, the other entries come from ``hparams``.
        strength: the name of the hyperparameter the path varies.
        strengths: the values, in any order (sorted strongest first); else ``n_strengths`` values from
            ``top`` down to ``top * ratio``, geometric.
        top: the strongest value. By default (``None``) the ``λ_max`` of the penalty ``hp[strength]`` scales
            in the build (found in the objective's penalty and in :func:`jreg.proximal`): the smallest strength
            at which it keeps every selected weight at zero, :func:`jreg.lambda_max` for L1,
            ``max_units ||dJ/dw_unit||_2`` for the group lasso (its own ``groups``), computed on the whole
            training set at ``params`` with the selected weights zeroed, the objective of
            ``build({strength: 0, ...})``, and converted to the strength's units (``l1(hp["lmbda"] / n)``:
            ``n`` times it). Only L1 and group-lasso terms have one: for another penalty (L2, ...), give a
            number (else a :class:`jreg.JregError` before any training). ``"l1"`` / ``"group_lasso"`` ask for
            the same, and check that the build's penalty is that kind.
        ratio: the weakest strength is ``top * ratio`` (default ``1e-3``: on MNIST, from all-zero to within
            about a point of the unregularized model's accuracy).
        mask: the weights the default ``top`` zeroes (default: those of the build's penalty terms).
        hparams: the other hyperparameters, one value each, shared by every member.
        mode: ``"population"`` (default) or ``"sequential"``.
        warm_every: population mode's restart period ``M`` in epochs (default ``max(1, epochs // K)``).
        selectors: ``{name: mask}`` whose norms, zeros and units the path reports (a mask as penalties take
            it); default ``{"weights": None}``, the weight matrices.
        groups: which units :attr:`Path.units` counts: ``"columns"`` (output units) or ``"rows"``.

        writers: trackers (:mod:`jreg.writers`): one run per strength named ``lmbda=0.01`` (the strength alone),
            every hyperparameter recorded; at step ``epoch`` of the population (population mode) or of the
            strength's own fit (sequential mode).

        folds: cross-validate the path, as ``cv.glmnet`` does (:mod:`jreg.train.path_cv`): the number of
            folds k (shuffled from ``key``, stratified for class targets by ``stratify``, as
            :func:`jreg.cross_validate` makes them) or the held-out index arrays. Beside the path on all of
            ``train``, the same path runs on each fold's training examples, measured on the fold (K strengths x
            k folds in one more compiled program, each member restarting from its weaker neighbour on its
            fold); ``path.cv`` is a :class:`jreg.CVResult` over the strengths: ``cv_monitor``'s mean and
            standard error per strength (``mean``, ``se``, ``mean_at_stop``...), ``best`` (λ_min) and ``one_se``
            (λ_1se: the largest strength within one standard error of the best), ``table()``;
            ``jreg.plotting.path(path.cv)`` draws them. Population mode only. The trackers log the path on all
            of ``train`` only.
        cv_monitor: the series the folds compare (default ``"evaluation_cost"``; ``"evaluation_accuracy"`` is
            maximized).

    Warns (:class:`jreg.JregWarning`) when ``hp[strength]`` is applied both in the objective and in
    :func:`jreg.proximal` (the penalty acts twice), and when every member ends useless: at chance accuracy
    (the most frequent class's share, plus a point) or with a layer whose weights are all zero.
        The rest as in :func:`jreg.sweep` (``params`` shared by every member); the sweep's ``callback``,
        ``ema``, ``parallel``, ``early_stopping``, ``checkpoint`` and ``resume`` are not supported (a clear error).
    """
    pop_.check_unknown(unknown, "regularization_path")
    _check_options(mode, warm_every, groups, strength, top)
    writers = check_writers(writers, "regularization_path")
    fixed = _fixed(hparams, strength)
    selectors = _selectors(selectors, params)
    epochs, _ = check_loop_args(epochs, batch_size, key, None)
    found = strength_.uses(build, strength, fixed, params)  # the terms hp[strength] scales, before any training
    values = _values(strengths, n_strengths, ratio, top, found, build, params, train, strength, fixed, mask)
    models = len(values)
    if warm_every is None:
        warm_every = max(1, epochs // models)
    warm_every = check_positive_int(warm_every, "warm_every")
    hp = {strength: values, **{k: np.full(models, v) for k, v in fixed.items()}}
    held_out = path_cv.check(folds, build, hp, train, key, stratify, mode, cv_monitor)  # before any training
    doubled = strength_.warn_strength_twice(found, strength)
    started = time.perf_counter()
    common = dict(batch_size=batch_size, key=key, evaluation=evaluation, model_state=model_state,
                  vectorize=vectorize, monitor=monitor, partial_batch=partial_batch)  # fmt: skip
    layers = pop_.weight_layers(params)
    names = member_names({strength: hp[strength]})  # one run per strength, named by it, every value recorded
    tracked = Runs.of_members(
        writers, hp, names=names, group=checkpoint_folder.new_run(), start=0, function="regularization_path"
    )
    try:
        with strength_.quiet() if doubled else contextlib.nullcontext():  # said once, in the path's words
            if mode == "population":
                state, history, setup = _population(
                    build, params, train, hp, epochs, warm_every, verbose, common, layers, tracked
                )
            else:
                state, history, setup = _sequential(build, params, train, hp, epochs, verbose, common, layers, tracked)
    finally:
        if tracked is not None:
            tracked.close()
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - started
    path = _summarize(
        strength, values, state, history, selectors, groups, mode, warm_every if mode == "population" else None,
        epochs, seconds, model_state is not None,
    )  # fmt: skip
    _warn_useless(path, setup, build({strength: values[-1], **fixed})[0], layers)
    if held_out is not None:
        path.cv = _cross_validated(build, params, train, hp, held_out, epochs, warm_every, verbose, common, layers,
                                   cv_monitor, strength, doubled)  # fmt: skip
    return path


def _cross_validated(build, params, train, hp, held_out, epochs, warm_every, verbose, common, layers, monitor,
                     strength, doubled):  # fmt: skip
    """The path on each fold (:mod:`jreg.train.path_cv`), as one population of K strengths x k folds."""
    n = data_size(check_data(train, "train"))
    repeated, sets, series = path_cv.members(hp, held_out, n, monitor)
    common = {**common, "evaluation": None, "monitor": series}
    with strength_.quiet() if doubled else contextlib.nullcontext():
        state, history, _ = _population(build, params, train, repeated, epochs, warm_every, verbose, common, layers,
                                        None, sets, stride=len(held_out))  # fmt: skip
    return path_cv.summarized(state, history, hp, held_out, monitor, strength, n, common["model_state"] is not None)


def _check_options(mode: Any, warm_every: Any, groups: Any, strength: Any, top: Any) -> None:
    if mode not in MODES:
        raise JregError(f"mode must be one of {MODES}, got {mode!r}")
    if warm_every is not None and mode == "sequential":
        raise JregError("warm_every is population mode's restart period; mode='sequential' has none (leave it out)")
    if groups not in ("columns", "rows"):
        raise JregError(f"groups must be 'columns' or 'rows', got {groups!r}")
    if not isinstance(strength, str):
        raise JregTypeError(f"strength must be the name of a hyperparameter (str), got {strength!r}")
    _check_top(top)


def _check_top(top: Any) -> None:
    if top is None or (isinstance(top, str) and top in TOPS):
        return
    if isinstance(top, (bool, np.bool_)):
        raise JregTypeError(f"top must be a number or one of {TOPS} (or left out), got {top!r}")
    if isinstance(top, str):
        raise JregError(f"top must be a number or one of {TOPS} (or left out), got {top!r}")
    try:
        float(top)
    except (TypeError, ValueError) as exc:
        raise JregTypeError(f"top must be a number or one of {TOPS} (or left out), got {top!r}") from exc


def _values(strengths, n_strengths, ratio, top, found, build, params, train, strength, fixed, mask) -> np.ndarray:
    """The strengths, strongest first: given, or ``n_strengths`` from ``top`` down to ``top * ratio``."""
    if strengths is not None:
        return np.sort(np.asarray(check_hparams({strength: strengths})[0][strength], np.float64))[::-1]
    n_strengths = check_positive_int(n_strengths, "n_strengths")
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 < ratio < 1):
        raise JregError(f"ratio must be a number in (0, 1) (glmnet's lambda_min_ratio), got {ratio!r}")
    if top is not None and not isinstance(top, str):
        return _grid(float(top), n_strengths, ratio)
    at_zero = lambda: strength_.built(build, {strength: 0.0, **fixed}, "at strength 0 for its λ_max")[0]  # noqa: E731
    batch = check_data(train, "train")
    return _grid(strength_.top(found, top, strength, at_zero, params, batch, mask), n_strengths, ratio)


def _fixed(hparams: Any, strength: str) -> dict[str, float]:
    if hparams is None:
        return {}
    if not isinstance(hparams, Mapping):
        raise JregTypeError(f"hparams must be a mapping {{name: one value}}, got {type(hparams).__name__}")
    if strength in hparams:
        raise JregError(f"hparams must not hold {strength!r}: the path varies it (give strengths= instead)")
    out = {}
    for k, v in hparams.items():
        try:
            value = float(v) if np.ndim(v) == 0 and not isinstance(v, (str, bool)) else None
        except (TypeError, ValueError):
            value = None
        if value is None or not np.isfinite(value):
            raise JregError(f"hparams[{k!r}] must be one finite number shared by every strength, got {v!r}")
        out[k] = value
    return out


def _selectors(selectors: Any, params: Params) -> dict[str, Any]:
    selectors = {"weights": None} if selectors is None else selectors
    if not isinstance(selectors, Mapping) or not selectors:
        raise JregTypeError(f"selectors must be a non-empty mapping {{name: mask}}, got {selectors!r}")
    out = {str(k): jax.tree.leaves(mask_tree(params, m)) for k, m in selectors.items()}
    empty = sorted(k for k, flags in out.items() if not any(flags))
    if empty:
        raise JregError(f"selectors {empty} select no leaf of params: check the mask(s)")
    return out


def _grid(top: float, n: int, ratio: float) -> np.ndarray:
    if not (np.isfinite(top) and top > 0):
        raise JregError(f"top: the strongest strength must be finite and > 0, got {top!r}")
    return top * np.geomspace(1.0, ratio, n) if n > 1 else np.asarray([top])


def _population(build, params, train, hp, epochs, warm_every, verbose, common, layers, tracked=None, sets=None,
                stride=1):  # fmt: skip
    """Population mode: every strength at once, each restarting from its weaker neighbour every ``warm_every``
    epochs. ``stride``: members per strength (a cross-validated path: strength ``i`` on fold ``f`` is member
    ``i * stride + f``, its neighbour ``(i + 1) * stride + f``, on the same fold); ``sets``: their folds."""
    population = pop_.start(build, params, train, hp, epochs=epochs, stacked_params=False, sets=sets, **common)
    models = population.models

    @jax.jit
    def inherit(state: TrainState, alive: jax.Array, hp: dict[str, jax.Array]):
        index = jnp.arange(models)
        weaker = jnp.minimum(index + stride, models - 1)
        # from the weaker neighbour (dense to sparse), never from one with a layer all zero: its units could not
        # become different again; the weakest member, and one whose neighbour has a zeroed layer, keep their state
        fresh = (index < models - stride) & ~pop_.zeroed_layers(state.params, layers)[weaker]
        sources = jnp.where(fresh, weaker, index)
        params, model_state = pop_.take_rows((state.params, state.model_state), sources)
        opt_state = jax.vmap(lambda h, p: build(h)[1].init(p))(hp, params)
        step = jnp.where(fresh, 0, state.step)
        opt_state = jax.tree.map(lambda new, old: _where_rows(fresh, new, old), opt_state, state.opt_state)
        return TrainState(params, opt_state, model_state, step, state.lr_scale, state.ema), alive[sources]

    def transfer(run: Run, population: pop_.Population) -> None:
        run.state, run.alive = inherit(run.state, run.alive, population.hp)

    history = History(cost_convention=population.setup.monitor.cost_convention, models=population.models)
    due = lambda e: (e + 1) % warm_every == 0 and e + 1 < epochs  # noqa: E731
    after = [tracked.hook()] if tracked is not None else []
    done = pop_.run(population, history, transfer, due, verbose=verbose, after=after)
    return done.state, history, population.setup


def _where_rows(flags: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    return jnp.where(flags.reshape((-1,) + (1,) * (jnp.ndim(new) - 1)), new, old)


def _sequential(build, params, train, hp, epochs, verbose, common, layers, tracked=None):
    models = len(next(iter(hp.values())))
    built_models(build, check_hparams(hp)[0], models)  # every strength's build checked before any training
    key = common.pop("key")
    weakest = {k: v[-1:] for k, v in hp.items()}
    population = pop_.start(build, params, train, weakest, epochs=epochs, stacked_params=False, key=key, **common)
    history = History(cost_convention=population.setup.monitor.cost_convention, models=models)
    state = population.state
    cold = jax.tree.map(jnp.copy, (state.params, state.model_state))  # ``params``: the weakest strength's start
    finals, runs = [None] * models, [None] * models
    for i in reversed(range(models)):  # weak to strong: dense to sparse
        population.hp = {k: jnp.asarray(v[i : i + 1], population.hp[k].dtype) for k, v in hp.items()}
        population.key = jax.random.fold_in(key, i)
        if i < models - 1:  # a fresh fit from the weaker strength's final params, or from params if a layer is zero
            zeroed = bool(pop_.zeroed_layers(state.params, layers)[0])
            start = jax.tree.map(jnp.copy, cold) if zeroed else (state.params, state.model_state)
            opt_state = population.init_opt(start[0], population.hp)
            state = TrainState(start[0], opt_state, start[1], jnp.zeros((1,), jnp.int32))
        population.state = state
        runs[i] = History(cost_convention=history.cost_convention, models=1)
        after = [tracked.hook(rows=[i])] if tracked is not None else []  # its one row is strength i's run
        state = pop_.run(population, runs[i], None, lambda e: False, verbose=verbose, after=after).state
        finals[i] = jax.tree.map(jnp.copy, state)
    for k in runs[0].keys():
        for j, epoch in enumerate(runs[0].epochs(k)):
            history.append({k: np.concatenate([np.asarray(r.series[k][j]) for r in runs])}, epoch)
    history.diverged = {i: r.diverged[0] for i, r in enumerate(runs) if 0 in r.diverged}  # epochs of its own fit
    return jax.tree.map(lambda *a: jnp.concatenate(a), *finals), history, population.setup
