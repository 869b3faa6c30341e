r"""A heat map of a sweep over a 2-D grid (:func:`sweep`): each member's best measurement of a series (its best
epoch, :meth:`jreg.History.best`) in the cell of its two hyperparameters.

The cells sit at the hyperparameters' values: an axis whose values are positive and span more than 10x is
log-scaled (``symlog`` when a 0 is among them), and a cell's edges are halfway between neighbouring values
(geometrically on a log axis). Each cell is annotated with its value (accuracies in percent; a grid of more
than :data:`MAX_ANNOTATED` cells is not); the best cell is outlined and named in the title. Brighter is
better: the colour map runs dark to bright towards higher accuracy and towards lower cost. A member without
a finite measurement (it diverged) is a grey cell marked ``NaN``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import JregError, JregTypeError
from .._signature import checked
from . import figures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: a grid of more cells than this is drawn without the values written in the cells (the colour bar reads them)
MAX_ANNOTATED = 400


@checked("plotting.sweep")
def sweep(
    result: Any,
    x: str = "lmbda",
    y: str = "eta",
    *,
    monitor: str | None = None,
    file: str | os.PathLike[str] | None = None,
    percent: bool = True,
    title: str | None = None,
) -> Figure:
    """A heat map of a 2-D grid sweep's best ``monitor`` per ``(x, y)`` cell (module docstring).

    Args:
        result: what :func:`jreg.sweep` returned for ``hparams=jreg.grid(x=[...], y=[...])``: every ``(x, y)``
            pair exactly once (other hyperparameters, if any, held constant).
        x, y: the hyperparameters on the horizontal and vertical axes.
        monitor: the series (default: what :meth:`jreg.History.best` watches by default: early stopping's
            series, else the first measured of evaluation accuracy, evaluation cost, ``epoch_loss``,
            training cost).
        file: a PNG to write (atomically); none is written when left out.
        percent: accuracies in percent.
        title: a title over the figure (default: what is drawn and the best cell).

    Returns:
        The matplotlib ``Figure`` (made without pyplot).

    Example::

        result = jreg.sweep(build, params, train, hparams=jreg.grid(lmbda=[0.1, 1, 10], eta=[0.1, 0.5, 2.5]),
                            epochs=10, batch_size=10, key=key, evaluation=test)
        jreg.plotting.sweep(result, x="lmbda", y="eta", file="grid.png")
    """
    figures.check_file(file, "plotting.sweep")
    xs, ys, best = _read(result, x, y, monitor)
    columns, rows, cell = _cells(xs, ys, x, y, result.hparams)
    values = np.full((len(rows), len(columns)), np.nan)
    values[cell[:, 1], cell[:, 0]] = best.value
    scale = 100.0 if percent and figures.is_accuracy(best.monitor) else 1.0
    fig, axes = figures.new_figure(1, 1, *_size(len(columns), len(rows)))
    ax = axes[0, 0]
    mesh = _mesh(ax, columns, rows, scale * values, best.maximize)
    unit = " (%)" if scale == 100.0 else ""
    fig.colorbar(mesh, ax=ax, label=f"best {best.monitor.replace('_', ' ')}{unit}")
    if values.size <= MAX_ANNOTATED:
        _annotate(ax, mesh, columns, rows, scale * values, ".1f" if scale == 100.0 else ".4g")
    named = ""
    if best.member is not None:
        i, j = cell[best.member]
        _outline(ax, columns, rows, i, j)
        shown = f"{scale * best.value[best.member]:.4g}" + ("%" if scale == 100.0 else "")
        named = f"best: {x} = {columns[i]:.3g}, {y} = {rows[j]:.3g}: {shown}"
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    drawn = title or f"best {best.monitor.replace('_', ' ')} per cell (over the epochs)"
    ax.set_title(f"{drawn}\n{named}" if named else drawn, fontsize="medium")
    return figures.finish(fig, file)


def _read(result: Any, x: Any, y: Any, monitor: str | None) -> tuple[np.ndarray, np.ndarray, Any]:
    """The members' x and y values and their :meth:`History.best`, every check before any drawing."""
    history, hparams = getattr(result, "history", None), getattr(result, "hparams", None)
    if hasattr(result, "strengths") or hasattr(result, "one_se_index"):
        raise JregTypeError(f"plotting.sweep: this is a regularization path's or a cross-validation's result "
                            f"({type(result).__name__}); draw it along its strength with "
                            "jreg.plotting.path(result)")  # fmt: skip
    if history is None or not hasattr(history, "best"):
        raise JregTypeError(f"plotting.sweep: result must be what jreg.sweep returned, got {type(result).__name__}")
    if getattr(history, "models", None) is None or hparams is None:
        raise JregError("plotting.sweep: this result holds one model; the heat map draws a sweep over a 2-D grid "
                        "(jreg.sweep(..., hparams=jreg.grid(lmbda=[...], eta=[...])))")  # fmt: skip
    for name, which in ((x, "x"), (y, "y")):
        if not isinstance(name, str):
            raise JregTypeError(f"plotting.sweep: {which} must be the name of a hyperparameter (str), got {name!r}")
        if name not in hparams:
            raise JregError(f"plotting.sweep: {which}={name!r} is not a hyperparameter of this sweep; it has "
                            f"{sorted(hparams)}")  # fmt: skip
    if x == y:
        raise JregError(f"plotting.sweep: x and y are both {x!r}; give two different hyperparameters")
    if monitor is not None and monitor not in history:
        raise JregError(
            f"plotting.sweep: monitor={monitor!r} was not measured; this sweep has {sorted(history.keys())}"
        )
    out = []
    for name in (x, y):
        try:
            values = np.asarray(hparams[name], np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise JregTypeError(f"plotting.sweep: {name!r} must hold numbers, got {hparams[name]!r}") from exc
        if values.size != history.models:
            raise JregError(f"plotting.sweep: hparams[{name!r}] holds {values.size} values for {history.models} "
                            "members; the heat map needs one value per member (a PBT result's hyperparameters "
                            "change over the epochs)")  # fmt: skip
        if not np.all(np.isfinite(values)):
            raise JregError(f"plotting.sweep: {name!r} has a value that is not finite: {values.tolist()}")
        out.append(values)
    return out[0], out[1], history.best(monitor)


def _cells(xs: np.ndarray, ys: np.ndarray, x: str, y: str, hparams: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid's column and row values and each member's ``(column, row)``: every cell exactly once."""
    columns, rows = np.unique(xs), np.unique(ys)
    cell = np.stack([np.searchsorted(columns, xs), np.searchsorted(rows, ys)], axis=1)
    flat = cell[:, 1] * len(columns) + cell[:, 0]
    seen: dict[int, int] = {}
    for member, index in enumerate(flat.tolist()):
        if index in seen:
            first = seen[index]
            differ = sorted(
                k for k, v in hparams.items() if k not in (x, y) and np.asarray(v)[first] != np.asarray(v)[member]
            )
            why = f" (they differ in {differ})" if differ else ""
            raise JregError(f"plotting.sweep: not a 2-D grid over ({x}, {y}): members {first} and {member} are both "
                            f"in the cell {x}={xs[member]:g}, {y}={ys[member]:g}{why}; the heat map draws one member "
                            f"per cell: sweep over jreg.grid({x}=[...], {y}=[...]) with the others held "
                            "constant")  # fmt: skip
        seen[index] = member
    missing = [(c, r) for r in range(len(rows)) for c in range(len(columns)) if r * len(columns) + c not in seen]
    if missing:
        shown = ", ".join(f"({x}={columns[c]:g}, {y}={rows[r]:g})" for c, r in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise JregError(f"plotting.sweep: not a full 2-D grid over ({x}, {y}): {len(missing)} of the "
                        f"{len(columns) * len(rows)} cells have no member: {shown}{more}; sweep over "
                        f"jreg.grid({x}=[...], {y}=[...]), every pair")  # fmt: skip
    return columns, rows, cell


def _edges(ax: Any, axis: str, values: np.ndarray) -> np.ndarray:
    """Cell edges halfway between neighbouring values in the axis's own scale (geometric on a log axis), the
    outer ones as far out as the inner ones are in (half a unit of the scale around a lone value)."""
    transform = (ax.xaxis if axis == "x" else ax.yaxis).get_transform()
    t = transform.transform(np.asarray(values, np.float64).reshape(-1, 1)).ravel()
    if len(t) == 1:
        edges = np.asarray([t[0] - 0.5, t[0] + 0.5])
    else:
        mid = (t[1:] + t[:-1]) / 2
        edges = np.concatenate([[2 * t[0] - mid[0]], mid, [2 * t[-1] - mid[-1]]])
    return transform.inverted().transform(edges.reshape(-1, 1)).ravel()


def _mesh(ax: Any, columns: np.ndarray, rows: np.ndarray, values: np.ndarray, maximize: bool) -> Any:
    import matplotlib

    cmap = matplotlib.colormaps["viridis" if maximize else "viridis_r"].with_extremes(bad="0.8")
    figures.set_scale(ax, "x", columns)
    figures.set_scale(ax, "y", rows)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    mesh = ax.pcolormesh(_edges(ax, "x", columns), _edges(ax, "y", rows), np.ma.masked_invalid(values), cmap=cmap,
                         vmin=low, vmax=max(high, low + 1e-12), edgecolors="white", linewidth=0.5)  # fmt: skip
    ax.set_xticks(columns, _labels(columns), rotation=45 if len(columns) > 8 else 0)
    ax.set_yticks(rows, _labels(rows))
    ax.minorticks_off()
    return mesh


def _size(columns: int, rows: int) -> tuple[float, float]:
    """Inches: room for the values written in the cells (up to :data:`MAX_ANNOTATED` of them), at most 16 x 12."""
    wide, high = (0.75, 0.45) if columns * rows <= MAX_ANNOTATED else (0.3, 0.25)
    return min(16.0, max(5.6, 2.2 + wide * columns)), min(12.0, max(4.4, 1.6 + high * rows))


def _labels(values: np.ndarray) -> list[str]:
    """Each value to 3 significant digits; past 12 values, every k-th only (the first and the last among them)."""
    step = max(1, -(-len(values) // 12))
    return [f"{v:.3g}" if i % step == 0 or i == len(values) - 1 else "" for i, v in enumerate(values)]


def _annotate(ax: Any, mesh: Any, columns: np.ndarray, rows: np.ndarray, values: np.ndarray, fmt: str) -> None:
    """Each cell's value, in black on a bright cell and white on a dark one."""
    for r, row in enumerate(values):
        for c, v in enumerate(row):
            if not np.isfinite(v):
                ax.text(columns[c], rows[r], "NaN", ha="center", va="center", fontsize="small", color="0.2")
                continue
            red, green, blue, _ = mesh.cmap(mesh.norm(v))
            ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            ax.text(columns[c], rows[r], f"{v:{fmt}}", ha="center", va="center", fontsize="small", color=ink)


def _outline(ax: Any, columns: np.ndarray, rows: np.ndarray, i: int, j: int) -> None:
    """A red frame around the best cell."""
    from matplotlib.patches import Rectangle

    xe, ye = _edges(ax, "x", columns), _edges(ax, "y", rows)
    ax.add_patch(Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], fill=False, edgecolor="red",
                           linewidth=2.5, gid="best-cell"))  # fmt: skip
