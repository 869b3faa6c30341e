"""What a penalty touches: :func:`describe` (a :class:`Description`, one row per (term, leaf), printed as a table)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import is_concrete
from .._errors import JregTypeError
from ..selectors import is_array
from .coefficients import Center, is_schedule
from .masks import Params, _flatten
from .terms import Penalty


class Description(list):
    """What :func:`describe` returns: one dict per (term, leaf) it touches, plus the untouched leaves;
    ``str()`` of it is a table."""

    untouched: list[tuple[str, tuple[int, ...]]]

    def __str__(self) -> str:
        head = f"{'term':<16} {'leaf':<34} {'shape':<16} {'dtype':<9} coefficients"
        lines = [head, "-" * len(head)]
        for r in self:
            lines.append(f"{r['term']:<16} {r['path']:<34} {str(r['shape']):<16} {r['dtype']:<9} {r['coefficients']}")
        if self.untouched:
            lines.append("not penalized: " + ", ".join(f"{p} {s}" for p, s in self.untouched))
        return "\n".join(lines)


def _show(c: Any) -> str:
    if is_schedule(c):
        return "schedule(step)"
    if not is_concrete(c):
        return "traced"
    arr = np.asarray(c)
    return f"{arr.item():g}" if arr.ndim == 0 else f"array{arr.shape}"


def _show_center(c: Any) -> str:
    if c is None:
        return "center=0"
    if not is_concrete(c):
        return "center=traced"
    arr = np.asarray(c)
    return f"center={arr.item():g}" if arr.ndim == 0 else f"center=array{arr.shape}"


def describe(penalty: Penalty, params: Params) -> Description:
    """Which leaves each term of ``penalty`` touches, with shapes, dtypes and coefficients.

    ``print(jreg.describe(penalty, params))`` shows a table, ending with the
    leaves no term touches, so a penalty that silently misses a layer is visible.
    """
    if not isinstance(penalty, Penalty):
        raise JregTypeError(f"penalty must be a jreg Penalty, got {type(penalty).__name__}")
    out = Description()
    touched = set()
    for term_name, t in zip(penalty.names(), penalty.terms):
        for p, leaf, coefs in t.resolve(params, unresolved=True):
            touched.add(p)
            scale = "" if isinstance(t.scale, (int, float)) and t.scale == 1 else f" x {_show(t.scale)}"
            out.append(
                {
                    "term": term_name,
                    "path": p,
                    "shape": tuple(np.shape(leaf)),
                    "dtype": str(leaf.dtype),
                    "coefficients": ", ".join(
                        _show_center(c) if isinstance(spec, Center) else _show(c) for spec, c in zip(t.coefs, coefs)
                    )
                    + scale,
                }
            )
    names, leaves, _ = _flatten(params)
    out.untouched = [
        (n, tuple(np.shape(leaf))) for n, leaf in zip(names, leaves) if is_array(leaf) and n not in touched
    ]
    return out
