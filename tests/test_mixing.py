"""Mixup and CutMix: keyed pure functions against NumPy references, and the objective transformations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jreg
from jreg import stochastic
from jreg._checks import MAX_CLASSES
from jreg.stochastic import cutmix, mix_targets, mixup

from .conftest import VARIANTS

N, CLASSES = 8, 5
X = np.asarray(jax.random.normal(jax.random.key(1), (N, 6)), np.float32)
Y = np.array([0, 1, 2, 3, 4, 0, 1, 2], np.int32)
IMAGES = np.asarray(jax.random.normal(jax.random.key(2), (N, 7, 9, 2)), np.float32)


def one_hot(y, classes=CLASSES):
    return np.eye(classes, dtype=np.float32)[y]


def mixup_draws(key, alpha, n):
    """The draws mixup documents: k_lam, k_perm = split(key); Beta(alpha, alpha); a permutation."""
    k_lam, k_perm = jax.random.split(key)
    lam = float(jax.random.beta(k_lam, alpha, alpha, dtype=jnp.float32))
    return lam, np.asarray(jax.random.permutation(k_perm, n))


def cutmix_reference(key, x, y, alpha, classes):
    """Yun et al.'s box, written out in NumPy from the documented draws."""
    n, h, w = x.shape[:3]
    k_lam, k_perm, k_box = jax.random.split(key, 3)
    lam = float(jax.random.beta(k_lam, alpha, alpha, dtype=jnp.float32))
    perm = np.asarray(jax.random.permutation(k_perm, n))
    k_y, k_x = jax.random.split(k_box)
    cy, cx = int(jax.random.randint(k_y, (), 0, h)), int(jax.random.randint(k_x, (), 0, w))
    r = np.sqrt(1.0 - np.float32(lam))
    cut_h, cut_w = int(np.floor(h * r)), int(np.floor(w * r))
    y1, y2 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x1, x2 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    out = np.array(x)
    out[:, y1:y2, x1:x2] = x[perm][:, y1:y2, x1:x2]
    kept = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    t = one_hot(y, classes)
    return out, kept * t + (1 - kept) * t[perm], kept


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixup_matches_numpy(variant):
    alpha = 0.4
    fn = variant(lambda k, x, y: mixup(k, x, y, alpha, classes=CLASSES))
    soft = variant(lambda k, x, y: mixup(k, x, y, alpha))
    for seed in range(3):
        key = jax.random.key(seed)
        xm, ym = fn(key, X, Y)
        lam, perm = mixup_draws(key, alpha, N)
        assert 0.0 < lam < 1.0
        np.testing.assert_allclose(xm, lam * X + (1 - lam) * X[perm], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ym, lam * one_hot(Y) + (1 - lam) * one_hot(Y)[perm], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.sum(ym, axis=1), 1.0, rtol=1e-6)
        # float (one-hot or soft) targets are mixed as they are: the same result
        np.testing.assert_allclose(soft(key, X, one_hot(Y))[1], ym, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_alpha_zero_leaves_the_batch_unchanged(variant):
    key = jax.random.key(3)
    xm, ym = variant(lambda k, x, y: mixup(k, x, y, 0.0, classes=CLASSES))(key, X, Y)
    np.testing.assert_array_equal(xm, X)
    np.testing.assert_array_equal(ym, one_hot(Y))
    xc, yc = variant(lambda k, x, y: cutmix(k, x, y, 0.0, classes=CLASSES))(key, IMAGES, Y)
    np.testing.assert_array_equal(xc, IMAGES)
    np.testing.assert_array_equal(yc, one_hot(Y))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "loss", [jreg.losses.softmax_cross_entropy, jreg.losses.sigmoid_cross_entropy], ids=["softmax", "sigmoid"]
)
def test_mixed_loss_of_soft_targets_is_the_mixture_of_the_losses(variant, loss):
    """For a loss linear in the targets, L(lam t_a + (1 - lam) t_b) = lam L(y_a) + (1 - lam) L(y_b) (Zhang et al.)."""
    logits = jax.random.normal(jax.random.key(4), (N, CLASSES))
    perm = np.asarray(jax.random.permutation(jax.random.key(5), N))
    lam = 0.3

    def mixed(z, y):
        return loss(z, mix_targets(y, lam, perm, classes=CLASSES))

    want = lam * loss(logits, Y) + (1 - lam) * loss(logits, Y[perm])
    np.testing.assert_allclose(variant(mixed)(logits, Y), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cutmix_matches_numpy_and_box_area_matches_lambda(variant):
    alpha = 1.0
    fn = variant(lambda k, x, y: cutmix(k, x, y, alpha, classes=CLASSES))
    # constant images i + 1 tell the pasted pixels apart: exactly a fraction 1 - lam' of each image
    flat = np.arange(1, N + 1, dtype=np.float32)[:, None, None, None] * np.ones((N, 7, 9, 2), np.float32)
    for seed in range(4):
        key = jax.random.key(seed)
        xm, ym = fn(key, IMAGES, Y)
        want_x, want_y, kept = cutmix_reference(key, IMAGES, Y, alpha, CLASSES)
        np.testing.assert_array_equal(xm, want_x)
        np.testing.assert_allclose(ym, want_y, rtol=1e-6, atol=1e-7)
        xc, _ = fn(key, flat, Y)
        perm = np.asarray(jax.random.permutation(jax.random.split(key, 3)[1], N))
        moved = next(i for i in range(N) if perm[i] != i)
        np.testing.assert_allclose(np.mean(np.asarray(xc[moved]) != flat[moved]), 1.0 - kept, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cutmix_on_flat_and_grayscale_images(variant):
    """MNIST's flat (N, 784) with shape=28 is (N, 28, 28) cut and flattened; (N, H, W) works as (N, H, W, 1)."""
    key = jax.random.key(7)
    images = np.asarray(jax.random.uniform(jax.random.key(8), (N, 28, 28)), np.float32)
    xs, ys = variant(lambda k, x, y: cutmix(k, x, y, 1.0, classes=CLASSES))(key, images, Y)
    xf, yf = variant(lambda k, x, y: cutmix(k, x, y, 1.0, classes=CLASSES, shape=28))(key, images.reshape(N, 784), Y)
    xt, _ = variant(lambda k, x, y: cutmix(k, x, y, 1.0, classes=CLASSES, shape=(28, 28)))(
        key, images.reshape(N, 784), Y
    )
    x4, _ = variant(lambda k, x, y: cutmix(k, x, y, 1.0, classes=CLASSES))(key, images[..., None], Y)
    np.testing.assert_array_equal(xf, np.asarray(xs).reshape(N, 784))
    np.testing.assert_array_equal(xt, xf)
    np.testing.assert_array_equal(x4[..., 0], xs)
    np.testing.assert_array_equal(yf, ys)
    want_x, want_y, _ = cutmix_reference(key, images, Y, 1.0, CLASSES)
    np.testing.assert_array_equal(xs, want_x)


def test_alpha_traced_through_vmap():
    key, alphas = jax.random.key(9), jnp.array([0.0, 0.2, 1.0, 4.0])
    for fn, x in ((mixup, X), (cutmix, IMAGES)):
        xs, ys = jax.vmap(lambda a, fn=fn, x=x: fn(key, x, Y, a, classes=CLASSES))(alphas)
        for i, a in enumerate(alphas):
            x1, y1 = fn(key, x, Y, float(a), classes=CLASSES)
            np.testing.assert_allclose(xs[i], x1, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ys[i], y1, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(xs[0], x)  # alpha 0: no mixing, traced too


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf"), np.ones(2)])
def test_hostile_alpha(alpha):
    for fn, x in ((mixup, X), (cutmix, IMAGES)):
        with pytest.raises(jreg.JregError, match="alpha"):
            fn(jax.random.key(0), x, Y, alpha, classes=CLASSES)
    model = jreg.mlp([6, 4, CLASSES])
    obj = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy)
    with pytest.raises(jreg.JregError, match="alpha"):
        jreg.with_mixup(obj, alpha)


def test_hostile_shapes_and_targets():
    key = jax.random.key(0)
    with pytest.raises(jreg.JregError, match="classes"):
        mixup(key, X, Y, 0.2)  # integer labels need classes
    with pytest.raises(jreg.JregError, match="first axis"):
        mixup(key, X, Y[:5], 0.2, classes=CLASSES)
    with pytest.raises(jreg.JregError, match="integer labels"):
        mixup(key, X, Y.reshape(N, 1), 0.2, classes=CLASSES)
    with pytest.raises(jreg.JregError, match=r"\[0, 5\)"):
        mixup(key, X, Y + 1, 0.2, classes=CLASSES)
    with pytest.raises(jreg.JregTypeError, match="floating"):
        mixup(key, X.astype(np.int32), Y, 0.2, classes=CLASSES)
    with pytest.raises(jreg.JregError, match="batch axis"):
        mixup(key, X[0], Y, 0.2, classes=CLASSES)
    with pytest.raises(jreg.JregTypeError, match="dtype"):
        mixup(key, X, Y.astype(bool), 0.2)
    with pytest.raises(jreg.JregTypeError, match="key"):
        mixup(0, X, Y, 0.2, classes=CLASSES)
    with pytest.raises(jreg.JregError, match="shape="):
        cutmix(key, X, Y, 1.0, classes=CLASSES)  # flat without shape
    with pytest.raises(jreg.JregError, match="holds 9 values"):
        cutmix(key, X, Y, 1.0, classes=CLASSES, shape=3)
    with pytest.raises(jreg.JregError, match="shape"):
        cutmix(key, X, Y, 1.0, classes=CLASSES, shape=(6,))
    # under jit an out-of-range label cannot raise: its row is NaN, never a silent zero
    _, ym = jax.jit(lambda y: mixup(key, X, y, 0.2, classes=CLASSES))(Y + 1)
    assert np.isnan(np.asarray(ym)).any()


# --- the objective transformations ----------------------------------------------------------------------------

MODEL = jreg.mlp([6, 4, CLASSES])
PARAMS = MODEL.init(jax.random.key(0))
OBJ = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_objective_mixes_with_its_key_and_evaluates_plainly(variant, method):
    key, alpha = jax.random.key(11), 0.5
    x = X  # 6 features: 2 x 3 images for cutmix
    wrapped = jreg.with_mixup(OBJ, alpha) if method == "mixup" else jreg.with_cutmix(OBJ, alpha, shape=(2, 3))
    assert isinstance(wrapped, jreg.Objective)
    mine, rest = jax.random.split(key)
    if method == "mixup":
        xm, ym = mixup(mine, x, Y, alpha, classes=CLASSES)  # classes: the model's outputs
    else:
        xm, ym = cutmix(mine, x, Y, alpha, classes=CLASSES, shape=(2, 3))
    got_total, got_parts = variant(lambda p: wrapped(p, (x, Y), key=key))(PARAMS)
    want_total, want_parts = OBJ(PARAMS, (xm, ym), key=rest)
    np.testing.assert_allclose(got_total, want_total, rtol=1e-6)
    np.testing.assert_allclose(got_parts["data"], want_parts["data"], rtol=1e-6)
    g = variant(jax.grad(lambda p: wrapped(p, (x, Y), key=key)[0]))(PARAMS)
    g_want = jax.grad(lambda p: OBJ(p, (xm, ym), key=rest)[0])(PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g_want)
    # no key: evaluation, the plain objective
    plain = variant(lambda p: wrapped(p, (x, Y)))(PARAMS)
    np.testing.assert_allclose(plain[0], OBJ(PARAMS, (x, Y))[0], rtol=1e-6)


def test_mixup_linearity_inside_the_objective():
    """The data cost of a mixed batch with integer labels is lam L(y) + (1 - lam) L(y[perm]) on the mixed inputs."""
    key, alpha = jax.random.key(12), 0.7
    mine, _ = jax.random.split(key)
    lam, perm = mixup_draws(mine, alpha, N)
    data = jreg.with_mixup(OBJ, alpha)(PARAMS, (X, Y), key=key)[1]["data"]
    xm = lam * X + (1 - lam) * X[perm]
    z = MODEL.apply(PARAMS, xm)
    loss = jreg.losses.softmax_cross_entropy
    want = np.mean(lam * loss(z, Y) + (1 - lam) * loss(z, Y[perm]))
    np.testing.assert_allclose(data, want, rtol=1e-5)


def test_fit_and_sweep_train_with_mixup_without_plumbing():
    """fit trains with mixup (flat MNIST-shaped CutMix too); a sweep over alpha with alpha = 0 is plain training."""
    x = np.asarray(jax.random.uniform(jax.random.key(13), (32, 16)), np.float32)
    y = np.asarray(jax.random.randint(jax.random.key(14), (32,), 0, 3), np.int32)
    model = jreg.mlp([16, 8, 3])
    params = model.init(jax.random.key(0))
    obj = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))
    opt, run = optax.sgd(0.5), dict(epochs=2, batch_size=8, key=jax.random.key(15))
    watched = ("training_cost", "training_accuracy")
    _, history = jreg.fit(jreg.with_cutmix(obj, 1.0, shape=4), opt, params, (x, y), monitor=watched, **run)
    assert np.all(np.isfinite(history.training_cost)) and "training_accuracy" in history.series
    plain, _ = jreg.fit(obj, opt, params, (x, y), **run)
    swept, _ = jreg.sweep(
        lambda hp: (jreg.with_mixup(obj, hp["alpha"]), opt), params, (x, y), hparams={"alpha": [0.0, 0.4]}, **run
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6), swept, plain)
    assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: np.allclose(a[1], b), swept, plain)))


def test_transform_arguments_are_checked():
    with pytest.raises(jreg.JregTypeError, match="jreg.objective"):
        jreg.with_mixup(lambda p, b: (0.0, {}), 0.2)
    with pytest.raises(jreg.JregError, match="classes"):
        jreg.with_mixup(OBJ, 0.2, classes=0)
    weighted = jreg.objective(MODEL.apply, jreg.losses.weighted(jreg.losses.softmax_cross_entropy))
    with pytest.raises(jreg.JregError, match="weighted"):
        jreg.with_cutmix(weighted, 1.0)
    with pytest.raises(jreg.JregError, match="shape="):  # flat inputs, no shape: refused when traced
        jreg.with_cutmix(OBJ, 1.0)(PARAMS, (X, Y), key=jax.random.key(0))


def test_a_split_batch_is_mixed_and_nested_transformations_keep_it():
    """Batches taken apart by split= are mixed as (inputs, targets), also when SAM sits inside the mixing."""
    split = lambda b: (b["image"], b["label"])  # noqa: E731
    obj = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01), split=split)
    key = jax.random.key(16)
    mine, rest = jax.random.split(key)
    xm, ym = mixup(mine, X, Y, 0.3, classes=CLASSES)
    want = OBJ(PARAMS, (xm, ym), key=rest)[0]
    for wrapped in (jreg.with_mixup(obj, 0.3), jreg.with_mixup(jreg.sam(obj, 0.0), 0.3)):
        np.testing.assert_allclose(wrapped(PARAMS, {"image": X, "label": Y}, key=key)[0], want, rtol=1e-6)
    with pytest.raises(jreg.JregError, match="key"):
        jreg.with_mixup(OBJ, 0.3)(PARAMS, (X, Y), train=True)


@settings(max_examples=15, deadline=None)
@given(
    x=hnp.arrays(st.sampled_from([np.float32, np.int32, np.float16]), hnp.array_shapes(min_dims=0, max_dims=4)),
    y=hnp.arrays(st.sampled_from([np.int32, np.float32, np.bool_]), hnp.array_shapes(min_dims=0, max_dims=2)),
    alpha=st.sampled_from([0.0, 0.5, -1.0, float("nan")]),
    classes=st.sampled_from([None, 0, 3]),
    shape=st.sampled_from([None, 2, (2, 3)]),
)
def test_hostile_random_input_gives_a_result_or_a_jreg_error(x, y, alpha, classes, shape):
    for fn, kw in ((mixup, {}), (cutmix, {"shape": shape})):
        try:
            xm, ym = fn(jax.random.key(0), x, y, alpha, classes=classes, **kw)
        except jreg.JregError as e:
            assert str(e)
            continue
        assert xm.shape == x.shape and ym.shape[0] == x.shape[0]


# --------------------------------------------------------------------------- issue 15's review
# Cases an independent review of issue 15's regularizers found: each gave a raw exception, a silent wrong
# result, or accepted a resume it should refuse.

KEY = jax.random.key(2)
MLP_4_5_3 = jreg.mlp([4, 5, 3])


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


def test_with_cutmix_checks_its_image_shape_at_once():
    obj = jreg.objective(MLP_4_5_3.apply, jreg.losses.softmax_cross_entropy)
    for bad in ("x", (2, "2"), (2,), 0):
        with pytest.raises(jreg.JregError, match="shape"):
            jreg.with_cutmix(obj, 1.0, shape=bad)


# --------------------------------------------------------------------------- class counts (issue 14)

LABELS = jnp.array([0, 2, 1])


def test_mixing_refuses_an_absurd_class_count_before_any_work(no_one_hot):
    key, x = jax.random.key(0), jnp.ones((3, 4))
    for classes in (2**40, MAX_CLASSES + 1):
        with pytest.raises(jreg.JregError, match="classes must be at most"):
            mixup(key, x, LABELS, 0.2, classes=classes)
        with pytest.raises(jreg.JregError, match="classes must be at most"):
            mix_targets(LABELS, 0.5, jnp.arange(3), classes=classes)
    with pytest.raises(jreg.JregError, match="classes=1073741824 for 3 labels"):
        mix_targets(LABELS, 0.5, jnp.arange(3), classes=2**30)
    model = jreg.mlp([4, 3])
    objective = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy)
    for transform in (jreg.with_mixup, jreg.with_cutmix):
        with pytest.raises(jreg.JregError, match="classes must be at most 2147483647"):
            transform(objective, 0.2, classes=2**40)
