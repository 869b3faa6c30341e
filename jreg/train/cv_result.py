""":class:`CVResult`, what :func:`jreg.cross_validate` returns, and the choice rules (best, one standard error)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._errors import JregError
from .result import Result


def choices(
    mean: np.ndarray, se: np.ndarray, strength: np.ndarray, maximize: bool, stronger: str = "larger"
) -> tuple[int | None, int | None]:
    """``(best, one_se)`` setting indices from the per-setting ``mean`` and ``se`` (settings with a NaN mean
    never count; ``(None, None)`` when none is finite).

    ``best``: the best mean (the lowest, or the highest with ``maximize``; the first on ties). ``one_se``: the
    most regularized setting (the largest ``strength``, or the smallest with ``stronger="smaller"``) whose
    mean is within one standard error of the best's (``mean <= best + se_best``, or ``>= best - se_best``), as
    cv.glmnet's ``lambda.1se``; among settings of that strength, the best mean. A NaN ``se`` of the best (one
    fold) counts as 0."""
    mean, se, strength = (np.asarray(a, np.float64) for a in (mean, se, strength))
    finite = np.isfinite(mean)
    if not finite.any():
        return None, None
    ranked = np.where(finite, mean, -np.inf if maximize else np.inf)
    best = int(np.argmax(ranked) if maximize else np.argmin(ranked))
    margin = se[best] if np.isfinite(se[best]) else 0.0
    within = finite & ((mean >= mean[best] - margin) if maximize else (mean <= mean[best] + margin))
    strongest = np.max(strength[within]) if stronger == "larger" else np.min(strength[within])
    candidates = np.flatnonzero(within & (strength == strongest))
    scores = ranked[candidates]
    one_se = int(candidates[np.argmax(scores) if maximize else np.argmin(scores)])
    return best, one_se


@dataclasses.dataclass(eq=False, kw_only=True, repr=False)
class CVResult(Result):
    """What :func:`jreg.cross_validate` returns: the sweep's :class:`jreg.Result` of its S x k members (member
    ``s * k + f`` is setting ``s`` on fold ``f``) and the cross-validated figures of the S settings.

    Attributes:
        settings: ``{name: (S,) array}``, the settings in the order of ``hparams``.
        folds: the k held-out index arrays (sorted); fold ``f``'s members train on :meth:`train_indices`.
        n_examples: the training set's size.
        monitor: the series compared; ``maximize``: whether higher is better for it.
        measured_epochs: the (1-based) epochs at which it was measured, the columns of ``mean`` and ``se``.
        mean, se: ``(S, measurements)``: its mean over the folds and the standard error (the sample standard
            deviation over the folds / sqrt(k), as cv.glmnet). NaN from the epoch a member stopped early or
            diverged on (see ``mean_at_stop``).
        mean_at_stop, se_at_stop: ``(S,)``: the same of each member's value where its returned params come
            from (the best epoch with ``EarlyStopping(restore_best=True)``, the epoch it stopped at with early
            stopping, else the last epoch): what ``best`` and ``one_se`` compare. NaN for a setting with a
            diverged member.
        stop_epochs: ``(S, k)``: the epoch each member's value at stop comes from.
        regularize, stronger: the hyperparameter of the one-SE rule and which direction regularizes more.
        best_index, one_se_index: the chosen settings (None when no setting has a finite mean).
        refit: with ``refit=``, the chosen setting trained on all the training data (a plain Result).
    """

    settings: dict[str, np.ndarray]
    folds: list[np.ndarray]
    n_examples: int
    monitor: str
    maximize: bool
    measured_epochs: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    mean_at_stop: np.ndarray
    se_at_stop: np.ndarray
    stop_epochs: np.ndarray
    regularize: str
    stronger: str = "larger"
    best_index: int | None = None
    one_se_index: int | None = None
    refit: Result | None = None

    @property
    def n_settings(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def _setting(self, index: int | None, what: str) -> dict[str, Any]:
        if index is None:
            raise JregError(
                f"cv.{what}: no setting can be chosen, every setting's mean {self.monitor} is NaN (a fold's member "
                "diverged in each); see cv.history.diverged and cv.table()"
            )
        return {name: v[index].item() for name, v in self.settings.items()}

    @property
    def best(self) -> dict[str, Any]:
        """The setting with the best mean of ``monitor`` (at each member's stop): ``{name: value}``."""
        return self._setting(self.best_index, "best")

    @property
    def one_se(self) -> dict[str, Any]:
        """The most regularized setting whose mean is within one standard error of the best's."""
        return self._setting(self.one_se_index, "one_se")

    def member(self, setting: int, fold: int) -> int:
        """The member index of ``setting`` on ``fold`` (``setting * k + fold``)."""
        if not (0 <= setting < self.n_settings and 0 <= fold < self.n_folds):
            raise JregError(f"member: setting in [0, {self.n_settings}) and fold in [0, {self.n_folds}) expected")
        return setting * self.n_folds + fold

    def train_indices(self, fold: int) -> np.ndarray:
        """The training examples of fold ``fold``'s members: every example outside ``folds[fold]``, sorted."""
        return np.setdiff1d(np.arange(self.n_examples), self.folds[fold]).astype(np.int32)

    def table(self) -> str:
        """One row per setting: its hyperparameters, the mean and standard error at stop over the k folds, and
        the two choices marked (``min``/``max`` the best, ``1se`` the one-standard-error rule's)."""
        names = list(self.settings)
        head = [*names, f"mean {self.monitor}", "se", ""]
        rows = []
        for s in range(self.n_settings):
            marks = [("max" if self.maximize else "min") * (s == self.best_index), "1se" * (s == self.one_se_index)]
            rows.append(
                [
                    *(f"{self.settings[n][s]:.6g}" for n in names),
                    f"{self.mean_at_stop[s]:.6g}",
                    f"{self.se_at_stop[s]:.3g}",
                    " ".join(m for m in marks if m),
                ]  # fmt: skip
            )
        widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        title = f"{self.n_folds}-fold cross-validation of {self.n_settings} settings ({self.monitor})"
        return "\n".join([title, *lines])

    def __repr__(self) -> str:
        def shown(index: int | None) -> str:
            if index is None:
                return "None"
            return "{" + ", ".join(f"{n!r}: {v[index]:.4g}" for n, v in self.settings.items()) + "}"

        refit = "" if self.refit is None else ", refit=Result(...)"
        return (
            f"CVResult(settings={self.n_settings}, folds={self.n_folds}, monitor={self.monitor!r}, "
            f"best={shown(self.best_index)}, one_se={shown(self.one_se_index)}{refit})"
        )
