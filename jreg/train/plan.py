"""One epoch's plan: the shuffle, the mini-batches, the last partial batch, and the per-step keys.

The partial-batch rule lives here and nowhere else. With ``n`` examples and
mini-batches of ``batch_size``, an epoch takes ``n // batch_size`` full steps
over a shuffled order, then, with ``partial_batch="include"`` (the default, as
network2.py does), one smaller step on the ``n % batch_size`` examples left
over; ``"drop"`` skips them for that epoch (each epoch shuffles anew).

Keys: the shuffle uses the epoch key itself; a stochastic objective gets one
key per step, split from ``fold_in(epoch_key, NOISE_SALT)``, so adding dropout
changes no data order and no earlier result.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from .._errors import JregError
from ..batching import batch_indices

PARTIAL_BATCH = ("include", "drop")

#: Salt for the per-step keys (the shuffle uses the epoch key itself).
NOISE_SALT = 0x6E6F6973


def check_partial_batch(partial_batch: Any) -> str:
    if partial_batch not in PARTIAL_BATCH:
        raise JregError(f"partial_batch must be one of {PARTIAL_BATCH}, got {partial_batch!r}")
    return partial_batch


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The static shape of an epoch over ``n`` examples."""

    n: int
    batch_size: int
    partial_batch: str = "include"

    @property
    def full(self) -> int:
        """Full mini-batches per epoch."""
        return self.n // self.batch_size

    @property
    def rest(self) -> int:
        """Examples a full batch cannot take."""
        return self.n % self.batch_size

    @property
    def last(self) -> bool:
        """Whether the epoch ends with one smaller step on the leftovers."""
        return bool(self.rest) and self.partial_batch == "include"

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return self.full + int(self.last)

    def order(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(full (full, batch_size), rest (rest,))`` example indices, shuffled by ``key``."""
        return batch_indices(self.n, self.batch_size, key)

    def step_keys(self, key: jax.Array) -> jax.Array:
        """One key per step, for dropout and noise."""
        return jax.random.split(jax.random.fold_in(key, NOISE_SALT), self.steps)

    def batches(self, key: jax.Array) -> list[jax.Array]:
        """The index arrays of the epoch's steps, in order (for step-by-step replays on the host)."""
        full, rest = self.order(key)
        return list(full) + ([rest] if self.last else [])


def make_plan(n: int, batch_size: int, partial_batch: str) -> EpochPlan:
    if batch_size > n:
        raise JregError(f"batch_size must be at most the number of training examples ({n}), got {batch_size}")
    return EpochPlan(n, batch_size, check_partial_batch(partial_batch))
