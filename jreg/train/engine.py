"""The compiled epoch shared by fit and sweep: train, monitor, check, for one model or K of them.

``build(hp) -> (objective, optimizer)`` gives a model's objective and
optimizer from its hyperparameters (for ``fit``: the one pair, whatever
``hp``). The program runs one epoch of training (:func:`run_epoch`), then,
when due, the monitored evaluations on the new params, then the divergence
check, and returns ``(state, alive, metrics, ok)``. For a sweep the same
functions run over a leading model axis: training with ``jax.vmap`` or one
model after another (``lax.map``), evaluation always batched across models
(the shared data meets every model's weights in one matmul), the check per
model. With per-member data (:mod:`jreg.train.members`) each group of members
of one training-set size trains with its own plan, and each member measures
its own examples (one after another with ``"map"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._errors import JregError
from ..nn import left_product_weight_gradients
from . import calls, guard, left_products, stream, wide_layout
from . import optimizer as optimizer_
from .config import EMA
from .epoch import run_epoch
from .members import Members
from .monitor import EPOCH_LOSS, Monitor
from .plan import EpochPlan
from .state import TrainState
from .step import apply_fn, gradient_fn, make_update

Build = Callable[[Any], tuple[Callable[..., Any], optax.GradientTransformation]]
VECTORIZE = ("auto", "vmap", "map", "wide")


def program(
    build: Build,
    plan: EpochPlan,
    monitor: Monitor,
    *,
    models: int | None,
    vectorize: str = "vmap",
    sharding=None,
    ema: EMA | None = None,
    feed: stream.Feed | None = None,
    unroll: int | None = None,
    members: Members | None = None,
    split_models=None,
) -> Callable[..., Any]:
    """Jitted ``epoch(hp, state, alive, train, evaluation, key, index=None, *, evaluate, limit=None) -> (state,
    alive, metrics, ok)``.

    ``members``: per-member data (:mod:`jreg.train.members`; a sweep's ``vectorize`` ``"vmap"`` or ``"map"``):
    each group of members trains on its own index sets (``index``: :meth:`Members.arrays`), with ``key`` the
    run's epoch key (``"shared"`` order) or the members' (K,) epoch keys (``"per_member"``), and measures its
    own examples where it has them. ``split_models``: with per-member data on a model mesh
    (``ModelParallel``), the sharding that splits a leading model axis over the mesh's model axis: a group of
    some members, picked out of the stacked state, is split over it again (when its size divides evenly), so
    that its members train on their own devices rather than whole on every one.

    ``limit``: a :class:`jreg.Guard`'s limit on the epoch's running loss (float32, one per model in a sweep;
    traced, so new values compile nothing): an epoch whose running loss exceeds it fails the check as a
    non-finite one does. None (no guard) leaves the program as it was.

    ``models=None``: one model (``fit``); else the state, ``hp`` and ``alive``
    have a leading axis of size ``models``. ``state`` is donated. With ``ema``
    (:class:`jreg.EMA`; ``state.ema`` then holds the average) every step updates
    the EMA of the params with the model's decay, and ``ema.evaluate`` measures
    the monitored series with the EMA params.

    With ``feed`` (a streamed run, :mod:`jreg.train.stream`) the program takes
    the opened epoch (``feed.epoch(e)``) in place of ``train`` and runs it in
    compiled chunks.

    ``unroll``: training steps per iteration of the compiled loop over mini-batches (``None``: on an
    accelerator 8 for a small step, else 1, :func:`jreg.train.epoch.auto_unroll`; on a CPU and for a
    stream's chunks 1).
    When no running loss is monitored, the steps do not keep a per-step loss series: one flag per
    model, whether every step's loss stayed finite, is what the divergence guard reads.
    """
    if feed is not None:  # a stream's chunks: "wide" runs as "vmap" there
        vectorize = "vmap" if vectorize == "wide" else vectorize
        return stream.program(
            build, feed, monitor, models=models, vectorize=vectorize, sharding=sharding, ema=ema, unroll=unroll
        )
    finite_only = not monitor.epoch_loss  # the guard needs only whether every step's loss was finite
    if members is not None:
        return _member_program(build, monitor, vectorize, ema, sharding, finite_only, unroll, members, split_models)
    train_one = _trainer(build, plan, ema, sharding, finite_only, unroll)
    train_wide = _wide_trainer(build, plan, ema, sharding, finite_only, unroll)
    measure_one = _measurer(build, monitor, ema)
    check_one = _checker(monitor)

    one_model = _as_model_of_one(train_one) if sharding is None and _vmap_one() else train_one

    def epoch(hp, state, alive, train, evaluation, key, *, evaluate: bool, limit=None):
        if models is None:
            new, running = one_model(hp, state, train, key)
        elif vectorize == "vmap":
            new, running = jax.vmap(train_one, in_axes=(0, 0, None, None))(hp, state, train, key)
        elif vectorize == "wide":
            new, running = train_wide(hp, state, train, key)
        else:
            new, running = jax.lax.map(lambda a: one_model(a[0], a[1], train, key), (hp, state))
        metrics = {EPOCH_LOSS: running["loss"]} if monitor.epoch_loss else {}
        loss = jnp.where(running["finite"], 0.0, jnp.nan) if finite_only else running["loss"]
        if evaluate:
            measure = measure_one if models is None else jax.vmap(measure_one, in_axes=(0, 0, None, None))
            metrics.update(measure(hp, new, train, evaluation))
        check = check_one if models is None else jax.vmap(check_one)
        if limit is not None and finite_only:  # the front ends refuse a Guard without epoch_loss monitored
            raise JregError("a jreg.Guard reads the running loss epoch_loss, which this run does not monitor")
        state, ok, alive = check(state, new, loss, metrics, alive, limit)
        return state, alive, metrics, ok

    return jax.jit(epoch, static_argnames=("evaluate",), donate_argnames=("state",))


def _member_program(build, monitor, vectorize, ema, sharding, finite_only, unroll, members: Members,
                    split_models=None):  # fmt: skip
    """The compiled epoch of K models with per-member data: each group of equal-sized training sets trains with
    its own plan (``vmap`` or ``lax.map`` over its members), the groups' states joined back in member order.
    ``"wide"``: each set of members that share a training set and its order (a fold's settings) trains as one
    wide sweep (:meth:`Members.shared_sets`). ``split_models``: :func:`program`'s (a model mesh)."""
    if vectorize == "wide" and not members.wide():
        raise JregError(
            "vectorize='wide' needs mini-batches shared by the members; these members each train on their own"
        )
    trainers = [_trainer(build, g.plan, ema, sharding, finite_only, unroll) for g in members.groups]
    shared = members.shared_sets() if vectorize == "wide" else ()
    wides = [_wide_trainer(build, members.groups[g].plan, ema, sharding, finite_only, unroll) for g, _, _ in shared]
    own_keys = members.order == "per_member"
    order = np.concatenate([ids for _, ids, _ in shared] if shared else [g.members for g in members.groups])
    inverse = np.argsort(order)
    single = members.single and len(shared) <= 1
    measure_one = _measurer(build, monitor, ema)
    check_one = _checker(monitor)
    ways = 1 if split_models is None else split_models.mesh.shape[split_models.spec[0]]

    def spread(tree, size: int):
        """A group of ``size`` members picked out of the stacked state split over the model axis again (moved
        between devices once an epoch), when it divides evenly; else XLA keeps it whole on every device."""
        if split_models is None or size % ways:
            return tree
        return jax.lax.with_sharding_constraint(tree, split_models)

    def train_group(g, hp, state, train, key, index):
        ids = members.groups[g].members
        pick = (lambda t: t) if members.single else (lambda t: jax.tree.map(lambda a: a[ids], t))
        hp_g, state_g = pick(hp), pick(state)
        key_g = pick(key) if own_keys else key
        idx = index["groups"][g]
        if not members.single:
            hp_g, state_g, idx = spread((hp_g, state_g, idx), len(ids))
            key_g = spread(key_g, len(ids)) if own_keys else key_g
        train_one = trainers[g]
        if vectorize == "vmap":
            axes = (0, 0, None, 0 if own_keys else None, None if idx is None else 0)
            return jax.vmap(train_one, in_axes=axes)(hp_g, state_g, train, key_g, idx)

        one_model = _as_model_of_one(train_one) if sharding is None and _vmap_one() else train_one

        def one(a):
            h, s, k, i = a
            return one_model(h, s, train, k if own_keys else key, i)

        return jax.lax.map(one, (hp_g, state_g, key_g if own_keys else None, idx))

    def train_shared(j, hp, state, train, key, index):
        """The members of one shared set (:meth:`Members.shared_sets`) as one wide sweep over their set."""
        g, ids, row = shared[j]
        pick = (lambda t: t) if single else (lambda t: jax.tree.map(lambda a: a[ids], t))
        idx = None if row < 0 else index["groups"][g][row]
        return wides[j](pick(hp), pick(state), train, key, idx)

    view_groups = members.view_groups() if members.exact else (np.arange(members.models),)
    view_order = np.concatenate(view_groups)

    def measure_groups(hp, new, train, evaluation, views):
        """Each group of members on its own views (one group: every member, in order)."""
        outs = []
        for ids, group in zip(view_groups, views):
            hp_v, new_v = hp, new
            if len(view_groups) > 1:  # this group's members, split over a model mesh again
                hp_v, new_v, group = spread(jax.tree.map(lambda a, ids=ids: a[ids], (hp, new)) + (group,), len(ids))
            if vectorize == "map":  # one member after another: each measured exactly as fit measures it
                outs.append(jax.lax.map(lambda a: measure_one(a[0], a[1], train, evaluation, a[2]),
                                        (hp_v, new_v, group)))  # fmt: skip
            else:
                outs.append(jax.vmap(measure_one, in_axes=(0, 0, None, None, 0))(hp_v, new_v, train, evaluation,
                                                                                group))  # fmt: skip
        if len(outs) == 1:
            return outs[0]
        return jax.tree.map(lambda *a: jnp.concatenate(a)[np.argsort(view_order)], *outs)

    def epoch(hp, state, alive, train, evaluation, key, index, *, evaluate: bool, limit=None):
        if shared:
            outs = [train_shared(j, hp, state, train, key, index) for j in range(len(shared))]
        else:
            outs = [train_group(g, hp, state, train, key, index) for g in range(len(members.groups))]
        if single:
            new, running = outs[0]
        else:
            new, running = jax.tree.map(lambda *a: jnp.concatenate(a)[inverse], *outs)
        metrics = {EPOCH_LOSS: running["loss"]} if monitor.epoch_loss else {}
        loss = jnp.where(running["finite"], 0.0, jnp.nan) if finite_only else running["loss"]
        if evaluate:
            metrics.update(measure_groups(hp, new, train, evaluation, index["views"]))
        if limit is not None and finite_only:
            raise JregError("a jreg.Guard reads the running loss epoch_loss, which this run does not monitor")
        state, ok, alive = jax.vmap(check_one)(state, new, loss, metrics, alive, limit)
        return state, alive, metrics, ok

    return jax.jit(epoch, static_argnames=("evaluate",), donate_argnames=("state",))


def _trainer(build: Build, plan: EpochPlan, ema: EMA | None, sharding, finite_only: bool, unroll: int | None):
    """``train_one(hp, state, train, key, index=None) -> (state, running)``: one model's epoch
    (:func:`run_epoch`; ``index``: its own training examples, per-member data)."""

    def train_one(hp, state: TrainState, train, key, index=None):
        objective, optimizer = build(hp)
        # the loss value is always computed: the guard needs it even when nothing is monitored (a loss can
        # become inf or NaN while its gradient stays finite); it costs little beside the gradient
        decay = None if ema is None else ema.decay_of(hp)
        update = make_update(objective, optimizer, with_metrics=True, ema_decay=decay)
        keyed = calls.takes_key(objective)
        loop = dict(sharding=sharding, finite_only=finite_only, unroll=unroll)
        return run_epoch(update, plan, state, train, key, keyed=keyed, index=index, **loop)

    return train_one


def _wide_trainer(build: Build, plan: EpochPlan, ema: EMA | None, sharding, finite_only: bool, unroll: int | None):
    """``train_wide(hp, state, train, key, index=None) -> (state, running)``: K models' epoch, ``vectorize="wide"``
    (``index``: the training examples every one of them trains on, :func:`run_epoch`'s; None: all of ``train``)."""

    def train_wide(hp, state: TrainState, train, key, index=None):
        """The K models ``vmap``-ed inside each step of one scan, a weight matrix that meets the shared mini-batch
        carried with the model axis next to its output axis: ``(784, K, 30)`` for ``x @ W`` (jreg, Flax, Haiku),
        ``(K, 30, 784)`` for ``W @ x`` (Equinox): the mini-batch meets all K first layers in one wide matmul and
        each weight gradient (``aᵀ·g``, ``g·x``) is one product in that layout; deeper layers (batched matmuls)
        model axis first (:mod:`jreg.train.wide_layout`)."""
        keyed = calls.takes_key(build(jax.tree.map(lambda v: v[0], hp))[0])
        # the carry's layout, leaf by leaf (jreg.train.wide_layout): model axis second for a weight that meets the
        # shared mini-batch as x @ W, first for one used as W @ x or meeting per-model activations; the optimizer
        # state and the EMA follow the params
        first = _weights_model_axis_first(build, hp, state, train, plan, key if keyed else None)
        axes = wide_layout.carry_axes(build, hp, state, train, plan.batch_size, keyed, first=first)
        carried = wide_layout.to_carry(state, axes)

        def grad_one(h, s, batch, k):
            # every weight's product (jreg's dense layers, and any model's through the jaxpr rewrite of
            # left_products) gives its gradient as aᵀ·g here: vmapped, one matmul whose output is already in the
            # carry's (n_in, K, n_out) layout (JAX's own rule leaves it transposed). A trace that fails with it
            # (forward-mode autodiff through the model, a jax.jvp in the user's loss, which a custom VJP cannot
            # take) is traced again with JAX's rule, outside the except clause, so that a genuine error reaches
            # the user once, unchained.
            objective = build(h)[0]
            try:
                with left_product_weight_gradients():
                    return gradient_fn(objective, with_value=True, rewrite=left_products.rewrite)(s, batch, k)
            except Exception:  # noqa: BLE001
                pass
            return gradient_fn(objective, with_value=True)(s, batch, k)

        def apply_one(h, s, grads, model_state, value, batch, k):
            decay = None if ema is None else ema.decay_of(h)
            objective, optimizer = build(h)
            return apply_fn(optimizer, ema_decay=decay, objective=objective)(s, grads, model_state, value, batch, k)

        def update(s, batch, k):
            # two vmaps, not one: the gradient leaves in the carry's layout (one transpose of each weight
            # gradient), so the update (params, gradients, optimizer state all in the carry's layout) needs
            # none; one vmap around both would move the params to the model-axis-first layout and back
            grads, metrics, model_state = jax.vmap(
                grad_one, in_axes=(0, axes, None, None), out_axes=(axes.params, 0, axes.model_state)
            )(hp, s, batch, k)
            new = jax.vmap(apply_one, in_axes=(0, axes, axes.params, axes.model_state, 0, None, None), out_axes=axes)(
                hp, s, grads, model_state, metrics["loss"], batch, k
            )
            return new, metrics

        loop = dict(sharding=sharding, finite_only=finite_only, unroll=unroll)
        new, running = run_epoch(update, plan, carried, train, key, keyed=keyed, index=index, **loop)
        return wide_layout.from_carry(new, axes), running

    return train_wide


#: ``fit``'s epoch (and each member's of a ``"map"`` sweep) runs as a ``vmap`` over one model (None:
#: :func:`_vmap_one` decides from the backend)
ONE_AS_VMAP: bool | None = None


def _vmap_one() -> bool:
    """Whether ``fit``'s epoch runs as a one-model ``vmap``: on a CPU (docs/scaling.md). There XLA then computes a
    weight gradient such as the first layer's ``(784, 30)`` one as ``δᵀ · x``, a ``(30, 784)`` product its fast
    matmul kernel takes, where the plain program's ``xᵀ · δ`` with a transposed operand goes to a slower one."""
    return jax.default_backend() == "cpu" if ONE_AS_VMAP is None else ONE_AS_VMAP


def _as_model_of_one(train_one):
    """``train_one`` run as a ``vmap`` over a model axis of size 1 (the same operations per model): ``fit``'s epoch,
    and each member's of a ``"map"`` sweep, so that such a member equals ``fit`` bit for bit."""

    def run(hp, state, train, key, *rest):
        axes = (None, 0, None, None) + (None,) * len(rest)
        new, running = jax.vmap(train_one, in_axes=axes)(hp, _with_axis(state), train, key, *rest)
        return jax.tree.map(lambda a: a[0], (new, running))

    return run


def _with_axis(tree):
    return jax.tree.map(lambda a: a[None], tree)


def _weights_model_axis_first(build: Build, hp, state: TrainState, train, plan: EpochPlan, key) -> set[tuple]:
    """The per-model shapes of the weights a ``"wide"`` sweep carries with the model axis first, ``(K, n_out,
    n_in)`` (products ``W @ x``, as Equinox's ``nn.Linear``: :func:`left_products.model_axis_first`); every
    other leaf of >= 2 dims per model is carried ``(n_in, K, ...)``. Decided from the first model's loss traced
    on one mini-batch's shapes; a shape some other weight needs the other way round stays model axis second
    (the optimizer state's leaves follow their params by shape)."""
    if not left_products.ENABLED:
        return set()
    one = lambda t: jax.tree.map(lambda a: a[0], t)  # noqa: E731
    s = one(state)
    rows = max(1, min(plan.batch_size, plan.n))
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((rows, *a.shape[1:]), a.dtype), train)
    try:
        flags = left_products.model_axis_first(
            calls.train_loss(build(one(hp))[0]), s.params, s.model_state, batch, key, s.step
        )
    except Exception:  # noqa: BLE001  (a model the rewrite cannot trace: the default layout; grad_one reports)
        return set()
    leaves = jax.tree.leaves(s.params)
    first = {a.shape for a, f in zip(leaves, flags) if f}
    return first - {a.shape for a, f in zip(leaves, flags) if not f and a.ndim >= 2}


def _measurer(build: Build, monitor: Monitor, ema: EMA | None):
    """``measure_one(hp, state, train, evaluation)``: the monitored series of one model (the EMA params if asked)."""

    def measure_one(hp, state: TrainState, train, evaluation, views=None):
        objective, _ = build(hp)
        params = optimizer_.state_params(state, ema is not None and ema.evaluate)
        return monitor.measure(objective, params, state.model_state, train, evaluation, state.step, views)

    return measure_one


def _checker(monitor: Monitor):
    """``check_one(old, new, loss, metrics, alive, limit)``: :func:`guard.check` on the loss and the guarded series;
    with ``limit`` (a :class:`jreg.Guard`'s, traced: None without one) a running loss above it fails it too."""

    def check_one(old: TrainState, new: TrainState, loss, metrics, alive, limit=None):
        over = None if limit is None else loss > limit
        return guard.check(old, new, [loss, *(v for k, v in metrics.items() if monitor.guarded(k))], alive, over)

    return check_one
