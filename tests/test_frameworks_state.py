"""A Flax linen CNN with BatchNorm and an Equinox model with eqx.nn.BatchNorm, trained by jreg.fit, against
hand-written optax loops with the same data order and keys: same params, same running statistics, same accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

C = 1e-3  # L2 strength on the kernels / weight matrices
EPOCHS, BATCH = 2, 32


@pytest.fixture(scope="module")
def mnist():
    (x, y), test = jreg.data.load_mnist_small()
    return (x[:200], y[:200]), (test.x[:300], test.y[:300])


def epoch_order(n, key, epoch):
    """jreg's documented data order and per-step keys for one epoch (docs/regularizers.md, Keys)."""
    ek = jax.random.fold_in(key, epoch)
    full, rest = jreg.data.batch_indices(n, BATCH, ek)
    order = list(full) + ([rest] if rest.shape[0] else [])
    return order, jax.random.split(jax.random.fold_in(ek, jreg.train.NOISE_SALT), len(order))


def close(a, b, rtol=2e-4, atol=2e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def test_flax_linen_cnn_with_batchnorm_and_dropout(mnist):
    nn = pytest.importorskip("flax.linen")

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = x.reshape((-1, 28, 28, 1))
            x = nn.Conv(4, (3, 3), use_bias=False)(x)  # BatchNorm follows: a bias would only add noise
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.avg_pool(nn.relu(x), (4, 4), (4, 4)).reshape((x.shape[0], -1))
            x = nn.Dropout(0.3, deterministic=not train)(x)
            return nn.Dense(10)(x)

    net = CNN()
    (x, y), test = mnist
    variables = net.init(jax.random.key(0), x[:1], train=False)
    params0, stats0 = variables["params"], variables["batch_stats"]

    def apply(params, x, *, state, train, key=None):
        v = {"params": params, **state}
        if train:
            return net.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
        return net.apply(v, x, train=False), state

    kernels = jreg.selectors.name("kernel")
    obj = jreg.objective(apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(C, mask=kernels))
    # SGD, not Adam: Adam divides near-zero gradients by their own size, so float rounding (reassociation
    # between the two loops) would grow into visible differences that say nothing about correctness
    opt, key = optax.sgd(0.1, momentum=0.9), jax.random.key(1)
    params, state, history = jreg.fit(
        obj,
        opt,
        params0,
        (x, y),
        model_state={"batch_stats": stats0},
        epochs=EPOCHS,
        batch_size=BATCH,
        key=key,
        evaluation=test,
    )

    @jax.jit
    def step(params, stats, opt_state, xb, yb, k):
        def loss(p):
            logits, upd = net.apply(
                {"params": p, "batch_stats": stats}, xb, train=True, mutable=["batch_stats"], rngs={"dropout": k}
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            flat = jax.tree_util.tree_flatten_with_path(p)[0]
            l2 = sum(jnp.sum(w**2) for path, w in flat if path[-1].key == "kernel")
            return ce + 0.5 * C * l2, upd["batch_stats"]

        (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    p, s, o = params0, stats0, opt.init(params0)
    for e in range(EPOCHS):
        order, keys = epoch_order(x.shape[0], key, e)
        for idx, k in zip(order, keys):
            p, s, o = step(p, s, o, x[idx], y[idx], k)
    logits = net.apply({"params": p, "batch_stats": s}, test[0], train=False)
    hand_accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test[1]))

    close(params, p)
    close(state["batch_stats"], s)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state["batch_stats"], stats0))
    assert min(moved) > 1e-3  # the running statistics were updated in training
    assert abs(history.evaluation_accuracy[-1] - hand_accuracy) <= 1 / 300 + 1e-9


def test_equinox_model_with_batchnorm_state(mnist):
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        hidden: eqx.nn.Linear
        norm: eqx.nn.BatchNorm
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.hidden = eqx.nn.Linear(784, 16, key=k1)
            self.norm = eqx.nn.BatchNorm(16, axis_name="batch", momentum=0.9, mode="batch")
            self.out = eqx.nn.Linear(16, 10, key=k2)

        def __call__(self, x, state):
            h, state = self.norm(self.hidden(x), state)
            return self.out(jax.nn.relu(h)), state

    (x, y), test = mnist
    model, state0 = eqx.nn.make_with_state(Net)(jax.random.key(0))
    params0, static = eqx.partition(model, eqx.is_inexact_array)

    def forward(params, state, x, train):
        module = eqx.combine(params, static)
        module = module if train else eqx.nn.inference_mode(module)
        return jax.vmap(module, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)

    def apply(params, x, *, state, train, key=None):
        return forward(params, state, x, train)

    obj = jreg.objective(apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(C))
    opt, key = optax.sgd(0.2, momentum=0.9), jax.random.key(2)
    params, state, history = jreg.fit(
        obj, opt, params0, (x, y), model_state=state0, epochs=EPOCHS, batch_size=BATCH, key=key, evaluation=test
    )

    @jax.jit
    def step(params, state, opt_state, xb, yb):
        def loss(p):
            logits, new = forward(p, state, xb, True)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            l2 = sum(jnp.sum(w**2) for w in jax.tree.leaves(p) if w.ndim >= 2)
            return ce + 0.5 * C * l2, new

        (_, state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state

    p, s, o = params0, state0, opt.init(params0)
    for e in range(EPOCHS):
        order, _ = epoch_order(x.shape[0], key, e)
        for idx in order:
            p, s, o = step(p, s, o, x[idx], y[idx])
    logits, _ = forward(p, s, test[0], False)
    hand_accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test[1]))

    close(params, p)
    close(state, s)
    means = [a for a in jax.tree.leaves(state) if a.dtype == jnp.float32]
    assert max(float(jnp.max(jnp.abs(a))) for a in means) > 1e-3  # running statistics moved off their start
    assert abs(history.evaluation_accuracy[-1] - hand_accuracy) <= 1 / 300 + 1e-9
