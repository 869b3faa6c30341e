"""Trackers: TensorBoard, MLflow, JSON Lines and W&B runs written from the host loop, one run per member.

``writers=[...]`` on :func:`jreg.fit`, :func:`jreg.sweep`, :func:`jreg.regularization_path` and :func:`jreg.pbt`
takes writers in clu's ``MetricWriter`` shape (:class:`Writer`: ``write_scalars(step, scalars)``,
``write_hparams(hparams)``, ``flush()``, ``close()``). After each compiled epoch the host loop writes the
figures it already holds (the epoch's one device-to-host transfer: nothing more leaves the device), at step
``epoch`` (1-based):

* ``fit``: one run;
* ``sweep``: one run per member, named by its hyperparameters (``lmbda=0.1,eta=0.5``), which are recorded
  (TensorBoard's HParams plugin, MLflow params, W&B config); a member's run ends at its last real figure
  (a stopped or diverged member's NaN are not written);
* ``regularization_path``: one run per strength (``lmbda=0.01``), the other hyperparameters recorded;
* ``pbt``: one run per member slot (``member=3``), its initial hyperparameters recorded and the values it
  trained with in each epoch written as scalars (``hparams/lmbda``).

A writer with ``run(name, *, group, start)`` (:class:`MultiRunWriter`, every built-in) opens those runs; on a
plain writer (a clu ``MetricWriter``) jreg writes one run whose tags carry the member's name
(``lmbda=0.1/evaluation_accuracy``), and flushes it at the end without closing it (it is the caller's).
A resumed run appends to the runs it wrote before (found by jreg's run id, kept in checkpoints and results).
A writer that fails warns once (:class:`jreg.JregWarning`) and is dropped; training goes on unchanged.
:func:`write_runs` writes finished ``(runs, steps)`` series, e.g. cross-validation's folds and their mean;
:func:`write_history` a finished :class:`jreg.History` (a run trained without ``writers=``).
"""

from __future__ import annotations

from ._jsonl import JSONL
from ._mlflow import MLflow
from ._runs import (
    METHODS,
    MultiRunWriter,
    Runs,
    Writer,
    check_writers,
    member_hparams,
    member_names,
    write_history,
    write_runs,
)
from ._tensorboard import TensorBoard
from ._wandb import WandB

__all__ = [
    "JSONL",
    "METHODS",
    "MLflow",
    "MultiRunWriter",
    "Runs",
    "TensorBoard",
    "WandB",
    "Writer",
    "check_writers",
    "member_hparams",
    "member_names",
    "write_history",
    "write_runs",
]
