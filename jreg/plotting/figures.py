"""What the figures of :func:`jreg.plotting.path` and :func:`jreg.plotting.sweep` share: a matplotlib
``Figure`` made outside pyplot (no global figure list to leak into, no GUI backend chosen, safe in threads),
its PNG bytes, the atomic write, and the axis scale a hyperparameter's values call for."""

from __future__ import annotations

import io as _io
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import io
from .._errors import JregTypeError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: the resolution of every PNG jreg writes (as :func:`jreg.plotting.plot_histories`)
DPI = 110


def new_figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows x cols`` panels (``width x height`` inches each) and its axes, a 2-D array."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, np.asarray(fig.subplots(rows, cols, squeeze=False))


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def check_file(file: Any, where: str) -> None:
    """``file`` is a path to write a PNG to, or None (checked before anything is drawn)."""
    if file is not None and not isinstance(file, (str, os.PathLike)):
        raise JregTypeError(f"{where}: file must be a path (str or os.PathLike) to write the PNG to, or None, "
                            f"got {type(file).__name__}")  # fmt: skip


def finish(fig: Figure, file: str | os.PathLike[str] | None) -> Figure:
    """Write the figure to ``file`` as a PNG (atomically) when given; return the figure."""
    if file is not None:
        io.write_bytes(file, png_bytes(fig))
    return fig


def scale_of(values: np.ndarray) -> str:
    """``"log"`` for finite positive values spanning more than 10x, ``"symlog"`` for such positive values with
    zeros beside them (0 drawn at the left of the decades, a linear stretch below the smallest positive
    value), else ``"linear"``."""
    values = np.asarray(values, np.float64)
    positive = values[values > 0]
    if not np.all(np.isfinite(values)) or np.any(values < 0) or positive.size < 2:
        return "linear"
    if positive.max() / positive.min() <= 10:
        return "linear"
    return "log" if positive.size == values.size else "symlog"


def set_scale(ax: Any, axis: str, values: np.ndarray) -> str:
    """Give ``ax``'s ``axis`` (``"x"`` or ``"y"``) the scale :func:`scale_of` picks; the scale."""
    scale = scale_of(values)
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    if scale == "symlog":
        smallest = float(np.min(np.asarray(values)[np.asarray(values) > 0]))
        setter("symlog", linthresh=smallest, linscale=0.5)
    else:
        setter(scale)
    return scale


def is_accuracy(monitor: str) -> bool:
    """Whether a series is an accuracy (drawn in percent)."""
    return "accuracy" in monitor
