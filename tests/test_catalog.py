"""Selectors on jreg, Flax (linen and NNX), Equinox and Haiku params; the structured penalties; describe."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

import jreg
from jreg import penalties as P
from jreg import selectors as S


def sq(*arrays):
    return sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays)


# --------------------------------------------------------------------------- selectors


def test_selectors_compose():
    params = {
        "enc": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
        "norm": {"scale": jnp.ones(4)},
        "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
        "steps": jnp.array(3),
        "embedding": jnp.ones((5, 3)),
    }
    picked = lambda sel: sorted(p for p, on in zip(P.paths(params), jax.tree.leaves(P.mask_tree(params, sel))) if on)  # noqa: E731
    assert picked(S.weights()) == ["embedding", "enc/kernel", "head/kernel"]
    assert picked(S.weights() & ~S.name("embedding")) == ["enc/kernel", "head/kernel"]
    assert picked(S.path("enc/*") & S.name("kernel")) == ["enc/kernel"]
    assert picked(S.name("bias") | S.name("scale")) == ["enc/bias", "head/bias", "norm/scale"]
    assert picked(S.rank(max=0)) == ["steps"]
    assert picked(S.dtype("int")) == ["steps"]
    assert picked(S.rank(min=1) & S.path("head/*")) == ["head/bias", "head/kernel"]
    assert repr(S.name("w") & ~S.rank(min=3)) == "(name('w',) & ~rank(min=3, max=None))"
    with pytest.raises(jreg.JregError, match="rank needs min= or max="):
        S.rank()
    with pytest.raises(jreg.JregTypeError, match="is not a dtype"):
        S.dtype("floaty")


def test_leaf_name_skips_nnx_value():
    assert S.leaf_name("l1/kernel/value") == "kernel" and S.leaf_name("0/w") == "w"


def test_linen_params():
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.LayerNorm()(nn.relu(nn.Dense(8)(x))))

    v = Net().init(jax.random.key(0), jnp.ones((1, 4)))
    k0, k1 = v["params"]["Dense_0"]["kernel"], v["params"]["Dense_1"]["kernel"]
    np.testing.assert_allclose(P.l2(2.0)(v), sq(k0, k1), rtol=1e-6)
    rows = jreg.describe(P.l2(2.0), v)
    assert [r["path"] for r in rows] == ["params/Dense_0/kernel", "params/Dense_1/kernel"]
    assert {p for p, _ in rows.untouched} >= {"params/LayerNorm_0/scale", "params/Dense_0/bias"}


def test_nnx_state():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs)
            self.ln = nnx.LayerNorm(8, rngs=rngs)
            self.l2 = nnx.Linear(8, 2, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    kernels = [leaf for p, leaf in zip(P.paths(state), jax.tree.leaves(state)) if S.leaf_name(p) == "kernel"]
    assert len(kernels) == 2
    np.testing.assert_allclose(P.l2(2.0)(state), sq(*kernels), rtol=1e-6)
    assert sorted(r["path"] for r in jreg.describe(P.l1(0.1, mask=S.name("kernel") & S.path("l2/*")), state)) == [
        "l2/kernel/value"
    ]


def test_equinox_module():
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(4, 2, 8, 2, key=jax.random.key(0))  # also holds activation functions as leaves
    weights = [layer.weight for layer in mlp.layers]
    np.testing.assert_allclose(P.l2(2.0)(mlp), sq(*weights), rtol=1e-6)
    rows = jreg.describe(P.l2(2.0), mlp)
    assert [r["path"] for r in rows] == ["layers/0/weight", "layers/1/weight", "layers/2/weight"]
    # and training it through jreg: apply = the module's own call, vmapped over the batch
    params, static = eqx.partition(mlp, eqx.is_array)
    obj = jreg.objective(lambda p, x: jax.vmap(eqx.combine(p, static))(x), jreg.losses.cross_entropy, P.l2(1e-3))
    x, y = jnp.ones((4, 4)), jnp.array([0, 1, 0, 1])
    new, _, m = jreg.make_step(obj, optax.sgd(0.1))(params, optax.sgd(0.1).init(params), (x, y))
    assert np.isfinite(float(m["loss"]))


def test_haiku_params():
    hk = pytest.importorskip("haiku")
    f = hk.transform(lambda x: hk.Linear(2)(hk.LayerNorm(-1, True, True)(hk.Linear(8)(x))))
    params = f.init(jax.random.key(0), jnp.ones((1, 4)))
    ws = [params["linear"]["w"], params["linear_1"]["w"]]
    np.testing.assert_allclose(P.l2(2.0)(params), sq(*ws), rtol=1e-6)
    assert {p for p, _ in jreg.describe(P.l2(1.0), params).untouched} == {
        "layer_norm/offset",
        "layer_norm/scale",
        "linear/b",
        "linear_1/b",
    }


# --------------------------------------------------------------------------- the catalog


W = jax.random.normal(jax.random.key(3), (5, 4))


def test_formulas_against_numpy():
    w = np.asarray(W, np.float64)
    p = {"w": W}
    np.testing.assert_allclose(P.group_lasso(0.3)(p), 0.3 * np.sum(np.linalg.norm(w, axis=0)), rtol=1e-5)
    np.testing.assert_allclose(P.group_lasso(0.3, groups="rows")(p), 0.3 * np.sum(np.linalg.norm(w, axis=1)), rtol=1e-5)
    np.testing.assert_allclose(P.nuclear_norm(0.2)(p), 0.2 * np.sum(np.linalg.svd(w, compute_uv=False)), rtol=1e-5)
    np.testing.assert_allclose(P.spectral_norm(0.4, iterations=100)(p), 0.2 * np.linalg.norm(w, 2) ** 2, rtol=1e-4)
    np.testing.assert_allclose(P.orthogonality(0.1)(p), 0.1 * np.sum((w.T @ w - np.eye(4)) ** 2), rtol=1e-5)
    assert float(P.max_norm(1.0)(p)) == 0.0
    conv = {"kernel": jax.random.normal(jax.random.key(4), (3, 3, 2, 6))}  # a conv kernel: groups per output channel
    k = np.asarray(conv["kernel"], np.float64)
    np.testing.assert_allclose(P.group_lasso(1.0)(conv), np.sum(np.linalg.norm(k.reshape(-1, 6), axis=0)), rtol=1e-5)


@pytest.mark.parametrize(
    "penalty",
    [
        P.group_lasso(0.3),
        P.group_lasso(0.3, groups="rows"),
        P.nuclear_norm(0.2),
        P.spectral_norm(0.4, iterations=30),
        P.orthogonality(0.1),
    ],
)
def test_gradients_against_finite_differences(penalty):
    with jax.enable_x64(True):
        p = {"w": jax.random.normal(jax.random.key(5), (5, 4), jnp.float64)}
        check_grads(penalty, (p,), order=1, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


@given(w=hnp.arrays(np.float64, (4, 3), elements=st.floats(-3, 3)), t=st.floats(0, 2), c=st.floats(0, 2))
def test_group_lasso_and_nuclear_proxes_are_argmins(w, t, c):
    with jax.enable_x64(True):
        for penalty in (P.group_lasso(c), P.nuclear_norm(c)):
            v = np.asarray(penalty.prox({"w": jnp.asarray(w)}, t)["w"])

            def f(u, penalty=penalty):
                return t * float(penalty({"w": jnp.asarray(u)})) + 0.5 * np.sum((u - w) ** 2)

            rng = np.random.default_rng(1)
            for _ in range(15):
                assert f(v) <= f(v + 1e-3 * rng.normal(size=v.shape)) + 1e-9


def test_max_norm_projection():
    p = {"w": jnp.stack([jnp.full(4, 3.0), jnp.full(4, 0.1)], axis=1)}  # column norms 6 and 0.2
    out = P.max_norm(1.0).prox(p, 123.0)["w"]
    np.testing.assert_allclose(np.linalg.norm(out, axis=0), [1.0, 0.2], rtol=1e-6)


def test_group_lasso_removes_whole_hidden_units():
    (x, y), _ = jreg.data.load_mnist_small()
    model = jreg.mlp([784, 30, 10])
    data_obj = jreg.objective(model.apply, jreg.losses.cross_entropy)
    units = P.group_lasso(0.05, mask="0/w")  # groups = the 30 hidden units' incoming weights
    opt = optax.chain(optax.sgd(0.5), jreg.proximal(units, 0.5))
    trained, _ = jreg.fit(
        data_obj, opt, model.init(jax.random.key(0)), (x, y), epochs=5, batch_size=10, key=jax.random.key(1), monitor=()
    )
    w = np.asarray(trained[0]["w"])
    dead = np.all(w == 0, axis=0)
    assert 0 < dead.sum() < 30  # some whole units exactly zero, not all


def test_group_lasso_prox_zeroes_whole_columns_and_scales_the_rest():
    w = jnp.array([[3.0, 0.1, -4.0], [4.0, -0.1, 0.0]])  # column norms 5, 0.141, 4
    out = np.asarray(P.group_lasso(1.0).prox({"w": w}, 0.5)["w"])
    np.testing.assert_array_equal(out[:, 1], [0.0, 0.0])  # norm below t*c = 0.5: the whole unit goes
    np.testing.assert_allclose(out[:, 0], np.asarray(w[:, 0]) * (1 - 0.5 / 5), rtol=1e-6)  # the rest shrinks
    np.testing.assert_allclose(out[:, 2], np.asarray(w[:, 2]) * (1 - 0.5 / 4), rtol=1e-6)


def test_catalog_terms_report_their_parts():
    model = jreg.mlp([4, 3, 2])
    params = model.init(jax.random.key(0))
    pen = P.l1(1e-3) + P.group_lasso(1e-2) + P.orthogonality(1e-3, mask="1/w")
    _, parts = jreg.objective(model.apply, jreg.losses.cross_entropy, pen)(
        params, (jnp.ones((2, 4)), jnp.array([0, 1]))
    )
    assert {"l1", "group_lasso", "orthogonality", "penalty", "data"} <= set(parts)
    np.testing.assert_allclose(parts["penalty"], parts["l1"] + parts["group_lasso"] + parts["orthogonality"], rtol=1e-6)


def test_describe_shows_coefficients_scale_and_misses():
    params = jreg.mlp([4, 3, 2]).init(jax.random.key(0))
    text = str(jreg.describe(P.l1(1e-3, mask="0/*") + 0.5 * P.l2([1e-4, 2e-4]), params))
    assert "0/b" in text.splitlines()[2] and "0.0002 x 0.5" in text
    assert text.splitlines()[-1] == "not penalized: 1/b (2,)"
    with pytest.raises(jreg.JregError, match="groups must be 'columns'"):
        P.group_lasso(0.1, groups="diagonal")


# --------------------------------------------------------------------------- the keyed and data-dependent terms


def _library_model(name):
    """(params, apply(params, x)) from each library, for a 4 -> 8 -> 2 network."""
    x0 = jnp.ones((1, 4))
    if name == "linen":
        nn = pytest.importorskip("flax.linen")

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(2)(nn.tanh(nn.Dense(8)(x)))

        net = Net()
        return net.init(jax.random.key(0), x0), net.apply
    if name == "nnx":
        nnx = pytest.importorskip("flax.nnx")

        class Net2(nnx.Module):
            def __init__(self, rngs):
                self.l1, self.l2 = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)

            def __call__(self, x):
                return self.l2(jnp.tanh(self.l1(x)))

        graph, state = nnx.split(Net2(nnx.Rngs(0)))
        return state, lambda s, x: nnx.merge(graph, s)(x)
    if name == "equinox":
        eqx = pytest.importorskip("equinox")
        params, static = eqx.partition(eqx.nn.MLP(4, 2, 8, 1, key=jax.random.key(0)), eqx.is_array)
        return params, lambda p, x: jax.vmap(eqx.combine(p, static))(x)
    hk = pytest.importorskip("haiku")
    f = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(2)(jnp.tanh(hk.Linear(8)(x)))))
    return f.init(jax.random.key(0), x0), f.apply


@pytest.mark.parametrize("library", ["linen", "nnx", "equinox", "haiku"])
def test_schedules_noise_and_input_penalties_on_every_library(library):
    import jreg.stochastic as St

    params, apply = _library_model(library)
    x, y = jax.random.normal(jax.random.key(1), (6, 4)), jnp.array([0, 1, 0, 1, 1, 0])
    # a scheduled coefficient is the constant one at that step
    np.testing.assert_allclose(P.l2(lambda s: 0.1 * s)(params, step=3), P.l2(0.3)(params), rtol=1e-6)
    # weight noise touches the default mask's leaves (kernels), in training mode only
    noisy = St.with_weight_noise(lambda p, x: p, 0.1)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), noisy(params, x, key=jax.random.key(2)), params)
    assert jax.tree.leaves(moved) == jax.tree.leaves(P.mask_tree(params))
    # a training step with dropout on the inputs, weight noise, a scheduled L2 and double backprop
    model = St.with_weight_noise(St.with_input_dropout(apply, 0.2), 0.01)
    obj = jreg.objective(
        model, jreg.losses.cross_entropy, P.l2(lambda s: 1e-3 * s), input_penalty=P.input_gradient(0.1)
    )
    opt = optax.sgd(0.1)
    new, _, m = jreg.make_step(obj, opt)(params, opt.init(params), (x, y), jax.random.key(3), 5)
    assert np.isfinite(float(m["input_gradient"])) and float(m["l2"]) > 0
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(new))
