"""Flax linen, Flax NNX, Equinox and Haiku models as jreg models: one adapter per framework.

Each adapter takes the framework's own object and returns a :class:`FrameworkModel`:

* ``apply`` follows jreg's model protocol, so it goes straight into
  :func:`jreg.objective`: ``apply(params, x, *, key=None, train=None,
  intermediates=False)`` (stateless) or ``apply(params, x, *, state, train,
  key=None, intermediates=False) -> (outputs, new_state)`` (a model with
  BatchNorm statistics or other non-trained variables).
* ``params`` are the trained arrays only (Flax ``params`` collection, NNX
  ``nnx.Param`` variables, an Equinox module's inexact arrays, Haiku params),
  ``model_state`` the rest that changes while training (linen's other
  collections, NNX ``nnx.BatchStat``..., ``eqx.nn.State``, Haiku state), or
  ``None``: pass it as ``fit(..., model_state=model.model_state)``.
* ``rebuild(params, model_state)`` gives back the framework's object: linen's
  variables dict, an NNX model, an Equinox module (with its state), Haiku's
  params (with its state).
* ``init(key) -> (params, model_state)`` draws fresh params (linen, Haiku), for
  sweeps over seeds; ``None`` for NNX and Equinox, whose models are built by
  their constructors: :func:`stack` stacks the params and states of several
  adapted models for ``jreg.sweep(..., stacked_params=True)``.

Modes and keys, the same for every framework: given a ``key`` (every training
step of :func:`jreg.fit` gets a fresh one) the model is in training mode and
the key drives dropout; without one it is deterministic (evaluation). The
adapters check that dropout really is on in training and off in evaluation
where the framework lets them look, and raise a :class:`jreg.JregError`
otherwise: dropout is never silently off.

Framework imports happen inside the adapters, so ``import jreg`` needs none
of them; a missing framework is a :class:`jreg.JregError` saying what to install.
"""

from __future__ import annotations

# every name the single module (frameworks.py) had stays importable from here, the private ones included
from .common import EVAL_FLAGS as EVAL_FLAGS
from .common import EXTRAS as EXTRAS
from .common import TRAIN_FLAGS as TRAIN_FLAGS
from .common import FrameworkModel, stack
from .common import _describe_flag as _describe_flag
from .common import _flag as _flag
from .common import _mode as _mode
from .common import _mode_flag as _mode_flag
from .common import _require as _require
from .common import _stack as _stack
from .equinox import _check_equinox_state as _check_equinox_state
from .equinox import from_equinox
from .haiku import from_haiku
from .linen import _linen_dropout_calls as _linen_dropout_calls
from .linen import _linen_dropouts as _linen_dropouts
from .linen import from_linen
from .nnx import from_nnx

__all__ = ["FrameworkModel", "from_equinox", "from_haiku", "from_linen", "from_nnx", "stack"]
