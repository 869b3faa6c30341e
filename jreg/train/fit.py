"""``fit``: train one model, as a thin front end over the engine and the host loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .._errors import JregError
from .._signature import checked
from .._types import ModelState, OptState, Params
from ..stopping import EarlyStopping
from ..writers import Runs, Writer, check_writers
from . import calls, checkpoint_folder, config, divergence, engine, memory, mesh
from . import early_stopping as stopping_hooks
from . import optimizer as optimizer_
from . import resume as resuming
from .config import EMA, Checkpointing, DataParallel, Evaluation, Guard
from .epoch import check_unroll
from .history import History
from .loop import Hook, Run, progress, record, run_epochs, user_callback
from .result import Result
from .setup import check_checkpointing, check_mid_epoch, mid_epoch, prepare, resume_mid_epoch
from .state import TrainState, copy
from .validate import check_loop_args, check_opt_state


@checked("fit", passthrough=config.LEGACY)
def fit(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    params: Params,
    train: Any,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    evaluation: Any | Evaluation = None,
    model_state: ModelState = None,
    opt_state: OptState = None,
    monitor: Iterable[str] | None = None,
    partial_batch: str = "include",
    verbose: bool = False,
    callback: Callable[..., None] | None = None,
    checkpoint: Checkpointing | None = None,
    resume: Any = None,
    early_stopping: EarlyStopping | None = None,
    parallel: DataParallel | None = None,
    ema: EMA | None = None,
    unroll: int | None = None,
    guard: Guard | None = None,
    writers: Sequence[Writer] | None = None,
    **legacy: Any,
) -> Result:
    """Train for ``epochs`` epochs of shuffled mini-batches; return a :class:`jreg.Result`.

    Each epoch, and the monitoring after it, is one compiled call (see
    :func:`make_epoch`); epoch ``e`` shuffles with ``jax.random.fold_in(key, e)``,
    so the same key, data and config give the same result.

    Args:
        objective: from :func:`jreg.objective` (needed for metrics such as
            accuracy; any ``f(params, batch) -> (total, parts)`` works for the costs).
        optimizer: any optax ``GradientTransformation``; one whose update takes ``value=``, ``grad=`` or
            ``value_fn=`` (``reduce_on_plateau``, ``lbfgs``) gets them from each step, and a schedule-free one is
            evaluated and returned at ``schedule_free_eval_params`` (:mod:`jreg.train.optimizer`).
        params: initial params (not modified; fit works on a copy).
        train: ``(x, y)``, ``x`` float ``(N, ...)``, ``y`` integer labels ``(N,)``,
            float targets ``(N, classes)`` or regression targets ``(N,)`` /
            ``(N, d)``; or any pytree of arrays sharing the leading example
            axis, which the objective's ``split`` takes apart. Or a stream of
            mini-batches (:class:`jreg.Stream`, or a bare source: a callable
            ``epoch -> iterable of batches``, a list of batches, a generator
            factory, a PyTorch ``DataLoader``...; see docs/streaming.md): the
            source decides the order (no shuffle), steps run in compiled
            chunks prefetched to the device, only the last batch of an epoch
            may be smaller, the default series are those of in-memory data
            (the whole-training-set series are refused when asked for), and
            a resumed run reopens the source at the first epoch not done.
        epochs, batch_size: positive ints, ``batch_size <= N`` (for a stream:
            the size of its batches).
        key: a ``jax.random.key`` for the shuffles (and dropout).
        evaluation: held-out data ``(x, y)`` (validation or test), or a
            :class:`jreg.Evaluation` with the data, the metrics, the
            evaluation batch size and how often to measure.
        model_state: a stateful model's initial state (BatchNorm statistics);
            the trained state comes back as ``result.model_state``.
        opt_state: optimizer state to continue from (default ``optimizer.init(params)``).
        monitor: which series to measure. Default (``None``): ``epoch_loss``,
            the mean mini-batch objective during the epoch, taken from the
            training steps themselves, and with held-out data the evaluation
            series (``evaluation_cost``, ``evaluation_accuracy`` for class
            targets, ``evaluation_<metric>`` for each metric); the same names
            whether ``train`` is in memory or a stream. The whole-training-set
            series (``training_cost`` with its parts ``training_data``,
            ``training_penalty``, ``training_<term>``; ``training_accuracy``;
            ``training_<metric>``) take a second pass over the training set
            after every epoch and are measured only when named here, e.g.
            ``monitor=jreg.train.NETWORK2`` (network2.py's four series:
            training and evaluation cost and accuracy); a stream refuses
            them. ``monitor=()`` trains fastest (without held-out data the
            default cost 5 % of an epoch more on Nielsen's [784, 30, 10] and
            nothing measurable on a small CNN: docs/benchmarks.md).
        partial_batch: ``"include"`` or ``"drop"`` the last partial mini-batch.
        verbose: print one line per epoch.
        callback: ``callback(epoch, metrics)`` after each epoch with the
            epoch's floats (e.g. to drive a progress bar); a callback that
            names ``params`` or ``model_state`` also gets them.
        checkpoint: a :class:`jreg.Checkpointing`: save ``ckpt-<epoch>.npz``
            (params, optimizer state, model state, epoch, key, history, the
            run's id) in its folder every ``every`` epochs and after the last,
            keeping this run's newest ``keep``. Each save is atomic. The folder
            belongs to one run: one that already holds checkpoints
            (``ckpt-*.npz``, ``best.npz``) is refused before any work unless
            ``resume`` is that folder or a file in it, and a run deletes or
            overwrites only its own checkpoints (see docs/reliability.md).
            With a stream whose iterator saves its state (grain),
            ``Checkpointing(every_steps=n)`` also saves mid-epoch checkpoints
            (``ckpt-<epoch>-<step>.npz``) that a resume continues from that
            step (docs/streaming.md, "grain, and mid-epoch checkpoints").
        resume: the run to continue: a :class:`jreg.Result` of an earlier
            ``fit`` (in memory: params, optimizer and model state, epoch count,
            early-stopping and learning-rate-scale state), a checkpoint file,
            or a folder of them (the newest valid one by epoch number, then
            step for mid-epoch ones, is taken; a damaged newer one is skipped with a :class:`jreg.JregWarning`),
            or ``"auto"``: ``checkpoint``'s folder when it holds checkpoints, a
            fresh start when it holds none (a preemptible job re-runs one
            unchanged command). ``epochs`` stays the run's total, the shuffles
            go on from the saved epoch, and the result is bit-identical on CPU
            to the uninterrupted run. ``params`` (and ``model_state``) serve as
            the structure template and ``key`` must be the run's key.
        early_stopping: an :class:`jreg.EarlyStopping`: stop when its
            monitored series (by default ``evaluation_accuracy`` when measured,
            else ``evaluation_cost``; without evaluation data, name one) has
            not improved for ``patience`` measurements, or, with
            ``lr_factor``, cut the learning rate each time and stop once it has
            fallen to ``min_lr_scale`` of its start (Nielsen's schedule:
            ``EarlyStopping.nielsen(10)``). The history then has a
            ``learning_rate_scale`` series and ``history.stopped`` says when and
            why training stopped. Its state is checkpointed and resumed.
        parallel: a :class:`jreg.DataParallel` for data-parallel training on a
            mesh (see docs/scaling.md). Results equal single-device training up
            to float reassociation.
        ema: a :class:`jreg.EMA`: keep an exponential moving average of the
            params, ``ema <- decay*ema + (1-decay)*params`` after every step,
            starting at the initial params; with ``evaluate`` the monitored
            series are measured with it (``history.ema`` says so), with
            ``returned`` fit returns it instead of the live params. It is
            checked for divergence, checkpointed and resumed bit for bit.
        unroll: training steps per iteration of the compiled loop over
            mini-batches (``lax.scan``'s ``unroll``, 1 to 64). ``None``
            (default): on a GPU or TPU 8 when one step is small (at most 400
            operations, e.g. an MLP) and an epoch has at least 16 steps, else
            1; on a CPU 1. Unrolling cuts the loop's per-step cost, which
            dominates tiny models on a GPU (docs/benchmarks.md measures it);
            a larger value only lengthens compilation. The arithmetic of each step is the same, but XLA
            may fuse an unrolled body's running averages (an EMA of the
            params, BatchNorm statistics) differently, so those can differ
            in the last bits from ``unroll=1`` (plain SGD or Adam on a CPU
            stays bit-identical, tested); resume a run with the ``unroll``
            it was saved with to continue it bit for bit. A stream's chunks
            are unrolled only when ``unroll`` is given (a streamed epoch is
            bound by the host feeding it).
        guard: a :class:`jreg.Guard`: count a finite blow-up as divergence, an
            epoch whose running loss (``epoch_loss``) exceeds ``max_loss``, or
            ``max_ratio`` times the first epoch's; such an epoch raises
            :class:`DivergenceError` naming the rule and the value (``error.rule``),
            with the params of the last epoch within the limit. Default None:
            divergence means NaN or infinity only.
        **legacy: the older keywords ``checkpoint_dir``, ``checkpoint_every``,
            ``keep`` (:class:`jreg.Checkpointing`) and ``mesh``, ``data_axis``,
            ``param_specs`` (:class:`jreg.DataParallel`) still work for this
            release, each group with a ``DeprecationWarning`` showing the new form.

    Randomness and steps: epoch ``e`` shuffles with ``fold_in(key, e)``; a
    stochastic model (dropout, noise) gets one key per mini-batch derived from
    it (see :func:`make_epoch`), and penalty schedules see the global step
    ``e * steps_per_epoch + i``. Monitoring runs in evaluation mode (no
    dropout; a stateful model's state is read, not updated) at the step count
    reached after the epoch, in evaluation batches (:class:`jreg.Evaluation`).

    Returns:
        A :class:`jreg.Result`: ``result.params``, ``result.opt_state`` (the
        optimizer state after the last epoch), ``result.model_state`` (None
        for a stateless model) and ``result.history`` (a :class:`History`, the
        whole run's when resumed). ``fit(..., resume=result)`` continues it.
        Unpacking it as jreg 0.2's ``(params, history)`` or ``(params,
        model_state, history)`` still works for one release, with a
        ``DeprecationWarning``.

    Raises:
        DivergenceError: when the params, the optimizer or model state, a
            gradient, the loss or a monitored cost becomes NaN or infinite. It
            names the epoch, the step and the quantity, and carries the last
            finite params (``error.params``); no checkpoint with non-finite
            values is ever written. The check runs inside the compiled epoch,
            once per epoch. With ``guard``, also when the running loss breaks
            one of its rules.
        writers: trackers to log the run to (:mod:`jreg.writers`: ``[jreg.writers.TensorBoard("runs/a")]``,
            ``MLflow``, ``JSONL``, ``WandB``, or any object with clu's ``write_scalars``, ``write_hparams``,
            ``flush``, ``close``): one run, the epoch's figures at step ``epoch`` (1-based), written on the host
            after each epoch from the figures it already holds. A resumed run appends to the same run; a writer
            that fails warns once and is dropped, training goes on.
    """
    checkpoint, parallel, ema, resume, epochs, batch_size, unroll = _checked(
        objective, optimizer, checkpoint, parallel, ema, resume, epochs, batch_size, key, callback, unroll, legacy
    )
    guard = config.as_guard(guard)
    writers = check_writers(writers, "fit")
    setup = prepare(
        objective,
        params,
        model_state,
        train,
        evaluation,
        batch_size=batch_size,
        key=key,
        partial_batch=partial_batch,
        monitor=monitor,
        optimizer=optimizer,
    )
    rule = stopping_hooks.check(early_stopping, setup.monitor)
    limits = divergence.limits(guard, setup, None, "fit", checkpoint)
    check_opt_state(optimizer, params, opt_state)
    best = rule is not None and rule.restore_best  # the sizes before allocation (jreg.train.memory)
    memory.check(
        memory.state_parts(optimizer, params, None, ema=ema is not None, best=best)
        + memory.data_parts(objective, params, setup.model_state, setup),
        "jreg.fit",
    )
    if checkpoint is not None:
        check_checkpointing(checkpoint, setup.model_state)
        check_mid_epoch(checkpoint, setup, "fit")
    state = TrainState.create(
        optimizer, copy(params), copy(setup.model_state), opt_state=copy(opt_state), ema=ema is not None
    )
    begun = _begin(state, setup, rule, checkpoint, resume, key, epochs, batch_size, verbose, ema)
    state, start, history, stopper, writer, run_id = begun
    tracked = None
    try:  # the folder's lock is released and the trackers' runs closed when the run ends, however it ends
        tracked = Runs(writers, [None], [{}], group=run_id, start=start, function="fit") if writers else None
        return _train(objective, optimizer, setup, state, start, history, stopper, writer, key, epochs, batch_size,
                      opt_state, resume, parallel, ema, unroll, verbose, callback, model_state is not None,
                      limits, tracked, run_id)  # fmt: skip
    finally:
        if tracked is not None:
            tracked.close()
        if writer is not None:
            writer.close()


def _train(objective, optimizer, setup, state, start, history, stopper, writer, key, epochs, batch_size, opt_state,
           resume, parallel, ema, unroll, verbose, callback, stateful, limits, tracked, run_id):  # fmt: skip
    """The run itself, from the first epoch not done (``start``) to the :class:`Result`."""
    history.cost_convention = setup.monitor.cost_convention  # a resumed run's is checked to be the same
    history.ema = None if ema is None else ema.meta()  # likewise
    finish = _finisher(key, batch_size, setup.feed is not None, run_id, stateful, ema)
    if stopper is not None and stopper.state["stopped"] is not None:  # the run had already stopped: nothing to do
        history.stopped = stopper.record(start)
        return finish(state, start, stopper, history)

    train_data, held_out, sharding = setup.train, setup.evaluation, None
    if parallel is not None:
        fresh = optimizer.init if opt_state is None and resume is None else None
        state, train_data, held_out, sharding = mesh.place(parallel, batch_size, state, fresh, train_data, held_out)
    epoch = engine.program(
        lambda hp: (objective, optimizer),
        setup.plan,
        setup.monitor,
        models=None,
        sharding=sharding,
        ema=ema,
        feed=setup.feed,
        unroll=unroll,
    )

    def one_epoch(state: TrainState, alive: Any, e: int):
        due = setup.schedule.due(e, epochs)
        data = train_data if setup.feed is None else setup.feed.epoch(e)  # a stream: epoch e opened
        limit = {} if limits is None else limits.next(history)  # a Guard's limit for this epoch (traced)
        return epoch({}, state, alive, data, held_out, jax.random.fold_in(key, e), evaluate=due, **limit)

    hooks = _hooks(
        objective, optimizer, setup, train_data, key, ema, stopper, writer, batch_size, verbose, callback, limits,
        tracked,
    )  # fmt: skip
    if writer is not None:  # Checkpointing(every_steps=...): the stream writes mid-epoch checkpoints too

        def save(state: TrainState, alive: Any, position: dict[str, Any]) -> None:
            stopping_state = None if stopper is None else stopper.state
            writer.save(state, position["epoch"], key, history, batch_size, stopping_state, True, position=position)

        mid_epoch(setup, writer.config, save)
    run = run_epochs(one_epoch, Run(state, None, epochs, history), start, hooks)

    if stopper is not None:
        history.stopped = stopper.record(run.epoch + 1)
    return finish(run.state, run.epoch + 1 if run.epoch >= start else start, stopper, history)


def _checked(objective, optimizer, checkpoint, parallel, ema, resume, epochs, batch_size, key, callback, unroll,
             legacy):  # fmt: skip
    """Every argument of :func:`fit` that needs no data checked, before any work: ``(checkpoint, parallel, ema,
    resume, epochs, batch_size, unroll)`` (the older keywords translated, ``resume`` resolved)."""
    checkpoint, parallel = config.from_legacy(checkpoint, parallel, legacy, stacklevel=5)  # the caller of fit
    ema = config.as_ema(ema)
    if ema is not None and isinstance(ema.decay, str):
        raise JregError(
            f"ema: EMA.decay={ema.decay!r} names a hyperparameter, which only jreg.sweep has; give fit a number"
        )
    resume = resuming.resolve(resume, checkpoint, "fit")
    resuming.check_resume(resume)
    if checkpoint is not None:  # a folder holding another run's checkpoints is refused before any work
        checkpoint_folder.check_folder(
            checkpoint, resume, "checkpoint_dir" if "checkpoint_dir" in legacy else "checkpoint"
        )
    calls.check_objective(objective)
    optimizer_.check(optimizer)
    epochs, batch_size = check_loop_args(epochs, batch_size, key, callback)
    unroll = check_unroll(unroll)
    return checkpoint, parallel, ema, resume, epochs, batch_size, unroll


def _hooks(objective, optimizer, setup, train_data, key, ema, stopper, writer, batch_size, verbose, callback,
           limits=None, tracked=None):  # fmt: skip
    """The host loop's hooks after each epoch, in their documented order (docs/architecture.md): divergence,
    early stopping's annotation, the record, progress, the user's callback, the trackers, early stopping's
    decision, the checkpoint."""
    hooks: list[Hook] = [divergence.single(objective, optimizer, setup, train_data, key, ema, limits)]
    hooks += [stopper.annotate] if stopper is not None else []
    hooks += [record]
    hooks += [progress(setup.monitor)] if verbose else []
    hooks += [user_callback(callback)] if callback is not None else []
    hooks += [tracked.hook()] if tracked is not None else []
    hooks += [stopper.decide] if stopper is not None else []
    hooks += [_checkpointer(writer, key, batch_size, stopper, setup.feed is not None)] if writer is not None else []
    return hooks


def _begin(state, setup, rule, checkpoint, resume, key, epochs, batch_size, verbose, ema=None):
    """``(state, first epoch, history, stopper, writer, run id)``: a fresh run, or the one ``resume`` points at."""
    start, history, saved, run, resumed = 0, History(), None, checkpoint_folder.new_run(), None
    if resume is not None:
        resumed = resuming.resume(
            resume,
            state,
            key,
            batch_size,
            epochs,
            setup.plan.steps,
            setup.monitor.cost_convention,
            None if ema is None else ema.meta(),
            streamed=setup.feed is not None,
        )
        state, start, history, saved, run = resumed.state, resumed.epoch, resumed.history, resumed.stopping, resumed.run
    if setup.feed is not None:  # a one-shot iterator gives one epoch
        setup.feed.check_epochs(epochs - start)
    step = 0 if resumed is None else resume_mid_epoch(setup, resumed.meta, start, resumed.path, epochs)
    # every input checked: the folder is made and locked only now (a refused run leaves nothing on disk)
    writer = None if checkpoint is None else checkpoint_folder.open_writer(checkpoint, run, start, epochs, step)
    try:
        begun = _stopping(state, start, history, writer, setup, rule, resume, resumed, saved, key, verbose, ema, run)
        return (*begun, run)
    except BaseException:
        if writer is not None:
            writer.close()
        raise


def _stopping(state, start, history, writer, setup, rule, resume, resumed, saved, key, verbose, ema, run):
    """``_begin``'s result with early stopping's state (fresh, or resumed with its best params)."""
    if rule is None:
        return state, start, history, None, writer
    stopper = stopping_hooks.Stopper.resumed(
        rule,
        saved,
        start,
        None if resumed is None else resumed.path,
        writer=writer,
        key=key,
        verbose=verbose,
        every=setup.schedule.every,
        ema=ema is not None and ema.returned,
    )
    if isinstance(resume, checkpoint_folder.Snapshot):  # a Result: its best params are in memory
        stopper.best = resume.best if rule.restore_best and stopper.state["best_epoch"] is not None else None
    elif resumed is not None:
        stopper.restore(resumed.path.parent, state.params, state.model_state, run)
    return state._replace(lr_scale=stopper.lr_scale()), start, history, stopper, writer


def _finisher(key: Any, batch_size: int, streamed: bool, run: str, stateful: bool, ema: EMA | None) -> Any:
    """``finish(state, epochs done, stopper, history) -> Result``: the params (the best epoch's if kept, the EMA's
    with ``EMA(returned=True)``), the optimizer and model state, and the snapshot ``resume=`` continues from (with
    the run's id, ``run``: a resumed run keeps it, and its trackers' runs with it)."""

    def finish(state: TrainState, epochs_done: int, stopper: Any, history: History) -> Result:
        best = None if stopper is None else stopper.best
        params = optimizer_.state_params(state, ema is not None and ema.returned)
        params, final_state = jax.tree.map(jnp.asarray, best if best is not None else (params, state.model_state))
        stopping = None if stopper is None else stopper.state
        snapshot = checkpoint_folder.Snapshot.take(
            state, epochs_done, key, history, batch_size, stopping, streamed, run, best=best
        )
        return Result(
            params=params,
            history=history,
            opt_state=state.opt_state,
            model_state=final_state,
            snapshot=snapshot,
            stateful=stateful,
        )

    return finish


def _checkpointer(writer: checkpoint_folder.Writer, key: Any, batch_size: int, stopper: Any, streamed: bool) -> Hook:
    def hook(run: Run) -> None:
        if writer.config.due(run.epoch, run.epochs) or run.stop:
            stopping_state = None if stopper is None else stopper.state
            writer.save(run.state, run.epoch + 1, key, run.history, batch_size, stopping_state, streamed)

    return hook
