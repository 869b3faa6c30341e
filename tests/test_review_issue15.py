"""Cases an independent review of issue 15's regularizers found: each gave a raw exception, a silent wrong
result, or accepted a resume it should refuse."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg import stochastic

MODEL = jreg.mlp([4, 5, 3])
PARAMS = MODEL.init(jax.random.key(0))
X = jax.random.normal(jax.random.key(1), (16, 4))
Y = jnp.arange(16) % 3
KEY = jax.random.key(2)


@pytest.mark.parametrize("bad", [jreg.penalties.l2(0.1), 3, "z"])
def test_output_penalty_of_the_wrong_type_is_a_jreg_error(bad):
    with pytest.raises(jreg.JregTypeError, match="output_penalty"):
        jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, output_penalty=bad)


def test_resuming_with_another_ema_decay_is_refused(tmp_path):
    obj = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy)
    kw = dict(batch_size=8, key=KEY, evaluation=(X, Y))
    jreg.fit(
        obj, optax.sgd(0.1), PARAMS, (X, Y), epochs=1, checkpoint=jreg.Checkpointing(tmp_path), ema=jreg.EMA(0.9), **kw
    )
    with pytest.raises(jreg.JregError, match=r"EMA.decay=0.9, this run with 0.1"):
        jreg.fit(obj, optax.sgd(0.1), PARAMS, (X, Y), epochs=2, resume=tmp_path, ema=jreg.EMA(0.1), **kw)
    jreg.fit(obj, optax.sgd(0.1), PARAMS, (X, Y), epochs=2, resume=tmp_path, ema=jreg.EMA(0.9), **kw)


@pytest.mark.parametrize(
    "args, error",
    [
        ((KEY, 0.5, "4", 4), jreg.JregError),
        ((3, 0.5, 4, 4), jreg.JregTypeError),
        ((KEY, "a", 4, 4), jreg.JregTypeError),
        ((KEY, 0.5, 0, 4), jreg.JregError),
        ((KEY, 0.5, -3, 4), jreg.JregError),
        ((KEY, 0.5, 2.5, 4), jreg.JregError),
        ((KEY, float("nan"), 4, 4), jreg.JregError),
        ((KEY, 1.5, 4, 4), jreg.JregError),
    ],
)
def test_cutmix_box_checks_its_arguments(args, error):
    with pytest.raises(error):
        stochastic.cutmix_box(*args)


def test_cutmix_box_with_good_arguments_still_works():
    box, lam = stochastic.cutmix_box(KEY, 0.75, 8, 8)
    assert box.shape == (8, 8) and float(lam) == pytest.approx(1 - float(box.sum()) / 64)


@pytest.mark.parametrize(
    "lam, perm, error",
    [
        (0.5, list(range(4)), jreg.JregTypeError),
        (0.5, jnp.arange(4.0), jreg.JregTypeError),
        (0.5, jnp.arange(4) + 10, jreg.JregError),
        (0.5, jnp.array([0, 0, 1, 2]), jreg.JregError),
        (jnp.array([0.1, 0.2, 0.3, 0.4]), jnp.arange(4), jreg.JregTypeError),
        (-1.0, jnp.arange(4), jreg.JregError),
        (float("nan"), jnp.arange(4), jreg.JregError),
        ("0.5", jnp.arange(4), jreg.JregTypeError),
    ],
)
def test_mix_targets_checks_lam_and_perm(lam, perm, error):
    with pytest.raises(error):
        stochastic.mix_targets(jnp.arange(4) % 3, lam, perm, classes=3)


def test_mix_targets_under_jit_still_takes_traced_values():
    got = jax.jit(lambda lam, perm: stochastic.mix_targets(jnp.arange(4) % 3, lam, perm, classes=3))(
        0.25, jnp.array([1, 0, 3, 2])
    )
    want = 0.25 * np.eye(3)[[0, 1, 2, 0]] + 0.75 * np.eye(3)[[1, 0, 0, 2]]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("base, exponent", [(1e-30, 500.0), (1.0, 400.0)])
def test_width_scaled_coefficients_that_overflow_are_refused(base, exponent):
    with pytest.raises(jreg.JregError, match="overflows float32"):
        jreg.penalties.l2(jreg.penalties.width_scaled(base, exponent))(PARAMS)


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
        jreg.penalties.l2(jreg.penalties.by_shape(rule))(PARAMS)


def test_with_cutmix_checks_its_image_shape_at_once():
    obj = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy)
    for bad in ("x", (2, "2"), (2,), 0):
        with pytest.raises(jreg.JregError, match="shape"):
            jreg.with_cutmix(obj, 1.0, shape=bad)


@pytest.mark.parametrize("call", ["peak", "eps"])
def test_strictly_positive_arguments_say_greater_than_zero(call):
    with pytest.raises(jreg.JregError, match=r"> 0") as info:
        if call == "peak":
            jreg.decoupled_weight_decay(
                optax.sgd(0.1), 1e-3, optax.linear_schedule(0.1, 0.0, 10), mode="independent", peak=-1.0
            )
        else:
            jreg.optim.unit_norm(eps=-1.0)
    assert ">= 0" not in str(info.value)
