"""Converting an L2 / weight-decay strength between the conventions libraries and papers use.

Every convention is mapped to jreg's coupled coefficient ``c`` of ``l2(c)``:
the penalty ``c/2 * sum w^2`` in the objective, which adds ``c * w`` to the
gradient; with plain SGD at learning rate ``η`` each step multiplies the
weights by ``1 - η c``. Conversions equate that per-step decay under plain SGD
(under Adam no convention equals another: see docs/conventions.md).

========================  =============================================================  ==================
convention                what the library does                                           ``c`` equals
========================  =============================================================  ==================
``"coupled"``             jreg ``l2(c)``; optax ``chain(add_decayed_weights(c), sgd)``;   ``value``
                          PyTorch ``SGD(weight_decay=c)``
``"nielsen"``             network2.py: ``λ/(2n) Σ w²`` with ``n`` training examples       ``value / n``
``"decoupled_lr"``        decay ``-lr·wd·w`` per step: optax ``adamw(weight_decay=wd)``,  ``value``
                          PyTorch ``AdamW(weight_decay=wd)``, Keras ``AdamW``,
                          :func:`jreg.decoupled_weight_decay`
``"decoupled_schedule"``  the AdamW paper: decay ``-η_t·λ·w`` with ``η_t`` the schedule   ``value / lr``
                          multiplier only (not the learning rate ``lr``)
``"keras"``               Keras ``regularizers.L2(l)``: ``l Σ w²`` (no ½)                   ``2 * value``
``"sklearn"``             scikit-learn MLP ``alpha``: ``alpha/2 ||W||² / batch_size``       ``value / batch_size``
========================  =============================================================  ==================

Monitored costs have a convention of their own (:data:`COST_CONVENTIONS`,
``jreg.Evaluation(cost_convention=...)``, ``jreg.total_cost(..., cost_convention=...)``):

* ``"jreg"`` (default): a set's cost is the objective on it, ``mean C + R(w)``,
  with the penalty ``R`` as the objective holds it (Nielsen's ``l2(λ/n)`` with
  ``n`` the *training* set's size), whatever the set;
* ``"network2"``: network2.py's ``total_cost(data, lmbda)``, whose penalty is
  ``0.5·(λ/len(data))·Σw²``: the penalty on the params is multiplied by
  ``n_train / len(data)``, ``n_train`` the size of the training set given to
  ``fit`` / ``sweep`` (or ``total_cost``'s ``n_train=``). On the training set
  the two agree; on a set of another size only the penalty part differs.
"""

from __future__ import annotations

from typing import Any

from ._checks import check_nonnegative_scalar, check_positive_int
from ._errors import JregError

CONVENTIONS = ("coupled", "nielsen", "decoupled_lr", "decoupled_schedule", "keras", "sklearn")
#: How a monitored cost scales the penalty on the params (see the module docstring).
COST_CONVENTIONS = ("jreg", "network2")


def check_cost_convention(value: Any, name: str = "cost_convention") -> str:
    """``value`` if it is one of :data:`COST_CONVENTIONS`; a :class:`JregError` naming ``name`` otherwise."""
    if not (isinstance(value, str) and value in COST_CONVENTIONS):
        raise JregError(f"{name} must be one of {COST_CONVENTIONS}, got {value!r}")
    return value


def penalty_scale(convention: str, n_train: int, n_set: int) -> float | None:
    """The factor on the params' penalty in a cost measured on ``n_set`` examples; ``None`` when it is 1.

    ``"network2"``: ``n_train / n_set`` (network2.py's ``λ/len(data)`` against
    the objective's ``λ/n_train``); ``"jreg"``, or a set of the training set's
    size: ``None`` (nothing to rescale, the figures are bit for bit the objective's).
    """
    check_cost_convention(convention)
    if convention == "jreg" or n_set == n_train:
        return None
    return n_train / n_set


def _to_coupled(value: Any, convention: str, n: Any, learning_rate: Any, batch_size: Any) -> Any:
    if convention in ("coupled", "decoupled_lr"):
        return value
    if convention == "nielsen":
        return value / _need(n, "n", convention)
    if convention == "decoupled_schedule":
        return value / _need_rate(learning_rate, convention)
    if convention == "keras":
        return 2 * value
    if convention == "sklearn":
        return value / _need(batch_size, "batch_size", convention)
    raise JregError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _from_coupled(c: Any, convention: str, n: Any, learning_rate: Any, batch_size: Any) -> Any:
    if convention in ("coupled", "decoupled_lr"):
        return c
    if convention == "nielsen":
        return c * _need(n, "n", convention)
    if convention == "decoupled_schedule":
        return c * _need_rate(learning_rate, convention)
    if convention == "keras":
        return c / 2
    if convention == "sklearn":
        return c * _need(batch_size, "batch_size", convention)
    raise JregError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _need(value: Any, name: str, convention: str) -> int:
    if value is None:
        raise JregError(f"the {convention!r} convention needs {name}=")
    return check_positive_int(value, name)


def _need_rate(learning_rate: Any, convention: str) -> Any:
    if learning_rate is None:
        raise JregError(f"the {convention!r} convention needs learning_rate= (the base learning rate)")
    check_nonnegative_scalar(learning_rate, "learning_rate")
    if float(learning_rate) == 0:
        raise JregError("learning_rate must be > 0")
    return learning_rate


def convert_l2(
    value: Any,
    *,
    source: str,
    target: str = "coupled",
    n: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
) -> Any:
    """Convert an L2 / weight-decay strength from one convention to another (see the module table).

    Examples: Nielsen's ``λ = 5`` on 50,000 images is
    ``convert_l2(5.0, source="nielsen", n=50_000) == 1e-4`` (``l2(1e-4)``);
    Keras ``L2(1e-4)`` is ``l2(2e-4)``; scikit-learn's ``alpha=1e-4`` at batch
    size 200 is ``l2(5e-7)``; the AdamW paper's ``λ = 0.05`` at base learning
    rate 1e-3 is optax ``weight_decay = 50``.
    """
    check_nonnegative_scalar(value, "value")
    for name, conv in (("source", source), ("target", target)):
        if conv not in CONVENTIONS:
            raise JregError(f"{name} must be one of {CONVENTIONS}, got {conv!r}")
    c = _to_coupled(value, source, n, learning_rate, batch_size)
    return _from_coupled(c, target, n, learning_rate, batch_size)
