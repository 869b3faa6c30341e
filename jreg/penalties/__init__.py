r"""Penalties: pure functions of the params that return a scalar.

A :class:`Penalty` is a sum of *terms*. Each term applies one formula to the
leaves of a params pytree that its ``mask`` selects, with a coefficient that
may differ per leaf::

    R(params) = sum_terms  scale * sum_{selected leaves w}  f(w, c_w)

Conventions (stated once, used everywhere):

* ``l2(c)``          ``R = c/2 * sum w^2``      so Nielsen's ``lambda/(2n) * sum w^2`` is ``l2(lambda / n)``
                     and the gradient it adds is ``c * w``.
* ``l1(c)``          ``R = c * sum |w|``
* ``elastic_net(c1, c2)``  ``R = c1 * sum |w| + c2/2 * sum w^2``
* ``center=params0`` (all three): the same formula of ``w - w0`` (L2-init: ``c/2 * sum (w - w0)^2``).

**Masks** choose the leaves (the same rules for every term):

* ``None`` (default): weight matrices and kernels only
  (:func:`jreg.selectors.weights`: floating-point leaves with ``ndim >= 2`` not
  named like biases or normalization parameters); biases, scales and scalars
  are left alone.
* a selector from :mod:`jreg.selectors` (``S.name("kernel") & S.path("layers/[12]/*")``).
* a glob pattern ``str`` over the leaf's path, e.g. ``"*/w"`` or ``"1/*"``.
  A path joins the keys from the root with ``/``: jreg's MLP has ``"0/w"``,
  ``"0/b"``, ``"1/w"``...; a Flax dict ``"params/Dense_0/kernel"``; a NamedTuple
  field by its name. :func:`paths` lists them for any params.
* a predicate ``mask(path, leaf) -> bool``.
* a pytree of bools with the structure of params (or a prefix of it, e.g.
  ``[True, False]`` for a two-layer MLP).

**Coefficients** are a scalar (Python number or 0-d array, possibly traced,
so ``jax.vmap`` over the strength works), a pytree with the structure of
params or a prefix of it (``[1e-4, 1e-3]`` gives each MLP layer its own), a
:func:`by_path` mapping from glob patterns to values, a :func:`by_shape` rule of
the leaf's shape (:func:`width_scaled`: ``base * fan_in^exponent``), or arrays
that broadcast against a leaf. Concrete coefficients must be finite and ``>= 0``.

**Schedules.** A coefficient may also be a function of the training step,
``c(step) -> scalar`` (any optax schedule, e.g.
``optax.linear_schedule(0.0, 1e-3, 5000)`` to warm a penalty up). The step is
the global mini-batch count from 0, the same count optax's learning-rate
schedules see; :func:`jreg.fit` and :func:`jreg.make_epoch` pass it, and a
penalty with a schedule called without ``step=`` raises an error rather than
guess. ``step`` may be traced, so a schedule never recompiles anything.

Penalties add (``l1(a) + l2(b)`` or :func:`sum`) and scale (``0.5 * l2(c)``).
"""

from __future__ import annotations

# two private names jreg.optim imports from here: unit_norm shares the group lasso's groups and unit norms
from .catalog import _check_groups as _check_groups
from .catalog import _unit_norms as _unit_norms
from .catalog import (
    elastic_net,
    group_lasso,
    l1,
    l2,
    max_norm,
    nuclear_norm,
    orthogonality,
    spectral_norm,
    spectral_target,
)
from .coefficients import ByPath, ByShape, Center, by_path, by_shape, fan_in, is_schedule, width_scaled
from .description import Description, describe
from .function_space import InputPenalty, OutputPenalty, input_gradient, jacobian_norm, z_loss
from .masks import Mask, Params, is_weight, mask_tree, paths
from .prox import soft_threshold
from .terms import Penalty, Term, term
from .terms import sum as sum  # noqa: A004 - public name: jreg.penalties.sum

__all__ = [
    "ByPath",
    "ByShape",
    "Center",
    "Description",
    "InputPenalty",
    "Mask",
    "OutputPenalty",
    "Params",
    "Penalty",
    "Term",
    "by_path",
    "by_shape",
    "describe",
    "elastic_net",
    "fan_in",
    "group_lasso",
    "input_gradient",
    "is_schedule",
    "is_weight",
    "jacobian_norm",
    "l1",
    "l2",
    "mask_tree",
    "max_norm",
    "nuclear_norm",
    "orthogonality",
    "paths",
    "soft_threshold",
    "spectral_norm",
    "spectral_target",
    "sum",
    "term",
    "width_scaled",
    "z_loss",
]
