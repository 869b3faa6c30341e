"""What the model-sharding worker scripts measure (imported after each has set its device count)."""

from __future__ import annotations

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg

SWEEP = importlib.import_module("jreg.train.sweep")  # the module (jreg.train.sweep is the function)
COLLECTIVE = re.compile(r"= .*\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\(")


def gap(a, b) -> float:
    """The largest difference between two pytrees' leaves."""
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def history_gap(a, b) -> float:
    """The largest difference between two histories' series: inf when their names or their NaN entries (a
    diverged member's blanked rows) differ, else over the entries both measured."""
    assert sorted(a.keys()) == sorted(b.keys()), (sorted(a.keys()), sorted(b.keys()))
    worst = 0.0
    for name in a.keys():
        u, v = np.asarray(a[name]), np.asarray(b[name])
        if not np.array_equal(np.isnan(u), np.isnan(v)):
            return float("inf")
        worst = max(worst, float(np.abs(u - v)[~np.isnan(u)].max(initial=0.0)))
    return worst


def small_problem():
    """``(model, params, build, hparams)``: the workers' [12, 8, 4] MLP, its initial params, ``build`` (cross-entropy
    + ``l2(λ)``, Adam with rate η) and ``hparams(k)`` (k values of λ and η on a line)."""
    model = jreg.mlp([12, 8, 4])

    def build(hp):
        penalty = jreg.penalties.l2(hp["lmbda"])
        return jreg.objective(model.apply, jreg.losses.cross_entropy, penalty), optax.adam(hp["eta"])

    def hparams(k):
        return {"lmbda": np.linspace(0.0, 0.02, k), "eta": np.linspace(0.005, 0.05, k)}

    return model, model.init(jax.random.key(0)), build, hparams


def refusals(attempts: dict) -> dict:
    """``{name: None}`` for each attempt (a function of no arguments) that ran, else the jreg error it raised, as
    ``"ErrorType: message"``; any other exception propagates."""
    errors = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            errors[name] = None
        except (jreg.JregError, jreg.JregTypeError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors
