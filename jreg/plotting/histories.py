"""Plots of training histories (matplotlib, headless), written atomically as PNG: one panel per series, one
line per run (per member for K models)."""

from __future__ import annotations

import io as _io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import io

TITLES = {
    "training_cost": "Cost on the training data",
    "evaluation_cost": "Cost on the test data",
    "training_accuracy": "Accuracy on the training data",
    "evaluation_accuracy": "Accuracy on the test data",
    "epoch_loss": "Mean mini-batch objective",
}


def panel_title(name: str, evaluation_data: str = "test") -> str:
    """A series' panel title: :data:`TITLES`' (the evaluation series' naming ``evaluation_data``: "Accuracy on the
    validation data"), else the name with spaces."""
    title = TITLES.get(name, name.replace("_", " "))
    return title.replace("the test data", f"the {evaluation_data} data") if name.startswith("evaluation_") else title


#: a panel with more lines than this, K models' among them, has no legend: the members' colours run along a
#: colour map (dark to light), which a note says
MAX_LEGEND = 12


def default_series(runs: Mapping[str, Any]) -> tuple[str, ...]:
    """The series drawn when none are named: what the runs have of the evaluation series (accuracy, cost, then
    each other metric), each followed by its training-set counterpart when measured (``monitor=NETWORK2``), then
    ``epoch_loss``. A default :func:`jreg.fit` history gives evaluation accuracy, evaluation cost and the running
    loss; one without held-out data, the running loss."""
    have = {name for history in runs.values() for name in history.keys()}
    metrics = sorted(n.removeprefix("evaluation_") for n in have if n.startswith("evaluation_"))
    metrics = ["accuracy", "cost", *(m for m in metrics if m not in ("accuracy", "cost"))]
    chosen = [f"{side}_{m}" for m in metrics for side in ("evaluation", "training") if f"{side}_{m}" in have]
    return (*chosen, *(["epoch_loss"] if "epoch_loss" in have else []))


def plot_histories(
    runs: Any,
    path: str | os.PathLike[str],
    *,
    series: Sequence[str] | None = None,
    title: str | None = None,
    percent: bool = True,
    evaluation_data: str = "test",
) -> Path:
    """One panel per series (up to three in a row, else two columns), one line per run; saved as a PNG.

    Args:
        runs: ``{label: history}``, a history being a :class:`jreg.History` (of one model, or of K: one line
            per member) or any mapping from series name to per-epoch values (a history's ``to_dict()``); or
            one :class:`jreg.History` alone.
        path: the PNG to write (atomically).
        series: which series to draw, one panel each; a run without a series
            is left out of that panel (at least one run must have it). Default:
            :func:`default_series`, what the histories have of the evaluation
            series, their training-set counterparts and ``epoch_loss``.
        title: a title over the figure.
        percent: draw accuracies in percent.
        evaluation_data: what the evaluation series were measured on, as their panel titles name it
            ("Accuracy on the test data"; ``"validation"`` for a validation set).
    """
    data = render_histories(runs, series=series, title=title, percent=percent, evaluation_data=evaluation_data)
    return io.write_bytes(path, data)


def render_histories(
    runs: Any,
    *,
    series: Sequence[str] | None = None,
    title: str | None = None,
    percent: bool = True,
    evaluation_data: str = "test",
) -> bytes:
    """The PNG :func:`plot_histories` writes, as bytes (for a caller that publishes it its own way)."""
    import numpy as np

    from .._errors import JregError

    if not isinstance(evaluation_data, str) or not evaluation_data.strip():
        raise JregError(
            f"plot: evaluation_data must name the held-out data (e.g. 'test' or 'validation'), got {evaluation_data!r}"
        )

    if _is_history(runs):  # one jreg.History, unlabelled
        runs = {"": runs}
    if not isinstance(runs, Mapping) or not runs:
        raise JregError(f"plot: runs must be a jreg.History or a non-empty {{label: history}} mapping, got {runs!r}")
    have = sorted({k for h in runs.values() for k in h.keys()})
    if series is None:
        series = default_series(runs)
        if not series:
            raise JregError(f"plot: none of the runs has a series to draw by default (they have {have}); "
                            "pass series=[...]")  # fmt: skip
    series = [series] if isinstance(series, str) else list(series)
    for name in series:
        if not any(name in history for history in runs.values()):
            hint = ""
            if name.startswith("training_"):
                hint = "; the training-set series are measured only when asked (monitor=jreg.train.NETWORK2)"
            raise JregError(f"plot: series {name!r} is in none of the runs; they have {have}{hint}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = len(series) if len(series) <= 3 else 2
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.ravel()[len(series) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), series):
        scale = 100.0 if percent and name.endswith("accuracy") else 1.0
        lines, members, singles = 0, 0, []
        for label, history in runs.items():
            if name not in history:  # e.g. a learning-rate scale only some runs have
                continue
            values = np.asarray(history[name], np.float64)
            # a jreg.History knows the epoch of each value (Evaluation(every=k) measures every k epochs)
            epochs = history.epochs(name) if callable(getattr(history, "epochs", None)) else None
            epochs = list(range(1, values.shape[-1] + 1) if epochs is None else epochs)
            if values.ndim == 1:
                singles += ax.plot(epochs, scale * values, label=label or None, linewidth=1.2)
                lines += 1
                continue
            colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(values)))
            for i, (row, colour) in enumerate(zip(values, colours)):  # K models: one line per member
                ax.plot(epochs, scale * row, color=colour, label=f"{label}: member {i}" if label else f"member {i}",
                        linewidth=1.0)  # fmt: skip
            lines, members = lines + len(values), max(members, len(values))
        ax.set_title(panel_title(name, evaluation_data))
        ax.set_xlabel("epoch")
        ax.set_ylabel("%" if percent and name.endswith("accuracy") else "")
        ax.grid(alpha=0.3)
        if members and lines > MAX_LEGEND:  # too many members to name: say how the colours run
            ax.text(0.99, 0.01, f"members 0 to {members - 1}: dark to light", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize="small", alpha=0.8)  # fmt: skip
            if any(line.get_label() and not line.get_label().startswith("_") for line in singles):
                ax.legend(handles=singles, fontsize="small")  # the one-model runs beside them
        elif ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize="small" if members else None)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _is_history(runs: Any) -> bool:
    """A :class:`jreg.History` (not a ``{label: history}`` mapping), told without importing JAX."""
    return hasattr(runs, "series") and callable(getattr(runs, "epochs", None))
