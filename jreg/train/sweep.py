"""``sweep``: K models that differ in hyperparameters, trained in one compiled program on the same loop as fit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import JregError, JregTypeError
from .._signature import checked
from .._types import ModelState, Params
from ..stopping import EarlyStopping
from ..writers import Runs, Writer, check_writers
from . import checkpoint_folder, divergence, mesh, sweep_checkpoint
from . import early_stopping as stopping_hooks
from . import members as per_member
from . import optimizer as optimizer_
from . import resume as resuming
from .config import EMA, Checkpointing, Guard, ModelParallel, as_ema, as_guard, check_decay
from .engine import VECTORIZE, Build, program
from .epoch import check_unroll
from .history import History
from .loop import Hook, Run, progress, record, run_epochs, user_callback
from .members import MEMBER_SETS
from .prepare import check_hparams, default_vectorize, initial_state, prepared_models
from .result import Result
from .setup import Setup, check_checkpointing, check_mid_epoch, mid_epoch, resume_mid_epoch
from .state import TrainState
from .validate import check_loop_args


@checked("sweep", passthrough=(MEMBER_SETS,))
def sweep(
    build: Build,
    params: Params,
    train: Any,
    *,
    hparams: Mapping[str, Any],
    epochs: int,
    batch_size: int,
    key: jax.Array,
    evaluation: Any = None,
    model_state: ModelState = None,
    stacked_params: bool = False,
    vectorize: str = "auto",
    monitor: Iterable[str] | None = None,
    partial_batch: str = "include",
    verbose: bool = False,
    callback: Callable[..., None] | None = None,
    ema: EMA | None = None,
    parallel: ModelParallel | None = None,
    early_stopping: EarlyStopping | None = None,
    checkpoint: Checkpointing | None = None,
    resume: Any = None,
    unroll: int | None = None,
    guard: Guard | None = None,
    writers: Sequence[Writer] | None = None,
    data_order: str = "shared",
    resample: str | None = None,
    **unknown: Any,
) -> Result:
    """Train K models that differ in hyperparameters in one compiled program; the same loop as :func:`fit`.

    ``build(hp) -> (objective, optimizer)`` receives one model's hyperparameters
    as scalars (``hp["lmbda"]``, ``hp["eta"]``...) and returns its objective and
    optimizer. Under the sweep those scalars are traced, so one program serves
    every value: penalty coefficients and optax learning rates accept traced
    values, nothing is recompiled per value. ``build`` is also called once per
    model with concrete values first, so bad values (a negative ``lmbda``)
    raise the usual clear error.

    Every model sees the same data order (the shuffles come from ``key``, as
    in :func:`fit`), so model ``i`` of a sweep equals :func:`fit` run with
    ``build({k: v[i]})`` alone (up to float reassociation).

    A model whose training becomes non-finite (params, optimizer or model
    state, or a monitored cost) is frozen at its last finite params while the
    others go on; ``history.diverged`` says which, at which epoch and step, and
    what went bad, and its series hold NaN from then on.

    Args:
        build: ``build(hp) -> (objective, optimizer)``.
        params: initial params shared by every model; or, with
            ``stacked_params=True``, params with a leading axis of size K;
            or an init function of a key (``model.init``) with a ``seed``
            entry in ``hparams``: member ``i`` starts from
            ``init(jax.random.key(seed[i]))``, so 3 seeds x 8 strengths is
            ``hparams=jreg.grid(lmbda=[...], seed=range(3))`` (the seed is
            passed to ``build`` too, which may ignore it). The data order and
            dropout noise stay shared by every member, as without seeds.
        train: in-memory data as in :func:`fit`, or a stream of mini-batches
            (:class:`jreg.Stream`; docs/streaming.md): every model trains on
            the same chunks, in one compiled program per chunk.
        hparams: ``{name: K values}``; every entry has the same length K.
        model_state: a stateful model's initial state, shared (or stacked with
            ``stacked_params=True``); each model keeps its own
            (``result.model_state``).
        vectorize: how the K models' training steps share the program:
            ``"vmap"`` batches them (best on GPU/TPU and for large K),
            ``"map"`` runs them one after another inside the same compiled
            program (``lax.map``; faster on CPU, where XLA's small batched
            matmuls are slow at small K), ``"wide"`` vmaps the models inside
            each step of one scan and carries every weight matrix with the
            model axis second (``(784, K, 30)``), so the mini-batch, the same
            for every model, meets all K first layers in one wide matmul and
            the weight gradient is one GEMM (results equal ``"vmap"``'s up
            to float reassociation; not with ``parallel``). There every dense
            layer (:func:`jreg.mlp`'s, Flax's, NNX's, Equinox's, Haiku's: any
            product of a params leaf, :mod:`jreg.train.left_products`) takes
            its weight gradient as ``aᵀ·g``, one matmul whose output is already
            in that layout. The per-epoch evaluations are batched either way.
            ``"auto"`` (default): ``"wide"`` when the members share their
            mini-batches and every param is a vector or matrix per model (dense
            layers), from K = 4 on a CPU and K = 1,024 on an accelerator;
            otherwise ``"map"`` on a CPU for K = 2 or 3, else ``"vmap"``.
            docs/scaling.md says which is fastest where, with the measurements
            (docs/benchmarks.md) behind each rule.
        evaluation: held-out data, or a :class:`jreg.Evaluation` (metrics,
            evaluation batch size, every k epochs), as in :func:`fit`.
        ema: a :class:`jreg.EMA`, as in :func:`fit`, for every model: one
            shared decay (``EMA(decay=0.999)``), or each model's own from an
            ``hparams`` entry (``EMA(decay="ema_decay")`` with
            ``hparams={"ema_decay": [...], ...}``; traced, one program serves
            every value; ``build`` receives that entry too and may ignore it).
            With ``returned`` the stacked params returned are the EMAs.
        parallel: a :class:`jreg.ModelParallel` to split the K models across
            the devices of a mesh (and, with its ``data_axis``, each
            mini-batch too); K must be a multiple of the model axis's size.
            Results equal the single-device sweep up to float reassociation
            (docs/scaling.md).
        monitor: which series to measure for every model, as in :func:`fit`:
            by default ``epoch_loss`` (from the training steps) and, with
            held-out data, the evaluation series; the same names for in-memory
            and streamed data. The whole-training-set series (``training_cost``
            and its parts, ``training_<metric>``) are measured only when named
            (``monitor=jreg.train.NETWORK2``); ``monitor=()`` trains fastest.
        early_stopping: a :class:`jreg.EarlyStopping`, applied to each model
            on its own, as :func:`fit` applies it (its default series likewise:
            ``evaluation_accuracy`` when measured, else ``evaluation_cost``): each keeps its own best
            value, patience count and (with ``lr_factor``, Nielsen's schedule)
            learning-rate scale, on the device as ``(K,)`` arrays updated by a
            small jitted function after each measured epoch (no loop over the
            models). A model that stops is frozen, as a diverged one is, while
            the others go on; ``history.stopped[i]`` says when and why (fit's
            ``history.stopped`` fields), its series hold NaN after that epoch,
            and ``learning_rate_scale`` records each model's scale with
            ``lr_factor``. With ``restore_best`` each model's params are those
            of its best epoch (this keeps one more copy of the stacked params,
            and of the model states). The sweep ends once every model has
            stopped or diverged. Model ``i`` stops at the epoch, cuts its
            learning rate at the epochs and returns the params that ``fit``
            with the same ``early_stopping`` gives it (up to float
            reassociation; ``min_delta`` is compared in float32).
        checkpoint: a :class:`jreg.Checkpointing`, as in :func:`fit` (the
            same folder rules and atomic files): each ``ckpt-<epoch>.npz``
            holds the stacked state, the ``alive`` flags, the early-stopping
            state and best params, the history (``diverged`` and ``stopped``
            included), the hyperparameters, and the EMA if kept.
        resume: a sweep's :class:`jreg.Result`, a sweep checkpoint file or
            folder, or ``"auto"``, as in :func:`fit`: the
            sweep goes on bit for bit on CPU as if never interrupted (with the
            same ``vectorize``), in this process or another. Resuming with
            other ``hparams`` (values or K), another key, batch size, cost
            convention or EMA setting is refused; so is a checkpoint of
            :func:`fit` (and ``fit`` refuses a sweep's).
        unroll: as in :func:`fit` (the K models' steps are unrolled together).
        guard: a :class:`jreg.Guard`, as in :func:`fit`, for each model on its
            own (the ratio rule against its own first epoch): a model whose
            running loss breaks a rule is frozen at the state of its last epoch
            within the limit and recorded in ``history.diverged`` (``"step"``
            None, the ``"quantity"`` naming the rule and the value), while the
            others go on.
        writers: trackers (:mod:`jreg.writers`), as in :func:`fit`, with one
            run per member named by its hyperparameters (``lmbda=0.1,eta=0.5``),
            which are recorded (TensorBoard's HParams, MLflow params, W&B
            config); a stopped or diverged member's NaN figures are not written.
        data_order: ``"shared"`` (default): every member shuffles with the run's
            key, as above. ``"per_member"``: member ``i`` shuffles epoch ``e``
            with ``fold_in(jreg.member_keys(key, K)[i], e)`` (and draws its
            dropout keys from that epoch key), so it equals
            ``fit(..., key=jreg.member_keys(key, K)[i])`` up to float
            reassociation (``jreg.member_keys(key, K)`` is
            ``jax.random.split(key, K)``).
        resample: None (default), or ``"bootstrap"``: member ``i`` trains on
            its own bootstrap resample of the training set, ``n`` indices drawn
            with replacement (:func:`jreg.bootstrap_indices` of its member key:
            ``randint(fold_in(member_keys(key, K)[i], BOOTSTRAP_SALT), (n,), 0, n)``;
            its epochs shuffle positions in that sample, with the shared or the
            member's key per ``data_order``). With ``evaluation="out_of_bag"``
            (or ``Evaluation("out_of_bag", ...)``) each member measures the
            examples its sample left out, exact means over sets of unequal
            sizes. A bagged ensemble: :func:`jreg.ensemble` of the result.
            Per-member data (either keyword) trains with ``vectorize="vmap"``
            or ``"map"`` (``"wide"`` is refused: it needs one mini-batch shared
            by every member), in memory (no stream); with ``parallel=`` the
            members' index sets and keys are split over the model axis as
            the state is (docs/scaling.md); mini-batches are gathered inside
            each step from the shared arrays (no copy of the data set per
            member). docs/selection.md.
        The rest as in :func:`fit`.

    Returns:
        A :class:`jreg.Result` of K models: ``params``, ``opt_state`` and
        ``model_state`` stacked along a leading axis of size K, ``hparams``
        (``{name: (K,)}``), and a K-model :class:`History` whose series have
        shape ``(K, measurements)`` and whose ``stopped``/``diverged`` records
        index like them. ``result.best()`` ranks the members,
        ``result.select(k)`` takes member ``k`` out, ``sweep(...,
        resume=result)`` continues the sweep.
    """
    sets = unknown.pop(MEMBER_SETS, None)  # cross_validate's folds
    hp, models, ema, checkpoint, resume, vectorize, epochs, batch_size, unroll = _checked(
        build, hparams, ema, checkpoint, resume, parallel, vectorize, epochs, batch_size, key, callback, unroll, unknown
    )
    guard = as_guard(guard)
    writers = check_writers(writers, "sweep")
    train, evaluation, members = per_member.prepare(
        train, evaluation, key, models, batch_size, partial_batch, data_order, resample, sets, vectorize
    )
    copies = (ema is not None, bool(getattr(early_stopping, "restore_best", False)))  # sized before allocation
    params, model_state, stacked_params, setup = prepared_models(
        build, params, model_state, train, evaluation, hp, models, stacked_params, batch_size, key, partial_batch,
        monitor, copies, "jreg.sweep",
    )  # fmt: skip
    setup = per_member.attach(setup, members, sets)
    vectorize = default_vectorize(vectorize, models, members=members, params=params, stacked=stacked_params)
    rule = stopping_hooks.check(early_stopping, setup.monitor, "sweep")
    limits = divergence.limits(guard, setup, models, "sweep", checkpoint)
    stopper = None
    if rule is not None:
        stopper = stopping_hooks.SweepStopper(rule, models, setup.schedule.every, ema is not None and ema.returned)
    if checkpoint is not None:
        check_checkpointing(checkpoint, setup.model_state)
        check_mid_epoch(checkpoint, setup, "sweep")
    scaled = stopper is not None and stopper.scaled  # early stopping's per-model lr cuts
    initial = initial_state(build, hp, models, stacked_params, ema is not None, scaled)
    state = initial(params, model_state)  # fresh buffers, safe to donate
    alive = jnp.ones((models,), bool)
    history = History(
        cost_convention=setup.monitor.cost_convention, ema=None if ema is None else ema.meta(), models=models
    )
    track = _Tracking(stopper, None if stopper is None else stopper.initial(), None, verbose)
    if stopper is not None:
        track.best = stopper.initial_best(state)
    start, run_id, step = 0, checkpoint_folder.new_run(), 0
    if resume is not None:
        data = per_member.meta(setup.members)
        state, alive, start, run_id, resumed = sweep_checkpoint.resumed(
            resume, state, hp, models, setup, key, batch_size, epochs, ema, track, history, data
        )
        step = resume_mid_epoch(setup, resumed.meta, resumed.epoch, resumed.path, epochs, models)
    placed = _placed(parallel, state, hp, alive, setup, track, key)
    epoch = _program(build, setup, models, vectorize, ema, placed[-2], parallel, unroll, epochs)
    # every input checked: the folder is made and locked only now (a refused run leaves nothing on disk)
    writer = None if checkpoint is None else checkpoint_folder.open_writer(checkpoint, run_id, start, epochs, step)
    tracked = None
    try:  # the folder's lock is released and the trackers' runs closed when the sweep ends, however it ends
        names = None if sets is None else sets.get("names")  # cross_validate's: the setting and the fold
        tracked = Runs.of_members(writers, hparams, group=run_id, start=start, function="sweep", names=names)
        run = _train(epoch, placed, setup, stopper, track, key, epochs, start, history, models, rule, hp, build, ema,
                     writer, batch_size, verbose, callback, limits, tracked)  # fmt: skip
    finally:
        if tracked is not None:
            tracked.close()
        if writer is not None:
            writer.close()
    return _result(run, start, hp, setup, track, key, batch_size, run_id if writer is None else writer.run, ema,
                   model_state is not None)  # fmt: skip


def _train(epoch, placed, setup, stopper, track, key, epochs, start, history, models, rule, hp, build, ema, writer,
           batch_size, verbose, callback, limits, tracked=None) -> Run:  # fmt: skip
    """The sweep's epochs from the first not done (``start``): the final :class:`Run`."""

    def one_epoch(state: TrainState, alive: Any, e: int):
        due = setup.schedule.due(e, epochs)
        data = placed[3] if setup.feed is None else setup.feed.epoch(e)  # a stream: epoch e opened
        limit = {} if limits is None else limits.next(history)  # a Guard's limits for this epoch (traced)
        members = setup.members
        if members is None:
            out = epoch(placed[1], state, alive, data, placed[4], jax.random.fold_in(key, e), evaluate=due, **limit)
        else:  # per-member data: the members' index sets, and their own epoch keys with data_order="per_member"
            indices, epoch_keys = placed[5]
            out = epoch(placed[1], state, alive, data, placed[4], epoch_keys(e), indices, evaluate=due, **limit)
        if placed[-1] is not None:
            out = (*out[:2], *placed[-1](out[2:]))  # figures readable by every process
        return out if stopper is None else track.advance(out, e, rule.monitor)

    hooks = _hooks(build, hp, setup, key, ema, track, models, writer, batch_size, verbose, callback, limits, tracked)
    if writer is not None:  # Checkpointing(every_steps=...): the stream writes mid-epoch checkpoints too

        def save(state: TrainState, alive: Any, position: dict[str, Any]) -> None:
            data = per_member.meta(setup.members)
            packed = sweep_checkpoint.pack(hp, state, alive, history, track.stopper, track.per, track.best, data)
            writer.save(state, position["epoch"], key, history, batch_size, None, True, sweep=packed, position=position)

        mid_epoch(setup, writer.config, save)
    run = Run(placed[0], placed[2], epochs, history)
    if len(history.diverged) + len(history.stopped) < models:  # a resumed sweep may have finished already
        run = run_epochs(one_epoch, run, start, hooks, np.asarray)
    return run


def _program(build, setup: Setup, models: int, vectorize: str, ema, sharding, parallel, unroll, epochs: int):
    """The sweep's compiled epoch (:func:`jreg.train.engine.program`) for K models evaluating at once."""
    monitor = dataclasses.replace(setup.monitor, memory=setup.monitor.memory // models)  # K models evaluate at once
    if setup.feed is not None and parallel is not None:
        raise JregError("sweep: parallel=ModelParallel(...) with a stream is not supported yet; pass in-memory data")
    epoch = program(
        build,
        setup.plan,
        monitor,
        models=models,
        vectorize=vectorize,
        ema=ema,
        sharding=sharding,
        feed=setup.feed,
        unroll=unroll,
        members=setup.members,
        split_models=None if parallel is None or setup.members is None else mesh.by_model(parallel),
    )
    if setup.feed is not None:  # a one-shot iterator gives one epoch
        setup.feed.check_epochs(epochs)
    return epoch


def _checked(build, hparams, ema, checkpoint, resume, parallel, vectorize, epochs, batch_size, key, callback, unroll,
             unknown):  # fmt: skip
    """Every argument of :func:`sweep` that needs no data checked, before any work: ``(hp, models, ema,
    checkpoint, resume, vectorize, epochs, batch_size, unroll)``."""
    if unknown:
        raise JregTypeError(f"sweep() got unexpected keyword argument(s) {sorted(unknown)}")
    if not callable(build):
        raise JregTypeError(f"build must be callable build(hp) -> (objective, optimizer), got {build!r}")
    if vectorize not in VECTORIZE:
        raise JregError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    hp, models = check_hparams(hparams)
    ema = as_ema(ema)
    if ema is not None and isinstance(ema.decay, str):
        if ema.decay not in hp:
            raise JregError(f"ema: EMA.decay={ema.decay!r} names no hparams entry; the entries are {sorted(hp)}")
        for i, value in enumerate(np.asarray(hp[ema.decay]).tolist()):
            check_decay(value, f"hparams[{ema.decay!r}][{i}] (the EMA decay)")
    if checkpoint is not None and not isinstance(checkpoint, Checkpointing):
        raise JregTypeError(
            f"checkpoint must be a jreg.Checkpointing('folder', every=..., keep=...), got {checkpoint!r}"
        )
    resume = resuming.resolve(resume, checkpoint, "sweep")
    checkpoint = _check_checkpoint(checkpoint, resume)
    if parallel is not None and vectorize == "auto":
        vectorize = "vmap"  # the models split across devices, batched on each
    epochs, batch_size = check_loop_args(epochs, batch_size, key, callback)
    unroll = check_unroll(unroll)
    mesh.check_models(parallel, models, batch_size, vectorize)
    return hp, models, ema, checkpoint, resume, vectorize, epochs, batch_size, unroll


def _result(run: Run, start: int, hp: Any, setup: Setup, track: _Tracking, key: Any, batch_size: int, run_id: str,
            ema: EMA | None, stateful: bool) -> Result:  # fmt: skip
    """The sweep's :class:`Result`: the params (each member's best epoch's with ``restore_best``, the EMAs with
    ``EMA(returned=True)``), the state, and the snapshot ``resume=result`` continues from."""
    stopper, history = track.stopper, run.history
    data = per_member.meta(setup.members)
    params = optimizer_.state_params(run.state, ema is not None and ema.returned, stacked=True)
    final_state = run.state.model_state
    if track.best is not None:
        params, final_state = stopper.result(track.best, track.per, (params, final_state))  # type: ignore[union-attr]
    done = run.epoch + 1 if run.epoch >= start else start
    packed = sweep_checkpoint.pack(hp, run.state, run.alive, history, track.stopper, track.per, track.best, data)
    streamed = setup.feed is not None
    snapshot = checkpoint_folder.Snapshot.take(
        run.state, done, key, history, batch_size, None, streamed, run_id, packed
    )
    return Result(
        params=params,
        history=history,
        opt_state=run.state.opt_state,
        model_state=final_state,
        hparams={k: np.asarray(v) for k, v in hp.items()},
        snapshot=snapshot,
        stateful=stateful,
    )


def _hooks(build, hp, setup, key, ema, track, models, writer, batch_size, verbose, callback, limits=None,
           tracked=None) -> list[Hook]:  # fmt: skip
    """The host loop's hooks after each epoch, in their documented order (docs/architecture.md): divergence,
    early stopping, the record, progress, the user's callback, the trackers, the end when every member is done,
    the checkpoint."""
    hooks: list[Hook] = [divergence.members(build, hp, setup, key, ema, limits)]
    hooks += [track.hook] if track.stopper is not None else []
    hooks += [record]
    hooks += [progress(setup.monitor)] if verbose else []
    hooks += [user_callback(callback)] if callback is not None else []
    hooks += [tracked.hook()] if tracked is not None else []
    hooks += [_all_done(models)]
    if writer is not None:
        data = per_member.meta(setup.members)
        hooks += [sweep_checkpoint.checkpointer(writer, key, batch_size, hp, track, setup.feed is not None, data)]
    return hooks


def _placed(
    parallel: ModelParallel | None, state: TrainState, hp: Any, alive: Any, setup: Setup, track: _Tracking, key: Any
) -> tuple:
    """``(state, hp, alive, train, evaluation, members, batch sharding, gather)`` on the mesh of ``parallel``, or as
    they are.

    ``members``: per-member data's ``(index sets, epoch_keys(e))`` (None without): the compiled epoch's ``index``
    (:meth:`jreg.train.members.Members.arrays`) and the epoch's shuffle key(s); on a mesh both are split along the
    model axis as the state is (a group of some members' sets replicated). ``gather`` replicates the epoch's
    figures on every device (None: no mesh). The early-stopping state in ``track`` (fresh or resumed) is split
    over the models as the state is, and read back through ``gather``."""
    members = setup.members
    if parallel is None:
        own = None if members is None else (members.arrays(), lambda e: members.epoch_keys(key, e))
        return state, hp, alive, setup.train, setup.evaluation, own, None, None
    state, (hp, alive, track.per, track.best), (train, held_out), batch = mesh.place_models(
        parallel, state, (hp, alive, track.per, track.best), (setup.train, setup.evaluation)
    )
    track.gather = mesh.gathered(parallel)
    own = None
    if members is not None:  # the members' own keys split as the state is; the shared key as without members
        own_keys = members.order == "per_member"
        keys = mesh.member_epoch_keys(parallel, members.keys) if own_keys else lambda e: members.epoch_keys(key, e)
        own = (members.arrays(mesh.member_arrays(parallel)), keys)
    return state, hp, alive, train, held_out, own, batch, track.gather


def _check_checkpoint(checkpoint: Any, resume: Any) -> Checkpointing | None:
    """``checkpoint=`` and ``resume=`` checked before any work, as :func:`fit` checks them."""
    if checkpoint is not None and not isinstance(checkpoint, Checkpointing):
        raise JregTypeError(
            f"checkpoint must be a jreg.Checkpointing('folder', every=..., keep=...), got {checkpoint!r}"
        )
    resuming.check_resume(resume)
    if checkpoint is not None:  # a folder holding another run's checkpoints is refused before any work
        checkpoint_folder.check_folder(checkpoint, resume)
    return checkpoint


@dataclasses.dataclass
class _Tracking:
    """Early stopping's per-model state on the device between epochs (``per``, ``best``) and its host hook."""

    stopper: stopping_hooks.SweepStopper | None
    per: Any
    best: Any
    verbose: bool = False
    gather: Any = None  # models split across processes: their state replicated before the host reads it

    def advance(self, out: tuple, e: int, monitored: str) -> tuple:
        """After the compiled epoch, still on the device: each model's patience state, cuts, best params, stop."""
        state, alive, metrics, ok = out
        stopper = self.stopper
        assert stopper is not None
        ok = ok | (self.per.stopped >= 0)  # a stopped model is frozen, not diverged (its discarded epoch may be)
        if stopper.scaled:  # the scale this epoch ran with, as fit records it
            metrics = {**metrics, "learning_rate_scale": state.lr_scale}
        if monitored in metrics:  # measured this epoch (Evaluation.every)
            kept = stopper.kept(state) if self.best is not None else None
            self.per, self.best, alive, scale = stopper.advance(
                self.per, self.best, kept, metrics[monitored], alive, jnp.int32(e)
            )
            state = state._replace(lr_scale=scale) if stopper.scaled else state
        if self.gather is not None:  # the flags and scales joined to the figures: readable by every process
            metrics, ok = self.gather((metrics, ok))
        return state, alive, metrics, ok

    def hook(self, run: Run) -> None:
        """Record the models that stopped this epoch; blank the figures of those that stopped before."""
        stopper = self.stopper
        assert stopper is not None
        history: History = run.history
        per = jax.device_get(self.per if self.gather is None else self.gather(self.per))
        for i in np.flatnonzero(per.stopped >= 0):
            if int(i) not in history.stopped and int(i) not in history.diverged:
                history.stopped[int(i)] = stopper.record(per, int(i))
                if self.verbose:
                    print(f"Epoch {run.epoch + 1}: model {int(i)} stopped: {stopper.reason}", flush=True)
        before = sorted(i for i, v in history.stopped.items() if v["epochs"] <= run.epoch)
        if before:
            run.values = {k: divergence.blank(v, before) for k, v in run.values.items()}


def _all_done(models: int) -> Hook:
    """End the sweep once every model has stopped or diverged."""

    def hook(run: Run) -> None:
        history: History = run.history
        if len(history.diverged) + len(history.stopped) >= models:
            run.stop = True

    return hook
