"""A result read along its strength for :func:`jreg.plotting.path`: a :func:`jreg.regularization_path` result
or a cross-validation result (:func:`jreg.cross_validate`) as one :class:`Along` (one entry per strength, or per
setting of a cross-validation), and what the ``"norms"`` and ``"selected"`` panels compute from its params.

A cross-validation result is read by its attributes (``settings``, ``regularize``, ``monitor``,
``maximize``, ``mean``, ``se``, ``mean_at_stop``, ``se_at_stop``, ``best_index``, ``one_se_index``,
``n_folds``, ``params``, ``hparams``): member ``m`` of its stacked ``params`` belongs to the setting whose
values ``hparams`` gives it, or, without ``hparams``, to setting ``m // n_folds`` (setting-major order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import JregError, JregTypeError

PATH_ATTRIBUTES = ("strength", "strengths", "metrics", "zeros", "sizes", "units", "unit_counts")
CV_ATTRIBUTES = ("settings", "regularize", "monitor", "mean", "se", "best_index", "one_se_index", "n_folds")


@dataclasses.dataclass
class Along:
    """A result read along its strength, one entry per setting (a path's strength, a CV's setting)."""

    name: str  # the strength's name
    x: np.ndarray  # (S,) its values
    monitor: str
    metric: np.ndarray  # (S,)
    error: np.ndarray | None  # (S,) one standard error (cross-validation), or None
    maximize: bool
    chosen: list[tuple[str, int]]  # (what, setting index) marked on the axis
    params: Any  # the members' params, stacked (None if the result has none)
    setting_of: np.ndarray | None  # (members,) the setting each member belongs to
    groups: list[tuple[str, np.ndarray]]  # one curve per group: (label, setting indices)
    settings: dict[str, np.ndarray]  # {hyperparameter: (S,)}: a path's strength, a CV's settings
    selected: dict[str, tuple[np.ndarray, int, np.ndarray, int]] | None  # {selector: (zeros, size, units, count)}
    folds: int | None  # a cross-validation's folds, None for a path
    where: str  # what the metric is: "at the last epoch", "mean ± 1 SE over 5 folds, ..."
    unmatched: str = ""  # why setting_of is None although there are params (said when a panel needs them)


# -- reading a result -------------------------------------------------------------------------------------


def read(result: Any, monitor: str | None) -> Along:
    if all(hasattr(result, a) for a in CV_ATTRIBUTES):
        return _read_cv(result, monitor)
    if all(hasattr(result, a) for a in PATH_ATTRIBUTES):
        return _read_path(result, monitor)
    hint = ""
    if getattr(result, "hparams", None) is not None and hasattr(result, "history"):
        hint = "; for a sweep over a 2-D grid, draw its heat map with jreg.plotting.sweep(result, x=..., y=...)"
    raise JregTypeError(
        "plotting.path: result must be what jreg.regularization_path or jreg.cross_validate returned, got "
        f"{type(result).__name__}{hint}"
    )


def _read_path(result: Any, monitor: str | None) -> Along:
    from ..train.history import DEFAULT_MONITORS, maximized

    metrics = dict(result.metrics)
    if monitor is None:
        monitor = next((m for m in DEFAULT_MONITORS if m in metrics), None)
        if monitor is None:
            raise JregError(f"plotting.path: the path measured none of {list(DEFAULT_MONITORS)} (it has "
                            f"{sorted(metrics)}); pass monitor='<series>'")  # fmt: skip
    elif monitor not in metrics:
        raise JregError(f"plotting.path: monitor={monitor!r} was not measured on this path; it has {sorted(metrics)}")
    x = np.asarray(result.strengths, np.float64)
    metric = np.asarray(metrics[monitor], np.float64).reshape(-1)
    maximize = maximized(monitor)
    chosen = []
    if np.isfinite(metric).any():
        best = int(np.nanargmax(metric) if maximize else np.nanargmin(metric))
        chosen = [(f"best {_symbol(str(result.strength))}", best)]
    selected = {
        s: (np.asarray(result.zeros[s]), int(result.sizes[s]), np.asarray(result.units[s]), int(result.unit_counts[s]))
        for s in result.zeros
    }  # fmt: skip
    whole = np.arange(len(x))
    return Along(str(result.strength), x, monitor, metric, None, maximize, chosen, getattr(result, "params", None),
                 whole, [("", whole)], {str(result.strength): x}, selected, None, "at the last epoch")  # fmt: skip


def _read_cv(cv: Any, monitor: str | None) -> Along:
    if monitor is not None and monitor != cv.monitor:
        raise JregError(f"plotting.path: a cross-validation result holds the mean and standard error of its own "
                        f"monitor, {cv.monitor!r}, only; leave monitor= out (or cross-validate with "
                        f"monitor={monitor!r})")  # fmt: skip
    settings = {str(k): np.asarray(v) for k, v in dict(cv.settings).items()}
    name = str(cv.regularize)
    if name not in settings:
        raise JregError(
            f"plotting.path: the result's regularize={name!r} is not one of its settings {sorted(settings)}"
        )
    x = _numbers(settings[name], f"settings[{name!r}]")
    at_stop = getattr(cv, "mean_at_stop", None) is not None and getattr(cv, "se_at_stop", None) is not None
    if at_stop:
        metric, error = _numbers(cv.mean_at_stop, "mean_at_stop"), _numbers(cv.se_at_stop, "se_at_stop")
    else:
        metric, error = _last(cv.mean, "mean"), _last(cv.se, "se")
    for values, what in ((metric, "mean"), (error, "se")):
        if values.shape != x.shape:
            raise JregError(f"plotting.path: the result's {what} has {values.shape[0]} settings, its settings "
                            f"{len(x)}")  # fmt: skip
    symbol = _symbol(name)
    chosen = [(f"{symbol}_min", int(cv.best_index)), (f"{symbol}_1se", int(cv.one_se_index))]
    folds = int(cv.n_folds)
    params = getattr(cv, "params", None)
    maximize = bool(getattr(cv, "maximize", "accuracy" in str(cv.monitor)))
    measured = getattr(cv, "measured_epochs", None)
    epochs = np.asarray([] if measured is None else measured).ravel()
    last = f"at epoch {epochs[-1]}" if epochs.size else "at the last measurement"
    where = f"mean ± 1 SE over {folds} folds, " + ("at each member's stopping epoch" if at_stop else last)
    try:
        setting_of, unmatched = _setting_of(cv, settings, params, folds), ""
    except JregError as exc:  # said when a panel needs the params, not for the metric alone
        setting_of, unmatched = None, str(exc)
    return Along(name, x, str(cv.monitor), metric, error, maximize, chosen, params, setting_of,
                 _groups(settings, name), settings, None, folds, where, unmatched)  # fmt: skip


def _numbers(values: Any, what: str) -> np.ndarray:
    """``values`` as a 1-D float array, or a jreg error naming ``what``."""
    try:
        out = np.asarray(values, np.float64)
    except (TypeError, ValueError) as exc:
        raise JregTypeError(f"plotting.path: the result's {what} must hold numbers, got {values!r}") from exc
    if out.ndim != 1:
        raise JregError(f"plotting.path: the result's {what} must be one value per setting, got shape {out.shape}")
    return out


def _last(values: Any, what: str) -> np.ndarray:
    """The last measurement of ``(settings, measurements)`` (or ``(settings,)``) values."""
    out = np.asarray(values, np.float64)
    return _numbers(out[:, -1] if out.ndim == 2 else out, what)


def _symbol(name: str) -> str:
    return "λ" if name in ("lmbda", "lambda", "lam") else name


def _setting_of(cv: Any, settings: dict[str, np.ndarray], params: Any, folds: int) -> np.ndarray | None:
    """The setting each stacked member belongs to: by the values ``cv.hparams`` gives it, else setting-major."""
    members = _members(params)
    if members is None:
        return None
    count = len(next(iter(settings.values())))
    hparams = getattr(cv, "hparams", None)
    if isinstance(hparams, Mapping) and all(np.size(hparams.get(k, ())) == members for k in settings):
        setting_of = np.full(members, -1)
        try:
            for s in range(count):
                same = [np.isclose(np.asarray(hparams[k], np.float64), float(v[s])) for k, v in settings.items()]
                setting_of[np.all(same, axis=0) & (setting_of < 0)] = s
        except (TypeError, ValueError):  # hyperparameters that are not numbers: read the members' order instead
            setting_of[:] = -1
        if np.all(setting_of >= 0):
            return setting_of
    if members == count * folds:
        return np.repeat(np.arange(count), folds)
    raise JregError(f"plotting.path: cannot tell which of the {count} settings each of the {members} stacked members "
                    f"of params trained (expected {count} x {folds} folds = {count * folds} members, or hparams "
                    "naming each member's setting)")  # fmt: skip


def _members(params: Any) -> int | None:
    if params is None:
        return None
    import jax

    leaves = jax.tree.leaves(params)
    return int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else None


def _groups(settings: dict[str, np.ndarray], name: str, keep: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """One curve per combination of the other hyperparameters that vary across the (kept) settings."""
    kept = np.arange(len(settings[name])) if keep is None else np.flatnonzero(keep)
    others = [k for k, v in settings.items() if k != name and len(np.unique(np.asarray(v)[kept])) > 1]
    if not others:
        return [("", kept)]
    keys = [tuple(np.asarray(settings[k])[s].item() for k in others) for s in kept]
    out = []
    for key in sorted(set(keys)):
        label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(others, key))
        out.append((label, np.asarray([s for s, k in zip(kept, keys) if k == key])))
    return out


def restricted(along: Along, where: Mapping[str, Any] | None) -> Along:
    """Only the settings ``where`` names (a cross-validation over a grid)."""
    if where is None:
        return along
    if not isinstance(where, Mapping) or not where:
        raise JregTypeError(
            f"plotting.path: where must be a non-empty mapping {{hyperparameter: value}}, got {where!r}"
        )
    others = sorted(k for k in along.settings if k != along.name)
    unknown = sorted(k for k in where if k not in others)
    if unknown:
        raise JregError(f"plotting.path: where names {unknown}, not a hyperparameter of the settings besides the "
                        f"strength {along.name!r}; those are {others}")  # fmt: skip
    keep = np.ones(len(along.x), bool)
    for k, v in where.items():
        try:
            keep &= np.isclose(np.asarray(along.settings[k], np.float64), float(v))
        except (TypeError, ValueError) as exc:
            raise JregTypeError(f"plotting.path: where[{k!r}] must be a number, got {v!r}") from exc
    if not keep.any():
        values = {k: np.unique(along.settings[k]).tolist() for k in where}
        raise JregError(f"plotting.path: no setting has {dict(where)}; the values are {values}")
    return dataclasses.replace(along, groups=_groups(along.settings, along.name, keep))


# -- what each panel draws --------------------------------------------------------------------------------


def panel_data(panel: str, along: Along, selectors: Any, groups: str, norm: str) -> Any:
    """What ``panel`` needs beyond ``along``, computed (and checked) before anything is drawn."""
    if panel == "metric":  # its top axis: the first selector's non-zero weights, as glmnet's
        if len(along.groups) > 1 or (selectors is not None and (along.params is None or along.setting_of is None)):
            return None
        return along.selected if selectors is None else _selected(along, selectors, groups)
    if len(along.groups) > 1:
        others = sorted({part.split("=")[0] for label, _ in along.groups for part in label.split(", ")})
        first = along.groups[0][1][0]
        example = {k: np.asarray(along.settings[k])[first].item() for k in others}
        raise JregError(f"plotting.path: the {panel!r} panel draws one curve per layer or selector along "
                        f"{along.name!r}, but the settings also vary in {others}: pick one slice with where=, e.g. "
                        f"where={example}, or draw panels=('metric',)")  # fmt: skip
    if along.unmatched:
        raise JregError(along.unmatched)
    if along.params is None or along.setting_of is None:
        raise JregError(f"plotting.path: the {panel!r} panel reads the result's params (stacked over its members); "
                        "this result has none: draw panels=('metric',)")  # fmt: skip
    if panel == "norms":
        return _norms(along, norm)
    if selectors is None:
        if along.selected is None:
            raise JregError("plotting.path: the 'selected' panel draws the exact zeros and units left per selector, "
                            "and a cross-validation result has no selectors: pass selectors={'weights': None} (every "
                            "weight matrix) or masks such as selectors={'first layer': '0/w'}")  # fmt: skip
        return along.selected
    return _selected(along, selectors, groups)


def _norms(along: Along, norm: str) -> tuple[str, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Each weight layer's norm per setting: ``(norm, names, mean, low, high)``, ``(S, layers)`` over the
    members."""
    import jax

    from .._tree import path_str
    from ..penalties.masks import is_weight

    names, values = [], []
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(along.params)[0]:
        a, name = np.asarray(leaf), path_str(keypath)
        if a.ndim >= 3 and is_weight(name, a[0]):
            w = a.reshape(len(a), -1).astype(np.float64)
            values.append(np.sqrt(np.sum(w * w, axis=1)) if norm == "l2" else np.sum(np.abs(w), axis=1))
            names.append(name)
    if not names:
        raise JregError("plotting.path: the 'norms' panel draws each weight layer's norm, and params has no weight "
                        "layer (a floating-point leaf of rank >= 2 not named like a bias)")  # fmt: skip
    return (norm, names, *_by_setting(np.stack(values, axis=1), along))


def _selected(along: Along, selectors: Any, groups: str) -> dict[str, tuple[np.ndarray, int, np.ndarray, int]]:
    """Per selector: its exact zeros and units left per setting (the means over a setting's members)."""
    import jax

    from ..penalties import mask_tree
    from ..train.path_result import _alive_units, _units_of

    if not isinstance(selectors, Mapping) or not selectors:
        raise JregTypeError(f"plotting.path: selectors must be a non-empty mapping {{name: mask}}, got {selectors!r}")
    leaves = [np.asarray(a) for a in jax.tree.leaves(along.params)]
    one = jax.tree.map(lambda a: np.asarray(a)[0], along.params)  # masks read one member's shapes
    members, out = len(leaves[0]), {}
    for name, mask in selectors.items():
        picked = [a for a, on in zip(leaves, jax.tree.leaves(mask_tree(one, mask))) if on]
        if not picked:
            raise JregError(f"plotting.path: selectors[{name!r}] selects no leaf of params: check the mask")
        zeros = sum(np.sum(a.reshape(members, -1) == 0, axis=1) for a in picked)
        ranked = [a for a in picked if a.ndim >= 3]
        units = sum(_alive_units(a, groups) for a in ranked) if ranked else np.zeros(members)
        counts = np.stack([zeros, units], axis=1).astype(np.float64)
        mean = _by_setting(counts, along)[0]
        size = int(sum(a[0].size for a in picked))
        out[str(name)] = (mean[:, 0], size, mean[:, 1], int(sum(_units_of(a, groups) for a in ranked)))
    return out


def _by_setting(values: np.ndarray, along: Along) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(members, C)`` values as their mean, minimum and maximum per setting, ``(S, C)`` each."""
    mean, low, high = (np.full((len(along.x), values.shape[1]), np.nan) for _ in range(3))
    for s in range(len(along.x)):
        rows = values[along.setting_of == s]
        if len(rows):
            mean[s], low[s], high[s] = rows.mean(axis=0), rows.min(axis=0), rows.max(axis=0)
    return mean, low, high
