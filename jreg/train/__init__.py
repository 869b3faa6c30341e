"""Training: one jitted step, one compiled epoch (``lax.scan``), and ``fit`` and ``sweep`` on one loop.

Regularization lives in the objective, never here: any optax
``GradientTransformation`` updates the params from ``jax.grad`` of the
regularized objective. Layout (each module imports only those above it)::

    state         TrainState: params, optimizer state, model state, step, lr scale
    inputs        data checks and sizes (any pytree of arrays sharing the example axis)
    plan          EpochPlan: shuffle, mini-batches, the partial-batch rule, per-step keys
    calls         how any objective is called (stateless, stateful, jreg.Objective)
    optimizer     optax's extra arguments (value=, grad=, value_fn=); schedule-free evaluation params
    step          gradient_fn, apply_fn, make_update, make_step
    epoch         run_epoch (lax.scan), make_epoch
    evaluate      evaluation in batches: cost, parts, metrics; accuracy, total_cost
    history       History (one model or K)
    guard         the finiteness check, DivergenceError, the step-by-step replay
    config        Evaluation, Checkpointing, DataParallel, ModelParallel, EMA, Guard
    validate      checks before any work: arguments, data, the objective on the data's shapes
    monitor       which series are measured, and measuring them
    stream        streamed epochs: Stream, chunks prefetched to the device, the compiled chunk scan
    setup         fit's and sweep's common preparation
    distributed_checkpoint  orbax folders for runs whose arrays span processes
    checkpoint_folder  a run's checkpoint folder: folder rules, Writer, Snapshot (a Result's checkpoint)
    resume        resuming from a file, a folder or a Result (bit-exact); best params
    mesh          data-parallel placement; a sweep's models across devices
    loop          the host loop and its hooks
    early_stopping  EarlyStopping in the loop: the rule of jreg.stopping for fit (1 model) and sweep (K)
    engine        the compiled epoch for one model or K
    fit, sweep    the front ends
    population    K models with a compiled transfer between epochs (paths, PBT)
    path, pbt     regularization paths; population-based training
    members       per-member data: index sets, keys, evaluation sets (folds, out of bag)
    cross_validate  k-fold cross-validation in one sweep (CVResult, the one-SE rule); ensemble
"""

from __future__ import annotations

from typing import Any

from .checkpoint_folder import CheckpointWriteError, FolderInUseError
from .config import EMA, Checkpointing, DataParallel, Evaluation, Guard, ModelParallel
from .cross_validate import cross_validate
from .cv_result import CVResult
from .engine import VECTORIZE
from .ensemble import Ensemble, ensemble
from .epoch import make_epoch
from .evaluate import accuracy, total_cost
from .fit import fit
from .guard import DivergenceError
from .history import Best, History, Records
from .history import sweep_history as _sweep_history
from .members import BOOTSTRAP_SALT, bootstrap_indices, member_keys
from .monitor import EPOCH_LOSS, NETWORK2
from .path import Path, regularization_path
from .pbt import PBTResult, pbt
from .plan import NOISE_SALT, PARTIAL_BATCH
from .result import Result
from .state import TrainState
from .step import make_step
from .stream import Stream
from .sweep import sweep

_NOISE_SALT = NOISE_SALT  # the name older code used
#: network2.py's four series and the running loss (more series come from metrics); the default
#: (``monitor=None``) is the running loss and the evaluation series, ``NETWORK2`` asks for network2.py's four
MONITORS = (*NETWORK2, EPOCH_LOSS)

__all__ = [
    "Checkpointing",
    "DataParallel",
    "DivergenceError",
    "CheckpointWriteError",
    "FolderInUseError",
    "EMA",
    "Evaluation",
    "Guard",
    "Best",
    "History",
    "Records",
    "MONITORS",
    "NETWORK2",
    "NOISE_SALT",
    "PARTIAL_BATCH",
    "Result",
    "TrainState",
    "VECTORIZE",
    "accuracy",
    "fit",
    "make_epoch",
    "make_step",
    "sweep",
    "total_cost",
    "ModelParallel",
    "Path",
    "PBTResult",
    "pbt",
    "regularization_path",
    "Stream",
    "BOOTSTRAP_SALT",
    "CVResult",
    "Ensemble",
    "bootstrap_indices",
    "cross_validate",
    "ensemble",
    "member_keys",
]


def __getattr__(name: str) -> Any:
    if name == "SweepHistory":  # deprecated for one release: jreg.History holds K models too
        return _sweep_history("jreg.train.")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
