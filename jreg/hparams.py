"""Hyperparameter settings for :func:`jreg.sweep` (and the front ends built on it): grids and random draws.

:func:`jreg.sweep` takes ``hparams={name: K values}``, equal-length lists zipped member by member.
:func:`grid` crosses axes into such lists; :func:`sample` draws K random settings from distributions
(:func:`loguniform`, :func:`uniform`, :func:`choice`)::

    hp = jreg.grid(lmbda=[0.1, 1.0, 10.0], seed=range(3))   # 9 members: every lmbda with every seed
    hp = jreg.sample(jax.random.key(0), 16, lmbda=jreg.loguniform(1e-5, 1.0), eta=jreg.uniform(0.1, 1.0))

A ``seed`` entry gives each member its own initialization when ``sweep``'s ``params`` is an init function
of a key (``model.init``): member ``i`` starts from ``init(jax.random.key(seed[i]))``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ._errors import JregError, JregTypeError

__all__ = ["Grid", "choice", "grid", "loguniform", "sample", "uniform"]


class Grid(dict):
    """The lists :func:`grid` returns (``{name: K values}``, a dict), with the axes they cross.

    ``axes``: ``{name: the values given}`` in the order given; ``shape``: their lengths. Member ``i`` is
    ``np.unravel_index(i, shape)`` of the axes: the last axis varies fastest, so a result's ``(K, ...)``
    arrays reshape to ``(*shape, ...)``."""

    def __init__(self, lists: Mapping[str, list[Any]], axes: Mapping[str, list[Any]]):
        super().__init__(lists)
        self.axes = dict(axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.axes.values())


def _values(name: str, values: Any, where: str) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise JregTypeError(f"{where}: {name}= must be a sequence of values, e.g. [0.1, 1.0], got {values!r}")
    out = [v.item() if isinstance(v, np.generic) else v for v in np.asarray(list(values)).tolist()]
    if not out:
        raise JregError(f"{where}: {name}= is empty; give it at least one value")
    return out


def grid(**axes: Iterable[Any]) -> Grid:
    """Every combination of the axes, as the equal-length lists :func:`jreg.sweep` takes.

    ``grid(lmbda=[0.1, 1.0], eta=[0.5, 3.0])`` gives ``{"lmbda": [0.1, 0.1, 1.0, 1.0],
    "eta": [0.5, 3.0, 0.5, 3.0]}``: the first axis varies slowest (``itertools.product``'s order). A
    ``seed=range(n)`` axis repeats each setting with n initializations (see the module docstring)."""
    if not axes:
        raise JregError("grid: give at least one axis, e.g. grid(lmbda=[0.1, 1.0])")
    given = {name: _values(name, values, "grid") for name, values in axes.items()}
    combos = list(itertools.product(*given.values()))
    return Grid({name: [c[i] for c in combos] for i, name in enumerate(given)}, given)


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A distribution :func:`sample` draws from: ``kind`` ``"uniform"``, ``"loguniform"`` or ``"choice"``."""

    kind: str
    low: float = 0.0
    high: float = 1.0
    values: tuple[Any, ...] = ()

    def draw(self, key: Any, n: int) -> list[Any]:
        import jax  # the draws use JAX's counter-based generator: the same key gives the same draws everywhere

        if self.kind == "choice":
            picks = np.asarray(jax.random.randint(key, (n,), 0, len(self.values)))
            return [self.values[i] for i in picks.tolist()]
        u = np.asarray(jax.random.uniform(key, (n,), dtype=np.float32), np.float64)
        if self.kind == "loguniform":
            low, high = math.log(self.low), math.log(self.high)
            return np.exp(low + u * (high - low)).tolist()
        return (self.low + u * (self.high - self.low)).tolist()


def _bounds(low: Any, high: Any, name: str, positive: bool) -> tuple[float, float]:
    for value, which in ((low, "low"), (high, "high")):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise JregTypeError(f"{name}: {which} must be a real number, got {value!r}")
        if not math.isfinite(value) or (positive and value <= 0):
            kind = "a positive finite number" if positive else "a finite number"
            raise JregError(f"{name}: {which} must be {kind}, got {value!r}")
    if not low < high:
        raise JregError(f"{name}: low must be below high, got low={low!r}, high={high!r}")
    return float(low), float(high)


def uniform(low: float, high: float) -> Distribution:
    """Uniform on ``[low, high)``."""
    return Distribution("uniform", *_bounds(low, high, "uniform", False))


def loguniform(low: float, high: float) -> Distribution:
    """Log-uniform on ``[low, high)`` (``0 < low < high``): each decade equally likely, as for λ or η."""
    return Distribution("loguniform", *_bounds(low, high, "loguniform", True))


def choice(values: Iterable[Any]) -> Distribution:
    """One of ``values``, each equally likely."""
    return Distribution("choice", values=tuple(_values("values", values, "choice")))


def sample(key: Any, n: int, **distributions: Distribution | Any) -> dict[str, list[Any]]:
    """``n`` random settings, ``{name: n values}``, as :func:`jreg.sweep` takes them.

    Each entry is a :func:`loguniform`, :func:`uniform` or :func:`choice` distribution, or a constant (the
    same value for every member). Entry number ``j`` (in the order given) draws with
    ``jax.random.fold_in(key, j)``, so the same key gives the same settings and adding an entry at the end
    changes none of the others."""
    import jax

    from ._checks import check_key, check_positive_int

    check_key(key, "sample: key")
    n = check_positive_int(n, "sample: n")
    if not distributions:
        raise JregError("sample: give at least one entry, e.g. sample(key, 8, lmbda=jreg.loguniform(1e-5, 1))")
    out: dict[str, list[Any]] = {}
    for j, (name, dist) in enumerate(distributions.items()):
        if isinstance(dist, Distribution):
            out[name] = dist.draw(jax.random.fold_in(key, j), n)
        elif isinstance(dist, (int, float, np.integer, np.floating)) and not isinstance(dist, bool):
            out[name] = [dist] * n
        else:
            raise JregTypeError(
                f"sample: {name}= must be jreg.loguniform(...), jreg.uniform(...), jreg.choice([...]) or a number, "
                f"got {dist!r}"
            )
    return out
