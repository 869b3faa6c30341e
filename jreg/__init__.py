"""jreg: regularized neural networks as pure JAX functions.

``init``, ``apply``, ``loss`` and ``penalty`` are pure functions composed into
one objective; ``jax.grad`` differentiates it under ``jit``; optax updates.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._errors import JregError, JregTypeError, JregWarning
from ._version import __version__

if TYPE_CHECKING:  # what the names below are; at run time they load on first use (see __getattr__)
    from . import (
        checkpoint,
        conventions,
        data,
        frameworks,
        hparams,
        initializers,
        io,
        losses,
        metrics,
        optim,
        penalties,
        plotting,
        precision,
        selectors,
        stochastic,
        stopping,
        train,
        transforms,
        writers,
    )
    from .checkpoint import Checkpoint, CheckpointError, load, load_network2, save, save_network2
    from .hparams import choice, grid, loguniform, sample, uniform
    from .nn import Model, mlp
    from .objective import Objective, objective
    from .optim import decoupled_weight_decay, lambda_max, proximal, shrink_perturb, unit_norm
    from .penalties import describe
    from .precision import Policy, mixed_precision
    from .stopping import EarlyStopping
    from .train import (
        EMA,
        Checkpointing,
        CheckpointWriteError,
        CVResult,
        DataParallel,
        DivergenceError,
        Ensemble,
        Evaluation,
        FolderInUseError,
        Guard,
        History,
        ModelParallel,
        Path,
        PBTResult,
        Result,
        TrainState,
        accuracy,
        bootstrap_indices,
        cross_validate,
        ensemble,
        fit,
        make_epoch,
        make_step,
        member_keys,
        pbt,
        regularization_path,
        sweep,
        total_cost,
    )
    from .train.stream import Stream
    from .transforms import sam, with_cutmix, with_mixup

# ``import jreg`` imports neither JAX nor the submodules: each loads on first use, so the command line
# (``jreg demo``) checks its arguments and output folder in a fraction of a second, before JAX loads.
_SUBMODULES = frozenset(
    "checkpoint conventions data frameworks hparams initializers io losses metrics optim penalties plotting precision "
    "selectors stochastic stopping train transforms writers".split()
)
_FROM = {
    **dict.fromkeys(["Checkpoint", "CheckpointError", "load", "load_network2", "save", "save_network2"], "checkpoint"),
    **dict.fromkeys(["Model", "mlp"], "nn"),
    **dict.fromkeys(["Objective", "objective"], "objective"),
    **dict.fromkeys(["decoupled_weight_decay", "lambda_max", "proximal", "shrink_perturb", "unit_norm"], "optim"),
    "describe": "penalties",
    **dict.fromkeys(["choice", "grid", "loguniform", "sample", "uniform"], "hparams"),
    **dict.fromkeys(["Policy", "mixed_precision"], "precision"),
    "EarlyStopping": "stopping",
    **dict.fromkeys(["sam", "with_cutmix", "with_mixup"], "transforms"),
    **dict.fromkeys(
        [
            "Checkpointing",
            "CheckpointWriteError",
            "DataParallel",
            "DivergenceError",
            "FolderInUseError",
            "EMA",
            "Evaluation",
            "Guard",
            "History",
            "Result",
            "TrainState",
            "accuracy",
            "fit",
            "make_epoch",
            "make_step",
            "sweep",
            "total_cost",
            "Path",
            "PBTResult",
            "pbt",
            "regularization_path",
        ],
        "train",
    ),
    "ModelParallel": "train",
    "Stream": "train",
    **dict.fromkeys(
        ["CVResult", "Ensemble", "bootstrap_indices", "cross_validate", "ensemble", "member_keys"], "train"
    ),
}


def __getattr__(name: str) -> Any:
    if name == "SweepHistory":  # deprecated for one release: jreg.History holds K models too (not cached)
        return importlib.import_module(".train.history", __name__).sweep_history("jreg.")
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _FROM:
        value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names only (``__all__``): not the imports and helpers this file needs (``sys``, ``Any``...)."""
    return sorted(__all__)


class _Package(types.ModuleType):
    """``jreg.objective`` is the function: importing the submodule of the same name must not replace it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "objective" and isinstance(value, types.ModuleType):
            return  # the module stays in sys.modules["jreg.objective"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "__version__",
    "Checkpoint",
    "Checkpointing",
    "DataParallel",
    "EMA",
    "Evaluation",
    "Guard",
    "TrainState",
    "metrics",
    "train",
    "CheckpointError",
    "DivergenceError",
    "CheckpointWriteError",
    "FolderInUseError",
    "EarlyStopping",
    "checkpoint",
    "conventions",
    "decoupled_weight_decay",
    "describe",
    "selectors",
    "lambda_max",
    "optim",
    "proximal",
    "shrink_perturb",
    "unit_norm",
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
    "transforms",
    "frameworks",
    "sam",
    "with_cutmix",
    "with_mixup",
    "Policy",
    "mixed_precision",
    "precision",
    "ModelParallel",
    "Path",
    "PBTResult",
    "Result",
    "pbt",
    "grid",
    "sample",
    "loguniform",
    "uniform",
    "choice",
    "hparams",
    "regularization_path",
    "Stream",
    "writers",
    "CVResult",
    "Ensemble",
    "bootstrap_indices",
    "cross_validate",
    "ensemble",
    "member_keys",
]
