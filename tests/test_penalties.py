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


# =========================================================================== current practice (issue 15)
# L2-init (a center), spectral target, z-loss, width-aware coefficients. References: hand-written NumPy
# formulas (np.linalg.svd for singular values, an explicit log-sum-exp for z-loss), finite differences
# (jax.test_util.check_grads) for gradients, the closed-form proximal maps; traced coefficients through
# jax.vmap; hostile inputs. MODEL and PARAMS are this file's own (the same mlp([4, 3, 2]) and key).

PARAMS0 = MODEL.init(jax.random.key(1))


def f64(a):
    return np.asarray(a, np.float64)


def centered_sq(p, p0, leaves=("w",)):
    return sum(float(np.sum((f64(p[i][k]) - f64(p0[i][k])) ** 2)) for i in range(len(p)) for k in leaves)


def centered_abs(p, p0, leaves=("w",)):
    return sum(float(np.sum(np.abs(f64(p[i][k]) - f64(p0[i][k])))) for i in range(len(p)) for k in leaves)


def soft(w, t):
    return np.sign(w) * np.maximum(np.abs(w) - t, 0.0)


# --------------------------------------------------------------------------- L2-init: a center


@pytest.mark.parametrize("variant", VARIANTS)
def test_centered_values_match_the_formulas(variant):
    p, p0 = PARAMS, PARAMS0
    np.testing.assert_allclose(variant(lambda q: P.l2(0.3, center=p0)(q))(p), 0.15 * centered_sq(p, p0), rtol=1e-6)
    np.testing.assert_allclose(variant(lambda q: P.l1(0.3, center=p0)(q))(p), 0.3 * centered_abs(p, p0), rtol=1e-6)
    got = variant(lambda q: P.elastic_net(0.2, 0.5, center=p0)(q))(p)
    np.testing.assert_allclose(got, 0.2 * centered_abs(p, p0) + 0.25 * centered_sq(p, p0), rtol=1e-6)
    # the center itself may be a traced argument (jit) and the convention matches l2's: c/2 * sum
    got = variant(lambda q, q0: P.l2(2.0, center=q0)(q))(p, p0)
    np.testing.assert_allclose(got, centered_sq(p, p0), rtol=1e-6)


def test_center_none_is_plain_l2_and_prefixes_and_scalars_work():
    p, p0 = PARAMS, PARAMS0
    assert float(P.l2(0.3, center=None)(p)) == float(P.l2(0.3)(p))
    # a prefix: layer 0 centered, layer 1 (None) toward 0
    expected = 0.5 * (float(np.sum((f64(p[0]["w"]) - f64(p0[0]["w"])) ** 2)) + float(np.sum(f64(p[1]["w"]) ** 2)))
    np.testing.assert_allclose(P.l2(1.0, center=[p0[0], None])(p), expected, rtol=1e-6)
    # a number: the same center for every entry (normalization scales toward 1)
    expected = 0.5 * sum(float(np.sum((f64(p[i]["b"]) - 1.0) ** 2)) for i in range(2))
    np.testing.assert_allclose(P.l2(1.0, center=1.0, mask="*/b")(p), expected, rtol=1e-6)


def test_centered_gradients_and_finite_differences():
    p, p0 = PARAMS, PARAMS0
    g = jax.grad(P.l2(0.7, center=p0))(p)
    for i in range(2):
        np.testing.assert_allclose(g[i]["w"], 0.7 * (f64(p[i]["w"]) - f64(p0[i]["w"])), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(g[i]["b"], 0.0)
    with jax.enable_x64(True):
        model = jreg.mlp([4, 3, 2], dtype=jnp.float64)
        q, q0 = model.init(jax.random.key(0)), model.init(jax.random.key(1))
        for pen in (P.l2(0.7, center=q0), P.elastic_net(0.2, 0.4, center=q0)):
            check_grads(jax.jit(pen), (q,), order=1, modes=["fwd", "rev"], atol=1e-7, rtol=1e-7)
        x = jax.random.normal(jax.random.key(2), (5, 4), jnp.float64)
        y = jnp.array([0, 1, 1, 0, 1])
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, P.l2(0.7, center=q0))
        check_grads(jax.jit(lambda r: obj(r, (x, y))[0]), (q,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_centered_proximal_maps(variant):
    p, p0, t = PARAMS, PARAMS0, 0.4
    c, c1, c2 = 0.9, 0.3, 0.6
    got = variant(lambda q: P.l2(c, center=p0).prox(q, t))(p)
    got1 = variant(lambda q: P.l1(c1, center=p0).prox(q, t))(p)
    got2 = variant(lambda q: P.elastic_net(c1, c2, center=p0).prox(q, t))(p)
    for i in range(2):
        w, w0 = f64(p[i]["w"]), f64(p0[i]["w"])
        np.testing.assert_allclose(got[i]["w"], (w + t * c * w0) / (1 + t * c), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got1[i]["w"], w0 + soft(w - w0, t * c1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got2[i]["w"], w0 + soft(w - w0, t * c1) / (1 + t * c2), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(got[i]["b"], p[i]["b"])  # unselected leaves pass through
    # the map is the minimizer: the gradient of t R(v) + 1/2 ||v - w||^2 vanishes at v = prox(w)
    pen = P.l2(c, center=p0)
    grad = jax.grad(
        lambda v: t * pen(v) + 0.5 * sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(p)))
    )(got)
    for leaf in jax.tree.leaves(grad):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-6)


def test_proximal_sgd_with_a_center_pulls_toward_the_center():
    p, p0 = PARAMS, PARAMS0
    eta, c = 0.1, 2.0
    opt = optax.chain(optax.sgd(eta), jreg.proximal(P.l2(c, center=p0), eta))
    zero = jax.tree.map(jnp.zeros_like, p)
    updates, _ = opt.update(zero, opt.init(p), p)
    new = optax.apply_updates(p, updates)
    for i in range(2):
        w, w0 = f64(p[i]["w"]), f64(p0[i]["w"])
        np.testing.assert_allclose(new[i]["w"], (w + eta * c * w0) / (1 + eta * c), rtol=1e-6, atol=1e-7)


def test_describe_shows_the_center():
    d = jreg.describe(P.l2(0.1, center=[PARAMS0[0], None]) + P.l1(0.2, center=1.0, mask="*/b"), PARAMS)
    rows = {(r["term"], r["path"]): r["coefficients"] for r in d}
    assert rows[("l2", "0/w")] == "0.1, center=array(4, 3)"
    assert rows[("l2", "1/w")] == "0.1, center=0"
    assert rows[("l1", "0/b")] == "0.2, center=1"
    assert "center=array(4, 3)" in str(d)


def test_vmap_over_the_coefficient_with_a_center():
    lams = jnp.array([0.0, 0.5, 3.0])
    got = jax.jit(jax.vmap(lambda lam: P.l2(lam, center=PARAMS0)(PARAMS)))(lams)
    np.testing.assert_allclose(got, np.asarray(lams) / 2 * centered_sq(PARAMS, PARAMS0), rtol=1e-5)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: P.l2(0.1, center=[PARAMS0[0]])(PARAMS), jreg.JregError, r"l2: center must be a pytree"),
        (lambda: P.l2(0.1, center={"w": 1.0})(PARAMS), jreg.JregError, r"l2: center must be a pytree"),
        (
            lambda: P.l2(0.1, center=[PARAMS0[1], PARAMS0[0]])(PARAMS),
            jreg.JregError,
            r"center for leaf '0/w' has shape \(3, 2\), which does not match the leaf's shape \(4, 3\)",
        ),
        (lambda: P.l2(0.1, center=np.ones(5), mask="*/b"), None, None),  # refused only when applied
        (lambda: P.l1(0.1, center=float("nan")), jreg.JregError, r"center must be finite"),
        (
            lambda: P.l2(0.1, center=jax.tree.map(lambda a: a.at[0].set(jnp.inf), PARAMS0)),
            jreg.JregError,
            r"center must be finite, got NaN or inf at '0/b'",
        ),
        (lambda: P.l2(0.1, center="params0"), jreg.JregTypeError, r"center must hold arrays or numbers"),
        (lambda: P.l2(0.1, center=jnp.array([1 + 2j])), jreg.JregTypeError, r"center must be real"),
        (lambda: P.l2(0.1, center=P.by_path({"*": 0.0})), jreg.JregTypeError, r"center must be a pytree of arrays"),
        (lambda: P.l2(-0.1, center=PARAMS0), jreg.JregError, r"l2: coefficient must be >= 0"),
        (lambda: P.elastic_net(0.1, float("inf"), center=PARAMS0), jreg.JregError, r"coefficient 1 must be finite"),
    ],
)
def test_hostile_centers(make, error, match):
    if error is None:
        pen = make()
        with pytest.raises(jreg.JregError, match=r"center for leaf '0/b' has shape \(5,\)"):
            pen(PARAMS)
        return
    with pytest.raises(error, match=match):
        make()


# --------------------------------------------------------------------------- spectral target


def gapped(shape, top, seed):
    """A matrix with singular values (top, top/3, ...): power iteration converges in a few steps."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(shape[0], shape[0])))[0]
    v = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))[0]
    s = np.zeros(shape)
    k = min(shape)
    s[np.arange(k), np.arange(k)] = top / 3.0 ** np.arange(k)
    return jnp.asarray(u @ s @ v, jnp.float32)


SPEC = [{"w": gapped((6, 5), 2.5, 0), "b": jnp.ones(5)}, {"w": gapped((5, 4), 0.7, 1), "b": jnp.ones(4)}]


def spectral_reference(p, c, target, k=1.0):
    return sum(c * (np.linalg.svd(f64(p[i]["w"]), compute_uv=False)[0] ** k - target) ** 2 for i in range(len(p)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_spectral_target_matches_the_svd(variant):
    p = SPEC
    got = variant(P.spectral_target(0.3))(p)
    np.testing.assert_allclose(got, spectral_reference(p, 0.3, 1.0), rtol=1e-4)
    got = variant(P.spectral_target(0.3, 0.5, exponent=2))(p)
    np.testing.assert_allclose(got, spectral_reference(p, 0.3, 0.5, k=2.0), rtol=1e-4)
    # per-leaf targets like any coefficient
    got = variant(P.spectral_target(1.0, [2.0, 0.0]))(p)
    s = [np.linalg.svd(f64(p[i]["w"]), compute_uv=False)[0] for i in range(2)]
    np.testing.assert_allclose(got, (s[0] - 2.0) ** 2 + s[1] ** 2, rtol=1e-4)


def test_spectral_norm_is_unchanged():
    p = SPEC
    s = [np.linalg.svd(f64(p[i]["w"]), compute_uv=False)[0] for i in range(2)]
    np.testing.assert_allclose(P.spectral_norm(0.4)(p), 0.2 * (s[0] ** 2 + s[1] ** 2), rtol=1e-4)


def test_spectral_target_gradients():
    with jax.enable_x64(True):
        w = jnp.asarray(np.diag([3.0, 1.5, 0.5]) @ np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0])
        params = {"w": jnp.concatenate([w, jnp.ones((1, 3)) * 0.1])}  # (4, 3), a clear spectral gap
        pen = P.spectral_target(0.7, 1.0, iterations=30)
        check_grads(jax.jit(pen), (params,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
        # analytic: d/dW c (sigma - t)^2 = 2 c (sigma - t) u v^T
        u, s, vt = np.linalg.svd(np.asarray(params["w"]))
        expected = 2 * 0.7 * (s[0] - 1.0) * np.outer(u[:, 0], vt[0])
        np.testing.assert_allclose(jax.grad(pen)(params)["w"], expected, rtol=1e-6, atol=1e-8)


def test_spectral_target_vmap_over_coefficient_and_target():
    p = SPEC
    cs, ts = jnp.array([0.0, 0.5, 2.0]), jnp.array([1.0, 0.5, 0.0])
    got = jax.jit(jax.vmap(lambda c, t: P.spectral_target(c, t)(p)))(cs, ts)
    for i in range(3):
        np.testing.assert_allclose(got[i], spectral_reference(p, float(cs[i]), float(ts[i])), rtol=1e-4, atol=1e-7)
    d = jreg.describe(P.spectral_target(0.1, 2.0), p)
    assert [r["coefficients"] for r in d] == ["0.1, 2", "0.1, 2"]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: P.spectral_target(-1.0), r"spectral_target: coefficient 0 must be >= 0"),
        (lambda: P.spectral_target(1.0, -0.5), r"spectral_target: target must be >= 0"),
        (lambda: P.spectral_target(1.0, float("nan")), r"spectral_target: target must be finite"),
        (lambda: P.spectral_target(1.0, exponent=0), r"exponent must be finite and > 0"),
        (lambda: P.spectral_target(1.0, exponent=True), r"exponent must be a real number"),
        (lambda: P.spectral_target(1.0, iterations=0), r"iterations must be a positive integer"),
        (lambda: P.spectral_target(1.0, [1.0, -1.0]), r"coefficient 1 must be >= 0"),
    ],
)
def test_hostile_spectral_target(make, match):
    with pytest.raises(jreg.JregError, match=match):
        make()


# --------------------------------------------------------------------------- z-loss


def z_reference(z, c):
    z = f64(z)
    m = z.max(-1, keepdims=True)
    log_z = (m + np.log(np.sum(np.exp(z - m), -1, keepdims=True)))[..., 0]
    return c * np.mean(log_z**2)


X = jax.random.normal(jax.random.key(5), (6, 4)) * 3
Y = jnp.array([0, 1, 1, 0, 1, 0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_z_loss_in_the_objective_parts(variant):
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, P.l2(0.1), output_penalty=P.z_loss(0.05))
    total, parts = variant(obj)(PARAMS, (X, Y))
    logits = MODEL.apply(PARAMS, X)
    np.testing.assert_allclose(parts["z_loss"], z_reference(logits, 0.05), rtol=1e-5)
    np.testing.assert_allclose(parts["penalty"], parts["l2"] + parts["z_loss"], rtol=1e-6)
    np.testing.assert_allclose(total, parts["data"] + parts["penalty"], rtol=1e-6)
    assert set(parts) == {"data", "penalty", "l2", "z_loss"}


def test_z_loss_on_sequence_logits_and_low_precision():
    z = jax.random.normal(jax.random.key(6), (3, 5, 7)) * 4
    np.testing.assert_allclose(P.z_loss(0.2)(z), z_reference(z, 0.2), rtol=1e-5)
    half = P.z_loss(0.2)(z.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(half), z_reference(z.astype(jnp.bfloat16), 0.2), rtol=1e-2)


def test_z_loss_gradients():
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.key(7), (4, 3), jnp.float64) * 2
        check_grads(jax.jit(P.z_loss(0.3)), (z,), order=1, modes=["fwd", "rev"], atol=1e-7, rtol=1e-7)
        # analytic: 2 c lse_i softmax_ij / n
        lse = jax.nn.logsumexp(z, -1, keepdims=True)
        expected = 2 * 0.3 * lse * jax.nn.softmax(z) / z.shape[0]
        np.testing.assert_allclose(jax.grad(lambda a: P.z_loss(0.3)(a))(z), expected, rtol=1e-10)
        model = jreg.mlp([4, 3, 2], dtype=jnp.float64)
        q = model.init(jax.random.key(0))
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, output_penalty=P.z_loss(0.5))
        x = jnp.asarray(X, jnp.float64)
        check_grads(jax.jit(lambda r: obj(r, (x, Y))[0]), (q,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_z_loss_traced_coefficient_and_schedule():
    def value(c):
        obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, output_penalty=P.z_loss(c))
        return obj(PARAMS, (X, Y))[1]["z_loss"]

    cs = jnp.array([0.0, 1e-4, 0.5])
    got = jax.jit(jax.vmap(value))(cs)
    ref = z_reference(MODEL.apply(PARAMS, X), 1.0)
    np.testing.assert_allclose(got, np.asarray(cs) * ref, rtol=1e-5)
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, output_penalty=[P.z_loss(lambda s: 0.1 * s)])
    np.testing.assert_allclose(obj(PARAMS, (X, Y), step=3)[1]["z_loss"], 0.3 * ref, rtol=1e-5)
    with pytest.raises(jreg.JregError, match=r"penalty 'z_loss': coefficient 0 is a schedule"):
        obj(PARAMS, (X, Y))


def test_z_loss_trains_with_fit():
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, output_penalty=P.z_loss(1e-2))
    kw = dict(epochs=2, batch_size=3, key=jax.random.key(0), monitor=("training_cost",))  # with its parts
    params, history = jreg.fit(obj, optax.sgd(0.1), PARAMS, (X, Y), **kw)
    assert len(history["training_z_loss"]) == 2 and np.all(np.isfinite(history["training_z_loss"]))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: P.z_loss(-1.0), jreg.JregError, r"z_loss: coefficient must be >= 0"),
        (lambda: P.z_loss(float("inf")), jreg.JregError, r"z_loss: coefficient must be finite"),
        (lambda: P.z_loss(1.0, name="data"), jreg.JregError, r"name must be a non-empty str"),
        (
            lambda: jreg.objective(MODEL.apply, jreg.losses.cross_entropy, output_penalty=[P.l2(1.0)]),
            jreg.JregTypeError,
            r"output_penalty\[0\] must come from jreg.penalties.z_loss",
        ),
        (
            lambda: jreg.objective(
                MODEL.apply, jreg.losses.cross_entropy, P.l2(1.0, name="z_loss"), output_penalty=P.z_loss(1.0)
            ),
            jreg.JregError,
            r"duplicate names \['z_loss'\]",
        ),
        (lambda: P.z_loss(1.0)(jnp.ones(3)), jreg.JregError, r"z_loss: the model's outputs must be floating logits"),
        (lambda: P.z_loss(1.0)(jnp.ones((3, 2), jnp.int32)), jreg.JregError, r"must be floating logits"),
    ],
)
def test_hostile_z_loss(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --------------------------------------------------------------------------- width-aware coefficients


@pytest.mark.parametrize("variant", VARIANTS)
def test_width_scaled_l2_equals_the_per_leaf_sum(variant):
    p = jreg.mlp([6, 5, 4]).init(jax.random.key(3))
    base, vectors = 1e-3, 2e-4
    got = variant(lambda q: P.l2(P.width_scaled(base, vectors=vectors), mask=True)(q))(p)
    expected = sum(
        0.5 * base * p[i]["w"].shape[0] * float(np.sum(f64(p[i]["w"]) ** 2))
        + 0.5 * vectors * float(np.sum(f64(p[i]["b"]) ** 2))
        for i in range(2)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    got = variant(P.l1(P.width_scaled(base, exponent=0.5)))(p)
    expected = sum(base * np.sqrt(p[i]["w"].shape[0]) * float(np.sum(np.abs(f64(p[i]["w"])))) for i in range(2))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_fan_in_of_kernels_and_a_custom_rule():
    kernel = {"conv": {"kernel": jnp.ones((3, 3, 2, 8))}, "dense": {"kernel": jnp.ones((10, 4))}}
    got = P.l2(P.width_scaled(1.0, exponent=-1.0))(kernel)
    np.testing.assert_allclose(got, 0.5 * (3 * 3 * 8 / 18 * 2 + 40 / 10), rtol=1e-6)
    assert P.fan_in((3, 3, 2, 8)) == 18 and P.fan_in((10, 4)) == 10 and P.fan_in((7,)) == 1
    rule = P.by_shape(lambda s: 0.1 * s[-1] if len(s) > 1 else 0.0)
    np.testing.assert_allclose(P.l1(rule)(kernel), 0.1 * 8 * 144 + 0.1 * 4 * 40, rtol=1e-6)


def test_describe_lists_each_leafs_coefficient():
    p = jreg.mlp([6, 5, 4]).init(jax.random.key(3))
    d = jreg.describe(P.l2(P.width_scaled(1e-3, vectors=1e-5), mask=True), p)
    rows = {r["path"]: r["coefficients"] for r in d}
    assert rows == {"0/w": "0.006", "0/b": "1e-05", "1/w": "0.005", "1/b": "1e-05"}


def test_vmap_over_the_width_scaled_base():
    p = jreg.mlp([6, 5, 4]).init(jax.random.key(3))
    bases = jnp.array([0.0, 1e-3, 0.1])
    got = jax.jit(jax.vmap(lambda b: P.l2(P.width_scaled(b))(p)))(bases)
    one = P.l2(P.width_scaled(1.0))(p)
    np.testing.assert_allclose(got, np.asarray(bases) * float(one), rtol=1e-5)
    rows = []  # describe of a traced base says "traced", it does not fail
    jax.eval_shape(lambda b: rows.extend(r["coefficients"] for r in jreg.describe(P.l2(P.width_scaled(b)), p)), 1.0)
    assert rows == ["traced", "traced"]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: P.width_scaled(-1.0), jreg.JregError, r"width_scaled: base must be >= 0"),
        (lambda: P.width_scaled(float("nan")), jreg.JregError, r"width_scaled: base must be finite"),
        (lambda: P.width_scaled(1.0, vectors=-1.0), jreg.JregError, r"width_scaled: vectors must be >= 0"),
        (lambda: P.width_scaled(1.0, exponent=float("inf")), jreg.JregError, r"exponent must be finite"),
        (lambda: P.width_scaled(1.0, exponent="1"), jreg.JregTypeError, r"exponent must be a real number"),
        (lambda: P.by_shape(3.0), jreg.JregTypeError, r"by_shape needs a rule"),
        (
            lambda: P.l2(P.by_shape(lambda s: -1.0))(PARAMS),
            jreg.JregError,
            r"l2: by_shape coefficient for leaf '0/w' must be >= 0",
        ),
        (
            lambda: P.l2(P.by_shape(lambda s: np.ones(7)))(PARAMS),
            jreg.JregError,
            r"coefficient for leaf '0/w' has shape \(7,\)",
        ),
    ],
)
def test_hostile_width_rules(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --------------------------------------------------------------------------- issue 15's review
# Cases an independent review of issue 15's regularizers found: each gave a raw exception, a silent wrong
# result, or accepted a resume it should refuse.

MLP_4_5_3 = jreg.mlp([4, 5, 3])
PARAMS_4_5_3 = MLP_4_5_3.init(jax.random.key(0))


@pytest.mark.parametrize("bad", [jreg.penalties.l2(0.1), 3, "z"])
def test_output_penalty_of_the_wrong_type_is_a_jreg_error(bad):
    with pytest.raises(jreg.JregTypeError, match="output_penalty"):
        jreg.objective(MLP_4_5_3.apply, jreg.losses.softmax_cross_entropy, output_penalty=bad)


@pytest.mark.parametrize("base, exponent", [(1e-30, 500.0), (1.0, 400.0)])
def test_width_scaled_coefficients_that_overflow_are_refused(base, exponent):
    with pytest.raises(jreg.JregError, match="overflows float32"):
        jreg.penalties.l2(jreg.penalties.width_scaled(base, exponent))(PARAMS_4_5_3)


@pytest.mark.parametrize(
    "rule, match",
    [
        (lambda s: None, "must return a number"),
        (lambda s: s[5], "the rule failed for leaf"),
        (lambda s: 1e300, "float32"),
    ],
)
def test_by_shape_rules_that_fail_or_return_no_number_name_the_leaf(rule, match):
    with pytest.raises(jreg.JregError, match=match):
        jreg.penalties.l2(jreg.penalties.by_shape(rule))(PARAMS_4_5_3)
