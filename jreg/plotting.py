"""Plots of training histories (matplotlib, headless), written atomically as PNG."""

from __future__ import annotations

import io as _io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import io

TITLES = {
    "training_cost": "Cost on the training data",
    "evaluation_cost": "Cost on the test data",
    "training_accuracy": "Accuracy on the training data",
    "evaluation_accuracy": "Accuracy on the test data",
    "epoch_loss": "Mean mini-batch objective",
}


def plot_histories(
    runs: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    series: Sequence[str] = ("evaluation_accuracy", "training_cost"),
    title: str | None = None,
    percent: bool = True,
) -> Path:
    """One panel per series (up to three in a row, else two columns), one line per run; saved as a PNG.

    Args:
        runs: ``{label: history}``, a history being any mapping from series
            name to per-epoch values (a :class:`jreg.History`, or its ``to_dict()``).
        path: the PNG to write (atomically).
        series: which series to draw, one panel each; a run without a series
            is left out of that panel (at least one run must have it).
        title: a title over the figure.
        percent: draw accuracies in percent.
    """
    return io.write_bytes(path, render_histories(runs, series=series, title=title, percent=percent))


def render_histories(
    runs: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    series: Sequence[str] = ("evaluation_accuracy", "training_cost"),
    title: str | None = None,
    percent: bool = True,
) -> bytes:
    """The PNG :func:`plot_histories` writes, as bytes (for a caller that publishes it its own way)."""
    from ._errors import JregError

    for name in series:
        if not any(name in history for history in runs.values()):
            raise JregError(
                f"series {name!r} is in none of the runs; they have {sorted({k for h in runs.values() for k in h})}"
            )
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = len(series) if len(series) <= 3 else 2
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.ravel()[len(series) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), series):
        for label, history in runs.items():
            if name not in history:  # e.g. a learning-rate scale only some runs have
                continue
            values = list(history[name])
            scale = 100.0 if percent and name.endswith("accuracy") else 1.0
            # a jreg.History knows the epoch of each value (Evaluation(every=k) measures every k epochs)
            epochs = history.epochs(name) if callable(getattr(history, "epochs", None)) else range(1, len(values) + 1)
            ax.plot(list(epochs), [scale * v for v in values], label=label, linewidth=1.2)
        ax.set_title(TITLES.get(name, name.replace("_", " ")))
        ax.set_xlabel("epoch")
        ax.set_ylabel("%" if percent and name.endswith("accuracy") else "")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
