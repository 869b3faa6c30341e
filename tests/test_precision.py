"""Mixed precision: the policy, the wrapper's casts and gradients, loss scaling, training with a policy."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jreg
from jreg import precision

BF16, F16, F32 = np.dtype(jnp.bfloat16), np.dtype("float16"), np.dtype("float32")
SIZES = [6, 5, 3]


def toy(n=24, seed=0):
    kx, kp = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, SIZES[0]))
    return x, jnp.argmax((x - 0.5) @ jax.random.normal(kp, (SIZES[0], SIZES[-1])), axis=1)


def dtypes(tree):
    return [np.dtype(leaf.dtype) for leaf in jax.tree.leaves(tree)]


# ---------------------------------------------------------------- the policy


def test_policy_defaults_and_shortcuts():
    assert (jreg.Policy().param_dtype, jreg.Policy().compute_dtype, jreg.Policy().output_dtype) == (F32, BF16, F32)
    assert jreg.Policy().loss_scale == 1.0
    assert precision.as_policy("bf16") == jreg.Policy()
    assert precision.as_policy("f32") == jreg.Policy(compute_dtype="float32")
    f16 = precision.as_policy("f16")
    assert f16.compute_dtype == F16 and f16.loss_scale == 2.0**15  # float16 gets a loss scale by default
    assert precision.as_policy("params=float32,compute=bfloat16,output=float32") == jreg.Policy()
    assert precision.as_policy("c=f16, loss_scale=2**10").loss_scale == 1024.0
    assert precision.as_policy("compute=bf16").output_dtype == F32  # a key left out is float32
    assert precision.as_policy(str(f16)) == f16  # str() round-trips
    assert jreg.Policy(compute_dtype=jnp.float16, loss_scale=8).loss_scale == 8.0
    with pytest.raises(dataclasses_frozen_error()):
        jreg.Policy().compute_dtype = F32


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


ALIASES = {F32: ["float32", "f32", "fp32", "full"], BF16: ["bfloat16", "bf16"], F16: ["float16", "f16", "half"]}
KEYS = {"param_dtype": ["params", "p"], "compute_dtype": ["compute", "c"], "output_dtype": ["output", "o"]}


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_parsed_strings_give_the_dtypes_they_name(data):
    chosen = {field: data.draw(st.sampled_from(sorted(ALIASES, key=str))) for field in KEYS}
    items = [
        f"{data.draw(st.sampled_from(KEYS[f]))}={data.draw(st.sampled_from(ALIASES[d]))}" for f, d in chosen.items()
    ]
    items = data.draw(st.permutations(items))
    text = ",".join(data.draw(st.sampled_from([s, s.upper(), f" {s} "])) for s in items)
    pol = precision.as_policy(text)
    assert (pol.param_dtype, pol.compute_dtype, pol.output_dtype) == tuple(chosen.values())
    assert pol.loss_scale == (2.0**15 if chosen["compute_dtype"] == F16 else 1.0)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30))
def test_any_other_string_is_a_jreg_error_or_a_policy(text):
    try:
        pol = precision.as_policy(text)
    except jreg.JregError as exc:
        assert "policy" in str(exc)
    else:
        assert isinstance(pol, jreg.Policy)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("compute=int8", r"policy: compute_dtype must be one of .*got 'int8'"),
        ("compute=bf16,compute=f32", r"'compute' is given twice"),
        ("weights=f32", r"cannot read 'weights=f32'"),
        ("bf17", r"cannot read 'bf17'"),
        ("c=f16,loss_scale=-2", r"loss_scale must be a finite number > 0, got -2"),
        ("c=f16,loss_scale=big", r"loss_scale must be a number such as 32768 or 2\*\*15, got 'big'"),
        ("c=f16,loss_scale=inf", r"loss_scale must be a finite number > 0"),
        ("", r"cannot read ''"),
    ],
)
def test_bad_policy_strings_name_the_part(spec, match):
    with pytest.raises(jreg.JregError, match=match):
        precision.as_policy(spec)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"compute_dtype": jnp.int32}, jreg.JregTypeError, r"compute_dtype must be a floating dtype.*got int32"),
        ({"param_dtype": None}, jreg.JregTypeError, r"param_dtype must be a floating dtype .*got None"),
        ({"output_dtype": "float8"}, jreg.JregError, r"output_dtype must be one of .*got 'float8'"),
        ({"loss_scale": 0}, jreg.JregError, r"loss_scale must be a finite number > 0, got 0"),
        ({"loss_scale": True}, jreg.JregTypeError, r"loss_scale must be a positive number"),
        ({"loss_scale": "2"}, jreg.JregTypeError, r"loss_scale must be a positive number"),
    ],
)
def test_bad_policy_fields_name_the_field_and_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        jreg.Policy(**kwargs)


def test_bad_policy_arguments():
    with pytest.raises(jreg.JregTypeError, match=r"policy must be a jreg.Policy or a string .*got int: 3"):
        jreg.mlp(SIZES, policy=3)
    with pytest.raises(jreg.JregError, match=r"dtype \(float16\) and policy's param_dtype \(float32\) disagree"):
        jreg.mlp(SIZES, dtype=jnp.float16, policy="bf16")
    with pytest.raises(jreg.JregTypeError, match="apply must be callable"):
        jreg.mixed_precision("not a function", "bf16")
    with pytest.raises(jreg.JregTypeError, match="max_consecutive must be a positive integer"):
        precision.skip_nonfinite(optax.sgd(0.1), max_consecutive=1.5)
    with pytest.raises(jreg.JregTypeError, match="optimizer must be an optax GradientTransformation"):
        precision.skip_nonfinite(lambda g: g)


# ---------------------------------------------------------------- the wrapper

MODEL = jreg.mlp(SIZES)
MIXED = jreg.mlp(SIZES, policy="bf16")
PARAMS = MODEL.init(jax.random.key(0))


def test_mlp_policy_keeps_float32_master_params_and_float32_outputs():
    params = MIXED.init(jax.random.key(0))
    assert dtypes(params) == [F32] * 4
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(PARAMS)):
        np.testing.assert_array_equal(a, b)  # the same init
    x, _ = toy()
    out, hidden = jax.jit(lambda p, x: MIXED.apply(p, x, intermediates=True))(params, x)
    assert out.dtype == F32 and hidden[0].dtype == F32
    plain = jax.jit(MODEL.apply)(params, x)
    assert not np.array_equal(out, plain)  # ... but computed in bfloat16
    np.testing.assert_allclose(out, plain, atol=0.05)
    assert MIXED.apply.policy == jreg.Policy()
    assert inspect.signature(MIXED.apply) == inspect.signature(MODEL.apply)  # the engine sees the same keywords
    assert MODEL.apply.__name__ == "apply_fn"  # no policy: the plain apply, no wrapper


def bf16_by_hand(params, x):
    """The same MLP with the casts written out: bfloat16 params and inputs, float32 outputs."""
    a = x.astype(BF16)
    for i, p in enumerate(params):
        z = a @ p["w"].astype(BF16) + p["b"].astype(BF16)
        a = jax.nn.sigmoid(z) if i < len(params) - 1 else z
    return a.astype(F32)


def f32_at_rounded(params, x):
    rounded = jax.tree.map(lambda a: a.astype(BF16).astype(F32), (params, x))
    return MODEL.apply(*rounded)


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_is_float32_and_equals_the_hand_cast_model(jit):
    x, y = toy()
    mixed = jreg.objective(MIXED.apply, jreg.losses.cross_entropy)
    hand = jreg.objective(bf16_by_hand, jreg.losses.cross_entropy)
    ref = jreg.objective(f32_at_rounded, jreg.losses.cross_entropy)
    grad = (lambda f: jax.jit(jax.grad(f))) if jit else jax.grad
    g, gh = (grad(lambda p, o=o: o(p, (x, y))[0])(PARAMS) for o in (mixed, hand))
    assert dtypes(g) == [F32] * 4
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gh)):
        np.testing.assert_array_equal(a, b)  # exactly the explicit casts
    if jit:  # and the float32 model's gradient at the rounded point, up to bfloat16's rounding on the way
        gr = grad(lambda p: ref(p, (x, y))[0])(PARAMS)
        for a, r in zip(jax.tree.leaves(g), jax.tree.leaves(gr)):
            np.testing.assert_allclose(a, r, atol=0.02 * float(jnp.abs(r).max()) + 1e-6)
            assert not np.array_equal(a, r)


@pytest.mark.parametrize("jit", [False, True])
def test_loss_and_every_penalty_part_are_float32(jit):
    x, y = toy()
    obj = jreg.objective(
        MIXED.apply,
        jreg.losses.cross_entropy,
        jreg.penalties.l2(0.1) + jreg.penalties.l1(0.01),
        activity=jreg.penalties.l2(0.01, name="act"),
        input_penalty=jreg.penalties.input_gradient(0.1),
        output_penalty=jreg.penalties.z_loss(1e-3),
    )
    f = jax.jit(lambda p: obj(p, (x, y), key=jax.random.key(1))) if jit else (lambda p: obj(p, (x, y)))
    total, parts = f(PARAMS)
    assert set(parts) >= {"data", "penalty", "l2", "l1", "activity_act", "input_gradient", "z_loss"}
    assert total.dtype == F32 and {k: np.dtype(v.dtype) for k, v in parts.items()} == dict.fromkeys(parts, F32)
    if jit:  # (op by op, the double backprop of the input penalty alone takes seconds)
        g = jax.jit(jax.grad(lambda p: f(p)[0]))(PARAMS)
        assert dtypes(g) == [F32] * 4 and all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))
    # the weight penalties see the float32 master params: the same value as without a policy
    plain = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.1) + jreg.penalties.l1(0.01))
    np.testing.assert_allclose(parts["l2"], plain(PARAMS, (x, y))[1]["l2"], rtol=1e-6)  # bfloat16: ~4e-3


def test_a_plain_custom_apply_with_pytree_inputs_and_integer_leaves():
    seen = {}

    def apply(params, inputs):
        seen["dtypes"] = (params["w"].dtype, inputs["x"].dtype, inputs["ids"].dtype)
        return {"logits": inputs["x"] @ params["w"], "count": inputs["ids"].sum()}

    wrapped = jreg.mixed_precision(apply, jreg.Policy(compute_dtype=jnp.float16))
    assert list(inspect.signature(wrapped).parameters) == ["params", "inputs"]
    out = wrapped({"w": jnp.ones((3, 2))}, {"x": jnp.ones((4, 3)), "ids": jnp.arange(4)})
    assert seen["dtypes"] == (F16, F16, np.dtype("int32"))  # integer leaves are left alone
    assert out["logits"].dtype == F32 and out["count"].dtype == np.dtype("int32")


def stateful_apply(params, x, *, state, train=False):
    """A running mean of the inputs, computed in whatever dtype x comes in (bfloat16 under the policy)."""
    new = {"mean": 0.9 * state["mean"].astype(x.dtype) + 0.1 * x.mean(0), "n": state["n"] + 1}
    return x @ params["w"], (new if train else state)


STATE = {"mean": jnp.zeros(4, jnp.float32), "n": jnp.zeros((), jnp.int32)}


def test_a_stateful_apply_keeps_its_state_dtypes_and_keywords():
    wrapped = jreg.mixed_precision(stateful_apply, "bf16")
    assert jreg.objective(wrapped, jreg.losses.cross_entropy).stateful
    out, new = wrapped({"w": jnp.ones((4, 3))}, jnp.ones((5, 4)), state=STATE, train=True)
    assert out.dtype == F32 and new["mean"].dtype == F32 and new["n"].dtype == np.dtype("int32")
    np.testing.assert_allclose(new["mean"], 0.1, rtol=1e-2)  # computed in bfloat16


def test_fit_with_a_stateful_policy_model():
    x, y = toy()
    params = {"w": 0.1 * jax.random.normal(jax.random.key(0), (6, 3))}
    state = {"mean": jnp.zeros(6, jnp.float32), "n": jnp.zeros((), jnp.int32)}
    obj = jreg.objective(jreg.mixed_precision(stateful_apply, "bf16"), jreg.losses.cross_entropy)
    trained, new_state, _ = jreg.fit(
        obj, optax.sgd(0.5), params, (x, y), epochs=2, batch_size=8, key=jax.random.key(1), model_state=state
    )
    assert dtypes(trained) == [F32] and new_state["mean"].dtype == F32 and int(new_state["n"]) == 6
    np.testing.assert_allclose(new_state["mean"], 0.5, atol=0.3)


# ---------------------------------------------------------------- float16 and loss scaling


def tiny_loss(outputs, targets):
    """A cost whose cotangent (1e-8 / batch) underflows to zero in float16."""
    return 1e-8 * outputs.sum(-1)


def linear(params, x):
    return x @ params["w"]


@pytest.mark.parametrize("jit", [False, True])
def test_loss_scaling_keeps_gradients_that_float16_flushes_to_zero(jit):
    x = jax.random.uniform(jax.random.key(0), (4, 3))
    params = {"w": jnp.ones((3, 2))}
    batch = (x, jnp.zeros(4, jnp.int32))

    def gradient(apply):
        f = jax.grad(lambda p: jreg.objective(apply, tiny_loss)(p, batch)[0])
        return (jax.jit(f) if jit else f)(params)["w"]

    reference = gradient(linear)  # float32
    assert float(jnp.abs(reference).min()) > 0
    unscaled = gradient(jreg.mixed_precision(linear, jreg.Policy(compute_dtype="float16", loss_scale=1)))
    np.testing.assert_array_equal(unscaled, 0.0)  # float16 without scaling: every gradient lost
    scaled = gradient(jreg.mixed_precision(linear, jreg.Policy(compute_dtype="float16", loss_scale=2.0**24)))
    assert scaled.dtype == F32
    np.testing.assert_allclose(scaled, reference, rtol=2e-3)  # the forward pass is untouched: only x's rounding
    # with bfloat16's float32 exponent range nothing underflows, and no scale is needed
    np.testing.assert_allclose(gradient(jreg.mixed_precision(linear, "bf16")), reference, rtol=1e-2)


def test_loss_scaling_changes_no_forward_value():
    x, _ = toy()
    a = jreg.mixed_precision(MODEL.apply, jreg.Policy(compute_dtype="float16", loss_scale=1))(PARAMS, x)
    b = jreg.mixed_precision(MODEL.apply, "f16")(PARAMS, x)
    np.testing.assert_array_equal(a, b)


def huge_loss(outputs, targets):
    """A cost whose scaled cotangent (1e3 * 2**15) overflows float16."""
    return 1e3 * outputs.sum(-1)


def test_an_overflowing_step_is_skipped_and_the_guard_stays_quiet():
    x = jax.random.uniform(jax.random.key(0), (8, 3))
    params = {"w": jnp.ones((3, 2))}
    obj = jreg.objective(jreg.mixed_precision(linear, "f16"), huge_loss)
    grads = jax.grad(lambda p: obj(p, (x, jnp.zeros(8, jnp.int32)))[0])(params)
    assert not bool(jnp.all(jnp.isfinite(grads["w"])))  # the scaled cotangent overflowed
    opt = precision.skip_nonfinite(optax.sgd(0.1), max_consecutive=100)
    trained, history = jreg.fit(
        obj, opt, params, (x, jnp.zeros(8, jnp.int32)), epochs=2, batch_size=4, key=jax.random.key(0),
        monitor=("training_cost",),
    )  # fmt: skip
    np.testing.assert_array_equal(trained["w"], params["w"])  # every step skipped, nothing diverged
    assert np.all(np.isfinite(history.training_cost))  # the forward pass (and so the cost) stayed finite
    with pytest.raises(jreg.DivergenceError):  # without skipping, the infinite gradient reaches the params
        jreg.fit(
            obj, optax.sgd(0.1), params, (x, jnp.zeros(8, jnp.int32)), epochs=1, batch_size=4, key=jax.random.key(0)
        )


# ---------------------------------------------------------------- training with a policy


def test_fit_sweep_and_checkpoint_with_a_policy(tmp_path):
    train, test = toy(40, 0), toy(30, 1)
    params = MIXED.init(jax.random.key(0))
    opt = optax.adam(0.05)

    def build(hp):
        return jreg.objective(MIXED.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), opt

    obj = build({"lmbda": 0.01})[0]
    kw = dict(epochs=3, batch_size=8, key=jax.random.key(1), monitor=("training_cost",))
    trained, history = jreg.fit(obj, opt, params, train, **kw)
    assert dtypes(trained) == [F32] * 4 and history.training_cost[-1] < history.training_cost[0]
    opt_state = opt.init(trained)
    assert all(d in (F32, np.dtype("int32")) for d in dtypes(opt_state))
    swept, hist = jreg.sweep(
        build, params, train, hparams={"lmbda": [0.0, 0.01]}, epochs=3, batch_size=8, key=jax.random.key(1)
    )
    assert dtypes(swept) == [F32] * 4 and hist.models == 2
    # The sweep's model 1 is the fit. On the CPU both programs run the same bf16 matmuls: agreement to float
    # reassociation. On a GPU the batched (vmapped) program and the single-model one pick different bf16 matmul
    # kernels (accumulation order, bf16 rounding of the products): seen on an H200, the params differ by ~0.5 %,
    # a few bf16 units of roundoff (2**-9 = 0.2 %) amplified over 15 Adam steps; so off the CPU a bf16 tolerance.
    # It still tells the models apart: model 0 (lmbda = 0) is off by up to 0.28 in a leaf of norm ~1.
    rtol, atol = (1e-4, 1e-5) if jax.default_backend() == "cpu" else (2e-2, 1e-2)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(swept)):
        np.testing.assert_allclose(b[1], a, rtol=rtol, atol=atol)
    assert not all(np.allclose(b[0], a, rtol=rtol, atol=atol) for a, b in zip(*map(jax.tree.leaves, (trained, swept))))
    path = jreg.save(tmp_path / "mixed.npz", trained, opt_state=opt_state)
    back = jreg.load(path, params=params, opt_state=opt_state)
    x = test[0]
    np.testing.assert_array_equal(MIXED.apply(back.params, x), MIXED.apply(trained, x))


# ---------------------------------------------------------------- real MNIST (slow)

SHARED = Path(os.environ.get("JREG_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
HAVE_MNIST = all((SHARED / f"{n}.gz").is_file() or (SHARED / n).is_file() for n in jreg.data.SHA256)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason=f"the MNIST files are not at {SHARED} (set JREG_DATA_DIR)")
def test_n30_on_mnist_bf16_is_within_one_point_of_float32():
    train, validation, _ = jreg.data.load_mnist(SHARED, download=False)
    train = (train.x[:10_000], train.y[:10_000])
    accuracy = {}
    for policy in (None, "bf16"):
        model = jreg.mlp([784, 30, 10], policy=policy)
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy)
        _, history = jreg.fit(
            obj,
            optax.sgd(0.5),
            model.init(jax.random.key(0)),
            train,
            epochs=3,
            batch_size=10,
            key=jax.random.key(1),
            evaluation=(validation.x, validation.y),
        )
        accuracy[policy] = history.evaluation_accuracy[-1]
    assert accuracy[None] > 0.85
    assert abs(accuracy["bf16"] - accuracy[None]) <= 0.01, accuracy


# ---------------------------------------------------------------- review: hostile policies


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_scale": 10**400}, r"loss_scale must be a finite number > 0"),  # an int too large for a float
        ({"loss_scale": 1e300}, r"loss_scale must be between 2\*\*-126 and 2\*\*126.*got 1e\+300"),  # inf in float32
        ({"loss_scale": 1e-300}, r"loss_scale must be between 2\*\*-126 and 2\*\*126"),  # its inverse: inf
    ],
)
def test_loss_scales_float32_cannot_hold_are_refused(kwargs, match):
    with pytest.raises(jreg.JregError, match=match):
        jreg.Policy(compute_dtype="f16", **kwargs)


def test_policy_strings_read_signs_whitespace_and_round_trip_exactly():
    with pytest.raises(jreg.JregError, match=r"loss_scale must be a finite number > 0, got -65536"):
        precision.as_policy("c=f16,loss_scale=-2**16")  # -(2**16), as Python reads it: not 65536
    for bad in ("--2**16", "0**-1"):  # the second was a raw ZeroDivisionError
        with pytest.raises(jreg.JregError, match=r"loss_scale must be a number"):
            precision.as_policy(f"c=f16,loss_scale={bad}")
    assert precision.as_policy("c=f16,loss_scale=+2**4").loss_scale == 16.0
    assert precision.as_policy("c = f16,\tloss_scale=2**4\n") == jreg.Policy(compute_dtype="f16", loss_scale=16)
    for scale in (2.0**24, 1 / 3, 1e-5, 3.0, 12345.678):
        pol = jreg.Policy(compute_dtype="f16", loss_scale=scale)
        assert precision.as_policy(str(pol)) == pol, str(pol)
    assert str(precision.as_policy("f16")).endswith("loss_scale=32768")


# ---------------------------------------------------------------- review: loss scaling at the boundaries

W = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2)}  # row sums -1.6, 0, 1.6: d(sum(x @ w))/dx


def f16(scale):
    return jreg.mixed_precision(linear, jreg.Policy(compute_dtype="float16", loss_scale=scale))


@pytest.mark.parametrize("jit", [False, True])
def test_forward_mode_goes_through_the_loss_scale(jit):
    x = jax.random.uniform(jax.random.key(0), (4, 3))
    tangent = {"w": jnp.full((3, 2), 0.25)}

    def jvp(apply):
        f = lambda p, t: jax.jvp(lambda q: apply(q, x), (p,), (t,))  # noqa: E731
        return (jax.jit(f) if jit else f)(W, tangent)

    (y, dy), (y1, dy1) = jvp(f16(2.0**10)), jvp(f16(1.0))  # was: "can't apply forward-mode autodiff (jvp)"
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(dy, dy1)  # the tangent scaled by 2**-10 going in and 2**10 coming out
    np.testing.assert_allclose(dy, x @ tangent["w"], rtol=2e-3)
    jac = jax.jacfwd(lambda p: f16(2.0**10)(p, x).sum())(W)["w"]
    np.testing.assert_allclose(jac, jnp.broadcast_to(x.sum(0)[:, None], (3, 2)), rtol=2e-3)


def test_unscaling_a_float16_input_is_done_in_float32():
    """1 / 2**25 is 0 in float16: a float16 input's gradient was multiplied by zero."""
    x = jax.random.uniform(jax.random.key(0), (2, 3)).astype(jnp.float16)
    g = jax.grad(lambda x: 1e-3 * f16(2.0**25)(W, x).sum())(x)
    assert g.dtype == F16
    np.testing.assert_allclose(g.astype(F32), jnp.broadcast_to(1e-3 * W["w"].sum(1), (2, 3)), rtol=1e-3, atol=1e-7)


# ---------------------------------------------------------------- review: the wrapper's edges


def test_wrapping_twice_is_the_same_wrapper_or_an_error():
    once = jreg.mixed_precision(linear, "f16")
    assert jreg.mixed_precision(once, "f16") is once  # was: both scales applied, 2**30 overflowed every gradient
    assert jreg.mixed_precision(jreg.mlp(SIZES, policy="bf16").apply, jreg.Policy()).policy == jreg.Policy()
    with pytest.raises(jreg.JregError, match=r"apply is already mixed_precision\(linear\) under the policy .*float16"):
        jreg.mixed_precision(once, "bf16")
    with pytest.raises(jreg.JregError, match=r"already .* policy"):
        jreg.mixed_precision(MIXED.apply, "f16")


def test_float64_without_jax_x64_is_refused():
    assert not jax.config.read("jax_enable_x64")
    with pytest.raises(jreg.JregError, match=r"policy .*float64.* 64-bit mode is off"):
        jreg.mixed_precision(linear, "compute=float64")  # was: float32 with a warning, the policy said float64
    with pytest.raises(jreg.JregError, match=r"policy .*float64.* 64-bit mode is off"):
        jreg.mlp(SIZES, policy="params=float64,compute=bf16")


def test_the_wrapper_takes_what_the_apply_takes():
    def apply(params, inputs, scale, *, key=None):
        assert inputs.dtype == BF16 and params["w"].dtype == BF16
        return inputs @ params["w"] * scale

    wrapped = jreg.mixed_precision(apply, "bf16")
    x = jnp.ones((2, 3))
    expect = apply({"w": W["w"].astype(BF16)}, x.astype(BF16), 2.0).astype(F32)
    np.testing.assert_array_equal(wrapped(W, x, 2.0), expect)  # extra positional: passed on as given
    np.testing.assert_array_equal(wrapped(W, inputs=x, scale=2.0), expect)  # the inputs by apply's own name
    np.testing.assert_array_equal(wrapped(params=W, inputs=x, scale=2.0, key=None), expect)
    with pytest.raises(jreg.JregTypeError, match=r"mixed_precision\(apply\) needs the params and the inputs"):
        wrapped(W)


def test_loss_scaling_leaves_double_backprop_exact():
    """An input penalty differentiates a gradient: the loss scale must cancel on every path, not only the first-order.

    (Scaling at two custom-derivative identities made the input penalty's gradient 1/S of its value.)"""
    x, y = toy(8)

    def penalty_gradient(apply):
        def total(p, lam):
            obj = jreg.objective(apply, jreg.losses.cross_entropy, input_penalty=jreg.penalties.input_gradient(lam))
            return obj(p, (x, y))[0]

        g = jax.jit(jax.grad(total))  # one compile for both coefficients
        return jax.tree.map(lambda a, b: a - b, g(PARAMS, 100.0), g(PARAMS, 0.0))

    reference = penalty_gradient(MODEL.apply)
    for scale in (3.0,):  # float32 compute: only the scale can differ
        scaled = penalty_gradient(jreg.mixed_precision(MODEL.apply, jreg.Policy(compute_dtype="f32", loss_scale=scale)))
        for a, r in zip(jax.tree.leaves(scaled), jax.tree.leaves(reference)):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6 * float(jnp.abs(r).max()))
    f16 = penalty_gradient(jreg.mixed_precision(MODEL.apply, "f16"))  # 2**15
    for a, r in zip(jax.tree.leaves(f16), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, r, atol=0.02 * float(jnp.abs(r).max()))
