"""Training: one jitted step, one compiled epoch (``lax.scan``), and ``fit``.

Regularization lives in the objective, never here: any optax
``GradientTransformation`` updates the params from ``jax.grad`` of the
regularized objective.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _signature
from ._checks import check_finite, check_key, check_optimizer, check_positive_int
from ._errors import JregError, JregTypeError
from .data import batch_indices
from .losses import labels_of
from .objective import Objective, _check_batch
from .penalties import path_str
from .stopping import EarlyStopping

Params = Any
Metrics = dict[str, jax.Array]
StepFn = Callable[[Params, Any, tuple[Any, Any]], tuple[Params, Any, Metrics]]

PARTIAL_BATCH = ("include", "drop")
VECTORIZE = ("auto", "vmap", "map")
MONITORS = ("training_cost", "training_accuracy", "evaluation_cost", "evaluation_accuracy", "epoch_loss")


def _check_objective(objective: Any) -> None:
    if not callable(objective):
        raise JregTypeError(f"objective must be callable f(params, batch) -> (total, parts), got {objective!r}")


def _call(objective: Callable[..., Any], params: Params, batch: Any, key: Any = None, step: Any = None) -> Any:
    """``objective(params, batch)`` plus ``key``/``step`` when given and when the objective takes them."""
    return _signature.call(objective, params, batch, key=key, step=step)


def _raw_step(objective: Callable[..., Any], optimizer: optax.GradientTransformation, metrics: bool = True) -> StepFn:
    def total(p, b, k, t):
        return _call(objective, p, b, k, t)

    grad_fn = jax.value_and_grad(total, has_aux=True)
    # gradient only: XLA drops the forward computations only the loss value needs
    only_grad = jax.grad(lambda p, b, k, t: total(p, b, k, t)[0])

    def step(
        params: Params,
        opt_state: Any,
        batch: tuple[Any, Any],
        key: jax.Array | None = None,
        step: Any = None,
        lr_scale: Any = None,
    ) -> tuple[Params, Any, Metrics]:
        if metrics:
            (value, parts), grads = grad_fn(params, batch, key, step)
            out = {"loss": value, **parts}
        else:
            grads, out = only_grad(params, batch, key, step), {}
        updates, opt_state = optimizer.update(grads, opt_state, params)
        if lr_scale is not None:  # learning-rate halving by early stopping: every update scales with eta
            updates = jax.tree.map(lambda u: (u * lr_scale).astype(u.dtype), updates)
        params = optax.apply_updates(params, updates)
        return params, opt_state, out

    return step


def make_step(
    objective: Callable[..., Any], optimizer: optax.GradientTransformation, *, donate: bool = False
) -> StepFn:
    """A jitted pure step ``step(params, opt_state, batch, key=None, step=None) -> (params, opt_state, metrics)``.

    It takes ``jax.grad`` of the objective's total at ``params`` on ``batch = (x, y)``,
    lets ``optimizer`` turn the gradient into updates and applies them.
    ``metrics`` holds ``"loss"`` (the total before the step) and every entry
    of the objective's ``parts``.

    ``key`` (a ``jax.random`` key, a fresh one per step) puts a stochastic
    model (dropout, noise) in training mode; ``step`` (the global step count
    from 0) evaluates penalty-coefficient schedules. Both are passed on to the
    objective only if given and only if it takes them.

    Args:
        objective: ``f(params, batch) -> (total, parts)``, e.g. from :func:`jreg.objective`.
        optimizer: any optax ``GradientTransformation``.
        donate: donate ``params`` and ``opt_state`` to the step (saves memory;
            the arrays passed in may not be used again afterwards).
    """
    _check_objective(objective)
    check_optimizer(optimizer)
    raw = _raw_step(objective, optimizer)
    takes_key = _signature.accepts(objective, "key")

    def step(params, opt_state, batch, key=None, step=None):
        if key is not None and not takes_key:
            raise JregError(
                "make_step got a key, but the objective has no key parameter, so it would train without dropout "
                "or noise; use jreg.objective, or give your objective a key=None keyword"
            )
        return raw(params, opt_state, batch, key, step)

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def _mean_metrics(stacked: Metrics | None, weights: jax.Array) -> Metrics:
    if not stacked:
        return {}
    return {k: jnp.sum(v * weights) / jnp.sum(weights) for k, v in stacked.items()}


# Salt for the per-step keys: the shuffle uses the epoch key itself, so adding dropout changes no data order.
_NOISE_SALT = 0x6E6F6973


def _plan(objective, n, batch_size, partial_batch, key, step):
    """One epoch's schedule: full-batch indices, the rest, and per-step keys and global steps (or None)."""
    full, rest_idx = batch_indices(n, batch_size, key)
    count = full.shape[0] + (1 if rest_idx.shape[0] and partial_batch == "include" else 0)
    keys = None
    if _signature.accepts(objective, "key"):
        keys = jax.random.split(jax.random.fold_in(key, _NOISE_SALT), count)
    steps = None if step is None else jnp.asarray(step, jnp.int32) + jnp.arange(count, dtype=jnp.int32)
    return full, rest_idx, keys, steps


def _steps_per_epoch(n: int, batch_size: int, partial_batch: str) -> int:
    return n // batch_size + (1 if n % batch_size and partial_batch == "include" else 0)


def _raw_epoch(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    batch_size: int,
    partial_batch: str,
    metrics: bool = True,
    batch_sharding: Any = None,
) -> Callable[..., tuple[Params, Any, Metrics]]:
    step_fn = _raw_step(objective, optimizer, metrics)

    def gather(x, y, idx):
        xb, yb = x[idx], y[idx]
        if batch_sharding is not None:  # split the mini-batch across the mesh's data axis
            xb = jax.lax.with_sharding_constraint(xb, batch_sharding)
            yb = jax.lax.with_sharding_constraint(yb, batch_sharding)
        return xb, yb

    def epoch(params: Params, opt_state: Any, train: tuple[Any, Any], key: jax.Array, step=None, lr_scale=None):
        x, y = _check_batch(train, "train")
        if batch_size > x.shape[0]:
            raise JregError(
                f"batch_size must be at most the number of training examples ({x.shape[0]}), got {batch_size}"
            )
        full, rest_idx, keys, steps = _plan(objective, x.shape[0], batch_size, partial_batch, key, step)
        nfull = full.shape[0]
        head = lambda a: None if a is None else a[:nfull]  # noqa: E731

        def body(carry, xs):
            p, s = carry
            idx, k, t = xs
            p, s, m = step_fn(p, s, gather(x, y, idx), k, t, lr_scale)  # gather one mini-batch: no data copy
            return (p, s), (m or None)

        (params, opt_state), stacked = jax.lax.scan(body, (params, opt_state), (full, head(keys), head(steps)))
        weights = jnp.full((nfull,), batch_size, jnp.float32)
        rest = rest_idx.shape[0]
        if rest and partial_batch == "include":
            last_key = None if keys is None else keys[nfull]
            last_step = None if steps is None else steps[nfull]
            params, opt_state, last = step_fn(
                params, opt_state, (x[rest_idx], y[rest_idx]), last_key, last_step, lr_scale
            )
            stacked = {k: jnp.append(v, last[k][None]) for k, v in (stacked or {}).items()}
            weights = jnp.append(weights, jnp.float32(rest))
        return params, opt_state, _mean_metrics(stacked, weights)

    return epoch


def _check_partial_batch(partial_batch: str) -> None:
    if partial_batch not in PARTIAL_BATCH:
        raise JregError(f"partial_batch must be one of {PARTIAL_BATCH}, got {partial_batch!r}")


def make_epoch(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    batch_size: int,
    *,
    partial_batch: str = "include",
    donate: bool = False,
    metrics: bool = True,
) -> Callable[..., tuple[Params, Any, Metrics]]:
    """One epoch of mini-batch training as one compiled call.

    Returns jitted ``epoch(params, opt_state, train, key, step=None) -> (params, opt_state, metrics)``
    with ``train = (x, y)``. It shuffles the example indices with
    ``jax.random.permutation(key, n)``, cuts them into ``n // batch_size``
    mini-batches (:func:`jreg.data.batch_indices`) and runs the steps with
    ``jax.lax.scan``, each step gathering its own mini-batch (no Python loop,
    no host round trip, no per-epoch copy of the data set).

    The last partial batch: when ``batch_size`` does not divide ``n``, the
    ``n % batch_size`` examples left over after shuffling form one smaller
    final step with ``partial_batch="include"`` (the default; as network2.py
    does, and its gradient is the mean over those examples), or are skipped
    for this epoch with ``partial_batch="drop"`` (every example is still seen
    over many epochs, since each epoch shuffles anew).

    Randomness and steps: the shuffle uses ``key`` itself; a stochastic
    objective (one that takes ``key``, as every :func:`jreg.objective` does)
    gets a fresh key per mini-batch, split from ``fold_in(key, salt)``, so
    dropout masks and noise differ per step and are reproducible. ``step`` is
    the global step count of the epoch's first mini-batch (``epoch_index *
    steps_per_epoch`` when every epoch has the same number of steps); the
    objective gets ``step + i`` at mini-batch ``i``, for coefficient
    schedules. Leave it ``None`` when no penalty has a schedule.

    ``metrics`` are the step metrics averaged over the epoch's examples (the
    running training objective, measured before each step). With
    ``metrics=False`` the steps take the gradient only and the epoch returns
    ``{}``: on small networks computing the loss value every step costs a few
    percent of the epoch (see docs/benchmarks.md).
    """
    _check_objective(objective)
    check_optimizer(optimizer)
    batch_size = check_positive_int(batch_size, "batch_size")
    _check_partial_batch(partial_batch)
    raw = _raw_epoch(objective, optimizer, batch_size, partial_batch, metrics)

    def epoch(params, opt_state, train, key, step=None):
        return raw(params, opt_state, train, key, step)

    return jax.jit(epoch, donate_argnums=(0, 1) if donate else ())


# --------------------------------------------------------------------------- evaluation


def accuracy(apply: Callable[[Params, jax.Array], jax.Array], params: Params, data: tuple[Any, Any]) -> jax.Array:
    """Fraction of examples whose largest output is the true class.

    ``data = (x, y)`` with integer labels ``y (N,)`` or one-hot targets ``(N, classes)``.
    """
    x, y = _check_batch(data, "data")
    outputs = apply(params, x)
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels_of(y))


def total_cost(objective: Callable[..., Any], params: Params, data: tuple[Any, Any], *, step: Any = None) -> jax.Array:
    """The objective's total on ``data`` in evaluation mode: mean cost over all of it plus the penalty.

    ``step`` evaluates coefficient schedules (needed only when a penalty has one).
    """
    return _call(objective, params, data, step=step)[0]


@dataclasses.dataclass
class History:
    """Per-epoch series from :func:`fit`, each a list with one float per epoch.

    Keys (present when monitored): ``training_cost``, ``training_accuracy``,
    ``evaluation_cost``, ``evaluation_accuracy`` (costs include the penalty,
    measured after the epoch on the whole set, as network2.py does),
    ``epoch_loss`` (mean mini-batch objective during the epoch, when asked for), and the
    training cost's parts as ``training_data`` / ``training_penalty`` and one
    ``training_<term>`` per penalty term.
    """

    series: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    #: set by early stopping: ``{"epochs": run, "reason": ..., "best_epoch": ..., "best": ...}``
    stopped: dict[str, Any] | None = None

    def append(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            self.series.setdefault(k, []).append(v)

    def __getitem__(self, key: str) -> Any:
        return self.series[key]

    def __getattr__(self, key: str) -> Any:
        series = self.__dict__.get("series", {})
        if key in series:
            return self[key]
        raise AttributeError(f"{type(self).__name__} has no series {key!r}; it has {sorted(series)}")

    def __contains__(self, key: str) -> bool:
        return key in self.series

    def keys(self) -> Iterable[str]:
        return self.series.keys()

    def __len__(self) -> int:
        """The number of epochs recorded."""
        return max((len(v) for v in self.series.values()), default=0)

    def to_dict(self) -> dict[str, list[Any]]:
        """A JSON-ready copy: ``{series name: [one value per epoch]}``."""
        return {k: np.asarray(self[k]).tolist() for k in self.series}


@dataclasses.dataclass
class SweepHistory(History):
    """Per-epoch series from :func:`sweep`: ``history[name]`` is an array ``(models, epochs)``.

    ``history.run(i)`` is model ``i``'s own :class:`History`.
    """

    def __getitem__(self, key: str) -> np.ndarray:
        return np.stack(self.series[key], axis=-1)

    @property
    def models(self) -> int:
        first = next(iter(self.series.values()), [])
        return int(np.shape(first[0])[0]) if first else 0

    def run(self, i: int) -> History:
        return History({k: [float(v[i]) for v in vs] for k, vs in self.series.items()})


def _check_data(data: Any, name: str) -> tuple[jax.Array, jax.Array]:
    x, y = _check_batch(data, name)
    if x.shape[0] == 0:
        raise JregError(f"{name} is empty: it must hold at least one example")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise JregTypeError(f"{name}: x must be floating point, got dtype {x.dtype}; e.g. x.astype('float32') / 255")
    if not (jnp.issubdtype(y.dtype, jnp.integer) or jnp.issubdtype(y.dtype, jnp.floating)):
        raise JregTypeError(f"{name}: y must be integer labels or float targets, got dtype {y.dtype}")
    # check what training will see: a float64 value beyond float32's range becomes inf in the cast
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x, y = jnp.asarray(x), jnp.asarray(y)
    check_finite(x, f"{name}: x")
    if jnp.issubdtype(y.dtype, jnp.floating):
        check_finite(y, f"{name}: y")
    return x, y


def _check_against_model(objective: Callable[..., Any], params: Params, data: tuple[Any, Any], name: str) -> None:
    """Trace the objective on one example (shape errors surface here) and check label range."""
    x, y = data
    jax.eval_shape(lambda p, b: _call(objective, p, b, step=0), params, (x[:1], y[:1]))
    if isinstance(objective, Objective) and jnp.issubdtype(y.dtype, jnp.integer):
        classes = jax.eval_shape(objective.apply, params, x[:1]).shape[-1]
        labels = np.asarray(y)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= classes:
            raise JregError(
                f"{name}: labels must lie in [0, {classes}) for a model with {classes} outputs, "
                f"got values in [{lo}, {hi}]"
            )


def _evaluate(
    objective: Callable[..., Any],
    params: Params,
    data: tuple[Any, Any],
    prefix: str,
    want_cost: bool,
    want_accuracy: bool,
    step: Any = None,
) -> Metrics:
    out: Metrics = {}
    if want_cost:
        total, parts = _call(objective, params, data, step=step)
        out[f"{prefix}_cost"] = total
        if prefix == "training":
            out.update({f"training_{k}": v for k, v in parts.items()})
    if want_accuracy:
        out[f"{prefix}_accuracy"] = accuracy(objective.apply, params, data)
    return out


def _monitor(objective: Callable[..., Any], wanted: set[str]) -> Callable[..., Metrics]:
    """The monitored evaluations after an epoch: ``monitor(params, train, evaluation) -> metrics``."""

    def monitor(params, train, evaluation, step=None):
        out = _evaluate(
            objective, params, train, "training", "training_cost" in wanted, "training_accuracy" in wanted, step
        )
        if evaluation is not None:
            out.update(
                _evaluate(
                    objective,
                    params,
                    evaluation,
                    "evaluation",
                    "evaluation_cost" in wanted,
                    "evaluation_accuracy" in wanted,
                    step,
                )
            )
        return out

    return monitor


def _epoch_and_monitor(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    batch_size: int,
    partial_batch: str,
    wanted: set[str],
    batch_sharding: Any = None,
) -> Callable[..., tuple[Params, Any, Metrics]]:
    """One epoch of training followed by the monitored evaluations, as one traceable function."""
    epoch_fn = _raw_epoch(objective, optimizer, batch_size, partial_batch, "epoch_loss" in wanted, batch_sharding)
    monitor = _monitor(objective, wanted)

    def run(params, opt_state, train, evaluation, key, step, lr_scale=None):
        params, opt_state, m = epoch_fn(params, opt_state, train, key, step, lr_scale)
        loss = {"epoch_loss": m["loss"]} if m else {}
        # monitored after the epoch, at the step count reached (for coefficient schedules)
        after = step + _steps_per_epoch(train[0].shape[0], batch_size, partial_batch)
        return params, opt_state, {**loss, **monitor(params, train, evaluation, after)}

    return run


def _monitors(monitor: Iterable[str] | None, has_apply: bool, has_evaluation: bool) -> set[str]:
    available = {"training_cost", "evaluation_cost"}
    if has_apply:
        available |= {"training_accuracy", "evaluation_accuracy"}
    if not has_evaluation:
        available -= {"evaluation_cost", "evaluation_accuracy"}
    if monitor is None:
        return available
    available.add("epoch_loss")
    if isinstance(monitor, str):
        monitor = (monitor,)
    wanted = set(monitor)
    unknown = wanted - set(MONITORS)
    if unknown:
        raise JregError(f"monitor must name some of {MONITORS}, got unknown {sorted(unknown)}")
    missing = wanted - available
    if missing:
        why = "evaluation data is needed" if not has_evaluation else "accuracy needs an objective from jreg.objective"
        raise JregError(f"monitor asks for {sorted(missing)}, but {why}")
    return wanted


def _check_loop_args(epochs: Any, batch_size: Any, partial_batch: str, key: Any, callback: Any) -> tuple[int, int]:
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    _check_partial_batch(partial_batch)
    check_key(key)
    if callback is not None and not callable(callback):
        raise JregTypeError(f"callback must be callable callback(epoch, metrics), got {callback!r}")
    return epochs, batch_size


def _check_train_eval(train: Any, evaluation: Any, batch_size: int) -> tuple[Any, Any]:
    train = _check_data(train, "train")
    if batch_size > train[0].shape[0]:
        raise JregError(
            f"batch_size must be at most the number of training examples ({train[0].shape[0]}), got {batch_size}"
        )
    if evaluation is not None:
        evaluation = _check_data(evaluation, "evaluation")
    return train, evaluation


def _format(value: Any) -> str:
    arr = np.asarray(value)
    return f"{float(arr):.4f}" if arr.ndim == 0 else "[" + ", ".join(f"{v:.4f}" for v in arr.ravel()) + "]"


def _format_epoch(epoch: int, epochs: int, metrics: dict[str, Any]) -> str:
    shown = [f"{k.replace('_', ' ')} {_format(metrics[k])}" for k in MONITORS if k in metrics]
    return f"Epoch {epoch + 1}/{epochs}: " + (", ".join(shown) or "done")


def _loop(
    run,
    params,
    opt_state,
    train,
    evaluation,
    epochs,
    history,
    verbose,
    callback,
    convert,
    *,
    inputs,
    start=0,
    before_record=None,
    after_record=None,
):
    """Run epochs ``start..epochs-1``; ``inputs(e)`` gives the epoch's extra arguments (key, step...).

    ``before_record(e, params, opt_state, values)`` may raise (divergence) before anything is
    recorded; ``after_record(e, params, opt_state, values)`` returns True to stop early.
    """
    for e in range(start, epochs):
        params, opt_state, metrics = run(params, opt_state, train, evaluation, *inputs(e))
        values = {k: convert(v) for k, v in jax.device_get(metrics).items()}
        if before_record is not None:
            before_record(e, params, opt_state, values)
        history.append(values)
        if verbose:
            print(_format_epoch(e, epochs, values), flush=True)
        if callback is not None:
            callback(e, values)
        if after_record is not None and after_record(e, params, opt_state, values):
            break
    return params, opt_state


class DivergenceError(JregError):
    """Training produced NaN or infinity. ``params``/``opt_state`` are the last finite ones.

    Attributes: ``epoch`` (0-based), ``step`` (0-based within the epoch, or None
    when only a monitored metric went bad), ``quantity`` (what went bad first),
    ``params``, ``opt_state``, ``history`` (the epochs completed before).
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        step: int | None,
        quantity: str,
        params: Params,
        opt_state: Any,
        history: History,
    ):
        super().__init__(message)
        self.epoch, self.step, self.quantity = epoch, step, quantity
        self.params, self.opt_state, self.history = params, opt_state, history


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _guarded(run: Callable[..., Any]) -> Callable[..., Any]:
    """Run an epoch; if params or metrics come out non-finite, return the epoch's input params and state instead.

    One reduction over the params per epoch, inside the compiled program: no per-step cost.
    """

    def guarded(params, opt_state, train, evaluation, *inputs):
        new_params, new_state, metrics = run(params, opt_state, train, evaluation, *inputs)
        ok = _all_finite(new_params) & _all_finite(metrics)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        params = jax.tree.map(keep, new_params, params)
        opt_state = jax.tree.map(keep, new_state, opt_state)
        return params, opt_state, {**metrics, "__finite__": ok}

    return guarded


def _first_bad_step(
    objective, optimizer, params, opt_state, train, batch_size, partial_batch, key, step, lr_scale=None
):
    """Replay one epoch step by step from ``params``: (step, quantity, params before it, state before it) or None."""
    x, y = train
    full, rest, keys, steps = _plan(objective, x.shape[0], batch_size, partial_batch, key, step)
    order = list(full) + ([rest] if rest.shape[0] and partial_batch == "include" else [])
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b, k, t: _call(objective, p, b, k, t), has_aux=True))

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        if lr_scale is not None:
            updates = jax.tree.map(lambda u: (u * lr_scale).astype(u.dtype), updates)
        return optax.apply_updates(params, updates), opt_state

    for i, idx in enumerate(order):
        k = None if keys is None else keys[i]
        t = None if steps is None else steps[i]
        (loss, _), grads = grad_fn(params, (x[idx], y[idx]), k, t)
        if not np.isfinite(float(loss)):
            return i, f"the loss became {float(loss)}", params, opt_state
        flat = jax.tree_util.tree_flatten_with_path(grads)[0]
        bad = [path_str(p) for p, g in flat if not bool(jnp.all(jnp.isfinite(g)))]
        if bad:
            return i, f"the gradient of {bad[0]!r} became non-finite", params, opt_state
        new_params, new_state = update(params, opt_state, grads)
        flat = jax.tree_util.tree_flatten_with_path(new_params)[0]
        bad = [path_str(p) for p, w in flat if not bool(jnp.all(jnp.isfinite(w)))]
        if bad:
            return i, f"the update made {bad[0]!r} non-finite", params, opt_state
        params, opt_state = new_params, new_state
    return None


def _latest_checkpoint(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("ckpt-*.npz"))
        if not found:
            raise JregError(f"resume: no checkpoint (ckpt-*.npz) in {path}")
        return found[-1]
    return path


def fit(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    params: Params,
    train: tuple[Any, Any],
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    evaluation: tuple[Any, Any] | None = None,
    opt_state: Any = None,
    monitor: Iterable[str] | None = None,
    partial_batch: str = "include",
    verbose: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str = "data",
    param_specs: Any = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    keep: int = 3,
    resume: str | os.PathLike[str] | None = None,
    early_stopping: EarlyStopping | None = None,
) -> tuple[Params, History]:
    """Train for ``epochs`` epochs of shuffled mini-batches; return ``(params, history)``.

    Each epoch, and the monitoring after it, is one compiled call (see
    :func:`make_epoch`); epoch ``e`` shuffles with ``jax.random.fold_in(key, e)``,
    so the same key, data and config give the same result.

    Args:
        objective: from :func:`jreg.objective` (needed for the accuracy series;
            any ``f(params, batch) -> (total, parts)`` works for the costs).
        optimizer: any optax ``GradientTransformation``.
        params: initial params (not modified; fit works on a copy).
        train: ``(x, y)``, ``x`` float ``(N, ...)``, ``y`` integer labels ``(N,)``
            or float targets ``(N, classes)``.
        epochs, batch_size: positive ints, ``batch_size <= N``.
        key: a ``jax.random.key`` for the shuffles.
        evaluation: optional ``(x, y)`` held-out data (validation or test).
        opt_state: optimizer state to continue from (default ``optimizer.init(params)``).
        monitor: which of ``training_cost``, ``training_accuracy``,
            ``evaluation_cost``, ``evaluation_accuracy`` to measure after each
            epoch (default: all that apply, as network2.py's four flags), and
            ``epoch_loss``, the mean mini-batch objective during the epoch
            (opt-in: it needs the loss value at every step, a few percent of an
            epoch on small networks). ``monitor=()`` trains fastest.
        partial_batch: ``"include"`` or ``"drop"`` the last partial mini-batch.
        verbose: print one line per epoch.
        callback: ``callback(epoch, metrics)`` after each epoch with the
            epoch's floats (e.g. to drive a progress bar).
        mesh: a ``jax.sharding.Mesh`` for data-parallel training: every
            mini-batch is split along the mesh axis ``data_axis`` (``batch_size``
            must be a multiple of its size), params and optimizer state are
            replicated (or laid out by ``param_specs``), and XLA inserts the
            gradient all-reduce. The data set is replicated on every device.
            Results equal single-device training up to float reassociation.
            Works unchanged across hosts after ``jax.distributed.initialize()``
            (see docs/scaling.md).
        data_axis: the mesh axis the mini-batch is split along.
        param_specs: ``PartitionSpec`` for the params, a pytree matching params
            or a prefix of it (e.g. shard large weight matrices along a
            ``"model"`` axis); default: replicated.
        checkpoint_dir: save a checkpoint (:func:`jreg.save`: params,
            optimizer state, epoch, key, history) as ``ckpt-<epoch>.npz`` in
            this folder every ``checkpoint_every`` epochs and after the last,
            keeping the newest ``keep``. Each save is atomic.
        resume: a checkpoint file, or a folder of them (the newest is taken),
            to continue from: ``epochs`` stays the run's total, the shuffles go
            on from the saved epoch, and the result is bit-identical on CPU to
            the uninterrupted run. ``params`` serves as the structure template
            and ``key`` must be the run's key.
        early_stopping: an :class:`jreg.EarlyStopping`: stop when its
            monitored series has not improved for ``patience`` epochs, or, with
            ``lr_factor``, cut the learning rate each time and stop once it has
            fallen to ``min_lr_scale`` of its start (Nielsen's schedule:
            ``EarlyStopping.nielsen(10)``). The history then has a
            ``learning_rate_scale`` series and ``history.stopped`` says when and
            why training stopped. Its state is checkpointed and resumed.

    Randomness and steps: epoch ``e`` shuffles with ``fold_in(key, e)``; a
    stochastic model (dropout, noise) gets one key per mini-batch derived from
    it (see :func:`make_epoch`), and penalty schedules see the global step
    ``e * steps_per_epoch + i``. Monitoring runs in evaluation mode (no dropout)
    at the step count reached after the epoch.

    Returns:
        The trained params and a :class:`History` (the whole run's, when resumed).

    Raises:
        DivergenceError: when the params, a gradient, the loss or a monitored
            cost becomes NaN or infinite. It names the epoch, the step and the
            quantity, and carries the last finite params (``error.params``);
            no checkpoint with non-finite values is ever written. The check
            runs inside the compiled epoch, once per epoch.
    """
    _check_objective(objective)
    check_optimizer(optimizer)
    epochs, batch_size = _check_loop_args(epochs, batch_size, partial_batch, key, callback)
    train, evaluation = _check_train_eval(train, evaluation, batch_size)
    wanted = _monitors(monitor, isinstance(objective, Objective), evaluation is not None)
    _check_against_model(objective, params, train, "train")
    if evaluation is not None:
        _check_against_model(objective, params, evaluation, "evaluation")

    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    keep = check_positive_int(keep, "keep")
    stopping = _check_early_stopping(early_stopping, wanted)
    history = History()
    start = 0
    state = None if stopping is None else stopping.initial_state()
    if resume is not None:
        params, opt_state, start, history, saved = _resume(resume, params, optimizer, key, batch_size, epochs)
        if stopping is not None:
            state = _resumed_stopping_state(stopping, saved, history, resume)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    best = _restore_best_params(stopping, state, folder, resume, params) if stopping is not None else None
    if state is not None and state["stopped"] is not None:  # the run had already stopped: nothing to do
        history.stopped = _stop_record(stopping, state, start)
        return (params if best is None else best), history

    # fit donates its buffers to the compiled epoch, so it works on copies of the caller's.
    batch_sharding = None
    if mesh is None:
        params = jax.tree.map(jnp.array, params)
        opt_state = optimizer.init(params) if opt_state is None else jax.tree.map(jnp.array, opt_state)
    else:
        params, opt_state, train, evaluation, batch_sharding = _place_on_mesh(
            mesh, data_axis, param_specs, batch_size, optimizer, params, opt_state, train, evaluation
        )
    run = _epoch_and_monitor(objective, optimizer, batch_size, partial_batch, wanted, batch_sharding)
    run = jax.jit(_guarded(run), donate_argnums=(0, 1))
    per_epoch = _steps_per_epoch(train[0].shape[0], batch_size, partial_batch)
    scaled = stopping is not None and stopping.lr_factor is not None

    def inputs(e):
        step = jnp.asarray(e * per_epoch, jnp.int32)
        if not scaled:
            return jax.random.fold_in(key, e), step
        return jax.random.fold_in(key, e), step, jnp.asarray(state["lr_scale"], jnp.float32)

    def before_record(e, params, opt_state, values):
        if not values.pop("__finite__"):
            _raise_divergence(
                objective,
                optimizer,
                params,
                opt_state,
                train,
                batch_size,
                partial_batch,
                inputs(e),
                e,
                epochs,
                values,
                history,
            )
        if scaled:
            values["learning_rate_scale"] = float(state["lr_scale"])

    def after_record(e, params, opt_state, values):
        nonlocal state, best
        stop = False
        if stopping is not None:
            state, event = stopping.update(state, e, values[stopping.monitor])
            if event == "improved" and stopping.restore_best:
                best = jax.device_get(params)
                if folder is not None:
                    _save_best(folder, best, e + 1, key)
            stop = event == "stop"
            if verbose and event in ("lr_cut", "stop"):
                cut = f"no improvement in {stopping.monitor} for {stopping.patience} epochs; learning-rate scale"
                print(
                    f"Epoch {e + 1}: " + (state["stopped"] if stop else f"{cut} now {state['lr_scale']:g}"), flush=True
                )
        if folder is not None and ((e + 1) % checkpoint_every == 0 or e + 1 == epochs or stop):
            _save_checkpoint(folder, keep, params, opt_state, e + 1, key, history, batch_size, state)
        return stop

    params, _ = _loop(
        run,
        params,
        opt_state,
        train,
        evaluation,
        epochs,
        history,
        verbose,
        callback,
        float,
        inputs=inputs,
        start=start,
        before_record=before_record,
        after_record=after_record,
    )
    if stopping is not None and state["stopped"] is not None:
        history.stopped = _stop_record(stopping, state, len(history))
    if best is not None:
        params = jax.tree.map(jnp.asarray, best)
    return params, history


def _check_early_stopping(early_stopping: Any, wanted: set[str]) -> EarlyStopping | None:
    if early_stopping is None:
        return None
    if not isinstance(early_stopping, EarlyStopping):
        raise JregTypeError(
            f"early_stopping must be a jreg.EarlyStopping, e.g. EarlyStopping(patience=10), got {early_stopping!r}"
        )
    if early_stopping.monitor not in wanted:
        raise JregError(
            f"early_stopping watches {early_stopping.monitor!r}, which this fit does not monitor (it monitors "
            f"{sorted(wanted)}); pass evaluation data or add it to monitor"
        )
    return early_stopping


def _stop_record(stopping: EarlyStopping, state: dict[str, Any], epochs_run: int) -> dict[str, Any]:
    return {
        "epochs": epochs_run,
        "reason": state["stopped"],
        "best_epoch": None if state["best_epoch"] is None else state["best_epoch"] + 1,
        "best": state["best"],
        "monitor": stopping.monitor,
    }


def _resumed_stopping_state(stopping: EarlyStopping, saved: Any, history: History, resume: Any) -> dict[str, Any]:
    if not isinstance(saved, dict) or not {"best", "best_epoch", "wait", "lr_scale", "stopped"} <= set(saved):
        if len(history):
            raise JregError(
                f"resume: {resume} was saved without early stopping, so its early-stopping state is unknown; "
                "resume it without early_stopping, or start the run again"
            )
        return stopping.initial_state()
    return dict(saved)


def _best_path(folder: Path) -> Path:
    return folder / "best.npz"


def _save_best(folder: Path, params: Params, epoch: int, key: Any) -> None:
    from .checkpoint import save

    save(_best_path(folder), params, step=epoch, key=key, meta={"best": True})


def _restore_best_params(stopping, state, folder, resume, params):
    """The best params so far when resuming a run with ``restore_best`` (else None)."""
    if not stopping.restore_best or state is None or state["best_epoch"] is None:
        return None
    from .checkpoint import load

    where = _latest_checkpoint(Path(resume)).parent if resume is not None else folder
    path = None if where is None else _best_path(where)
    if path is None or not path.exists():
        raise JregError(
            f"resume: restore_best needs the best params, saved as best.npz beside the checkpoints; none in {where}"
        )
    return load(path, params=params).params


def _raise_divergence(
    objective, optimizer, params, opt_state, train, batch_size, partial_batch, inputs, epoch, epochs, values, history
):
    found = _first_bad_step(objective, optimizer, params, opt_state, train, batch_size, partial_batch, *inputs)
    if found is not None:
        step, quantity, params, opt_state = found
        where = f"epoch {epoch + 1} of {epochs}, step {step + 1}"
    else:
        step = None
        bad = sorted(k for k, v in values.items() if not np.isfinite(v))
        quantity = f"the monitored {', '.join(bad)} became non-finite" if bad else "a value became non-finite"
        where = f"after epoch {epoch + 1} of {epochs}"
    raise DivergenceError(
        f"training diverged ({where}): {quantity}. The last finite params are in error.params. A smaller "
        "learning rate usually helps (with an L2 coefficient c, plain SGD is unstable once learning rate * c > 2).",
        epoch=epoch,
        step=step,
        quantity=quantity,
        params=params,
        opt_state=opt_state,
        history=history,
    )


def _save_checkpoint(folder, keep, params, opt_state, epoch, key, history, batch_size, stopping_state):
    from .checkpoint import save

    meta = {"history": history.to_dict(), "batch_size": batch_size}
    if stopping_state is not None:
        meta["early_stopping"] = stopping_state
    save(folder / f"ckpt-{epoch:06d}.npz", params, opt_state=opt_state, step=epoch, key=key, meta=meta)
    for old in sorted(folder.glob("ckpt-*.npz"))[:-keep]:
        old.unlink(missing_ok=True)


def _key_bits(key: Any) -> np.ndarray:
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return np.asarray(jax.random.key_data(key) if typed else key)


def _resume(resume, params, optimizer, key, batch_size, epochs):
    from .checkpoint import load

    path = _latest_checkpoint(Path(resume))
    ckpt = load(path, params=params, opt_state=optimizer.init(params))
    if ckpt.key is None or not np.array_equal(_key_bits(ckpt.key), _key_bits(key)):
        raise JregError(f"resume: key differs from the one {path} was trained with; pass the run's key to continue it")
    meta = ckpt.meta if isinstance(ckpt.meta, dict) else {}
    if meta.get("batch_size", batch_size) != batch_size:
        raise JregError(f"resume: batch_size {batch_size} differs from the run's {meta['batch_size']} ({path})")
    step = int(ckpt.step or 0)
    if step > epochs:
        raise JregError(f"resume: {path} is at epoch {step}, beyond epochs={epochs}")
    history = History({k: list(v) for k, v in (meta.get("history") or {}).items()})
    return ckpt.params, ckpt.opt_state, step, history, meta.get("early_stopping")


def _put(value: Any, sharding: Any) -> jax.Array:
    """A global array with ``sharding`` from a host value: safe in multi-process runs too."""
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _place_on_mesh(mesh, data_axis, param_specs, batch_size, optimizer, params, opt_state, train, evaluation):
    """Put params, optimizer state and data on ``mesh``; return them and the mini-batch sharding."""
    from jax.sharding import NamedSharding, PartitionSpec

    if not isinstance(mesh, jax.sharding.Mesh):
        raise JregTypeError(f"mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh((8,), ('data',)), got {mesh!r}")
    if data_axis not in mesh.axis_names:
        raise JregError(f"data_axis {data_axis!r} is not an axis of the mesh, which has {mesh.axis_names}")
    # The same devices and axis names with Auto axes: XLA's partitioner places the gradient all-reduce
    # (jax.make_mesh gives Explicit axes by default, which would need an out_sharding on every contraction).
    auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
    ways = mesh.shape[data_axis]
    if batch_size % ways:
        raise JregError(
            f"batch_size must be a multiple of the mesh's {data_axis!r} axis ({ways} devices) to split every "
            f"mini-batch evenly, got {batch_size}"
        )
    replicated = NamedSharding(mesh, PartitionSpec())
    if param_specs is None:
        shardings = jax.tree.map(lambda _: replicated, params)
    else:
        specs = jax.tree.broadcast(param_specs, params, is_leaf=lambda s: isinstance(s, PartitionSpec))
        shardings = jax.tree.map(lambda _, spec: NamedSharding(mesh, spec), params, specs)
    params = jax.tree.map(_put, params, shardings)
    if opt_state is None:
        opt_state = jax.jit(optimizer.init)(params)  # follows the params' layout
    else:
        opt_state = jax.tree.map(lambda a: _put(a, replicated), opt_state)
    train = tuple(_put(a, replicated) for a in train)
    if evaluation is not None:
        evaluation = tuple(_put(a, replicated) for a in evaluation)
    return params, opt_state, train, evaluation, NamedSharding(mesh, PartitionSpec(data_axis))


def _check_hparams(hparams: Any) -> tuple[dict[str, jax.Array], int]:
    if not isinstance(hparams, Mapping) or not hparams:
        raise JregTypeError(
            "hparams must be a non-empty mapping from names to 1-D arrays of values, one per model, "
            f"e.g. {{'lmbda': [0.0, 0.1]}}; got {hparams!r}"
        )
    out, sizes = {}, set()
    for name, values in hparams.items():
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.size == 0:
            raise JregError(f"hparams[{name!r}] must be a non-empty 1-D array (one value per model), got {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise JregTypeError(f"hparams[{name!r}] must hold real numbers, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise JregError(f"hparams[{name!r}] must be finite, got {arr.tolist()}")
        dtype = np.float32 if np.issubdtype(arr.dtype, np.floating) else np.int32
        with np.errstate(over="ignore", invalid="ignore"):
            cast = arr.astype(dtype)
        if not np.all(np.isfinite(cast)) or (dtype == np.int32 and not np.array_equal(cast, arr)):
            raise JregError(f"hparams[{name!r}] holds values beyond the range of {np.dtype(dtype).name}")
        sizes.add(arr.size)
        out[name] = jnp.asarray(cast)
    if len(sizes) != 1:
        lengths = {k: int(v.shape[0]) for k, v in out.items()}
        raise JregError(f"every hparams entry must hold one value per model (same length), got lengths {lengths}")
    return out, sizes.pop()


def sweep(
    build: Callable[[dict[str, jax.Array]], tuple[Callable[..., Any], optax.GradientTransformation]],
    params: Params,
    train: tuple[Any, Any],
    *,
    hparams: Mapping[str, Any],
    epochs: int,
    batch_size: int,
    key: jax.Array,
    evaluation: tuple[Any, Any] | None = None,
    stacked_params: bool = False,
    vectorize: str = "auto",
    monitor: Iterable[str] | None = None,
    partial_batch: str = "include",
    verbose: bool = False,
    callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> tuple[Params, SweepHistory]:
    """Train K models that differ in hyperparameters in one compiled program (``jax.vmap``).

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

    Args:
        build: ``build(hp) -> (objective, optimizer)``.
        params: initial params shared by every model, or, with
            ``stacked_params=True``, params with a leading axis of size K
            (e.g. ``jax.vmap(model.init)(jax.random.split(key, K))`` for seeds).
        hparams: ``{name: K values}``; every entry has the same length K.
        vectorize: how the K models' training steps share the program:
            ``"vmap"`` batches them (best on GPU/TPU and for large K),
            ``"map"`` runs them one after another inside the same compiled
            program (``lax.map``; faster on CPU, where XLA's small batched
            matmuls are slow at small K). The per-epoch evaluations are batched
            either way. ``"auto"`` (default): ``"map"`` on CPU for K = 2 or 3,
            ``"vmap"`` otherwise (measured crossover: docs/benchmarks.md).
        The rest as in :func:`fit`.

    Returns:
        Params stacked along a leading axis of size K, and a
        :class:`SweepHistory` whose series have shape ``(K, epochs)``.
    """
    if not callable(build):
        raise JregTypeError(f"build must be callable build(hp) -> (objective, optimizer), got {build!r}")
    if vectorize not in VECTORIZE:
        raise JregError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    hp, models = _check_hparams(hparams)
    if vectorize == "auto":
        vectorize = "map" if jax.default_backend() == "cpu" and 2 <= models <= 3 else "vmap"
    epochs, batch_size = _check_loop_args(epochs, batch_size, partial_batch, key, callback)
    train, evaluation = _check_train_eval(train, evaluation, batch_size)
    if stacked_params:
        sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(params)}
        if sizes != {models}:
            raise JregError(f"stacked_params=True needs a leading axis of size {models} on every leaf of params")
        first = jax.tree.map(lambda a: a[0], params)
    else:
        first = params
    # Build each model once with concrete values: validation runs, and the types are checked.
    built = [build({k: v[i] for k, v in hp.items()}) for i in range(models)]
    for i, pair in enumerate(built):
        if not (isinstance(pair, tuple) and len(pair) == 2) or isinstance(pair, optax.GradientTransformation):
            raise JregTypeError(f"build must return (objective, optimizer), got {type(pair).__name__} for model {i}")
        _check_objective(pair[0])
        check_optimizer(pair[1])
    objective0 = built[0][0]
    wanted = _monitors(monitor, isinstance(objective0, Objective), evaluation is not None)
    _check_against_model(objective0, first, train, "train")
    if evaluation is not None:
        _check_against_model(objective0, first, evaluation, "evaluation")

    @jax.jit
    def prepare(params, hp):
        if not stacked_params:
            params = jax.tree.map(lambda a: jnp.broadcast_to(a, (models,) + jnp.shape(a)), params)
        return params, jax.vmap(lambda h, p: build(h)[1].init(p))(hp, params)

    params, opt_state = prepare(params, hp)  # fresh buffers, safe to donate

    with_loss = "epoch_loss" in wanted

    def train_one(h, p, s, tr, k, t):
        objective, optimizer = build(h)
        p, s, m = _raw_epoch(objective, optimizer, batch_size, partial_batch, with_loss)(p, s, tr, k, t)
        return p, s, m

    def monitor_one(h, p, tr, ev, t):
        return _monitor(build(h)[0], wanted)(p, tr, ev, t)

    per_epoch = _steps_per_epoch(train[0].shape[0], batch_size, partial_batch)

    def run(p, s, tr, ev, k, t):
        if vectorize == "vmap":
            p, s, m = jax.vmap(train_one, in_axes=(0, 0, 0, None, None, None))(hp, p, s, tr, k, t)
        else:
            p, s, m = jax.lax.map(lambda a: train_one(*a, tr, k, t), (hp, p, s))
        loss = {"epoch_loss": m["loss"]} if m else {}
        evaluations = jax.vmap(monitor_one, in_axes=(0, 0, None, None, None))(hp, p, tr, ev, t + per_epoch)
        return p, s, {**loss, **evaluations}

    run = jax.jit(run, donate_argnums=(0, 1))
    history = SweepHistory()
    params, _ = _loop(
        run,
        params,
        opt_state,
        train,
        evaluation,
        epochs,
        history,
        verbose,
        callback,
        np.asarray,
        inputs=lambda e: (jax.random.fold_in(key, e), jnp.asarray(e * per_epoch, jnp.int32)),
    )
    return params, history


__all__ = [
    "DivergenceError",
    "History",
    "SweepHistory",
    "accuracy",
    "fit",
    "make_epoch",
    "make_step",
    "sweep",
    "total_cost",
]
