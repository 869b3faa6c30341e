"""Label smoothing as a pure loss transform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jreg
from jreg import losses

from .conftest import VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
@given(z=hnp.arrays(np.float64, (3, 4), elements=st.floats(-10, 10)), alpha=st.floats(0, 0.99))
def test_smoothed_log_likelihood_matches_the_formula(variant, z, alpha):
    with jax.enable_x64(True):
        labels = np.array([0, 3, 1])
        target = (1 - alpha) * np.eye(4)[labels] + alpha / 4
        logp = z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True)) - z.max(-1, keepdims=True)
        expected = -np.sum(target * logp, axis=-1)
        got = variant(losses.label_smoothing(losses.log_likelihood, alpha))(jnp.asarray(z), jnp.asarray(labels))
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_alpha_zero_is_the_plain_loss_and_one_hot_targets_work_too():
    z = jax.random.normal(jax.random.key(0), (5, 3))
    y = jnp.array([0, 1, 2, 1, 0])
    for loss in (losses.cross_entropy, losses.log_likelihood, losses.quadratic):
        np.testing.assert_allclose(losses.label_smoothing(loss, 0.0)(z, y), loss(z, y), rtol=1e-6)
        np.testing.assert_allclose(
            losses.label_smoothing(loss, 0.2)(z, y),
            losses.label_smoothing(loss, 0.2)(z, jax.nn.one_hot(y, 3)),
            rtol=1e-6,
        )


def test_smoothing_keeps_the_logits_finite_where_plain_cross_entropy_pushes_them_away():
    """The smoothed loss has a finite minimizer: its gradient vanishes at log-odds log((1-a+a/K)/(a/K))."""
    alpha, k = 0.1, 10
    smoothed = losses.label_smoothing(losses.log_likelihood, alpha)
    z_star = jnp.log((1 - alpha + alpha / k) / (alpha / k))
    z = jnp.zeros((1, k)).at[0, 0].set(z_star)
    g = jax.grad(lambda z: smoothed(z, jnp.array([0])).sum())(z)
    np.testing.assert_allclose(g, 0.0, atol=1e-6)


def test_traced_alpha_and_errors():
    z, y = jnp.zeros((2, 3)), jnp.array([0, 1])
    f = jax.jit(lambda a: losses.label_smoothing(losses.log_likelihood, a)(z, y))
    np.testing.assert_allclose(f(0.3), losses.label_smoothing(losses.log_likelihood, 0.3)(z, y), rtol=1e-6)
    with pytest.raises(jreg.JregError, match=r"alpha must be in \[0, 1\), got 1.0"):
        losses.label_smoothing(losses.log_likelihood, 1.0)
    with pytest.raises(jreg.JregError, match="alpha must be >= 0"):
        losses.label_smoothing(losses.log_likelihood, -0.1)
    with pytest.raises(jreg.JregError, match=r"labels must have shape \(2,\)"):
        losses.label_smoothing(losses.log_likelihood, 0.1)(z, jnp.array([0, 1, 2]))
    assert jnp.isnan(jax.jit(losses.label_smoothing(losses.log_likelihood, 0.1))(z, jnp.array([0, 7]))[1])
