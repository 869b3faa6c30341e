"""Shared vocabulary for type hints, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

#: A params pytree: jreg's MLP layers, a Flax variable dict, an Equinox module's arrays...
Params = Any
#: Non-differentiated model state (BatchNorm running statistics, counters), or None for stateless models.
ModelState = Any
#: A batch: ``(x, y)`` or any pytree whose leaves share the leading example axis.
Batch = Any
#: Optimizer state of an optax ``GradientTransformation``.
OptState = Any
#: Per-step or per-epoch figures by name.
Metrics = dict[str, jax.Array]
#: A schedule of the global step, e.g. an optax schedule.
Schedule = Callable[[jax.Array], jax.Array]
