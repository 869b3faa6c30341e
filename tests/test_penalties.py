from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jreg
from jreg import penalties as P

from .conftest import VARIANTS

MODEL = jreg.mlp([4, 3, 2])
PARAMS = MODEL.init(jax.random.key(0))


def mlp_params(seed=0):
    return MODEL.init(jax.random.key(seed))


def sq(*arrays):
    return sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays)


def ab(*arrays):
    return sum(float(np.sum(np.abs(np.asarray(a, np.float64)))) for a in arrays)


@pytest.mark.parametrize("variant", VARIANTS)
def test_l2_l1_elastic_values_on_weights_only(variant):
    p = mlp_params()
    ws = [p[0]["w"], p[1]["w"]]
    np.testing.assert_allclose(variant(P.l2(0.3))(p), 0.15 * sq(*ws), rtol=1e-6)
    np.testing.assert_allclose(variant(P.l1(0.3))(p), 0.3 * ab(*ws), rtol=1e-6)
    np.testing.assert_allclose(variant(P.elastic_net(0.2, 0.5))(p), 0.2 * ab(*ws) + 0.25 * sq(*ws), rtol=1e-6)


def test_nielsen_convention():
    """lambda/(2n) * sum w^2 is l2(lambda/n)."""
    p = mlp_params()
    lam, n = 5.0, 50_000
    np.testing.assert_allclose(P.l2(lam / n)(p), lam / (2 * n) * sq(p[0]["w"], p[1]["w"]), rtol=1e-6)


def test_masks_glob_predicate_and_bool_pytrees():
    p = mlp_params()
    w0, b0, w1, b1 = p[0]["w"], p[0]["b"], p[1]["w"], p[1]["b"]
    np.testing.assert_allclose(P.l2(2.0, mask="1/*")(p), sq(w1, b1), rtol=1e-6)
    np.testing.assert_allclose(P.l2(2.0, mask="*/b")(p), sq(b0, b1), rtol=1e-6)
    np.testing.assert_allclose(P.l2(2.0, mask=lambda path, leaf: path == "0/w")(p), sq(w0), rtol=1e-6)
    full = [{"w": True, "b": False}, {"w": False, "b": True}]
    np.testing.assert_allclose(P.l2(2.0, mask=full)(p), sq(w0, b1), rtol=1e-6)
    np.testing.assert_allclose(P.l2(2.0, mask=[False, True])(p), sq(w1, b1), rtol=1e-6)  # a prefix
    np.testing.assert_allclose(P.l2(2.0, mask=True)(p), sq(w0, b0, w1, b1), rtol=1e-6)


def test_mask_tree_matches_the_default():
    assert P.mask_tree(mlp_params()) == [{"w": True, "b": False}, {"w": True, "b": False}]
    assert P.paths(mlp_params()) == ["0/b", "0/w", "1/b", "1/w"]


def test_per_leaf_coefficients():
    p = mlp_params()
    w0, w1 = p[0]["w"], p[1]["w"]
    np.testing.assert_allclose(P.l2([1.0, 3.0])(p), 0.5 * sq(w0) + 1.5 * sq(w1), rtol=1e-6)
    np.testing.assert_allclose(
        P.l2([{"w": 1.0, "b": 9.0}, {"w": 3.0, "b": 9.0}])(p), 0.5 * sq(w0) + 1.5 * sq(w1), rtol=1e-6
    )
    np.testing.assert_allclose(P.l1(P.by_path({"0/*": 1.0, "1/w": 2.0}))(p), ab(w0) + 2 * ab(w1), rtol=1e-6)
    np.testing.assert_allclose(P.l1(P.by_path({"0/w": 1.0}, default=0.5))(p), ab(w0) + 0.5 * ab(w1), rtol=1e-6)
    # an array coefficient broadcasts against the leaf: one strength per output unit
    per_unit = jnp.array([1.0, 0.0, 2.0])
    only0 = P.l2(per_unit, mask="0/w")(p)
    np.testing.assert_allclose(only0, 0.5 * sq(w0[:, 0]) + sq(w0[:, 2]), rtol=1e-6)


class Dense(NamedTuple):
    kernel: jax.Array
    bias: jax.Array


def test_any_pytree_nested_dicts_namedtuples_tuples():
    k = jax.random.split(jax.random.key(0), 4)
    flax_like = {
        "params": {
            "Dense_0": {"kernel": jax.random.normal(k[0], (3, 4)), "bias": jnp.ones(4)},
            "LayerNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
            "Conv_0": {"kernel": jax.random.normal(k[1], (3, 3, 2, 5)), "bias": jnp.ones(5)},
        }
    }
    np.testing.assert_allclose(
        P.l2(2.0)(flax_like),
        sq(flax_like["params"]["Dense_0"]["kernel"], flax_like["params"]["Conv_0"]["kernel"]),
        rtol=1e-6,
    )
    assert "params/Dense_0/kernel" in P.paths(flax_like)
    nt = (Dense(jax.random.normal(k[2], (2, 2)), jnp.ones(2)), Dense(jax.random.normal(k[3], (2, 1)), jnp.ones(1)))
    np.testing.assert_allclose(P.l1(1.0)(nt), ab(nt[0].kernel, nt[1].kernel), rtol=1e-6)
    np.testing.assert_allclose(P.l1(1.0, mask="*/bias")(nt), 3.0, rtol=1e-6)
    np.testing.assert_allclose(
        P.l1(1.0, mask=(Dense(False, True), Dense(True, False)))(nt), 2.0 + ab(nt[1].kernel), rtol=1e-6
    )


def test_add_sum_scale_and_parts():
    p = mlp_params()
    a, b = P.l2(0.1), P.l1(0.2)
    total = float(a(p) + b(p))
    for combined in (a + b, P.sum(a, b), P.sum([a, b]), sum([a, b])):
        np.testing.assert_allclose(combined(p), total, rtol=1e-6)
    assert (a + b).names() == ["l2", "l1"]
    assert (a + P.l2(0.3, mask="*/b")).names() == ["l2", "l2_2"]
    parts = (a + b).parts(p)
    np.testing.assert_allclose(parts["l2"], a(p), rtol=1e-6)
    np.testing.assert_allclose(parts["l1"], b(p), rtol=1e-6)
    np.testing.assert_allclose((3 * a)(p), 3 * a(p), rtol=1e-6)
    np.testing.assert_allclose((a * 3)(p), 3 * a(p), rtol=1e-6)
    np.testing.assert_allclose((a / 4)(p), a(p) / 4, rtol=1e-6)
    np.testing.assert_allclose((2 * (a + b))(p), 2 * total, rtol=1e-6)


def test_custom_term():
    p = mlp_params()
    l4 = P.term(lambda w, c: c * jnp.sum(w**4), 0.5, name="l4")
    expected = 0.5 * sum(float(np.sum(np.asarray(x["w"], np.float64) ** 4)) for x in p)
    np.testing.assert_allclose(l4(p), expected, rtol=1e-6)
    assert l4.names() == ["l4"]


@settings(max_examples=10)
@given(lams=st.lists(st.floats(0, 10), min_size=1, max_size=5))
def test_vmap_over_the_coefficient(lams):
    p = PARAMS
    lams = jnp.asarray(lams, jnp.float32)
    got = jax.vmap(lambda lam: P.l2(lam)(p))(lams)
    np.testing.assert_allclose(got, lams * P.l2(1.0)(p), rtol=1e-5, atol=1e-7)


def test_vmap_over_lambda_trains_several_models_in_one_program():
    model = jreg.mlp([4, 3, 2])
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 4))
    y = jnp.arange(8) % 2
    opt = optax.sgd(0.5)

    def one_step(lam):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, P.l2(lam))
        new, _, m = jreg.make_step(obj, opt)(params, opt.init(params), (x, y))
        return new, m["penalty"]

    lams = jnp.array([0.0, 0.1, 1.0])
    batched, pens = jax.jit(jax.vmap(one_step))(lams)
    for i, lam in enumerate([0.0, 0.1, 1.0]):
        single, pen = one_step(lam)
        for u, v in zip(jax.tree.leaves(single), jax.tree.leaves(batched)):
            np.testing.assert_allclose(v[i], u, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pens[i], pen, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("penalty", [P.l2(0.7), P.l1(0.3), P.elastic_net(0.2, 0.4), P.l2([0.1, 2.0])])
def test_objective_gradients_against_finite_differences(penalty):
    with jax.enable_x64(True):
        model = jreg.mlp([4, 3, 2], dtype=jnp.float64)
        p = model.init(jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
        y = jnp.array([0, 1, 1, 0, 1])
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, penalty)
        check_grads(lambda q: obj(q, (x, y))[0], (p,), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)
        check_grads(penalty, (p,), order=1, modes=["fwd", "rev"], atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: P.l2(-0.1), r"l2: coefficient must be >= 0, got -0.1"),
        (lambda: P.l2(float("nan")), r"l2: coefficient must be finite"),
        (lambda: P.l1(float("inf")), r"l1: coefficient must be finite"),
        (lambda: P.elastic_net(0.1, -1.0), r"elastic_net: coefficient 1 must be >= 0"),
        (lambda: P.l2([0.1, -0.2]), r"l2: coefficient must be >= 0, got -0.2"),
        (lambda: P.l2(P.by_path({"0/w": -1.0})), r"l2: coefficient\['0/w'\] must be >= 0"),
        (lambda: P.l2(jnp.array([1.0, -1.0])), r"must be >= 0, got an array with minimum -1.0"),
        (lambda: -1.0 * P.l2(0.1), r"penalty scale factor must be >= 0"),
        (lambda: P.l2(0.1) / 0, r"penalty divisor must be > 0"),
        (lambda: P.l2("0.1"), r"l2: coefficient must be a real number"),
        (lambda: P.term(3, 0.1), r"fn must be callable"),
        (lambda: P.l2(0.1, name="data"), r"name must be a non-empty str other than 'data'"),
    ],
)
def test_bad_coefficients_are_refused_at_construction(make, match):
    with pytest.raises(jreg.JregError, match=match):
        make()


def test_bad_masks_name_the_problem():
    p = mlp_params()
    with pytest.raises(jreg.JregError, match=r"penalty 'l2' selects no leaf of params \(paths: \['0/b'"):
        P.l2(0.1, mask="*/kernel")(p)
    with pytest.raises(jreg.JregError, match="selects no leaf"):
        P.l2(0.1)({"b": jnp.ones(3)})  # the default mask finds no weight matrix
    with pytest.raises(jreg.JregTypeError, match="mask predicate must return a Python bool"):
        P.l2(0.1, mask=lambda path, leaf: leaf.ndim)(p)
    with pytest.raises(jreg.JregError, match="structure of params"):
        P.l2(0.1, mask=[True, False, True])(p)
    with pytest.raises(jreg.JregError, match="structure of params"):
        P.l2([0.1, 0.2, 0.3])(p)
    with pytest.raises(jreg.JregTypeError, match="only floating-point leaves can be penalized"):
        P.l2(0.1, mask=True)({"w": jnp.ones((2, 2)), "step": jnp.array(3)})


def test_traced_coefficients_skip_value_checks_but_keep_working():
    p = mlp_params()
    f = jax.jit(lambda lam: P.l2(lam)(p))
    np.testing.assert_allclose(f(2.0), 2 * P.l2(1.0)(p), rtol=1e-6)
