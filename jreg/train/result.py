"""One result for every front end: :class:`Result` (fit, sweep) and its extensions (path, PBT).

What goes in comes out: ``params``, ``model_state`` (None for a stateless model), ``opt_state`` and the
``history``; for K models every leaf has a leading K axis and ``hparams`` holds each member's settings.
``resume=result`` continues the run exactly as resuming from its last checkpoint would (the state, the epoch
count, early stopping's patience and learning-rate scale), and ``result.select(k)`` takes member ``k`` out
as a single-model result. Unpacking a result as the tuples of jreg 0.2 still works for one release, with a
:class:`DeprecationWarning`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np

from .._errors import JregError
from .._types import ModelState, OptState, Params
from .checkpoint_folder import Snapshot
from .history import Best, History


@dataclasses.dataclass(eq=False, kw_only=True)
class Result:
    """What :func:`jreg.fit` and :func:`jreg.sweep` return (and, extended, the path and PBT front ends).

    Attributes:
        params: the trained params (the best epoch's with ``EarlyStopping(restore_best=True)``, the EMA's with
            ``EMA(returned=True)``, a schedule-free optimizer's ``schedule_free_eval_params``,
            :mod:`jreg.train.optimizer`); for K models stacked along a leading axis of size K.
        history: a :class:`History`, of one model or of K (``history.models``).
        opt_state: the optimizer's state after the last epoch run (what ``fit(opt_state=...)`` takes to go on).
        model_state: a stateful model's state (BatchNorm statistics), None for a stateless model.
        hparams: K models: ``{name: (K,) array}``, each member's hyperparameters; None for one model.
        snapshot: the run's state after its last epoch, as its last checkpoint would hold it, for
            ``resume=result``; None where there is no run to continue (a member taken out with :meth:`select`,
            a path or PBT result).

    Example::

        result = jreg.fit(objective, optax.adam(1e-3), params, train, epochs=10, batch_size=32, key=key)
        result = jreg.fit(objective, optax.adam(1e-3), params, train, epochs=20, batch_size=32, key=key,
                          resume=result)  # 10 more epochs: Adam's moments, the step count and the shuffles go on
    """

    params: Params
    history: History
    opt_state: OptState = None
    model_state: ModelState = None
    hparams: dict[str, np.ndarray] | None = None
    snapshot: Snapshot | None = dataclasses.field(default=None, repr=False)
    #: the tuple jreg 0.2 returned had the model state in it (it was given): for the deprecated unpacking only
    stateful: bool = dataclasses.field(default=False, repr=False)

    @property
    def models(self) -> int | None:
        """K for a result of K models, None for one model."""
        return self.history.models

    def best(self, monitor: str | None = None) -> Best:
        """``self.history.best(monitor)``: per model, the best epoch and value (see :meth:`History.best`)."""
        return self.history.best(monitor)

    def select(self, k: int) -> Result:
        """Member ``k`` of a K-model result as a single-model :class:`Result` (params, optimizer and model
        state, its :meth:`History.run` history, ``hparams`` as ``{name: float}``)."""
        models = self.models
        if models is None:
            raise JregError("select: this result holds one model; select(k) takes a member out of a sweep's result")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not -models <= int(k) < models:
            raise JregError(f"select: k must be an int member index in [-{models}, {models}), got {k!r}")
        k = int(k) % models
        take = lambda tree: jax.tree.map(lambda a: a[k], tree)  # noqa: E731
        hparams = None if self.hparams is None else {n: np.asarray(v)[k] for n, v in self.hparams.items()}
        return Result(
            params=take(self.params),
            history=self.history.run(k),
            opt_state=take(self.opt_state),
            model_state=take(self.model_state),
            hparams=hparams,
            stateful=self.stateful,
        )

    def summary(self) -> str:
        """A compact table of the history (one row per member for K models, with their hyperparameters)."""
        if self.history.models is not None:
            return self.history.summary(self.hparams)
        return self.history.summary()

    def __repr__(self) -> str:
        shown = f"models={self.models}, " if self.models is not None else ""
        hp = "" if not self.hparams else f", hparams={sorted(self.hparams)}"
        state = "" if self.model_state is None else ", model_state=..."
        return f"{type(self).__name__}({shown}history={self.history!r}{hp}{state})"

    # -- jreg 0.2's tuples, for one release ---------------------------------------------------------------

    def _legacy(self) -> tuple:
        front = "fit" if self.models is None else "sweep"
        old = f"params, {'model_state, ' * self.stateful}history = jreg.{front}(...)"
        new = "result = jreg.fit(...); result.params, result.history" + (", result.model_state" * self.stateful)
        warnings.warn(
            f"jreg front ends return a jreg.Result: unpacking it as `{old}` is deprecated and will stop working in "
            f"the next release; write `{new}` (result.opt_state holds the optimizer state too)",
            DeprecationWarning,
            stacklevel=3,
        )
        return (self.params, self.model_state, self.history) if self.stateful else (self.params, self.history)

    def __iter__(self):
        return iter(self._legacy())

    def __getitem__(self, i: int) -> Any:
        return self._legacy()[i]

    def __len__(self) -> int:
        return 3 if self.stateful else 2
