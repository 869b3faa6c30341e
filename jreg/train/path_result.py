"""A regularization path's result: :class:`Path` (a :class:`jreg.Result` of K members, one per strength, with
the final figures, norms, exact zeros and units left of each, and glmnet's table), how it is summarized from the
trained state, and the warning when every member is useless (see :mod:`jreg.train.path`)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np

from .._errors import JregWarning
from . import optimizer as optimizer_
from . import population as pop_
from .result import Result
from .validate import targets_of


@dataclasses.dataclass(eq=False, kw_only=True, repr=False)
class Path(Result):
    """A regularization path: a :class:`jreg.Result` of K members, one per strength (strongest first), with the
    final figures, norms, zeros and units of each (``len(path)`` is K).

    Attributes:
        strength: the name of the hyperparameter that varies.
        strengths: ``(K,)`` its values, decreasing.
        metrics: ``{series: (K,)}``, each series' last measurement (NaN for a member that diverged).
        l2, l1: ``{selector: (K,)}``: ``sqrt(Σ w²)`` and ``Σ |w|`` over the selector's leaves.
        zeros: ``{selector: (K,)}``: weights exactly 0; ``sizes[selector]`` the weights selected.
        units: ``{selector: (K,)}``: units (columns, or rows with ``groups="rows"``, of the selected
            leaves of rank >= 2) with some weight non-zero; ``unit_counts[selector]`` all units.
        params: the trained params, stacked along a leading axis of size K (``opt_state`` likewise, and
            ``model_state`` when given); ``hparams`` is ``{strength: strengths}``.
        history: a K-model :class:`History`, ``(K, measurements)`` per series (sequential mode: each
            strength's own fit, epochs 1..E). A member whose training became non-finite is frozen (at the
            state its bad epoch started from) and shows NaN figures from that epoch on, until a restart gives
            it its neighbour's state (population mode); as in a sweep, ``history.diverged[i]`` records it
            (``{"epoch", "step", "quantity"}``, 1-based, the member's latest divergence; sequential mode: in
            epochs of that strength's own fit), with ``"revived": e`` once a restart after epoch ``e``
            revived it. A member that a restart gives a frozen neighbour's state is frozen too (recorded with
            ``"step": None`` and the next epoch, its first NaN figures).
        mode, warm_every, epochs: how it ran; seconds: its wall time once the strengths were chosen
            (checks, compilation and training; not the ``lambda_max`` computation).
        cv: with ``folds=``, a :class:`jreg.CVResult` over the strengths (the same path on each fold, measured
            on the fold): ``mean``/``se`` per strength, ``best`` (λ_min), ``one_se`` (λ_1se), ``table()``; None
            without.
    """

    strength: str
    strengths: np.ndarray
    metrics: dict[str, np.ndarray]
    l2: dict[str, np.ndarray]
    l1: dict[str, np.ndarray]
    zeros: dict[str, np.ndarray]
    sizes: dict[str, int]
    units: dict[str, np.ndarray]
    unit_counts: dict[str, int]
    mode: str
    warm_every: int | None
    epochs: int
    seconds: float
    #: ``regularization_path(..., folds=k)``: the cross-validation along the strengths (a :class:`jreg.CVResult`)
    cv: Any = None

    __iter__ = None  # type: ignore[assignment]  # never a tuple: no old form to unpack

    def __getitem__(self, i: Any) -> Any:
        raise TypeError("a Path is not indexable; take member k out with path.select(k)")

    def __len__(self) -> int:
        return len(self.strengths)

    def table(self) -> str:
        """glmnet-like text: one row per strength (nonzero weights ``Df``, zeros, units, norms, figures)."""
        head = [f"{self.strength:>10}"]
        for s in self.zeros:
            head += [f"{s + ' Df':>14}", f"{'zeros %':>8}", f"{'units':>9}", f"{'L1':>9}", f"{'L2':>8}"]
        head += [f"{m:>{max(10, len(m))}}" for m in self.metrics]
        lines = [" ".join(head)]
        for i, lam in enumerate(self.strengths):
            row = [f"{lam:>10.4g}"]
            for s, size in self.sizes.items():
                zeros = int(self.zeros[s][i])
                units = f"{int(self.units[s][i])}/{self.unit_counts[s]}" if self.unit_counts[s] else "-"
                row += [f"{size - zeros:>14d}", f"{100 * zeros / max(size, 1):>8.2f}", f"{units:>9}"]
                row += [f"{self.l1[s][i]:>9.4g}", f"{self.l2[s][i]:>8.4g}"]
            row += [f"{self.metrics[m][i]:>{max(10, len(m))}.4f}" for m in self.metrics]
            lines.append(" ".join(row))
        return "\n".join(lines)


def _warn_useless(path: Path, setup: Any, objective: Any, layers: list[bool]) -> None:
    """A :class:`jreg.JregWarning` when every member is at chance accuracy or has a layer all zero."""
    zeroed = np.asarray(pop_.zeroed_layers(path.params, layers)) if any(layers) else np.zeros(len(path), bool)
    chance, said = np.zeros(len(path), bool), ""
    for series, data in (("evaluation_accuracy", setup.evaluation), ("training_accuracy", setup.train)):
        share = _majority(objective, data) if series in path.metrics and data is not None else None
        if share is not None:  # NaN (a frozen member) counts as useless
            chance, said = ~(path.metrics[series] > share + 0.01), f"{series} <= {share:.3f} + 0.01"
            break
    if not np.all(zeroed | chance):
        return
    measured = said or "no accuracy measured"
    warnings.warn(
        f"every member of the path is useless: {int(np.sum(chance))} of {len(path)} at chance ({measured}), "
        f"{int(np.sum(zeroed))} with a weight layer all zero, over strengths {path.strengths[0]:.4g} .. "
        f"{path.strengths[-1]:.4g}; start weaker (a smaller top or ratio) or train more (epochs, learning rate)",
        JregWarning,
        stacklevel=3,
    )


def _majority(objective: Any, data: Any) -> float | None:
    """The most frequent class's share of the targets (a constant model's accuracy), or None if not classes."""
    try:
        targets = targets_of(objective, data)
        y = None if targets is None else np.asarray(targets)
    except Exception:  # noqa: BLE001 - targets jreg cannot read: no chance level, no warning about it
        return None
    if y is None or y.size == 0:
        return None
    if np.issubdtype(y.dtype, np.integer) and y.ndim == 1:
        labels = y
    elif np.issubdtype(y.dtype, np.floating) and y.ndim == 2 and y.shape[1] >= 2:
        labels = np.argmax(y, axis=1)
    else:
        return None
    return float(np.max(np.bincount(labels - labels.min())) / labels.size)


def _summarize(strength, values, state, history, selectors, groups, mode, warm_every, epochs, seconds, stateful):
    params = optimizer_.state_params(state, stacked=True)  # a schedule-free optimizer's evaluation point
    leaves = [np.asarray(a) for a in jax.tree.leaves(params)]
    metrics = {k: np.asarray(history[k])[:, -1] for k in history.keys()}
    l2, l1, zeros, sizes, units, counts = {}, {}, {}, {}, {}, {}
    for name, flags in selectors.items():
        picked = [a.reshape(len(values), -1) for a, on in zip(leaves, flags) if on]
        l2[name] = np.sqrt(sum(np.sum(np.square(a, dtype=np.float64), axis=1) for a in picked))
        l1[name] = sum(np.sum(np.abs(a, dtype=np.float64), axis=1) for a in picked)
        zeros[name] = sum(np.sum(a == 0, axis=1) for a in picked)
        sizes[name] = int(sum(a.shape[1] for a in picked))
        grouped = [_alive_units(a, groups) for a, on in zip(leaves, flags) if on and a.ndim >= 3]
        units[name] = sum(grouped) if grouped else np.zeros(len(values), int)
        counts[name] = int(sum(_units_of(a, groups) for a, on in zip(leaves, flags) if on and a.ndim >= 3))
    return Path(
        params=params, history=history, opt_state=state.opt_state,
        model_state=state.model_state if stateful else None, hparams={strength: np.asarray(values)},
        stateful=stateful, strength=strength, strengths=values, metrics=metrics, l2=l2, l1=l1, zeros=zeros,
        sizes=sizes, units=units, unit_counts=counts, mode=mode, warm_every=warm_every, epochs=epochs,
        seconds=seconds,
    )  # fmt: skip


def _units_of(a: np.ndarray, groups: str) -> int:
    return a.shape[-1] if groups == "columns" else a.shape[-2]


def _alive_units(a: np.ndarray, groups: str) -> np.ndarray:
    """Per member: how many units have a non-zero weight (``a`` stacked: (K, ..., n_in, n_out))."""
    axis = a.ndim - 1 if groups == "columns" else a.ndim - 2
    others = tuple(x for x in range(1, a.ndim) if x != axis)
    return np.sum(np.any(a != 0, axis=others), axis=1)
