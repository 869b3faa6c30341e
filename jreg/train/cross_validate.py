"""``cross_validate``: k-fold cross-validation of S settings as S x k members of one compiled sweep.

Every (setting, fold) pair is one member of one :func:`jreg.sweep` on its per-member data
(:mod:`jreg.train.members`): member ``s * k + f`` (settings in the order of ``hparams``, folds fastest) trains
on every training example outside fold ``f`` and measures fold ``f`` as its evaluation data. The monitored
series is averaged over the folds per setting, with the standard error of cv.glmnet (the sample standard
deviation over the folds divided by sqrt(k)); ``best`` is the setting with the best mean, ``one_se`` the most
regularized setting whose mean is within one standard error of the best's (the "one-standard-error rule" of
Breiman et al. 1984 and Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, 7.10).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from .._checks import check_key
from .._errors import JregError, JregTypeError
from .._signature import checked
from .._types import Params
from ..writers import member_hparams, member_names, write_runs
from . import stream
from .config import ModelParallel
from .cv_result import CVResult, choices
from .engine import Build
from .fit import fit
from .history import maximized
from .inputs import check_data, data_size
from .members import MEMBER_SETS
from .prepare import SEED, check_hparams, is_init_function
from .sweep import sweep

#: salt of the fold split: the examples are shuffled with ``fold_in(key, FOLD_SALT)``
FOLD_SALT = 0x666F6C64
STRATIFY = ("auto", True, False)
REFIT = (False, True, "best", "one_se")
STRONGER = ("larger", "smaller")


#: sweep's keywords that cross_validate passes on (``**options``)
OPTIONS = tuple(
    name
    for name, p in inspect.signature(sweep).parameters.items()
    if p.kind == p.KEYWORD_ONLY and name not in ("hparams", "epochs", "batch_size", "key", "monitor")
)


@checked("cross_validate", passthrough=OPTIONS)
def cross_validate(
    build: Build,
    params: Params | Callable[[jax.Array], Params],
    train: Any,
    *,
    hparams: Mapping[str, Any],
    epochs: int,
    batch_size: int,
    key: jax.Array,
    folds: int | Sequence[Any] = 5,
    monitor: str = "evaluation_cost",
    regularize: str | None = None,
    stronger: str = "larger",
    refit: bool | str = False,
    stratify: bool | str = "auto",
    **options: Any,
) -> CVResult:
    """k-fold cross-validation of every setting in ``hparams``, all folds in one compiled program.

    ``cv = jreg.cross_validate(build, params, train, hparams=jreg.grid(lmbda=[...]), folds=5, epochs=30,
    batch_size=10, key=key)`` trains S settings x k folds as S·k members of one :func:`jreg.sweep`
    (``build(hp) -> (objective, optimizer)`` as there). Member ``s * k + f`` trains setting ``s`` on every
    training example outside fold ``f`` and measures fold ``f`` as its evaluation data, so it equals
    ``jreg.fit(*build(setting s), params, take(train, cv.train_indices(f)), evaluation=take(train,
    cv.folds[f]), key=key, ...)``: the members shuffle with ``key`` as ``fit`` does (the same order for every
    setting on a fold: the comparison between settings is paired), and their mini-batches are gathered from
    the shared training arrays inside each step, its fold's evaluation batches likewise. With
    ``vectorize="map"`` (``"auto"`` picks ``"wide"`` for a dense model and two settings or more: each fold's
    settings share its mini-batches and train as one wide sweep; else ``"map"`` on a CPU for S·k = 2 or 3, else
    ``"vmap"``) the params and the running loss
    equal such a hand-written loop of ``fit`` calls bit for bit on a CPU (each member trained on its own), and
    the fold's figures up to float rounding (each fold size is measured with ``fit``'s arithmetic, but XLA
    may fuse the fold's gather into the reductions; and the automatic evaluation batch of S·k members is
    sized on 1/(S·k) of the memory budget); with ``"vmap"`` everything up to float reassociation.

    Args:
        build, params, train, hparams, epochs, batch_size, key: as in :func:`jreg.sweep` (``train`` in memory;
            ``params`` may be an init function with a ``seed`` entry in ``hparams``).
        folds: the number of folds k (2 <= k <= n): the examples shuffled with ``fold_in(key, FOLD_SALT)``
            and dealt into k folds of sizes differing by at most one, stratified by class for class targets
            (``stratify``); or an explicit sequence of held-out index arrays (disjoint, non-empty, in range;
            examples in none of them train in every fold).
        monitor: the series compared across settings, measured on each member's fold (default
            ``"evaluation_cost"``; ``"evaluation_accuracy"`` is maximized, every other series minimized).
        regularize: the ``hparams`` entry whose larger values regularize more, for the one-SE rule (default
            ``"lmbda"``, or the only entry); ``stronger="smaller"`` when smaller values regularize more
            (a dropout keep probability, a max-norm radius).
        refit: ``True`` or ``"one_se"`` (glmnet's default choice) or ``"best"``: train the chosen setting on
            all of ``train`` with :func:`jreg.fit` (``cv.refit``, a plain Result), for ``epochs`` epochs, or
            with early stopping for the mean over the setting's folds of the epoch its members' params come
            from (there is no held-out data left to stop on).
        stratify: ``"auto"`` (stratify when the targets are classes: integer labels or one-hot rows),
            ``True`` (class targets required; explicit folds must each hold every class) or ``False``.
        **options: :func:`jreg.sweep`'s other keywords (``early_stopping``, ``vectorize``, ``checkpoint``,
            ``resume``, ``guard``, ``ema``, ``writers``, ``parallel``...); ``parallel=jreg.ModelParallel(mesh)``
            splits the S·k members over the mesh's model axis (S·k a multiple of its size; docs/scaling.md);
            ``writers=`` (:mod:`jreg.writers`) logs one run per
            member named by its setting and fold (``lmbda=0.1,fold=2``) as it trains, and after it one run per
            setting for the mean over the folds (``lmbda=0.1,fold=mean``: the monitored series and its standard
            error, ``<monitor>_se``); ``data_order="per_member"`` gives member ``m`` its own
            shuffle, ``fold_in(jreg.member_keys(key, S·k)[m], e)``, instead of the paired one.
            ``evaluation`` is refused (each member's evaluation data is its fold), except a
            :class:`jreg.Evaluation` without data for metrics, evaluation batch size and ``every``.

    Returns:
        A :class:`jreg.CVResult`: the sweep's Result of the S·k members (the order above) with ``mean``,
        ``se`` (S, measurements), ``mean_at_stop``/``se_at_stop`` (S,), ``best``/``one_se`` (and their
        indices), ``table()``, ``refit``.
    """
    hp, settings = check_hparams(hparams)
    if not isinstance(monitor, str):
        raise JregTypeError(f"monitor must name one series, e.g. 'evaluation_cost', got {monitor!r}")
    regularize = _check_choice_args(hp, regularize, stronger, refit, stratify)
    key = check_key(key)
    if stream.is_stream(train):
        raise JregError("cross_validate: train must be in-memory data (folds index it); a stream is not held")
    train = check_data(train, "train")
    n = data_size(train)
    labels = _labels(build, hp, train, stratify)
    held_out = _folds(folds, n, key, labels, stratify)
    k = len(held_out)
    train_sets = [np.setdiff1d(np.arange(n), f).astype(np.int32) for f in held_out]
    _check_training_sets(train_sets)
    _check_split(options.get("parallel"), settings, k)
    members = {name: np.repeat(np.asarray(v), k) for name, v in hp.items()}
    series = None if not monitor.startswith("training_") else ("epoch_loss", "evaluation_cost", monitor)
    sets = {"train": train_sets * settings, "evaluation": held_out * settings, "kind": "folds", "series": monitor}
    given = {name: np.asarray(hparams[name]) for name in hp}  # as given (float64 shows 0.01, not 0.0099999998)
    sets["names"] = [f"{name},fold={f}" for name in member_names(given) for f in range(k)]  # the trackers' runs
    result = sweep(build, params, train, hparams=members, epochs=epochs, batch_size=batch_size, key=key,
                   monitor=series, **options, **{MEMBER_SETS: sets})  # fmt: skip
    restore_best = bool(getattr(options.get("early_stopping"), "restore_best", False))
    cv = _summarized(result, given, held_out, monitor, regularize, stronger, n, restore_best)
    if options.get("writers"):  # the folds were written live, one run each; the mean over the folds now
        names = [f"{name},fold=mean" for name in member_names(given)]
        series = {monitor: cv.mean, f"{monitor}_se": cv.se}
        write_runs(options["writers"], names, member_hparams(given), series, steps=cv.measured_epochs.tolist(),
                   group=cv.snapshot.meta.get("run") if cv.snapshot is not None else None,
                   function="cross_validate")  # fmt: skip
    if refit:
        cv.refit = _refit(cv, hp, build, params, train, refit, epochs, batch_size, key, options)
    return cv


def _check_choice_args(hp: dict[str, Any], regularize: Any, stronger: Any, refit: Any, stratify: Any) -> str:
    """The arguments of the choice checked before any work; the name of the regularizing hyperparameter."""
    if stronger not in STRONGER:
        raise JregError(f"stronger must be one of {STRONGER}, got {stronger!r}")
    if not any(refit is r or (isinstance(r, str) and refit == r) for r in REFIT):
        raise JregError(f"refit must be one of {REFIT}, got {refit!r}")
    if not any(stratify is s or (isinstance(s, str) and stratify == s) for s in STRATIFY):
        raise JregError(f"stratify must be one of {STRATIFY}, got {stratify!r}")
    names = [name for name in hp if name != SEED]
    if regularize is None:
        if "lmbda" in hp:
            return "lmbda"
        if len(names) == 1:
            return names[0]
        raise JregError(
            f"regularize: hparams has several entries {sorted(hp)} and no 'lmbda'; name the one whose larger values "
            "regularize more, regularize='...' (stronger='smaller' if smaller values do)"
        )
    if not isinstance(regularize, str) or regularize not in hp:
        raise JregError(f"regularize must name an hparams entry, one of {sorted(hp)}; got {regularize!r}")
    return regularize


def _check_split(parallel: Any, settings: int, k: int) -> None:
    """With ``parallel=ModelParallel(...)``: the S·k members split evenly over its model axis (before any work; the
    sweep checks the rest of ``parallel``, in its words)."""
    if not isinstance(parallel, ModelParallel):
        return
    ways, members = parallel.mesh.shape[parallel.model_axis], settings * k
    if members % ways:
        raise JregError(
            f"cross_validate: the {settings} setting(s) x {k} folds = {members} members must split evenly over the "
            f"mesh's {parallel.model_axis!r} axis ({ways} devices); make settings x folds a multiple of {ways}, or "
            "use a smaller axis"
        )


def _labels(build: Build, hp: dict[str, Any], train: Any, stratify: Any) -> np.ndarray | None:
    """The class of each training example (integer labels, or one-hot rows), or None when the targets are not
    classes or ``stratify=False``."""
    if stratify is False:
        return None
    from .validate import targets_of  # the objective's split takes the targets out of the batch

    try:
        objective = build({k: v[0] for k, v in hp.items()})[0]
        targets = targets_of(objective, train)
    except JregError:
        raise
    except Exception:  # noqa: BLE001 - build's own errors are reported by the sweep, with the model's number
        targets = None
    labels = None
    if targets is not None and hasattr(targets, "dtype"):
        y = np.asarray(targets)
        if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
            labels = y.astype(np.int64)
        elif y.ndim == 2 and y.shape[1] >= 2 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
            labels = np.argmax(y, axis=1)
    if stratify is True and labels is None:
        raise JregError(
            "stratify=True needs class targets (integer labels (N,) or one-hot rows (N, classes)); these targets "
            "are not classes: pass stratify='auto' or False"
        )
    return labels


def _folds(folds: Any, n: int, key: jax.Array, labels: np.ndarray | None, stratify: Any) -> list[np.ndarray]:
    """The held-out index arrays, checked: from ``folds=k`` (shuffled, stratified by ``labels``) or as given."""
    if isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
        k = int(folds)
        if not 2 <= k <= n:
            raise JregError(f"folds must be at least 2 and at most the number of training examples ({n}), got {k}")
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, FOLD_SALT), n))
        if labels is not None:
            counts = np.bincount(labels)
            few = [(c, int(m)) for c, m in enumerate(counts) if 0 < m < k]
            if few:
                raise JregError(
                    f"folds={k} stratified by class: class {few[0][0]} has only {few[0][1]} examples, so some fold "
                    f"would hold none of it; use at most {min(m for _, m in few)} folds, or stratify=False"
                )
            order = order[np.argsort(labels[order], kind="stable")]  # by class, shuffled within each class
        return [np.sort(order[f::k]).astype(np.int32) for f in range(k)]
    return _explicit(folds, n, labels if stratify is True else None)


def _explicit(folds: Any, n: int, labels: np.ndarray | None) -> list[np.ndarray]:
    if isinstance(folds, (str, bytes, Mapping)) or not isinstance(folds, Sequence):
        raise JregTypeError(f"folds must be an int or a sequence of held-out index arrays, got {type(folds).__name__}")
    if len(folds) < 2:
        raise JregError(f"folds: give at least 2 held-out index arrays, got {len(folds)}")
    out, seen = [], np.full((n,), -1)
    for f, fold in enumerate(folds):
        a = np.asarray(fold)
        if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
            raise JregError(f"folds[{f}] must be a 1-D array of integer example indices, got {a.dtype} {a.shape}")
        if a.size == 0:
            raise JregError(f"folds[{f}] is empty: every fold must hold at least one example")
        if a.min() < 0 or a.max() >= n:
            raise JregError(f"folds[{f}] holds indices outside [0, {n}) (the training set's examples): {a.min()}..")
        if len(np.unique(a)) != a.size:
            raise JregError(f"folds[{f}] names an example twice")
        if np.any(seen[a] >= 0):
            other = int(seen[a][seen[a] >= 0][0])
            raise JregError(f"folds[{f}] and folds[{other}] overlap: the held-out folds must be disjoint")
        seen[a] = f
        if labels is not None and len(np.unique(labels[a])) < len(np.unique(labels)):
            missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(labels[a]).tolist()))
            raise JregError(f"folds[{f}] holds no example of class(es) {missing[:5]} (stratify=True)")
        out.append(np.sort(a).astype(np.int32))
    return out


def _check_training_sets(train_sets: list[np.ndarray]) -> None:
    empty = [f for f, s in enumerate(train_sets) if not len(s)]
    if empty:
        raise JregError(f"folds: fold {empty[0]} holds every training example, leaving none to train on")


def _summarized(result, hp, held_out, monitor, regularize, stronger, n, restore_best) -> CVResult:
    """The sweep's result as a :class:`CVResult`: the monitored series averaged over the folds, the choices."""
    k, history = len(held_out), result.history
    settings = {name: np.asarray(v) for name, v in hp.items()}
    values = np.asarray(history[monitor], np.float64)
    at = np.asarray(history.epochs(monitor), np.int64)
    stop_values, stop_epochs = _at_stop(history, values, at, restore_best)
    per = values.reshape(-1, k, values.shape[1])
    mean, se = per.mean(axis=1), _se(per)
    stops = stop_values.reshape(-1, k)
    maximize = maximized(monitor)
    mean_at_stop, se_at_stop = stops.mean(axis=1), _se(stops[..., None])[:, 0]
    best_index, one_se_index = choices(mean_at_stop, se_at_stop, settings[regularize], maximize, stronger)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return CVResult(
        **fields,
        settings=settings,
        folds=held_out,
        n_examples=n,
        monitor=monitor,
        maximize=maximize,
        measured_epochs=at,
        mean=mean,
        se=se,
        mean_at_stop=mean_at_stop,
        se_at_stop=se_at_stop,
        stop_epochs=stop_epochs.reshape(-1, k),
        regularize=regularize,
        stronger=stronger,
        best_index=best_index,
        one_se_index=one_se_index,
    )


def _se(per: np.ndarray) -> np.ndarray:
    """cv.glmnet's standard error over the folds (axis 1): the sample standard deviation / sqrt(k)."""
    k = per.shape[1]
    return per.std(axis=1, ddof=1) / np.sqrt(k)


def _at_stop(history, values: np.ndarray, at: np.ndarray, restore_best: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per member, the monitored value and epoch its returned params come from: with
    ``EarlyStopping(restore_best=True)`` its best epoch (on the series early stopping watched), else the last
    epoch it measured (the one it stopped at, with early stopping). NaN (epoch 0) for a member that diverged or
    measured nothing finite."""
    out, epochs = np.full(values.shape[0], np.nan), np.zeros(values.shape[0], np.int64)
    best = history.best().epoch if restore_best else None
    for i, row in enumerate(values):
        if i in history.diverged or not row.size:
            continue
        if best is not None:
            hit = np.flatnonzero(at == best[i])
            if hit.size and np.isfinite(row[hit[0]]):
                out[i], epochs[i] = row[hit[0]], at[hit[0]]
            continue
        finite = np.flatnonzero(np.isfinite(row))
        if finite.size:
            out[i], epochs[i] = row[finite[-1]], at[finite[-1]]
    return out, epochs


def _refit(cv: CVResult, hp, build, params, train, refit, epochs, batch_size, key, options) -> Any:
    """The chosen setting trained on all of ``train`` with :func:`fit` (a plain Result), with the values its
    members trained with (``hp``: as the sweep holds them, float32 or int32), and the sweep's model state,
    partial-batch rule, unroll, guard and EMA."""
    which = "one_se" if refit is True else refit
    index = cv.one_se_index if which == "one_se" else cv.best_index
    if index is None:
        raise JregError(
            f"refit={refit!r}: no setting can be chosen, every setting's mean {cv.monitor} is NaN (each has a "
            "fold whose member diverged or measured nothing); see cv.history.diverged and cv.table()"
        )
    setting = {name: v[index] for name, v in hp.items()}
    objective, optimizer = build(setting)
    if is_init_function(params):
        params = params(jax.random.key(int(setting[SEED])))
    if options.get("early_stopping") is not None:  # no held-out data left: the folds' mean stopping epoch
        epochs = max(1, int(round(float(np.mean(cv.stop_epochs[index])))))
    kept = {k: options[k] for k in ("model_state", "partial_batch", "unroll", "verbose", "guard") if k in options}
    ema = options.get("ema")
    if ema is not None:  # the members' EMA (a decay named in hparams: the chosen setting's value)
        decay = ema.decay if not isinstance(ema.decay, str) else float(setting[ema.decay])
        kept["ema"] = dataclasses.replace(ema, decay=decay)
    return fit(objective, optimizer, params, train, epochs=epochs, batch_size=batch_size, key=key, **kept)
