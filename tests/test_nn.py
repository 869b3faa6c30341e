from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jreg

from .conftest import VARIANTS


def test_mlp_params_layout_and_shapes():
    params = jreg.mlp([784, 30, 10]).init(jax.random.key(0))
    assert isinstance(params, list) and len(params) == 2
    assert params[0]["w"].shape == (784, 30) and params[0]["b"].shape == (30,)
    assert params[1]["w"].shape == (30, 10) and params[1]["b"].shape == (10,)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_matches_numpy_forward(variant):
    model = jreg.mlp([5, 4, 3])
    params = model.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (7, 5))
    a = np.asarray(x)
    for i, p in enumerate(params):
        z = a @ np.asarray(p["w"]) + np.asarray(p["b"])
        a = 1 / (1 + np.exp(-z)) if i == 0 else z
    np.testing.assert_allclose(variant(model.apply)(params, x), a, rtol=1e-5, atol=1e-6)
    # one example without a batch axis
    np.testing.assert_allclose(variant(model.apply)(params, x[0]), a[0], rtol=1e-5, atol=1e-6)


def test_output_activation_is_applied():
    model = jreg.mlp([3, 2], output_activation=jax.nn.sigmoid)
    logits_model = jreg.mlp([3, 2])
    params = model.init(jax.random.key(0))
    x = jnp.ones((4, 3))
    np.testing.assert_allclose(model.apply(params, x), jax.nn.sigmoid(logits_model.apply(params, x)), rtol=1e-6)


def test_relu_activation():
    model = jreg.mlp([3, 8, 2], activation=jax.nn.relu, init="he")
    params = model.init(jax.random.key(0))
    assert model.apply(params, jnp.ones((2, 3))).shape == (2, 2)
    assert np.all(np.asarray(params[0]["b"]) == 0)


def test_nielsen_default_and_large_initializer_statistics():
    n_in, n_out = 400, 300
    default = jreg.mlp([n_in, n_out]).init(jax.random.key(0))[0]
    large = jreg.mlp([n_in, n_out], init="large").init(jax.random.key(0))[0]
    # default: w ~ N(0, 1/n_in), b ~ N(0, 1); large: w, b ~ N(0, 1); 120k draws -> std within ~1%
    assert abs(float(default["w"].std()) * np.sqrt(n_in) - 1) < 0.02
    assert abs(float(default["w"].mean())) < 0.01 / np.sqrt(n_in) * 10
    assert abs(float(large["w"].std()) - 1) < 0.02
    assert abs(float(default["b"].std()) - 1) < 0.2  # only 300 draws
    # untruncated normal: tails beyond 3 sigma exist (about 0.27% of 120k draws)
    assert int(jnp.sum(jnp.abs(large["w"]) > 3)) > 100


def test_jax_initializers_can_be_passed():
    model = jreg.mlp([10, 5], w_init=jax.nn.initializers.glorot_uniform(), b_init=jax.nn.initializers.zeros)
    p = model.init(jax.random.key(0))[0]
    limit = np.sqrt(6 / 15)
    assert float(jnp.max(jnp.abs(p["w"]))) <= limit and float(jnp.max(jnp.abs(p["b"]))) == 0


def test_same_key_same_params():
    m = jreg.mlp([4, 3, 2])
    a, b = m.init(jax.random.key(3)), m.init(jax.random.key(3))
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sizes": [784]}, "at least an input and an output"),
        ({"sizes": [784, 0, 10]}, r"sizes\[1\] must be a positive integer"),
        ({"sizes": [784, 30.5, 10]}, r"sizes\[1\] must be a positive integer"),
        ({"sizes": "784"}, "sequence of layer widths"),
        ({"sizes": [3, 2], "init": "huge"}, "init must be one of"),
        ({"sizes": [3, 2], "dtype": jnp.int32}, "floating-point dtype"),
        ({"sizes": [3, 2], "w_init": 3}, "w_init must be an initializer"),
    ],
)
def test_mlp_bad_arguments(kwargs, match):
    with pytest.raises(jreg.JregError, match=match):
        jreg.mlp(**kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_input_errors_name_the_argument(variant):
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    with pytest.raises(jreg.JregError, match=r"x must have shape \(batch, 784\).*got \(5, 100\)"):
        variant(model.apply)(params, jnp.ones((5, 100)))
    with pytest.raises(jreg.JregTypeError, match="x must be floating point, got dtype uint8"):
        variant(model.apply)(params, jnp.ones((5, 784), jnp.uint8))
    wrong = jreg.mlp([784, 20, 10]).init(jax.random.key(0))
    with pytest.raises(jreg.JregError, match=r"params\[0\] must hold w of shape \(784, 30\)"):
        variant(model.apply)(wrong, jnp.ones((5, 784)))
