"""jreg.frameworks: Flax linen, Flax NNX, Equinox and Haiku models trained by jreg against each framework's own
training loop (optax, the framework's apply and grad, the same keys): same params and model state after a few
steps; dropout on in training and off in evaluation; BatchNorm statistics updated in training and read in
evaluation; activity penalties on sown intermediates; a sweep over two models; clear errors."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

C, LR, BATCH, STEPS = 1e-2, 0.1, 16, 3
X = jax.random.normal(jax.random.key(0), (BATCH * STEPS, 8))
Y = jnp.arange(BATCH * STEPS) % 3
KEY = jax.random.key(7)
OPT = optax.sgd(LR, momentum=0.9)


def close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and la
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def l2_by_hand(params):
    """jreg's default l2(C) here: C/2 * sum of squares of the weight matrices (kernel, w, weight; rank 2)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    last = lambda path: getattr(path[-1], "key", getattr(path[-1], "name", None))  # noqa: E731
    return 0.5 * C * sum(jnp.sum(w**2) for path, w in flat if last(path) in ("kernel", "w", "weight") and w.ndim == 2)


def ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_with_jreg(model, other=None):
    """One epoch of a jreg.sweep over two L2 strengths, [C, 0]: (params, model_state) of the first model.

    The sweep is fit's loop with a model axis; that the model without L2 ends with larger weights checks the
    second model. With ``other`` (the same architecture from another seed) the second model starts from its
    params (``jreg.frameworks.stack``). The data order and the per-step keys are jreg's documented ones
    (:func:`epoch_plan`)."""
    build = lambda hp: (  # noqa: E731
        jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(hp["c"])),
        OPT,
    )
    params, state = (model.params, model.model_state) if other is None else jreg.frameworks.stack([model, other])
    out = jreg.sweep(
        build,
        params,
        (X, Y),
        hparams={"c": jnp.array([C, 0.0])},
        epochs=1,
        batch_size=BATCH,
        key=KEY,
        model_state=state,
        stacked_params=other is not None,
        monitor=(),
    )
    params, state = out[0], (out[1] if model.stateful else None)
    first = jax.tree.map(lambda a: a[0], (params, state))
    second = jax.tree.map(lambda a: a[1], params)
    if other is None:
        assert float(l2_by_hand(first[0])) < float(l2_by_hand(second))  # the L2 model decays
    else:  # the second model trained from its own start
        assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(second), jax.tree.leaves(other.params)))
    return first


def epoch_plan():
    """jreg's data order and per-step keys for epoch 0 (docs/regularizers.md, "The keys, exactly")."""
    ek = jax.random.fold_in(KEY, 0)
    full, rest = jreg.data.batch_indices(X.shape[0], BATCH, ek)
    assert rest.shape[0] == 0
    keys = jax.random.split(jax.random.fold_in(ek, jreg.train.NOISE_SALT), full.shape[0])
    return [(X[idx], Y[idx]) for idx in full], keys


def forward(model, params, x, key=None, state=None):
    """The adapted model's outputs (and new state) in training (key given) or evaluation mode."""
    if model.stateful:
        return model.apply(
            params, x, state=model.model_state if state is None else state, train=key is not None, key=key
        )
    return model.apply(params, x, key=key), None


def check_modes(model, *, has_state):
    """Dropout on with a key (another key, other outputs; the same key, the same), off without; BatchNorm's
    statistics change in training and are read, unchanged, in evaluation."""
    x = X[:BATCH]
    k1, k2 = jax.random.split(jax.random.key(3))
    train = jax.jit(lambda p, x, k: forward(model, p, x, k))  # one compile per mode, not one per eager op
    evaluate = jax.jit(lambda p, x: forward(model, p, x))
    (a, sa), (b, _), (a2, _) = (train(model.params, x, k) for k in (k1, k2, k1))
    (e1, se), (e2, _) = evaluate(model.params, x), evaluate(model.params, x)
    assert not np.allclose(a, b)  # dropout draws from the key
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(e1, e2)  # evaluation: deterministic
    assert not np.allclose(a, e1)
    assert model.stateful == has_state
    if has_state:
        assert any(not np.allclose(u, v) for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(model.model_state)))
        close(se, model.model_state, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- flax.linen


def linen_net(nn, *, sow=False):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.Dense(16)(x)
            h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
            if sow:
                self.sow("intermediates", "hidden", h)
            h = nn.Dropout(0.3, deterministic=not train)(h)
            return nn.Dense(3)(h)

    return Net()


def test_linen_matches_a_flax_training_loop():
    nn = pytest.importorskip("flax.linen")
    net = linen_net(nn)
    model = jreg.frameworks.from_linen(net, X[:1], key=jax.random.key(0))
    assert set(model.model_state) == {"batch_stats"} and model.framework == "flax.linen"
    check_modes(model, has_state=True)
    other = jreg.frameworks.from_linen(net, X[:1], key=jax.random.key(5))  # another seed
    close(model.init(jax.random.key(5)), (other.params, other.model_state), rtol=0, atol=0)
    assert not np.allclose(other.params["Dense_0"]["kernel"], model.params["Dense_0"]["kernel"])
    params, state = train_with_jreg(model, other)

    @jax.jit
    def step(p, s, o, xb, yb, k):
        def loss(p):
            logits, upd = net.apply({"params": p, **s}, xb, train=True, mutable=["batch_stats"], rngs={"dropout": k})
            return ce(logits, yb) + l2_by_hand(p), upd

        grads, s = jax.grad(loss, has_aux=True)(p)
        updates, o = OPT.update(grads, o, p)
        return optax.apply_updates(p, updates), s, o

    p, s, o = model.params, model.model_state, OPT.init(model.params)
    for (xb, yb), k in zip(*epoch_plan()):
        p, s, o = step(p, s, o, xb, yb, k)
    close(params, p)
    close(state, s)
    assert model.rebuild(params, state) == {"params": params, **state}


def test_linen_activity_penalty_on_sown_intermediates():
    nn = pytest.importorskip("flax.linen")
    model = jreg.frameworks.from_linen(linen_net(nn, sow=True), X[:1], key=jax.random.key(0))
    (out, sown), _ = model.apply(model.params, X[:BATCH], state=model.model_state, train=False, intermediates=True)
    assert set(sown) == {"hidden"} and sown["hidden"][0].shape == (BATCH, 16)
    check_activity(model, lambda p: model.apply(p, X[:BATCH], state=model.model_state, train=False, intermediates=True))


def check_activity(model, hidden_of):
    """An activity penalty adds c/2 * sum(h^2) / batch to the cost, and its gradient to the params' gradient."""
    c = 0.5
    plain = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy)
    active = jreg.objective(model.apply, jreg.losses.softmax_cross_entropy, activity=jreg.penalties.l2(c))
    kw = {"state": model.model_state} if model.stateful else {}

    def extra(p):
        (_, sown), _ = hidden_of(p) if model.stateful else (hidden_of(p), None)
        return 0.5 * c * sum(jnp.sum(h**2) for h in jax.tree.leaves(sown)) / BATCH

    def total(obj):
        return lambda p: obj(p, (X[:BATCH], Y[:BATCH]), **kw)[0]

    assert float(extra(model.params)) > 0
    np.testing.assert_allclose(total(active)(model.params) - total(plain)(model.params), extra(model.params), rtol=1e-5)
    g_active, g_plain, g_extra = (jax.jit(jax.grad(f))(model.params) for f in (total(active), total(plain), extra))
    close(jax.tree.map(jnp.subtract, g_active, g_plain), g_extra, rtol=1e-4, atol=1e-6)


def test_linen_dropout_that_would_be_silently_off_is_refused():
    nn = pytest.importorskip("flax.linen")

    class Fixed(nn.Module):  # dropout wired to nothing: off in training
        @nn.compact
        def __call__(self, x, train: bool):
            return nn.Dropout(0.5, deterministic=True)(nn.Dense(3)(x))

    class NoFlag(nn.Module):  # no mode flag at all: dropout cannot be switched
        @nn.compact
        def __call__(self, x):
            return nn.Dropout(0.5, deterministic=False)(nn.Dense(3)(x))

    with pytest.raises(jreg.JregError, match="off in training"):
        jreg.frameworks.from_linen(Fixed(), X[:1], key=jax.random.key(0))
    with pytest.raises(jreg.JregError, match="train_arg"):
        jreg.frameworks.from_linen(NoFlag(), X[:1], key=jax.random.key(0))
    with pytest.raises(jreg.JregError, match="no parameter of that name"):
        jreg.frameworks.from_linen(Fixed(), X[:1], key=jax.random.key(0), train_arg="mode")


def test_linen_with_a_second_rng_stream():
    nn = pytest.importorskip("flax.linen")

    class Noisy(nn.Module):  # draws from "noise" in training besides dropout; the adapter feeds both
        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.Dense(4)(x)
            if train:
                h = h + jax.random.normal(self.make_rng("noise"), h.shape)
            return nn.Dropout(0.5, deterministic=not train)(h)

    model = jreg.frameworks.from_linen(Noisy(), X[:1], key=jax.random.key(0), rng_names=("dropout", "noise"))
    a, b = (model.apply(model.params, X[:2], key=jax.random.key(k)) for k in (1, 2))
    assert not np.allclose(a, b) and not np.allclose(a, model.apply(model.params, X[:2]))


def test_linen_without_state_or_dropout_takes_a_deterministic_flag():
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic: bool = True):
            return nn.Dense(3)(nn.Dropout(0.5)(nn.relu(nn.Dense(8)(x)), deterministic=deterministic))

    model = jreg.frameworks.from_linen(Net(), X[:1], key=jax.random.key(0))
    check_modes(model, has_state=False)
    assert model.rebuild(model.params) == {"params": model.params}
    params, state = jreg.frameworks.stack([model, model])
    assert state is None and params["Dense_0"]["kernel"].shape == (2, 8, 3)
    narrow = jreg.frameworks.from_linen(nn.Dense(3), X[:1], key=jax.random.key(0))
    with pytest.raises(jreg.JregError, match="not one architecture"):
        jreg.frameworks.stack([model, narrow])


# ----------------------------------------------------------------------------------------------- flax.nnx


def nnx_net(nnx, seed=0):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(8, 16, rngs=rngs)
            self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
            self.drop = nnx.Dropout(0.3, rngs=rngs)
            self.out = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.norm(self.dense(x)))
            self.sow(nnx.Intermediate, "hidden", h)
            return self.out(self.drop(h))

    return Net(nnx.Rngs(params=seed, dropout=seed + 1))


def test_nnx_matches_an_nnx_training_loop():
    nnx = pytest.importorskip("flax.nnx")
    model = jreg.frameworks.from_nnx(nnx_net(nnx))
    assert set(model.model_state) == {"norm"} and set(model.params) == {"dense", "norm", "out"}
    check_modes(model, has_state=True)
    params, state = train_with_jreg(model)

    net = nnx_net(nnx)  # the same seeds: the same initial params
    net.train()
    optimizer = nnx.Optimizer(net, OPT, wrt=nnx.Param)

    @nnx.jit
    def step(net, optimizer, xb, yb, k):
        nnx.reseed(net, dropout=k)

        def loss(net):
            logits, _ = nnx.capture(net, nnx.Intermediate)(xb)
            return ce(logits, yb) + l2_by_hand(nnx.to_pure_dict(nnx.state(net, nnx.Param)))

        optimizer.update(net, nnx.grad(loss)(net))

    for (xb, yb), k in zip(*epoch_plan()):
        step(net, optimizer, xb, yb, k)
    close(params, nnx.to_pure_dict(nnx.state(net, nnx.Param)))
    close(state, nnx.to_pure_dict(nnx.state(net, nnx.BatchStat)))
    rebuilt = model.rebuild(params, state)
    rebuilt.eval()
    net.eval()
    np.testing.assert_allclose(rebuilt(X[:4]), net(X[:4]), rtol=1e-5, atol=1e-6)


def test_nnx_activity_penalty_on_sown_intermediates():
    nnx = pytest.importorskip("flax.nnx")
    model = jreg.frameworks.from_nnx(nnx_net(nnx))
    (out, sown), _ = model.apply(model.params, X[:BATCH], state=model.model_state, train=False, intermediates=True)
    assert set(sown) == {"hidden"} and sown["hidden"][0].shape == (BATCH, 16)
    check_activity(model, lambda p: model.apply(p, X[:BATCH], state=model.model_state, train=False, intermediates=True))


def test_nnx_dropout_without_rngs_is_refused():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(8, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.5)

        def __call__(self, x):
            return self.drop(self.dense(x))

    with pytest.raises(jreg.JregError, match="without rngs"):
        jreg.frameworks.from_nnx(Net(nnx.Rngs(0)))


# ----------------------------------------------------------------------------------------------- equinox


def eqx_net(eqx, key):
    class Net(eqx.Module):
        dense: eqx.nn.Linear
        norm: eqx.nn.BatchNorm
        drop: eqx.nn.Dropout
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.dense = eqx.nn.Linear(8, 16, key=k1)
            self.norm = eqx.nn.BatchNorm(16, axis_name="batch", momentum=0.9, mode="batch")
            self.drop = eqx.nn.Dropout(0.3)
            self.out = eqx.nn.Linear(16, 3, key=k2)

        def __call__(self, x, state, *, key=None):
            h, state = self.norm(self.dense(x), state)
            return self.out(self.drop(jax.nn.relu(h), key=key)), state

    return eqx.nn.make_with_state(Net)(key)


def test_equinox_matches_an_equinox_training_loop():
    eqx = pytest.importorskip("equinox")
    net, state0 = eqx_net(eqx, jax.random.key(0))
    model = jreg.frameworks.from_equinox(net, state=state0)
    check_modes(model, has_state=True)
    params, state = train_with_jreg(model)

    @eqx.filter_jit
    def step(net, s, o, xb, yb, k):
        def loss(net):
            keys = jax.random.split(k, xb.shape[0])
            batched = jax.vmap(lambda x, kk: net(x, s, key=kk), axis_name="batch", in_axes=(0, 0), out_axes=(0, None))
            logits, s_new = batched(xb, keys)
            return ce(logits, yb) + l2_by_hand(eqx.filter(net, eqx.is_inexact_array)), s_new

        grads, s = eqx.filter_grad(loss, has_aux=True)(net)
        updates, o = OPT.update(grads, o, eqx.filter(net, eqx.is_inexact_array))
        return eqx.apply_updates(net, updates), s, o

    n, s, o = net, state0, OPT.init(eqx.filter(net, eqx.is_inexact_array))
    for (xb, yb), k in zip(*epoch_plan()):
        n, s, o = step(n, s, o, xb, yb, k)
    close(params, eqx.filter(n, eqx.is_inexact_array))
    close(state, s)
    rebuilt, rebuilt_state = model.rebuild(params, state)
    close(eqx.filter(rebuilt, eqx.is_inexact_array), params)


def test_equinox_module_passed_as_params_says_what_to_do():
    eqx = pytest.importorskip("equinox")
    net = eqx.nn.MLP(8, 3, 16, 1, key=jax.random.key(0))  # holds jax.nn.relu: not an array
    obj = jreg.objective(lambda p, x: jax.vmap(p)(x), jreg.losses.softmax_cross_entropy)
    with pytest.raises(jreg.JregTypeError, match=r"leaf 'activation'.*jreg\.frameworks\.from_equinox"):
        jreg.fit(obj, OPT, net, (X, Y), epochs=1, batch_size=BATCH, key=jax.random.key(0))
    with pytest.raises(jreg.JregTypeError, match=r"from_equinox"):  # a module nested in the params too
        jreg.make_step(obj, OPT)({"net": net}, OPT.init(eqx.filter(net, eqx.is_inexact_array)), (X, Y))
    with pytest.raises(jreg.JregTypeError, match=r"from_equinox"):  # the objective called by hand
        obj(net, (X, Y))
    with pytest.raises(jreg.JregTypeError, match=r"from_equinox"):
        jreg.total_cost(obj, net, (X, Y))
    model = jreg.frameworks.from_equinox(net)  # what the message says works
    jreg.fit(jreg.objective(model.apply, jreg.losses.softmax_cross_entropy), OPT, model.params, (X, Y),
             epochs=1, batch_size=BATCH, key=jax.random.key(0))  # fmt: skip


def test_equinox_dropout_without_a_key_parameter_is_refused():
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        dense: eqx.nn.Linear
        drop: eqx.nn.Dropout

        def __call__(self, x):
            return self.drop(self.dense(x))

    with pytest.raises(jreg.JregError, match="takes no key"):
        jreg.frameworks.from_equinox(Net(eqx.nn.Linear(8, 3, key=jax.random.key(0)), eqx.nn.Dropout(0.5)))


def test_equinox_state_and_batchnorm_axis_mismatches_are_refused():
    eqx = pytest.importorskip("equinox")
    net, state = eqx_net(eqx, jax.random.key(0))
    with pytest.raises(jreg.JregError, match="state= was not given"):
        jreg.frameworks.from_equinox(net)
    with pytest.raises(jreg.JregError, match="axis_name='batch'"):
        jreg.frameworks.from_equinox(net, state=state, axis_name="examples")
    with pytest.raises(jreg.JregError, match="no stateful layer"):
        jreg.frameworks.from_equinox(eqx.nn.Linear(8, 3, key=jax.random.key(0)), state=state)


# ----------------------------------------------------------------------------------------------- haiku


def haiku_fn(hk):
    def f(x, is_training):
        h = hk.Linear(16)(x)
        h = jax.nn.relu(hk.BatchNorm(True, True, 0.9)(h, is_training))
        if is_training:
            h = hk.dropout(hk.next_rng_key(), 0.3, h)
        return hk.Linear(3)(h)

    return hk.transform_with_state(f)


def test_haiku_matches_a_haiku_training_loop():
    hk = pytest.importorskip("haiku")
    fn = haiku_fn(hk)
    model = jreg.frameworks.from_haiku(fn, X[:1], key=jax.random.key(0))
    check_modes(model, has_state=True)
    params, state = train_with_jreg(model)

    @jax.jit
    def step(p, s, o, xb, yb, k):
        def loss(p):
            logits, s_new = fn.apply(p, s, k, xb, is_training=True)
            return ce(logits, yb) + l2_by_hand(p), s_new

        grads, s = jax.grad(loss, has_aux=True)(p)
        updates, o = OPT.update(grads, o, p)
        return optax.apply_updates(p, updates), s, o

    p, s, o = model.params, model.model_state, OPT.init(model.params)
    for (xb, yb), k in zip(*epoch_plan()):
        p, s, o = step(p, s, o, xb, yb, k)
    close(params, p)
    close(state, s)
    assert model.rebuild(params, state) == (params, state)


def test_haiku_stateless_and_dropout_left_on_in_evaluation():
    hk = pytest.importorskip("haiku")

    def f(x, is_training):
        h = jax.nn.relu(hk.Linear(16)(x))
        return hk.Linear(3)(hk.dropout(hk.next_rng_key(), 0.3, h) if is_training else h)

    model = jreg.frameworks.from_haiku(hk.transform(f), X[:1], key=jax.random.key(0))
    check_modes(model, has_state=False)
    with pytest.raises(jreg.JregError, match="training mode.*without_apply_rng"):  # dropout, but no rng to draw
        jreg.frameworks.from_haiku(hk.without_apply_rng(hk.transform(f)), X[:1], key=jax.random.key(0))
    g = lambda x: hk.Linear(3)(jax.nn.relu(hk.Linear(16)(x)))  # noqa: E731 - no dropout: no rng needed
    plain = jreg.frameworks.from_haiku(hk.without_apply_rng(hk.transform(g)), X[:1], key=jax.random.key(0))
    keyed = jreg.frameworks.from_haiku(hk.transform(g), X[:1], key=jax.random.key(0))
    np.testing.assert_allclose(plain.apply(plain.params, X[:4]), keyed.apply(plain.params, X[:4], key=KEY))
    always = hk.transform(lambda x: hk.dropout(hk.next_rng_key(), 0.3, hk.Linear(3)(x)))
    with pytest.raises(jreg.JregError, match="evaluation mode"):
        jreg.frameworks.from_haiku(always, X[:1], key=jax.random.key(0))


# ----------------------------------------------------------------------------------------------- all


def test_framework_objects_as_params_point_at_their_adapter():
    obj = jreg.objective(lambda p, x: x, jreg.losses.softmax_cross_entropy)
    found = 0
    for name, make in (
        ("from_linen", lambda: linen_net(pytest.importorskip("flax.linen"))),
        ("from_nnx", lambda: nnx_net(pytest.importorskip("flax.nnx"))),
        ("from_haiku", lambda: haiku_fn(pytest.importorskip("haiku"))),
    ):
        try:
            thing = make()
        except pytest.skip.Exception:
            continue
        found += 1
        with pytest.raises(jreg.JregTypeError, match=f"jreg.frameworks.{name}"):
            jreg.fit(obj, OPT, thing, (X, Y), epochs=1, batch_size=BATCH, key=jax.random.key(0))
    if not found:
        pytest.skip("none of flax, haiku is installed")


def test_a_missing_framework_is_a_jreg_error(monkeypatch):
    for mod in ("equinox", "haiku", "flax", "flax.linen", "flax.nnx"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails as if not installed
    with pytest.raises(jreg.JregError, match=r"pip install 'jreg\[equinox\]' \(or pip install equinox"):
        jreg.frameworks.from_equinox(object())
    with pytest.raises(jreg.JregError, match=r"pip install 'jreg\[haiku\]' \(or pip install dm-haiku"):
        jreg.frameworks.from_haiku(object(), X[:1], key=jax.random.key(0))
    with pytest.raises(jreg.JregError, match=r"pip install 'jreg\[flax\]' \(or pip install flax"):
        jreg.frameworks.from_linen(object(), X[:1], key=jax.random.key(0))
    with pytest.raises(jreg.JregError, match=r"pip install 'jreg\[flax\]'"):
        jreg.frameworks.from_nnx(object())


def test_every_framework_extra_is_declared_in_pyproject():
    """The extra an error names exists, with the package; jreg[all] holds every runtime extra, test them all."""
    import pathlib

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for package, extra in jreg.frameworks.EXTRAS.items():
        assert [r for r in extras[extra] if r.startswith(package + ">")], (extra, extras[extra])
    assert extras["orbax"] == [r for r in extras["orbax"] if r.startswith("orbax-checkpoint")]  # no test tools
    assert extras["all"] == ["jreg[flax,equinox,haiku,orbax]"] and "jreg[all]" in extras["test"]
    runtime = {r for name, reqs in extras.items() if name not in ("test", "all") for r in reqs}
    assert not runtime & {"pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "ruff>=0.5"}


def test_a_function_among_the_params_is_named_by_its_path():
    params = {"w": jnp.ones((8, 3)), "act": jax.nn.relu}  # a hostile pytree: a custom_jvp leaf, no framework
    obj = jreg.objective(lambda p, x: p["act"](x @ p["w"]), jreg.losses.softmax_cross_entropy)
    with pytest.raises(jreg.JregTypeError, match=r"leaf 'act' is custom_jvp, not an array; params must be a pytree"):
        jreg.fit(obj, OPT, params, (X, Y), epochs=1, batch_size=BATCH, key=jax.random.key(0))
