"""jreg.plotting: figures (matplotlib, headless), returned or written atomically as PNG.

* :func:`plot_histories` / :func:`render_histories`: training histories, one panel per series, one line per
  run (:mod:`jreg.plotting.histories`);
* :func:`path`: a regularization path or a cross-validation along its strength, glmnet-style (the metric with
  its error bars and the chosen strengths, the weight norms, the exact zeros and units left;
  :mod:`jreg.plotting.selection`);
* :func:`sweep`: a heat map of a sweep over a 2-D grid, the best metric per cell (:mod:`jreg.plotting.heatmap`).
"""

from __future__ import annotations

from .heatmap import sweep as sweep
from .histories import MAX_LEGEND as MAX_LEGEND
from .histories import TITLES as TITLES
from .histories import _is_history as _is_history
from .histories import default_series as default_series
from .histories import plot_histories as plot_histories
from .histories import render_histories as render_histories
from .selection import path as path

__all__ = ["default_series", "path", "plot_histories", "render_histories", "sweep"]
