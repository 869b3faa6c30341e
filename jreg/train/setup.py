"""What fit and sweep settle before any compilation: checked data, the epoch plan, the series to measure."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_params, is_concrete
from .._errors import JregError, JregTypeError
from .._tree import inexact_leaves, path_str
from .._types import Batch, ModelState, Params
from ..metrics import as_metrics
from ..optim import applied_proximal
from . import calls, stream, strength, validate
from .config import Evaluation, as_evaluation
from .inputs import check_data, data_size
from .monitor import Monitor, default_metrics, make_monitor
from .plan import EpochPlan, check_partial_batch, make_plan
from .state import TrainState


@dataclasses.dataclass(frozen=True)
class Setup:
    train: Batch
    evaluation: Batch | None
    model_state: ModelState  # as arrays
    plan: EpochPlan
    monitor: Monitor
    schedule: Evaluation  # when to measure (``every``)
    feed: stream.Feed | None = None  # a streamed run's source (then ``train`` is None; see jreg.train.stream)
    members: Any = None  # per-member data (jreg.train.members.Members), None: every member the same data


def check_model_state(objective: Callable[..., Any], model_state: ModelState) -> ModelState:
    """The model state as arrays, after checking that the objective wants one exactly when it is given."""
    calls.check_state_given(calls.is_stateful(objective), model_state)
    model_state = calls.as_model_state(model_state)
    for where, leaf in inexact_leaves(model_state):  # an infinity may be meant (a running best), a NaN is not
        if is_concrete(leaf) and bool(jnp.any(jnp.isnan(leaf))):
            raise JregError(f"model_state: leaf {where!r} holds NaN")
    return model_state


def check_checkpointing(checkpoint: Any, model_state: ModelState) -> None:
    """Before any training: the checkpoint folder is one or can be made, and everything in the state can be saved.
    Nothing is made here: the folder is made once every input has passed its checks (``open_writer``)."""
    folder = checkpoint.folder
    if folder.exists() and not folder.is_dir():
        raise JregError(f"checkpoint: {folder} exists and is not a folder")
    above = next((p for p in folder.absolute().parents if p.exists()), None) if not folder.exists() else None
    if above is not None and not above.is_dir():
        raise JregError(f"checkpoint: cannot make the folder {folder} ({above} is a file)")
    for path, leaf in jax.tree_util.tree_flatten_with_path(model_state)[0]:
        if jnp.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            raise JregTypeError(
                f"model_state: leaf {path_str(path)!r} is a PRNG key, which checkpoints cannot store inside a tree; "
                "keep the key out of the state (fit gives each step a key) or train without checkpoints"
            )


def check_mid_epoch(checkpoint: Any, setup: Setup, where: str) -> None:
    """Before any work: ``Checkpointing(every_steps=...)`` (mid-epoch checkpoints) needs a stream whose iterator can
    save its position (:mod:`jreg.train.stream.position`)."""
    every = getattr(checkpoint, "every_steps", None)
    if every is None:
        return
    what = f"{where}: checkpoint=Checkpointing(every_steps={every})"
    if setup.feed is None:
        raise JregError(
            f"{what} checkpoints inside an epoch of a stream of batches, but train is in-memory data, whose epoch is "
            "one compiled call; drop every_steps (and use Checkpointing(every=...) epochs), or pass a stream (a "
            "grain.MapDataset, IterDataset or DataLoader; docs/streaming.md)"
        )
    setup.feed.check_stateful(what)


def mid_epoch(setup: Setup, checkpoint: Any, save: Callable[[TrainState, Any, dict[str, Any]], None]) -> None:
    """Have the stream write a mid-epoch checkpoint (``save(state, alive, position)``) every ``every_steps``."""
    every = getattr(checkpoint, "every_steps", None)
    if every is None or setup.feed is None:
        return
    setup.feed.capture, setup.feed.every_steps, setup.feed.saver = True, int(every), save


def resume_mid_epoch(setup: Setup, meta: Any, epoch: int, path: Any, epochs: int, models: int | None = None) -> int:
    """The steps of epoch ``epoch + 1`` a resumed checkpoint had run (0 at an epoch's end); a mid-epoch one's stream
    is put back where it was (:meth:`jreg.train.stream.Feed.resume_at`), before any work."""
    position = meta.get("stream_position") if isinstance(meta, dict) else None
    if position is None or setup.feed is None:  # (a streamed checkpoint resumes only with a stream)
        return 0
    if epoch >= epochs:
        raise JregError(
            f"resume: {path} is a checkpoint inside epoch {epoch + 1} (after step {position['step']}), beyond "
            f"epochs={epochs}; pass epochs={epoch + 1} or more to finish that epoch"
        )
    setup.feed.resume_at(epoch, position, path, models)
    return int(position["step"])


def prepare(
    objective: Callable[..., Any],
    params: Params,
    model_state: ModelState,
    train: Any,
    evaluation: Any,
    *,
    batch_size: int,
    key: Any,
    partial_batch: str,
    monitor: Iterable[str] | str | None,
    optimizer: optax.GradientTransformation | None = None,
) -> Setup:
    """Check the data and the objective on it (real shapes, ``train`` or ``evaluation`` named); pick the series."""
    check_partial_batch(partial_batch)
    schedule = as_evaluation(evaluation)
    check_params(params)
    model_state = check_model_state(objective, model_state)
    feed = stream.Feed(stream.as_stream(train), batch_size, partial_batch) if stream.is_stream(train) else None
    train = check_data(train if feed is None else feed.first, "train")
    held_out = None if schedule.data is None else check_data(schedule.data, "evaluation")
    # a stream's plan is one batch as this process reads it (with several processes: batch_size // processes rows)
    plan = make_plan(data_size(train), batch_size if feed is None else feed.rows, partial_batch)
    probe_state, seen, targets = _probe(objective, params, model_state, train, held_out, plan, optimizer, key)
    classes = validate.are_classes(targets, seen.outputs)
    # the user's metrics add to the default ones (accuracy for classes) unless Evaluation(default_metrics=False)
    metrics = default_metrics(objective, classes) if schedule.default_metrics else {}
    metrics = {**metrics, **as_metrics(schedule.metrics)}
    validate.check_metric_names(metrics, seen.parts)
    if feed is not None:  # a stream is not held: no series on the whole training set, no size to scale by
        if schedule.cost_convention != "jreg":
            raise JregError(
                f"Evaluation(cost_convention={schedule.cost_convention!r}) scales the penalty by the training "
                "set's size, which a stream does not give; use cost_convention='jreg' when streaming"
            )
    chosen = make_monitor(
        monitor,
        objective,
        metrics,
        classes=classes,
        has_evaluation=held_out is not None,
        batch_size=schedule.batch_size,
        smallest=plan.batch_size,
        cost_convention=schedule.cost_convention,
        n_train=None if feed is not None else data_size(train),
        streamed=feed is not None,
        defaults=schedule.default_metrics,
        given=as_metrics(schedule.metrics),
    )
    for name, side, data in (("train", "training", train), ("evaluation", "evaluation", held_out)):
        if data is not None:
            _, wanted = chosen.on(side)
            validate.probe_metrics(objective, wanted, probe_state, data, name)
    if feed is not None:
        return Setup(None, held_out, model_state, plan, chosen, schedule, feed)
    return Setup(train, held_out, model_state, plan, chosen, schedule)


def _probe(objective, params, model_state, train, held_out, plan, optimizer, key):
    """``(probe_state, seen, targets)``: the objective traced on the data's real shapes (and the optimizer's
    update, when given), the labels checked against the outputs."""
    probe_state = TrainState(params, None, model_state, jnp.asarray(0, jnp.int32))
    seen = validate.probe(objective, probe_state, train, "train", key)
    targets = validate.targets_of(objective, train)
    validate.check_labels(targets, seen.outputs, "train")
    if held_out is not None:
        held_out_seen = validate.probe(objective, probe_state, held_out, "evaluation", key)
        validate.check_labels(validate.targets_of(objective, held_out), held_out_seen.outputs, "evaluation")
    if optimizer is not None:
        with applied_proximal() as proxed:
            validate.probe_update(objective, optimizer, probe_state, train, plan.batch_size, key)
        strength.warn_twice(objective, proxed, params)  # the same penalty in the objective and jreg.proximal
    return probe_state, seen, targets
