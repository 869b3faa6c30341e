"""The host loop shared by :func:`jreg.fit` and :func:`jreg.sweep`: epochs, then hooks in a fixed order.

Each epoch is one call of the compiled program (training, monitoring and the
finiteness check); its figures come back to the host once. Then the hooks run
in the order the front end lists them; ``fit``'s order is: divergence guard
(raises before anything is recorded), learning-rate scale, record, progress
line, user callback, trackers (:mod:`jreg.writers`: the values already on the
host, no further transfer), early stopping, checkpoint (last: it persists what
the others changed). A hook reads and changes the :class:`Run` record; setting
``run.stop`` ends the loop after the epoch's hooks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from .. import _signature
from .history import History
from .monitor import Monitor
from .state import TrainState


@dataclasses.dataclass
class Run:
    """The host side of a run between epochs: what the hooks read and change."""

    state: TrainState  # on the device (stacked along a leading model axis in a sweep)
    alive: Any  # a sweep's per-model flags (device), None for fit
    epochs: int
    history: History
    epoch: int = -1  # the epoch just finished, 0-based
    values: dict[str, Any] = dataclasses.field(default_factory=dict)  # its figures on the host
    ok: Any = True  # its finiteness flag(s) on the host
    stop: bool = False


Hook = Callable[[Run], None]
#: ``program(state, alive, epoch) -> (state, alive, metrics, ok)``
Program = Callable[[TrainState, Any, int], tuple[TrainState, Any, dict, Any]]


def run_epochs(program: Program, run: Run, start: int, hooks: Sequence[Hook], convert: Callable = float) -> Run:
    """Epochs ``start .. run.epochs - 1``, each followed by ``hooks`` in order."""
    for epoch in range(start, run.epochs):
        run.epoch = epoch
        run.state, run.alive, metrics, ok = program(run.state, run.alive, epoch)
        metrics, run.ok = jax.device_get((metrics, ok))
        run.values = {k: convert(v) for k, v in metrics.items()}
        for hook in hooks:
            hook(run)
        if run.stop:
            break
    return run


def record(run: Run) -> None:
    """Append the epoch's figures to the history."""
    run.history.append(run.values, run.epoch + 1)


def _format(value: Any) -> str:
    arr = np.asarray(value)
    return f"{float(arr):.4f}" if arr.ndim == 0 else "[" + ", ".join(f"{v:.4f}" for v in arr.ravel()) + "]"


def progress(monitor: Monitor) -> Hook:
    """Print one line per epoch: ``Epoch 3/30: training cost ..., evaluation accuracy ...``."""

    def hook(run: Run) -> None:
        shown = [f"{k.replace('_', ' ')} {_format(run.values[k])}" for k in monitor.shown(run.values)]
        print(f"Epoch {run.epoch + 1}/{run.epochs}: " + (", ".join(shown) or "trained"), flush=True)

    return hook


def user_callback(callback: Callable[..., Any]) -> Hook:
    """``callback(epoch, metrics)``, plus ``params=`` / ``model_state=`` when it names them."""

    def hook(run: Run) -> None:
        _signature.call(callback, run.epoch, run.values, params=run.state.params, model_state=run.state.model_state)

    return hook
