"""A cross-validated regularization path, ``regularization_path(..., folds=k)``, as ``cv.glmnet`` does it.

Beside the path on the whole training set (:mod:`jreg.train.path`), the same warm-started path runs on each
fold's training examples and is measured on the fold it leaves out: ``K`` strengths x ``k`` folds as ``K·k``
members of one population (one compiled program), member ``i * k + f`` the strength ``λ_i`` on fold ``f``,
each restarting from its weaker neighbour on the same fold (``(i + 1) * k + f``). Each strength gets the mean
and standard error over the folds of the monitored series (``cv_monitor``, by default ``evaluation_cost``), and
glmnet's two choices: ``λ_min`` (the best mean at the last measurement) and ``λ_1se`` (the largest strength
whose mean is within one standard error of the best's). The folds are made as :func:`jreg.cross_validate`
makes them (shuffled from the key, stratified for class targets, or given), and the figures are a
:class:`jreg.CVResult` (``path.cv``: its ``settings`` are the strengths, strongest first).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import JregError, JregTypeError
from .cross_validate import STRATIFY, _check_training_sets, _folds, _labels, _summarized
from .cv_result import CVResult
from .engine import Build
from .history import History
from .inputs import check_data, data_size
from .result import Result
from .state import TrainState


def check(
    folds: Any, build: Build, hp: dict[str, np.ndarray], train: Any, key: Any, stratify: Any, mode: str, monitor: Any
) -> list[np.ndarray] | None:
    """The held-out folds (None without ``folds``), every argument checked before any training."""
    if folds is None:
        return None
    if mode != "population":
        raise JregError(
            "folds: a cross-validated path runs in mode='population' (every strength and fold in one program); "
            "leave mode out, or drop folds"
        )
    if not isinstance(monitor, str):
        raise JregTypeError(f"cv_monitor must be the name of one series (e.g. 'evaluation_cost'), got {monitor!r}")
    if not any(stratify is s or (isinstance(s, str) and stratify == s) for s in STRATIFY):
        raise JregError(f"stratify must be one of {STRATIFY}, got {stratify!r}")
    batch = check_data(train, "train")
    n = data_size(batch)
    labels = _labels(build, {k: np.asarray(v) for k, v in hp.items()}, batch, stratify)
    held_out = _folds(folds, n, key, labels, stratify)
    _check_training_sets(training_sets(held_out, n))
    return held_out


def training_sets(held_out: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Each fold's training examples: every example outside it."""
    return [np.setdiff1d(np.arange(n), f).astype(np.int32) for f in held_out]


def members(hp: dict[str, np.ndarray], held_out: list[np.ndarray], n: int, monitor: str) -> tuple[dict, dict, Any]:
    """``(hparams, sets, series)`` of the ``K·k`` members: strength-major (member ``i * k + f``), their folds as
    per-member index sets, and the series to measure (the default ones, or a training series named)."""
    k = len(held_out)
    strengths = len(next(iter(hp.values())))
    repeated = {name: np.repeat(np.asarray(v), k) for name, v in hp.items()}
    sets = {"train": training_sets(held_out, n) * strengths, "evaluation": held_out * strengths, "kind": "folds",
            "series": monitor}  # fmt: skip
    series = None if not monitor.startswith("training_") else ("epoch_loss", "evaluation_cost", monitor)
    return repeated, sets, series


def summarized(
    state: TrainState, history: History, hp: dict[str, np.ndarray], held_out: list[np.ndarray], monitor: str,
    strength: str, n: int, stateful: bool,
) -> CVResult:  # fmt: skip
    """The folds' population as a :class:`jreg.CVResult` over the strengths (one-SE: the largest strength)."""
    k = len(held_out)
    result = Result(
        params=state.params,
        history=history,
        opt_state=state.opt_state,
        model_state=state.model_state if stateful else None,
        hparams={name: np.repeat(np.asarray(v), k) for name, v in hp.items()},
        stateful=stateful,
    )
    return _summarized(result, hp, held_out, monitor, strength, "larger", n, False)
