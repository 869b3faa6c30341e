"""Activity regularization and input-derivative penalties (double backprop), checked against NumPy
and finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jreg
from jreg import losses as L
from jreg import penalties as P

from .conftest import VARIANTS


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def setup(seed=0, sizes=(4, 6, 3), n=5, drop_rate=0.0):
    model = jreg.mlp(list(sizes), dtype=jnp.float64, drop_rate=drop_rate)
    params = model.init(jax.random.key(seed))
    x = jax.random.normal(jax.random.key(seed + 1), (n, sizes[0]), jnp.float64)
    y = jax.random.randint(jax.random.key(seed + 2), (n,), 0, sizes[-1])
    return model, params, (x, y)


def np_forward(params, x):
    a = np.asarray(x, np.float64)
    hidden = []
    for layer, p in enumerate(params):
        z = a @ np.asarray(p["w"]) + np.asarray(p["b"])
        a = 1 / (1 + np.exp(-z)) if layer < len(params) - 1 else z
        if layer < len(params) - 1:
            hidden.append(a)
    return a, hidden


def np_cross_entropy(z, y):
    return np.sum(np.logaddexp(0, z) - np.eye(z.shape[1])[y] * z, axis=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_activity_penalty_is_the_mean_over_examples(variant):
    model, params, batch = setup()
    obj = jreg.objective(model.apply, L.cross_entropy, activity=P.l1(0.3) + P.l2(0.2))
    total, parts = variant(obj)(params, batch)
    _, hidden = np_forward(params, batch[0])
    h = hidden[0]
    np.testing.assert_allclose(parts["activity_l1"], 0.3 * np.abs(h).sum(axis=1).mean(), rtol=1e-12)
    np.testing.assert_allclose(parts["activity_l2"], 0.1 * (h**2).sum(axis=1).mean(), rtol=1e-12)
    np.testing.assert_allclose(parts["penalty"], parts["activity_l1"] + parts["activity_l2"], rtol=1e-12)
    np.testing.assert_allclose(total, parts["data"] + parts["penalty"], rtol=1e-12)


def np_input_gradient_penalty(params, x, y, c, eps=1e-6):
    """c/2 * mean_i ||dC_i/dx_i||^2 with the gradient by central differences."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for j in range(x.shape[1]):
        d = np.zeros_like(x)
        d[:, j] = eps
        up = np_cross_entropy(np_forward(params, x + d)[0], y)
        down = np_cross_entropy(np_forward(params, x - d)[0], y)
        g[:, j] = (up - down) / (2 * eps)
    return 0.5 * c * np.sum(g**2) / x.shape[0]


def np_jacobian_penalty(params, x, c, eps=1e-6):
    x = np.asarray(x, np.float64)
    total = 0.0
    for j in range(x.shape[1]):
        d = np.zeros_like(x)
        d[:, j] = eps
        col = (np_forward(params, x + d)[0] - np_forward(params, x - d)[0]) / (2 * eps)
        total += np.sum(col**2)
    return 0.5 * c * total / x.shape[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_input_gradient_and_jacobian_values_match_finite_differences(variant):
    model, params, (x, y) = setup()
    obj = jreg.objective(model.apply, L.cross_entropy, input_penalty=[P.input_gradient(0.7), P.jacobian_norm(0.4)])
    _, parts = variant(obj)(params, (x, y))
    np.testing.assert_allclose(parts["input_gradient"], np_input_gradient_penalty(params, x, y, 0.7), rtol=1e-6)
    np.testing.assert_allclose(parts["jacobian_norm"], np_jacobian_penalty(params, x, 0.4), rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_through_every_function_space_term_match_finite_differences(variant):
    """Double backprop: d/dparams of a penalty on d/dx."""
    model, params, batch = setup(seed=3)
    obj = jreg.objective(
        model.apply,
        L.cross_entropy,
        P.l2(0.1),
        activity=P.l1(0.05) + P.l2(0.3),
        input_penalty=[P.input_gradient(0.5), P.jacobian_norm(0.2)],
    )
    check_grads(variant(lambda p: obj(p, batch)[0]), (params,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_jacobian_projections_estimate_the_exact_value_without_bias():
    model, params, batch = setup(sizes=(4, 6, 5), n=3)
    exact = jreg.objective(model.apply, L.cross_entropy, input_penalty=P.jacobian_norm(1.0))
    est = jreg.objective(model.apply, L.cross_entropy, input_penalty=P.jacobian_norm(1.0, projections=2))
    value = jax.jit(lambda k: est(params, batch, key=k)[1]["jacobian_norm"])
    draws = jax.vmap(value)(jax.random.split(jax.random.key(0), 4000))
    truth = float(exact(params, batch)[1]["jacobian_norm"])
    assert abs(float(draws.mean()) - truth) < 0.05 * truth
    assert float(draws.std()) > 0  # it is random
    # without a key (evaluation mode) the estimate falls back to the exact value
    np.testing.assert_allclose(est(params, batch)[1]["jacobian_norm"], truth, rtol=1e-12)


@jax.jit
def linear_jacobian_norm(params, x, c):
    """The jacobian_norm part of a linear model's objective: one compiled program per shape, c an argument (op by
    op, each example compiled every primitive of the penalty's Jacobian anew)."""
    obj = jreg.objective(lambda p, x: x @ p["w"] + p["b"], L.quadratic, input_penalty=P.jacobian_norm(c))
    return obj(params, (x, jnp.zeros((x.shape[0], params["w"].shape[1]), x.dtype)))[1]["jacobian_norm"]


@given(
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(1, 4),
    st.floats(0, 10),
    st.integers(0, 2**16),
)
def test_jacobian_norm_of_a_linear_model_is_its_frobenius_norm(n_in, n_out, batch, c, seed):
    """For f(x) = x W + b the Jacobian is W^T at every x: R = c/2 ||W||_F^2 exactly."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"w": jax.random.normal(k1, (n_in, n_out), jnp.float64), "b": jnp.zeros(n_out)}
    x = jax.random.normal(k2, (batch, n_in), jnp.float64)
    value = linear_jacobian_norm(params, x, c)
    np.testing.assert_allclose(value, 0.5 * c * float(jnp.sum(params["w"] ** 2)), rtol=1e-10, atol=1e-12)


@jax.jit
def linear_input_gradient(w, x, y, c):
    """The input_gradient part of a linear quadratic model's objective, as :func:`linear_jacobian_norm`."""
    obj = jreg.objective(lambda p, x: x @ p, L.quadratic, input_penalty=P.input_gradient(c))
    return obj(w, (x, y))[1]["input_gradient"]


@given(st.integers(1, 5), st.integers(1, 4), st.floats(0, 10), st.integers(0, 2**16))
def test_input_gradient_of_a_linear_quadratic_model_has_its_closed_form(n_in, n_out, c, seed):
    """C = 1/2 ||xW - y||^2 gives dC/dx = (xW - y) W^T."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(k1, (n_in, n_out), jnp.float64)
    x = jax.random.normal(k2, (3, n_in), jnp.float64)
    y = jax.random.normal(k3, (3, n_out), jnp.float64)
    g = (np.asarray(x) @ np.asarray(w) - np.asarray(y)) @ np.asarray(w).T
    np.testing.assert_allclose(linear_input_gradient(w, x, y, c), 0.5 * c * np.sum(g**2) / 3, rtol=1e-9, atol=1e-12)


def test_input_penalties_use_the_training_key_of_the_data_term():
    """With dropout, the penalty is on the same stochastic network as the data term (same masks)."""
    model, params, batch = setup(drop_rate=0.5)
    obj = jreg.objective(model.apply, L.cross_entropy, input_penalty=P.input_gradient(1.0))
    key = jax.random.key(5)
    _, parts = obj(params, batch, key=key)
    forward = lambda x: model.apply(params, x, key=key)  # noqa: E731
    g = jax.grad(lambda x: jnp.sum(L.cross_entropy(forward(x), batch[1])))(batch[0])
    np.testing.assert_allclose(parts["input_gradient"], 0.5 * jnp.sum(g**2) / batch[0].shape[0], rtol=1e-12)
    assert not np.isclose(parts["input_gradient"], obj(params, batch)[1]["input_gradient"])


def test_training_with_function_space_penalties_lowers_them():
    model, params, batch = setup(sizes=(4, 16, 3), n=64)
    base = jreg.objective(model.apply, L.cross_entropy)
    reg = jreg.objective(model.apply, L.cross_entropy, activity=P.l1(0.05), input_penalty=P.jacobian_norm(0.5))
    opts = dict(epochs=30, batch_size=16, key=jax.random.key(0), monitor=())
    p0, _ = jreg.fit(base, optax.sgd(0.5), params, batch, **opts)
    p1, _ = jreg.fit(reg, optax.sgd(0.5), params, batch, **opts)
    before, after = reg(p0, batch)[1], reg(p1, batch)[1]
    assert after["activity_l1"] < before["activity_l1"]
    assert after["jacobian_norm"] < before["jacobian_norm"]


def test_bad_function_space_arguments_name_themselves():
    model, params, batch = setup()
    with pytest.raises(jreg.JregError, match="intermediates"):
        jreg.objective(lambda p, x: model.apply(p, x), L.cross_entropy, activity=P.l1(0.1))
    with pytest.raises(jreg.JregTypeError, match="activity"):
        jreg.objective(model.apply, L.cross_entropy, activity=lambda h: 0.0)
    with pytest.raises(jreg.JregTypeError, match=r"input_penalty\[0\]"):
        jreg.objective(model.apply, L.cross_entropy, input_penalty=[P.l2(0.1)])
    with pytest.raises(jreg.JregError, match="duplicate"):
        jreg.objective(model.apply, L.cross_entropy, input_penalty=[P.input_gradient(1.0), P.input_gradient(2.0)])
    with pytest.raises(jreg.JregError, match="coefficient"):
        P.input_gradient(-1.0)
    with pytest.raises(jreg.JregError, match="projections"):
        P.jacobian_norm(1.0, projections=0)
    bad = jreg.objective(lambda p, x, intermediates=False: model.apply(p, x), L.cross_entropy, activity=P.l1(0.1))
    with pytest.raises(jreg.JregError, match=r"\(outputs, intermediates\)"):
        bad(params, batch)


def test_activity_penalty_on_a_flax_model_with_sown_intermediates():
    flax = pytest.importorskip("flax")
    nn = flax.linen

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.sigmoid(nn.Dense(6)(x))
            self.sow("intermediates", "hidden", h)
            return nn.Dense(3)(h)

    module = MLP()
    _, params, (x, y) = setup()
    variables = module.init(jax.random.key(0), x)

    def apply(params, x, *, intermediates=False):
        out, state = module.apply(params, x, mutable=["intermediates"])
        return (out, state["intermediates"]) if intermediates else out

    obj = jreg.objective(apply, L.cross_entropy, activity=P.l1(0.2))
    _, parts = obj(variables, (x, y))
    hidden = jax.nn.sigmoid(x @ variables["params"]["Dense_0"]["kernel"] + variables["params"]["Dense_0"]["bias"])
    np.testing.assert_allclose(parts["activity_l1"], 0.2 * np.abs(hidden).sum(axis=1).mean(), rtol=1e-6)
