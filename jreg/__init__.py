"""jreg: regularized neural networks as pure JAX functions.

``init``, ``apply``, ``loss`` and ``penalty`` are pure functions composed into
one objective; ``jax.grad`` differentiates it under ``jit``; optax updates.
"""

from __future__ import annotations

from . import (
    checkpoint,
    conventions,
    data,
    initializers,
    io,
    losses,
    metrics,
    optim,
    penalties,
    plotting,
    selectors,
    stochastic,
    stopping,
)
from ._errors import JregError, JregTypeError, JregWarning
from ._version import __version__
from .checkpoint import Checkpoint, CheckpointError, load, load_network2, save, save_network2
from .nn import Model, mlp
from .objective import Objective, objective
from .optim import decoupled_weight_decay, lambda_max, proximal
from .penalties import describe
from .stopping import EarlyStopping
from .train import (
    Checkpointing,
    DataParallel,
    DivergenceError,
    Evaluation,
    History,
    SweepHistory,
    TrainState,
    accuracy,
    fit,
    make_epoch,
    make_step,
    sweep,
    total_cost,
)

__all__ = [
    "__version__",
    "Checkpoint",
    "Checkpointing",
    "DataParallel",
    "Evaluation",
    "TrainState",
    "metrics",
    "train",
    "CheckpointError",
    "DivergenceError",
    "EarlyStopping",
    "checkpoint",
    "conventions",
    "decoupled_weight_decay",
    "describe",
    "selectors",
    "lambda_max",
    "optim",
    "proximal",
    "load",
    "load_network2",
    "save",
    "save_network2",
    "History",
    "JregError",
    "JregTypeError",
    "JregWarning",
    "Model",
    "Objective",
    "SweepHistory",
    "accuracy",
    "data",
    "fit",
    "initializers",
    "io",
    "losses",
    "make_epoch",
    "make_step",
    "mlp",
    "objective",
    "penalties",
    "plotting",
    "stochastic",
    "stopping",
    "sweep",
    "total_cost",
]
