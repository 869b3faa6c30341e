from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jreg
from jreg import losses
from jreg._checks import MAX_CLASSES, MAX_ONE_HOT_ELEMENTS, check_one_hot_size

from .conftest import VARIANTS

logits_strategy = hnp.arrays(np.float64, (4, 3), elements=st.floats(-30, 30))


def naive_cross_entropy(z, y):
    a = 1 / (1 + np.exp(-z))
    return np.sum(-y * np.log(a) - (1 - y) * np.log(1 - a), axis=-1)


def logaddexp_cross_entropy(z, y):
    # -ln sigma(z) = ln(1 + e^-z), -ln(1 - sigma(z)) = ln(1 + e^z), by NumPy's logaddexp
    return np.sum(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z), axis=-1)


@pytest.mark.parametrize("variant", VARIANTS)
@given(z=logits_strategy, labels=hnp.arrays(np.int32, (4,), elements=st.integers(0, 2)))
def test_cross_entropy_matches_the_formula(variant, z, labels):
    with jax.enable_x64(True):
        y = np.eye(3)[labels]
        got = variant(losses.cross_entropy)(jnp.asarray(z), jnp.asarray(y))
        np.testing.assert_allclose(got, logaddexp_cross_entropy(z, y), rtol=1e-12, atol=1e-12)
        # where the naive form is well conditioned, it agrees too
        zc = np.clip(z, -8, 8)
        np.testing.assert_allclose(
            variant(losses.cross_entropy)(jnp.asarray(zc), jnp.asarray(y)), naive_cross_entropy(zc, y), rtol=1e-10
        )
        # integer labels and one-hot targets give the same cost
        np.testing.assert_allclose(
            variant(losses.cross_entropy)(jnp.asarray(z), jnp.asarray(labels)),
            variant(losses.cross_entropy)(jnp.asarray(z), jnp.asarray(y)),
            rtol=1e-12,
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_entropy_is_finite_where_the_naive_form_is_nan(variant):
    z = jnp.array([[100.0, -100.0]])  # a = (1, 0) exactly in float32
    y = jnp.array([[1.0, 0.0]])
    with np.errstate(all="ignore"):
        a = 1 / (1 + np.exp(-np.asarray(z, np.float32)))
        assert np.isnan(np.sum(-y * np.log(a) - (1 - y) * np.log(1 - a)))  # the naive form
    c = variant(losses.cross_entropy)(z, y)
    assert np.all(np.isfinite(c)) and float(c[0]) < 1e-30
    g = jax.grad(lambda z: losses.cross_entropy(z, y).sum())(z)
    assert np.all(np.isfinite(g))


@given(z=logits_strategy, labels=hnp.arrays(np.int32, (4,), elements=st.integers(0, 2)))
def test_cross_entropy_gradient_is_a_minus_y(z, labels):
    with jax.enable_x64(True):
        y = np.eye(3)[labels]
        g = jax.grad(lambda z: losses.cross_entropy(z, jnp.asarray(y)).sum())(jnp.asarray(z))
        np.testing.assert_allclose(g, 1 / (1 + np.exp(-z)) - y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_quadratic(variant):
    a = jnp.array([[0.2, 0.9], [0.5, 0.5]])
    y = jnp.array([1, 0])
    expected = 0.5 * np.array([0.2**2 + 0.1**2, 0.5**2 + 0.5**2])
    np.testing.assert_allclose(variant(losses.quadratic)(a, y), expected, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
@given(z=logits_strategy, labels=hnp.arrays(np.int32, (4,), elements=st.integers(0, 2)))
def test_log_likelihood_matches_numpy(variant, z, labels):
    with jax.enable_x64(True):
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        expected = -np.log(p[np.arange(4), labels])
        np.testing.assert_allclose(
            variant(losses.log_likelihood)(jnp.asarray(z), jnp.asarray(labels)), expected, rtol=1e-9, atol=1e-9
        )
        np.testing.assert_allclose(
            variant(losses.log_likelihood)(jnp.asarray(z), jnp.asarray(np.eye(3)[labels])),
            expected,
            rtol=1e-9,
            atol=1e-9,
        )


@pytest.mark.parametrize("loss", [losses.cross_entropy, losses.quadratic, losses.log_likelihood])
def test_target_errors(loss):
    z = jnp.zeros((4, 10))
    with pytest.raises(jreg.JregError, match=r"float \(one-hot\) targets must have shape \(4, 10\).*got \(4, 9\)"):
        loss(z, jnp.zeros((4, 9)))
    with pytest.raises(jreg.JregError, match=r"integer labels must have shape \(4,\).*got \(3,\)"):
        loss(z, jnp.zeros((3,), jnp.int32))
    with pytest.raises(jreg.JregError, match=r"must lie in \[0, 10\).*\[0, 10\]"):
        loss(z, jnp.array([0, 1, 2, 10]))
    with pytest.raises(jreg.JregError, match=r"must lie in \[0, 10\)"):
        loss(z, jnp.array([0, -1, 2, 3]))
    with pytest.raises(jreg.JregTypeError, match="got dtype bool"):
        loss(z, jnp.zeros((4,), bool))


def test_out_of_range_label_under_jit_gives_nan_not_a_silent_zero():
    c = jax.jit(losses.cross_entropy)(jnp.zeros((2, 3)), jnp.array([1, 7]))
    assert np.isfinite(c[0]) and np.isnan(c[1])


def test_one_hot_and_labels_of():
    y = jnp.array([2, 0, 1])
    oh = losses.one_hot(y, 3)
    np.testing.assert_array_equal(oh, np.eye(3)[[2, 0, 1]])
    np.testing.assert_array_equal(losses.labels_of(oh), y)
    np.testing.assert_array_equal(losses.labels_of(y), y)
    with pytest.raises(jreg.JregError, match=r"labels must lie in \[0, 3\)"):
        losses.one_hot(jnp.array([3]), 3)


@pytest.mark.parametrize("variant", VARIANTS)
@given(z=logits_strategy, labels=hnp.arrays(np.int32, (4,), elements=st.integers(0, 2)))
def test_softmax_and_sigmoid_cross_entropy_are_optaxs(variant, z, labels):
    """The names optax and PyTorch users expect: softmax_cross_entropy is optax's (the book's log_likelihood);
    sigmoid_cross_entropy is optax's sigmoid_binary_cross_entropy summed over outputs (the book's cross_entropy)."""
    import optax

    z32 = jnp.asarray(z, jnp.float32)
    np.testing.assert_allclose(
        variant(losses.softmax_cross_entropy)(z32, labels),
        optax.softmax_cross_entropy_with_integer_labels(z32, labels),
        rtol=1e-5,
        atol=1e-5,
    )
    onehot = jax.nn.one_hot(labels, 3)
    np.testing.assert_allclose(
        variant(losses.sigmoid_cross_entropy)(z32, onehot),
        optax.sigmoid_binary_cross_entropy(z32, onehot).sum(-1),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_array_equal(losses.softmax_cross_entropy(z32, labels), losses.log_likelihood(z32, labels))
    np.testing.assert_array_equal(losses.sigmoid_cross_entropy(z32, labels), losses.cross_entropy(z32, labels))


@pytest.mark.parametrize("variant", VARIANTS)
def test_quadratic_takes_regression_targets_without_broadcasting(variant):
    a = jnp.array([[1.0], [2.0], [4.0]])
    y = jnp.array([0.0, 2.0, 1.0])
    expected = 0.5 * (np.array([1.0, 2.0, 4.0]) - np.asarray(y)) ** 2
    for outputs, targets in ((a, y), (a[:, 0], y), (a[:, 0], y[:, None]), (a, y[:, None])):
        np.testing.assert_allclose(variant(losses.quadratic)(outputs, targets), expected, rtol=1e-6)
    wide = jnp.ones((3, 2, 2))
    np.testing.assert_allclose(variant(losses.quadratic)(wide, jnp.zeros((3, 2, 2))), [2.0, 2.0, 2.0])
    with pytest.raises(jreg.JregError, match=r"must have shape \(3, 1\) to match the outputs \(3, 1\), got \(2,\)"):
        losses.quadratic(a, y[:2])
    with pytest.raises(jreg.JregTypeError, match=r"must be float values of the outputs' shape \(3,\)"):
        losses.quadratic(a[:, 0], jnp.array([0, 1, 2]))


# --------------------------------------------------------------------------- class counts (issue 14)
# A number of classes is bounded before any allocation: jreg.losses.one_hot and jreg.data.one_hot refuse
# more classes than int32 labels address, and a one-hot array over MAX_ONE_HOT_ELEMENTS, naming its size.

LABELS = jnp.array([0, 2, 1])


ONE_HOTS = [jreg.losses.one_hot, jreg.data.one_hot]


@pytest.mark.parametrize("one_hot", ONE_HOTS, ids=["losses", "data"])
@pytest.mark.parametrize("classes", [2**40, np.int64(2**31), MAX_CLASSES + 1])
def test_one_hot_refuses_more_classes_than_int32_labels_address(one_hot, classes, no_one_hot):
    with pytest.raises(jreg.JregError, match=rf"classes must be at most 2147483647 .*got {int(classes)}$"):
        one_hot(LABELS, classes)
    with pytest.raises(jreg.JregError, match="classes must be at most"):
        jax.jit(lambda y: one_hot(y, classes))(LABELS)


@pytest.mark.parametrize("one_hot", ONE_HOTS, ids=["losses", "data"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_one_hot_refuses_an_array_over_the_element_limit_naming_its_size(one_hot, jit, no_one_hot):
    classes = 2**30  # 3 labels: 3 * 2**30 elements, 12 GiB as float32
    call = (lambda y: one_hot(y, classes)) if not jit else jax.jit(lambda y: one_hot(y, classes))
    with pytest.raises(jreg.JregError, match=r"classes=1073741824 for 3 labels makes a one-hot array of 3221225472"):
        call(LABELS)


def test_one_hot_at_the_limit_is_accepted_and_bool_classes_still_refused():
    # traced abstractly: the shapes are computed, nothing is allocated
    out = jax.eval_shape(lambda y: jreg.losses.one_hot(y, 2**30), jax.ShapeDtypeStruct((2,), jnp.int32))
    assert out.shape == (2, 2**30)
    with pytest.raises(jreg.JregError, match="one-hot array of 2147483650 elements"):
        jax.eval_shape(lambda y: jreg.losses.one_hot(y, 2**30 + 1), jax.ShapeDtypeStruct((2,), jnp.int32))
    with pytest.raises(jreg.JregTypeError, match="classes must be a positive integer, got bool"):
        jreg.data.one_hot(LABELS, True)
    np.testing.assert_array_equal(jreg.data.one_hot(LABELS, 3), np.eye(3)[[0, 2, 1]])  # ordinary use unchanged


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 2**20), classes=st.integers(1, 2**64))
def test_the_class_count_rule_is_exactly_the_documented_one(n, classes):
    """Refused iff classes > 2**31 - 1 or n * classes > 2**31 (the shape traced, nothing allocated)."""
    refused = classes > MAX_CLASSES or n * classes > MAX_ONE_HOT_ELEMENTS
    labels = jax.ShapeDtypeStruct((n,), jnp.int32)
    if refused:
        with pytest.raises(jreg.JregError, match="classes"):
            jax.eval_shape(lambda y: jreg.losses.one_hot(y, classes), labels)
    else:
        assert jax.eval_shape(lambda y: jreg.losses.one_hot(y, classes), labels).shape == (n, classes)


def test_check_one_hot_size_counts_every_label_axis():
    check_one_hot_size(2**20, np.empty((32, 64)))  # exactly 2**31
    with pytest.raises(jreg.JregError, match="for 2049 labels"):
        check_one_hot_size(2**20, np.empty((2049, 1)))
