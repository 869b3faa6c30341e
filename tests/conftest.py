"""Shared fixtures: every core test runs with and without ``jax.jit``."""

from __future__ import annotations

import jax
import pytest
from hypothesis import HealthCheck, settings

# Each core test is parametrized over these two "variants" (the pytest form of chex.variants).
VARIANTS = [pytest.param(lambda f: f, id="nojit"), pytest.param(jax.jit, id="jit")]

settings.register_profile(
    "jreg",
    max_examples=25,
    deadline=None,  # first calls compile
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("jreg")


@pytest.fixture
def no_one_hot(monkeypatch):
    """jax.nn.one_hot must not be reached: the count is refused before anything is allocated."""

    def refuse(*args, **kwargs):
        raise AssertionError("jax.nn.one_hot was called with an absurd class count")

    monkeypatch.setattr(jax.nn, "one_hot", refuse)
