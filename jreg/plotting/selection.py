r"""glmnet-style figures along a penalty's strength: :func:`path` for a :func:`jreg.regularization_path` result
or a cross-validation result (:func:`jreg.cross_validate`).

One row of panels on a shared strength axis: log-scaled when the strengths are positive and span more than
10x (``symlog`` when a 0 is among them), strongest on the left by default (``decreasing=True``: the way a path
runs from ``λ_max`` down, as glmnet's coefficient plots and LassoNet's do; ``decreasing=False`` turns it).

* ``"metric"``: the monitored series per strength. For a cross-validation, the mean over the folds with one
  standard error bars (at each member's stopping epoch when the result has it, else the last measurement),
  the best setting (``λ_min``) and the one-standard-error setting (``λ_1se``) as vertical lines, and the
  1-SE threshold (the best mean plus, or for an accuracy minus, its standard error) as a dotted horizontal
  line, as ``plot.cv.glmnet``. For a path: each strength's last measurement, the best one marked. Along the
  top (glmnet's axis of non-zero coefficients): the first selector's non-zero weights, when there are
  selectors.
* ``"norms"``: the weight norm of each weight layer (``sqrt(Σ w²)``, or ``Σ |w|`` with ``norm="l1"``); for a
  cross-validation the mean over the folds, with the folds' range shaded.
* ``"selected"``: per selector, the share of its weights that are exactly 0 (solid, left axis) and the units
  with a non-zero weight (dashed, right axis): a path's own selectors, or ``selectors=`` computed from the
  result's params.

A cross-validation result is read by its attributes (:mod:`jreg.plotting.along` lists them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import JregError, JregTypeError
from .._signature import checked
from . import figures
from .along import Along, panel_data, read, restricted

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANELS = ("metric", "norms", "selected")
#: the colours of the chosen strengths' vertical lines, in the order they are drawn
CHOSEN_COLOURS = ("tab:red", "tab:purple", "tab:gray")


@checked("plotting.path")
def path(
    result: Any,
    file: str | os.PathLike[str] | None = None,
    *,
    panels: Sequence[str] | None = None,
    monitor: str | None = None,
    selectors: Mapping[str, Any] | None = None,
    groups: str = "columns",
    norm: str = "l2",
    where: Mapping[str, Any] | None = None,
    decreasing: bool = True,
    percent: bool = True,
    title: str | None = None,
) -> Figure:
    r"""glmnet-style panels of a regularization path or a cross-validation along its strength (module docstring).

    Args:
        result: what :func:`jreg.regularization_path` or :func:`jreg.cross_validate` returned.
        file: a PNG to write (atomically); none is written when left out.
        panels: any of ``"metric"``, ``"norms"``, ``"selected"``, in the order to draw them. Default: all
            three for a path, ``"metric"`` and ``"norms"`` for a cross-validation (and ``"selected"`` with
            ``selectors=``); ``"metric"`` alone for a result without params, or a cross-validation over a
            grid without ``where=``.
        monitor: a path's series to draw (default: the first measured of evaluation accuracy, evaluation
            cost, ``epoch_loss``, training cost). A cross-validation holds its own monitor's mean only.
        selectors: ``{name: mask}`` (masks as penalties take them, e.g. ``{"first layer": "0/w"}``) whose
            exact zeros and units left ``"selected"`` draws, computed from the result's params; default: a
            path's own selectors.
        groups: which units ``selectors`` count: ``"columns"`` (output units) or ``"rows"``.
        norm: ``"l2"`` (``sqrt(Σ w²)``) or ``"l1"`` (``Σ |w|``) for the ``"norms"`` panel.
        where: ``{hyperparameter: value}``: only the cross-validation settings with these values (for a
            grid over the strength and something else, whose ``"norms"`` and ``"selected"`` panels draw one
            slice); without it ``"metric"`` draws one curve per value of the others.
        decreasing: the strongest strength on the left (default) or, with False, on the right.
        percent: accuracies in percent.
        title: a title over the figure.

    Returns:
        The matplotlib ``Figure`` (made without pyplot: display it in a notebook, save it with
        ``fig.savefig``; nothing is left open).

    Example::

        path = jreg.regularization_path(build, params, train, epochs=10, batch_size=10, key=key,
                                        evaluation=test, selectors={"first layer": "0/w"}, groups="rows")
        jreg.plotting.path(path, "path.png")
    """
    figures.check_file(file, "plotting.path")
    along = read(result, monitor)
    along = restricted(along, where)
    panels = _panels(panels, along, selectors)
    if norm not in ("l2", "l1"):
        raise JregError(f"plotting.path: norm must be 'l2' or 'l1', got {norm!r}")
    if groups not in ("columns", "rows"):
        raise JregError(f"plotting.path: groups must be 'columns' or 'rows', got {groups!r}")
    data = {p: panel_data(p, along, selectors, groups, norm) for p in panels}  # every check before drawing
    fig, axes = figures.new_figure(1, len(panels), 4.8, 3.7)
    for ax, panel in zip(axes[0], panels):
        DRAW[panel](ax, along, data[panel], percent)
        _axis(ax, along, decreasing)
    if title:
        fig.suptitle(title)
    return figures.finish(fig, file)


def _panels(panels: Sequence[str] | None, along: Along, selectors: Any) -> list[str]:
    if panels is None:  # what this result can draw
        if along.params is None or along.setting_of is None or len(along.groups) > 1:
            return ["metric"]
        has_selected = along.selected is not None or selectors is not None
        return ["metric", "norms", *(["selected"] if has_selected else [])]
    panels = [panels] if isinstance(panels, str) else panels
    if not isinstance(panels, Sequence) or not panels:
        raise JregTypeError(f"plotting.path: panels must be a non-empty sequence of {PANELS}, got {panels!r}")
    bad = [p for p in panels if p not in PANELS]
    if bad:
        raise JregError(f"plotting.path: panels {bad} are not among {PANELS}")
    if len(set(panels)) != len(panels):
        raise JregError(f"plotting.path: panels lists a panel twice: {list(panels)}")
    return list(panels)


# -- drawing ---------------------------------------------------------------------------------------------


def _draw_metric(ax: Any, along: Along, selected: Any, percent: bool) -> None:
    scale = 100.0 if percent and figures.is_accuracy(along.monitor) else 1.0
    for j, (label, order) in enumerate(_ordered(along)):
        x, y = along.x[order], scale * along.metric[order]
        if along.error is None:
            ax.plot(
                x,
                y,
                "o-",
                ms=3.5,
                lw=1.2,
                color=f"C{j}",
                label=label or along.monitor.replace("_", " "),
                gid=f"metric:{label}",
            )
            continue
        ax.errorbar(x, y, yerr=scale * along.error[order], fmt="o-", ms=3.5, lw=1.1, capsize=2.5, elinewidth=0.9,
                    ecolor="0.6", color=f"C{j}", label=label or f"mean ± 1 SE, {along.folds} folds",
                    gid=f"metric:{label}")  # fmt: skip
    visible = _visible(along)
    if along.error is not None and along.chosen and along.chosen[0][1] in visible:
        i = along.chosen[0][1]
        level = along.metric[i] - along.error[i] if along.maximize else along.metric[i] + along.error[i]
        sign = "−" if along.maximize else "+"
        ax.axhline(scale * level, ls=":", lw=0.9, color="0.35", label=f"best mean {sign} 1 SE", gid="one-se-threshold")
    _mark(ax, along, labelled=True)
    caption = _nonzero_axis(ax, along, selected)
    missing = int(np.sum(~np.isfinite(along.metric[sorted(visible)])))
    if missing:
        ax.text(0.01, 0.01, f"{missing} without a finite value (diverged)", transform=ax.transAxes,
                fontsize="x-small", color="tab:red")  # fmt: skip
    lines = [along.monitor.replace("_", " "), along.where, *([caption] if caption else [])]
    ax.set_title("\n".join(lines), fontsize="medium", pad=14 if caption else 6)
    ax.set_ylabel(along.monitor.replace("_", " ") + (" (%)" if scale == 100.0 else ""))
    ax.legend(fontsize="x-small")


def _draw_norms(ax: Any, along: Along, data: Any, percent: bool) -> None:
    norm, names, mean, low, high = data
    ((_, order),) = _ordered(along)
    x = along.x[order]
    for j, name in enumerate(names):
        ax.plot(x, mean[order, j], "o-", ms=3, lw=1.2, color=f"C{j % 10}", label=name, gid=f"norm:{name}")
        if along.folds:
            ax.fill_between(x, low[order, j], high[order, j], color=f"C{j % 10}", alpha=0.15, lw=0)
    _mark(ax, along, labelled=False)
    spread = "\nmean over the folds, their range shaded" if along.folds else ""
    ax.set_title(f"weight norm per layer{spread}", fontsize="medium")
    ax.set_ylabel("sqrt(Σ w²)" if norm == "l2" else "Σ |w|")
    if len(names) <= 12:
        ax.legend(fontsize="x-small")


def _draw_selected(ax: Any, along: Along, data: Any, percent: bool) -> None:
    ((_, order),) = _ordered(along)
    x = along.x[order]
    right = ax.twinx() if any(count for *_, count in data.values()) else None
    for j, (name, (zeros, size, units, count)) in enumerate(data.items()):
        ax.plot(x, 100.0 * zeros[order] / max(size, 1), "o-", ms=3, lw=1.2, color=f"C{j % 10}",
                label=f"{name}: weights = 0 (of {size:,})", gid=f"zeros:{name}")  # fmt: skip
        if count:
            right.plot(x, units[order], "s--", ms=3, lw=1.0, color=f"C{j % 10}",
                       label=f"{name}: units left (of {count:,})", gid=f"units:{name}")  # fmt: skip
    _mark(ax, along, labelled=False)
    ax.set_ylim(-3, 103)
    ax.set_ylabel("weights exactly 0 (%)")
    ax.set_title("exact zeros and units left per selector", fontsize="medium")
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        from matplotlib.ticker import MaxNLocator

        right.set_ylim(0, 1.03 * max(count for *_, count in data.values()))
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_ylabel("units left (dashed)")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)


def _nonzero_axis(ax: Any, along: Along, selected: Any) -> str:
    """glmnet's top axis: the first selector's non-zero weights over (up to 8 of) the strengths; a caption."""
    if not selected:
        return ""
    from matplotlib.transforms import blended_transform_factory

    name, (zeros, size, _, _) = next(iter(selected.items()))
    ((_, order),) = _ordered(along)
    ticks = order[np.unique(np.linspace(0, len(order) - 1, min(8, len(order))).round().astype(int))]
    above = blended_transform_factory(ax.transData, ax.transAxes)  # x at the strength, y just over the axes
    for i in ticks:
        if np.isfinite(zeros[i]):
            ax.text(along.x[i], 1.01, f"{size - zeros[i]:.0f}", transform=above, ha="center", va="bottom",
                    fontsize="x-small", gid="nonzero")  # fmt: skip
    return f"non-zero weights of {name!r} along the top"


DRAW = {"metric": _draw_metric, "norms": _draw_norms, "selected": _draw_selected}


def _ordered(along: Along) -> list[tuple[str, np.ndarray]]:
    """Each curve's settings in increasing strength."""
    return [(label, idx[np.argsort(along.x[idx], kind="stable")]) for label, idx in along.groups]


def _visible(along: Along) -> set[int]:
    return {int(i) for _, idx in along.groups for i in idx}


def _mark(ax: Any, along: Along, labelled: bool) -> None:
    """The chosen strengths as vertical dashed lines (named in the legend of the metric panel)."""
    visible = _visible(along)
    for k, (what, i) in enumerate(along.chosen):
        if i in visible:
            group = next(g for g, idx in along.groups if i in idx) if len(along.groups) > 1 else ""
            label = f"{what} = {along.x[i]:.3g}" + (f" ({group})" if group else "") if labelled else "_nolegend_"
            ax.axvline(along.x[i], ls="--", lw=1.0, color=CHOSEN_COLOURS[k % 3], label=label, gid=f"chosen:{what}")


def _axis(ax: Any, along: Along, decreasing: bool) -> None:
    x = along.x[sorted(_visible(along))]
    if figures.set_scale(ax, "x", x) == "symlog":  # 0 at the edge, then the decades: no negative side
        top = float(np.max(x))
        ax.set_xlim(-0.2 * float(np.min(x[x > 0])), top * 10**0.15)
    if decreasing:
        ax.invert_xaxis()
    ax.set_xlabel(f"{along.name} (← stronger)" if decreasing else f"{along.name} (stronger →)")
    ax.grid(alpha=0.3)
