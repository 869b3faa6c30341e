"""Small frozen option objects for :func:`jreg.fit` and :func:`jreg.sweep` (in the style of ``EarlyStopping``).

Options that belong together travel as one object instead of loose keywords:
:class:`Evaluation` (held-out data, metrics, evaluation batch size, how
often), :class:`Checkpointing` (folder, how often, how many to keep) and
:class:`DataParallel` (mesh, data axis, parameter layout), :class:`ModelParallel`
(a sweep's models across devices), :class:`EMA`, :class:`Guard` (finite blow-ups as divergence). Each checks its
own fields when built, so a bad option fails at once, before any work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_path, check_positive_int
from .._errors import JregError, JregTypeError
from .._signature import checked_init
from ..conventions import check_cost_convention
from ..metrics import Metric, as_metrics


@checked_init
@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What is measured after each epoch, on what, how often, and in batches of how many examples.

    ``fit(..., evaluation=(x, y))`` is short for ``evaluation=Evaluation((x, y))``.

    Attributes:
        data: held-out data (validation or test), a batch like the training
            data; ``None`` to monitor the training data only.
        metrics: ``{name: metric}`` measured on ``data`` (series
            ``evaluation_<name>``) and, when ``monitor=`` asks for it, on the
            whole training set (``training_<name>``); a metric is
            ``f(outputs, targets)`` per example or per batch, or a
            :class:`jreg.metrics.Metric` (see :mod:`jreg.metrics`). They are
            measured *besides* the default metrics (a metric of yours named
            like a default one replaces it): ``{"top2": f}`` on class targets
            gives ``evaluation_accuracy`` and ``evaluation_top2``. Measured by
            default besides: the objective's cost (``evaluation_cost``; the
            training-set ``training_cost`` with its parts when asked).
        default_metrics: ``True`` (default): the default metrics are
            measured, accuracy when the targets are classes (integer labels,
            or one-hot rows), nothing else. ``False``: only ``metrics``
            (``Evaluation(data, metrics={"top2": f}, default_metrics=False)``
            replaces accuracy by ``top2``).
        batch_size: examples per evaluation batch. Default ``None``: as many
            as keep one batch's intermediate values within 64 MiB (measured by
            tracing the evaluation, nothing computed; in a sweep of K models,
            64/K MiB each), but at least the training batch size; a small model evaluates a data set of
            10,000 in one batch. Memory stays bounded by one evaluation batch
            whatever the data's size; the figures equal full-batch ones up to
            float rounding (bit for bit in one batch).
        every: measure every ``every`` epochs, and after the last one.
        cost_convention: how the monitored costs (``training_cost``,
            ``evaluation_cost``) count the penalty on the params. ``"jreg"``
            (default): the objective as it is, ``mean C + R(w)`` on every set,
            so ``l2(λ/n)`` carries the training set's ``n`` into the
            evaluation cost too. ``"network2"``: network2.py's
            ``total_cost(data, lmbda)``, ``mean C + 0.5·(λ/len(data))·Σw²``:
            the params' penalty (not activity or input penalties, which are
            per-example means) times ``n_train / len(data)``, ``n_train`` the
            size of the training set given to ``fit``. The training cost and
            its parts are the same under both; only ``evaluation_cost`` moves
            when the held-out set's size differs. Training is not affected.
            Needs an objective from :func:`jreg.objective`. The history says
            which was used (``history.cost_convention``); see
            docs/conventions.md.
    """

    data: Any = None
    metrics: Mapping[str, Callable[..., Any] | Metric] | None = None
    batch_size: int | None = None
    every: int = 1
    cost_convention: str = "jreg"
    default_metrics: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.default_metrics, bool):
            raise JregTypeError(f"Evaluation.default_metrics must be True or False, got {self.default_metrics!r}")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "Evaluation.batch_size")
        check_positive_int(self.every, "Evaluation.every")
        check_cost_convention(self.cost_convention, "Evaluation.cost_convention")
        as_metrics(self.metrics, "Evaluation.metrics")
        if isinstance(self.data, Evaluation):
            raise JregTypeError("Evaluation.data must be data, not another Evaluation")

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether to measure after 0-based ``epoch`` of ``epochs``."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs


def as_evaluation(evaluation: Any) -> Evaluation:
    return evaluation if isinstance(evaluation, Evaluation) else Evaluation(evaluation)


#: Checkpointing.format's choices (jreg.checkpoint.FORMATS)
CHECKPOINT_FORMATS = ("npz", "orbax")


@checked_init
@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Checkpoints during :func:`jreg.fit`: ``ckpt-<epoch>.npz`` in ``dir`` every ``every`` epochs and after the last.

    Each save is atomic (:func:`jreg.save`: params, optimizer state, model
    state, epoch, key, history); the run's newest ``keep`` are kept. ``dir``
    belongs to one run: :func:`jreg.fit` refuses a folder that already holds
    checkpoints unless it resumes from it, and deletes only its own files.
    ``format="orbax"`` writes each checkpoint as an orbax-checkpoint folder,
    ``ckpt-<epoch>.orbax`` (``jreg[orbax]``; :func:`jreg.save`'s ``format="orbax"``
    fields), with orbax's ``CheckpointManager`` semantics (``keep`` is its
    ``max_to_keep``; a checkpoint is finalized atomically) under the same folder
    rules; resuming reads either format. A run whose arrays span several
    processes (``jax.distributed``) always writes ``.orbax`` folders
    (docs/scaling.md); ``dir`` must then be a folder that every process sees.
    ``best.npz`` (the best params of ``EarlyStopping(restore_best=True)``)
    stays a ``.npz`` file in both formats.

    ``every_steps`` (a positive int, default None): with a stream of batches
    whose iterator can save its position (a grain ``MapDataset``,
    ``IterDataset`` or ``DataLoader``, or any iterator with ``get_state()`` and
    ``set_state()``), also checkpoint MID-EPOCH, at the first compiled chunk
    boundary at or after every ``every_steps`` steps of an epoch:
    ``ckpt-<epochs done>-<steps into the next>.npz``, holding the iterator's
    state, so that a resumed run continues from that step bit for bit
    (docs/streaming.md, "grain and mid-epoch checkpoints"). Refused with
    in-memory data and with a source whose iterator has no such state.
    """

    dir: str | os.PathLike[str]
    every: int = 1
    keep: int = 3
    every_steps: int | None = None
    format: str = "npz"  # noqa: A003 - jreg.save's keyword

    def __post_init__(self) -> None:
        check_checkpointing(
            self.dir, self.every, self.keep, ("Checkpointing.dir", "Checkpointing.every", "Checkpointing.keep")
        )
        if self.every_steps is not None:
            check_positive_int(self.every_steps, "Checkpointing.every_steps")
        if not isinstance(self.format, str) or self.format not in CHECKPOINT_FORMATS:
            raise JregError(
                f"Checkpointing.format must be one of {list(CHECKPOINT_FORMATS)} ('npz': one file per checkpoint, "
                f"'orbax': an orbax-checkpoint folder per checkpoint, pip install 'jreg[orbax]'), got {self.format!r}"
            )
        if self.format == "orbax":
            try:  # refused before any work when it is missing (found without importing it: orbax loads slowly)
                found = importlib.util.find_spec("orbax.checkpoint") is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise JregError(
                    "Checkpointing.format='orbax' writes with orbax-checkpoint, which is not installed: "
                    "pip install 'jreg[orbax]' (or orbax-checkpoint)"
                )

    @property
    def folder(self) -> Path:
        return Path(self.dir)

    def due(self, epoch: int, epochs: int) -> bool:
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs


def check_checkpointing(folder: Any, every: Any, keep: Any, names: tuple[str, str, str]) -> None:
    """Check a checkpoint folder, period and count, each error naming the argument as the user gave it.

    ``names``: ``Checkpointing``'s fields, or fit's older keywords ``checkpoint_dir``, ``checkpoint_every``, ``keep``.
    """
    if not isinstance(folder, (str, os.PathLike, bytes, bytearray)):  # bytes: check_path says to decode them
        raise JregTypeError(f"{names[0]} must be a folder path, got {type(folder).__name__}")
    check_path(folder, names[0])  # not empty (the current folder by accident), no NUL
    check_positive_int(every, names[1])
    check_positive_int(keep, names[2])


@checked_init
@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Data-parallel training on a mesh: each mini-batch is split along ``data_axis``.

    Params and optimizer state are replicated, or laid out by ``param_specs``
    (a ``PartitionSpec`` pytree matching params, or a prefix of it, e.g. to
    shard large weight matrices along a ``"model"`` axis); XLA inserts the
    gradient all-reduce. ``batch_size`` must be a multiple of the data axis's
    size. Works across hosts after ``jax.distributed.initialize()``.
    """

    mesh: jax.sharding.Mesh
    data_axis: str = "data"
    param_specs: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.mesh, jax.sharding.Mesh):
            raise JregTypeError(
                f"mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh((8,), ('data',)), got {self.mesh!r}"
            )
        if self.data_axis not in self.mesh.axis_names:
            raise JregError(
                f"data_axis {self.data_axis!r} is not an axis of the mesh, which has {self.mesh.axis_names}"
            )


@checked_init
@dataclasses.dataclass(frozen=True)
class ModelParallel:
    """A sweep's K models split across a mesh: ``K / mesh.shape[model_axis]`` models on each device group.

    ``jreg.sweep(..., parallel=ModelParallel(mesh))``. The stacked training
    state (params, optimizer and model state, EMA, step), the hyperparameters
    and the per-model flags are sharded along their leading model axis over
    ``model_axis``: each device trains only its own models, and nothing is
    reduced across models (the compiled epoch has no collective over that
    axis). K must be a multiple of the axis's size (refused otherwise, before
    any work: pad the sweep with models of your own if needed).

    With ``data_axis`` (a second mesh axis, e.g.
    ``jax.make_mesh((4, 2), ("model", "data"))``) every mini-batch is also
    split along it and each model's gradient is averaged over that axis only;
    ``batch_size`` must then be a multiple of its size. The data set is
    replicated on every device (every process holds all of it).

    Per-member data (``data_order="per_member"``, ``resample="bootstrap"``,
    :func:`jreg.cross_validate`'s S·k members) splits likewise: each member's
    index sets and shuffle key live with its state. Members whose training
    sets differ in size (k-fold with ``n % k != 0``) train in groups, which
    are gathered out of the split state and split again once an epoch
    (that collective crosses the model axis; none inside the steps).

    Results equal the single-device sweep up to float reassociation. Works
    across processes after ``jax.distributed.initialize()`` (docs/scaling.md):
    the returned params are then global arrays, sharded over the processes.
    """

    mesh: jax.sharding.Mesh
    model_axis: str = "model"
    data_axis: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mesh, jax.sharding.Mesh):
            raise JregTypeError(
                f"mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh((8,), ('model',)), got {self.mesh!r}"
            )
        if self.model_axis not in self.mesh.axis_names:
            raise JregError(
                f"model_axis {self.model_axis!r} is not an axis of the mesh, which has {self.mesh.axis_names}"
            )
        if self.data_axis is not None and self.data_axis not in self.mesh.axis_names:
            raise JregError(
                f"data_axis {self.data_axis!r} is not an axis of the mesh, which has {self.mesh.axis_names}"
            )
        if self.data_axis == self.model_axis:
            raise JregError(f"data_axis and model_axis must be two different mesh axes, got {self.model_axis!r} twice")


@checked_init
@dataclasses.dataclass(frozen=True)
class EMA:
    """An exponential moving average of the params, kept during training (Polyak & Juditsky 1992).

    After every optimizer step ``t`` (mini-batch steps, the last partial one included)::

        ema_0 = params_0                                  (the params training starts from)
        ema_t = decay * ema_{t-1} + (1 - decay) * params_t

    computed in each leaf's own dtype, with ``decay`` a float32 scalar (traced:
    one compiled program serves every value). The average starts at the initial
    params, not at zero, so it needs no bias correction (Adam's
    ``1 / (1 - decay**t)``) and has no warmup: early on it leans on the initial
    params with weight ``decay**t``. Averaged iterates are Polyak & Juditsky's
    (1992) "acceleration of stochastic approximation by averaging"; the
    exponential form is the one of Izmailov et al. (2018, SWA) and of modern
    training recipes ("EMA of weights"). Only the params are averaged: a
    stateful model's state (BatchNorm statistics) is the live one.

    Attributes:
        decay: in ``[0, 1)``, finite; ``0`` makes the EMA the live params. In
            :func:`jreg.sweep` it may be the name of an ``hparams`` entry, so
            each model has its own decay (``EMA(decay="ema_decay")``).
        evaluate: measure the monitored series (costs, their parts, metrics)
            with the EMA params instead of the live ones (``epoch_loss``, the
            running loss of the training steps, stays the live params'); the
            history records it (``history.ema``). Early stopping then watches
            the EMA's figures, and its best params are the EMA's.
        returned: return the EMA params instead of the live ones from
            :func:`jreg.fit` / :func:`jreg.sweep`.

    The EMA is part of the training state: the divergence guard checks it,
    checkpoints save it and a resumed run continues it bit for bit.
    """

    decay: float | str = 0.999
    evaluate: bool = True
    returned: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.evaluate, bool):
            raise JregTypeError(f"EMA.evaluate must be True or False, got {self.evaluate!r}")
        if not isinstance(self.returned, bool):
            raise JregTypeError(f"EMA.returned must be True or False, got {self.returned!r}")
        if isinstance(self.decay, str):
            if not self.decay:
                raise JregError("EMA.decay must be a number in [0, 1) or the name of an hparams entry, got ''")
            return
        object.__setattr__(self, "decay", check_decay(self.decay, "EMA.decay"))  # a Python float (JSON-ready)

    def decay_of(self, hp: Mapping[str, Any]) -> Any:
        """This model's decay: the number, or ``hp[name]`` (traced in a sweep)."""
        return hp[self.decay] if isinstance(self.decay, str) else self.decay

    def meta(self) -> dict[str, Any]:
        """JSON-ready settings (the history's ``ema`` and checkpoints' ``meta["ema"]``)."""
        return {"decay": self.decay, "evaluate": self.evaluate, "returned": self.returned}


def check_decay(decay: Any, name: str) -> float:
    """``decay`` as a float in ``[0, 1)``; a clear error naming ``name`` otherwise."""
    number = isinstance(decay, (int, float, np.integer, np.floating)) or (
        isinstance(decay, (np.ndarray, jax.Array))
        and decay.shape == ()
        and (jnp.issubdtype(decay.dtype, jnp.floating) or jnp.issubdtype(decay.dtype, jnp.integer))
    )
    if isinstance(decay, (bool, np.bool_)) or not number:
        raise JregTypeError(f"{name} must be a real number in [0, 1), got {decay!r}")
    try:
        value = float(decay)
    except jax.errors.ConcretizationTypeError as exc:
        raise JregTypeError(
            f"{name} must be a concrete number; to sweep it, name an hparams entry (EMA(decay='name'))"
        ) from exc
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise JregError(f"{name} must be finite and in [0, 1) (ema = d*ema + (1-d)*params), got {value}")
    return value


def as_ema(ema: Any) -> EMA | None:
    """``fit``'s and ``sweep``'s ``ema=``: None, or an :class:`EMA`."""
    if ema is None or isinstance(ema, EMA):
        return ema
    raise JregTypeError(f"ema must be a jreg.EMA(decay=...), got {ema!r}")


@checked_init
@dataclasses.dataclass(frozen=True)
class Guard:
    """Opt-in divergence rules for a loss that explodes while staying finite: ``fit(..., guard=Guard(max_loss=1e3))``.

    Without a guard (the default) divergence means NaN or infinity only (docs/reliability.md). With one, an
    epoch whose running loss (``epoch_loss``: the mean mini-batch objective of its training steps) exceeds a
    limit is a divergence too, handled as a non-finite one is: the compiled epoch returns its *input* state
    (per model in a sweep), :func:`jreg.fit` raises :class:`jreg.DivergenceError` (``error.rule`` names the rule,
    the message and ``error.quantity`` the rule and the value; ``error.params`` are those of the last epoch
    within the limit; ``error.step`` is None), and :func:`jreg.sweep` freezes the member at that state and records
    ``history.diverged[i] = {"epoch", "step": None, "quantity"}`` (the quantity naming the rule and the value)
    while the others go on. A non-finite epoch is still reported as before.

    Attributes:
        max_loss: a positive finite number: every epoch's running loss must stay at or below it.
        max_ratio: a finite number of at least 1: from the second epoch on, the running loss must stay at or
            below ``max_ratio`` times the first epoch's (each model's own in a sweep). The reference is the
            first ``epoch_loss`` the run's history holds, so a resumed run (from a checkpoint or a
            :class:`jreg.Result`) compares with the same value; where it is not a positive number the ratio rule
            does not apply to that model.

    With both, the lower limit applies. The limits reach the compiled epoch as one traced float32 value per
    model: new values compile nothing. The rules read the ``epoch_loss`` series, which must be monitored (it
    is by default); a stream of batches (:class:`jreg.Stream`) is guarded alike, the rule read at the streamed
    epoch's end (the epoch's input is kept as a copy while it runs). ``Guard()`` checks nothing more than
    no guard.
    """

    max_loss: float | None = None
    max_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.max_loss is not None:
            object.__setattr__(self, "max_loss", _check_limit(self.max_loss, "Guard.max_loss", 0.0))
        if self.max_ratio is not None:
            object.__setattr__(self, "max_ratio", _check_limit(self.max_ratio, "Guard.max_ratio", 1.0))

    @property
    def active(self) -> bool:
        """Whether any rule is set."""
        return self.max_loss is not None or self.max_ratio is not None


def _check_limit(value: Any, name: str, least: float) -> float:
    """``value`` as a finite float above ``least`` (``max_loss``) or at least ``least`` (``max_ratio``)."""
    rule = "a positive finite number" if least == 0.0 else f"a finite number of at least {least:g}"
    number = isinstance(value, (int, float, np.integer, np.floating)) or (
        isinstance(value, (np.ndarray, jax.Array))
        and value.shape == ()
        and (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer))
    )
    if isinstance(value, (bool, np.bool_)) or not number:
        raise JregTypeError(f"{name} must be {rule}, got {value!r}")
    try:
        number = float(value)
    except jax.errors.ConcretizationTypeError as exc:
        raise JregTypeError(f"{name} must be a concrete number, not a traced value") from exc
    except OverflowError as exc:  # an integer too large for a float
        raise JregError(f"{name} must be {rule}, got {value!r}") from exc
    if not math.isfinite(number) or (number <= least if least == 0.0 else number < least):
        raise JregError(f"{name} must be {rule}, got {number!r}")
    return number


def as_guard(guard: Any) -> Guard | None:
    """``fit``'s and ``sweep``'s ``guard=``: None (also for ``Guard()``, which sets no rule), or a :class:`Guard`."""
    if guard is None or (isinstance(guard, Guard) and not guard.active):
        return None
    if isinstance(guard, Guard):
        return guard
    raise JregTypeError(f"guard must be a jreg.Guard(max_loss=..., max_ratio=...), got {guard!r}")


#: fit's older keywords, still accepted for one release with a DeprecationWarning: each belongs to one option object.
LEGACY = {
    "checkpoint_dir": "checkpoint",
    "checkpoint_every": "checkpoint",
    "keep": "checkpoint",
    "mesh": "parallel",
    "data_axis": "parallel",
    "param_specs": "parallel",
}


def from_legacy(
    checkpoint: Any, parallel: Any, legacy: dict[str, Any], where: str = "fit", stacklevel: int = 4
) -> tuple[Any, Any]:
    """Fold the older keywords (``checkpoint_dir=``, ``mesh=``...) into their option objects.

    Each group used emits a :class:`DeprecationWarning` showing the new form, attributed ``stacklevel``
    frames up (4: the caller of ``fit``, through its argument check)."""
    unknown = sorted(set(legacy) - set(LEGACY))
    if unknown:
        raise JregTypeError(f"{where}() got unexpected keyword argument(s) {unknown}")
    ck = {k: v for k, v in legacy.items() if LEGACY[k] == "checkpoint"}
    par = {k: v for k, v in legacy.items() if LEGACY[k] == "parallel"}
    if ck:
        new = [repr(ck.get("checkpoint_dir", "folder"))]
        new += [f"every={ck['checkpoint_every']!r}"] if "checkpoint_every" in ck else []
        new += [f"keep={ck['keep']!r}"] if "keep" in ck else []
        _deprecated(where, ck, f"checkpoint=jreg.Checkpointing({', '.join(new)})", stacklevel)
    if par:
        new = ["mesh"]
        new += [f"data_axis={par['data_axis']!r}"] if "data_axis" in par else []
        new += ["param_specs=specs"] if "param_specs" in par else []
        _deprecated(where, par, f"parallel=jreg.DataParallel({', '.join(new)})", stacklevel)
    if ck and checkpoint is not None:
        raise JregError(f"give either checkpoint=Checkpointing(...) or {sorted(ck)}, not both")
    if par and parallel is not None:
        raise JregError(f"give either parallel=DataParallel(...) or {sorted(par)}, not both")
    every, keep = ck.get("checkpoint_every", 1), ck.get("keep", 3)
    if ck.get("checkpoint_dir") is not None:  # checked here, so that errors name the keywords the user gave
        check_checkpointing(ck["checkpoint_dir"], every, keep, ("checkpoint_dir", "checkpoint_every", "keep"))
        checkpoint = Checkpointing(ck["checkpoint_dir"], every, keep)
    else:  # validated even when unused, as before
        check_positive_int(every, "checkpoint_every")
        check_positive_int(keep, "keep")
    if par.get("mesh") is not None:
        parallel = DataParallel(par["mesh"], par.get("data_axis", "data"), par.get("param_specs"))
    if checkpoint is not None and not isinstance(checkpoint, Checkpointing):
        raise JregTypeError(
            f"checkpoint must be a jreg.Checkpointing('folder', every=..., keep=...), got {checkpoint!r}"
        )
    if parallel is not None and not isinstance(parallel, DataParallel):
        raise JregTypeError(f"parallel must be a jreg.DataParallel(mesh, ...), got {parallel!r}")
    return checkpoint, parallel


def _deprecated(where: str, given: dict[str, Any], new: str, stacklevel: int) -> None:
    old = ", ".join(f"{k}=" for k in given)
    warnings.warn(
        f"{where}({old}) is deprecated and will be removed in the next release: pass {new} instead",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )
