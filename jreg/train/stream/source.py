"""What a stream is: :class:`Stream` (a source with its options) and the rule telling a stream from in-memory data.

The rule and what a source may be are in :mod:`jreg.train.stream`'s docstring.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ..._checks import check_positive_int
from ..._errors import JregTypeError
from ..._signature import checked_init

#: Default steps per compiled chunk (benchmarks/stream_speed.py: per-step host overhead is amortized by 64).
CHUNK = 64
#: Default chunks kept ready on the device ahead of the one training (double buffering).
PREFETCH = 2


@checked_init
@dataclasses.dataclass(frozen=True)
class Stream:
    """A source of mini-batches for :func:`jreg.fit` / :func:`jreg.sweep`, with how it is fed.

    ``fit(..., train=jreg.Stream(loader, chunk=128))``; a bare source
    (``train=loader``) gets the defaults. See :mod:`jreg.train.stream` and
    docs/streaming.md for what a source may be.

    Attributes:
        source: a callable ``epoch -> iterable of batches``, or a re-iterable
            (each ``iter()`` is one epoch).
        chunk: steps per compiled call (the batches stacked into one device
            array); larger amortizes the host's per-call cost, costs
            ``chunk`` batches of device memory per buffered chunk.
        prefetch: chunks kept ready on the device (at least 1; 2 is double buffering).
    """

    source: Any
    chunk: int = CHUNK
    prefetch: int = PREFETCH

    def __post_init__(self) -> None:
        if self.source is None or isinstance(self.source, Stream):
            raise JregTypeError(f"Stream.source must be a source of batches, got {self.source!r}")
        check_positive_int(self.chunk, "Stream.chunk")
        check_positive_int(self.prefetch, "Stream.prefetch")


def _is_container(value: Any) -> bool:
    return isinstance(value, (tuple, list, Mapping))


def is_stream(train: Any) -> bool:
    """Whether ``train`` is a stream of batches rather than in-memory data (the rule in the module docstring)."""
    if isinstance(train, Stream):
        return True
    if train is None or isinstance(train, (str, bytes, tuple, Mapping)):
        return False
    if hasattr(train, "shape") and hasattr(train, "dtype"):
        return False
    if isinstance(train, list):
        return all(_is_container(b) for b in train)
    return callable(train) or hasattr(train, "__iter__")


def as_stream(train: Any) -> Stream:
    return train if isinstance(train, Stream) else Stream(train)


def _arity(fn: Callable[..., Any]) -> int:
    """1 when ``fn`` can take the epoch, 0 when it takes nothing."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return 1 if positional else 0
