"""Streamed epochs (jreg.Stream, jreg/train/stream.py): equal to in-memory training on the same batches,
every kind of source, chunking, partial batches, resume, early stopping, the guard, sweeps, hostile sources."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jreg
from jreg.data import batch_indices

N, B, EPOCHS = 44, 8, 2  # 5 full batches and a partial one of 4
KEY = jax.random.key(3)
MODEL = jreg.mlp([5, 7, 3])
OBJ = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))
OPT = optax.sgd(0.2)
P0 = MODEL.init(jax.random.key(0))
_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, 5)).astype(np.float32)
Y = _rng.integers(0, 3, N).astype(np.int32)
XV, YV = X[:12], Y[:12]


def order(epoch: int, partial: bool = True):
    """The batches in-memory fit trains on in epoch ``epoch`` (its shuffle), as NumPy pairs."""
    full, rest = batch_indices(N, B, jax.random.fold_in(KEY, epoch))
    idx = [np.asarray(i) for i in full] + ([np.asarray(rest)] if partial and rest.size else [])
    return [(X[i], Y[i]) for i in idx]


def same_order(epoch: int):
    return order(epoch)


FIXED = [(X[i : i + B], Y[i : i + B]) for i in range(0, 40, B)]  # 5 full batches, the same every epoch


def fit(train, **kw):
    kw.setdefault("epochs", EPOCHS)
    kw.setdefault("batch_size", B)
    return jreg.fit(OBJ, OPT, P0, train, key=KEY, **kw)


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def assert_equal(a, b, exact=True):
    """Bit for bit on a CPU; elsewhere (a GPU contracts multiply-adds per program) to float tolerance."""
    exact = exact and jax.default_backend() == "cpu"
    for u, v in zip(leaves(a), leaves(b)):
        if exact:
            np.testing.assert_array_equal(u, v)
        else:
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def in_memory():
    return fit((X, Y), evaluation=(XV, YV), monitor=("epoch_loss", "evaluation_cost"))


@pytest.fixture(scope="module")
def fixed_run():
    return fit(jreg.Stream(FIXED, chunk=2))


def test_stream_equals_in_memory_fit_on_the_same_batches(in_memory):
    params, history = fit(jreg.Stream(same_order, chunk=3), evaluation=(XV, YV))
    ref_params, ref_history = in_memory
    assert_equal(params, ref_params, exact=False)
    assert set(history.to_dict()) == {"epoch_loss", "evaluation_cost", "evaluation_accuracy"}
    np.testing.assert_allclose(history["epoch_loss"], ref_history["epoch_loss"], rtol=1e-5)
    np.testing.assert_allclose(history["evaluation_cost"], ref_history["evaluation_cost"], rtol=1e-5)


def test_stream_equals_a_loop_of_make_step_exactly(fixed_run):
    step = jreg.make_step(OBJ, OPT)
    params, opt_state = P0, OPT.init(P0)
    for _ in range(EPOCHS):
        for batch in FIXED:
            params, opt_state, _ = step(params, opt_state, batch)
    assert_equal(fixed_run[0], params)


class Factory:
    """A generator factory: every iter() starts a fresh NumPy generator."""

    def __iter__(self):
        return (b for b in FIXED)


class Tensor:
    """A tensor-like leaf (as a CPU torch tensor is): only __array__."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


class Loader:
    """A DataLoader-like duck type: __iter__ and __len__, yielding lists [x, y] of tensors."""

    def __len__(self):
        return len(FIXED)

    def __iter__(self):
        return iter([[Tensor(x), Tensor(y)] for x, y in FIXED])


@pytest.mark.parametrize(
    "source",
    [
        FIXED,
        Factory(),
        lambda epoch: iter(FIXED),
        lambda: (b for b in FIXED),
        Loader(),
    ],
    ids=["list", "factory", "callable", "zero-arg", "loader"],
)
def test_every_kind_of_source(source, fixed_run):
    params, history = fit(jreg.Stream(source, chunk=2) if isinstance(source, list) else source)  # bare: default chunk
    assert_equal(params, fixed_run[0])
    assert list(history.to_dict()) == ["epoch_loss"]


def test_what_is_a_stream():
    is_stream = jreg.train.stream.is_stream
    assert not is_stream((X, Y)) and not is_stream([X, Y]) and not is_stream({"x": X}) and not is_stream(X)
    assert is_stream(FIXED) and is_stream(Factory()) and is_stream(same_order) and is_stream(iter(FIXED))


@settings(max_examples=3, deadline=None)
@given(chunk=st.integers(1, 7))
def test_any_chunk_size_gives_the_same_result(chunk, fixed_run):
    """Bit for bit on CPU. Off the CPU the per-chunk sum of the losses may be fused differently (seen on an
    H200: 1 ulp of epoch_loss), so there the figures agree to a few units in the last place."""
    params, history = fit(jreg.Stream(FIXED, chunk=chunk))
    cpu = jax.default_backend() == "cpu"
    for got, want in zip([*leaves(params), history["epoch_loss"]], [*leaves(fixed_run[0]), fixed_run[1]["epoch_loss"]]):
        if cpu:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_array_max_ulp(np.asarray(got), np.asarray(want), maxulp=4)


@pytest.mark.parametrize("partial_batch", ["include", "drop"])
def test_partial_last_batch(partial_batch):
    params, history = fit((X, Y), partial_batch=partial_batch, monitor=("epoch_loss",))
    streamed, s_history = fit(jreg.Stream(lambda e: order(e, partial=True), chunk=4), partial_batch=partial_batch)
    assert_equal(params, streamed, exact=False)
    np.testing.assert_allclose(history["epoch_loss"], s_history["epoch_loss"], rtol=1e-5)


def test_resume_is_bit_exact(tmp_path, fixed_run):
    source = jreg.Stream(lambda e: iter(FIXED[e % 2 :]), chunk=2)  # epoch-dependent
    full, _ = fit(source, epochs=3)
    fit(source, epochs=2, checkpoint=jreg.Checkpointing(tmp_path))
    resumed, history = fit(source, epochs=3, resume=tmp_path)
    assert_equal(resumed, full)
    assert len(history["epoch_loss"]) == 3
    with pytest.raises(jreg.JregError, match="trained on a stream, this run on in-memory data"):
        fit((X, Y), epochs=3, resume=tmp_path)


def test_early_stopping():
    rule = jreg.EarlyStopping(patience=1, monitor="epoch_loss", mode="max")  # the loss falls: stop at once
    _, history = fit(FIXED, epochs=6, early_stopping=rule)
    assert history.stopped is not None
    assert len(history["epoch_loss"]) == 2


def _diverging(epoch):
    batches = [(x.copy(), y) for x, y in FIXED]
    batches[3][0][:] = 3e38
    return batches


def linear(params, batch):
    x, _ = batch
    return jnp.mean((x @ params["w"]) ** 2), {}


def noisy(params, batch, *, key=None):
    x, y = batch
    if key is not None:  # dropout-like: the step's key decides the mask
        x = x * jax.random.bernoulli(key, 0.5, x.shape) * 2.0
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x @ params["w"], y)), {}


def test_step_keys_are_the_documented_ones():
    """Step i of epoch e gets fold_in(fold_in(fold_in(key, e), NOISE_SALT), i) (docs/streaming.md)."""
    w = {"w": jnp.full((5, 3), 0.1)}
    params, _ = jreg.fit(noisy, OPT, w, jreg.Stream(FIXED, chunk=2), epochs=1, batch_size=B, key=KEY)
    step = jreg.make_step(noisy, OPT)
    base = jax.random.fold_in(jax.random.fold_in(KEY, 0), jreg.train.NOISE_SALT)
    p = q = (w, OPT.init(w))
    for i, batch in enumerate(FIXED):
        p = step(*p, batch, jax.random.fold_in(base, i))[:2]
        q = step(*q, batch, jax.random.fold_in(base, i + 1))[:2]  # keys off by one step
    assert_equal(params, p[0], exact=False)
    assert not np.allclose(leaves(q[0])[0], leaves(params)[0])  # the keys do change the run


def test_divergence_names_the_step():
    with pytest.raises(jreg.DivergenceError) as info:
        jreg.fit(
            linear, OPT, {"w": jnp.full((5, 3), 0.1)}, jreg.Stream(_diverging, chunk=2), epochs=2, batch_size=B, key=KEY
        )
    err = info.value
    assert (err.epoch, err.step) == (0, 3)
    assert "step 4" in str(err)
    assert all(np.isfinite(a).all() for a in leaves(err.params))


def test_sweep_on_a_stream_equals_sweep_in_memory():
    def build(hp):
        return jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(hp["lmbda"])), OPT

    kw = dict(hparams={"lmbda": [0.0, 0.1]}, epochs=EPOCHS, batch_size=B, key=KEY, evaluation=(XV, YV))
    ref, ref_history = jreg.sweep(build, P0, (X, Y), monitor=("epoch_loss", "evaluation_cost"), **kw)
    params, history = jreg.sweep(build, P0, jreg.Stream(same_order, chunk=4), **kw)
    assert_equal(params, ref, exact=False)
    np.testing.assert_allclose(history["evaluation_cost"], ref_history["evaluation_cost"], rtol=1e-5)


def test_sweep_flags_a_diverged_model_with_its_step():
    def build(hp):
        return linear, optax.sgd(hp["eta"])

    w = {"w": jnp.full((5, 3), 0.1)}
    _, history = jreg.sweep(build, w, FIXED, hparams={"eta": [0.01, 1e18]}, epochs=1, batch_size=B, key=KEY)
    assert list(history.diverged) == [1]
    assert history.diverged[1]["epoch"] == 1 and history.diverged[1]["step"] is not None
    assert np.isfinite(history["epoch_loss"][0]).all()


# -- hostile sources ---------------------------------------------------------------------------------------------


def _threads():
    return {t for t in threading.enumerate() if t.name.startswith("jreg-stream")}


@pytest.mark.parametrize(
    "source, match",
    [
        ((b for b in FIXED), "one-shot iterator"),
        ([], "no batch for epoch 1"),
        ([FIXED[0], (X[:B, :4], Y[:B])], r"epoch 1, batch index 1\): x has shape \(8, 4\)"),
        ([FIXED[0], (X[:B].astype(np.float16), Y[:B])], r"epoch 1, batch index 1\): x has dtype float16"),
        ([FIXED[0], (X[:3], Y[:3]), FIXED[1]], r"batch index 1\): .*not the epoch's last"),
        ([FIXED[0], FIXED[1], (np.full((B, 5), np.nan, np.float32), Y[:B])], r"batch index 2\): x holds NaN"),
        ([("a", "b")], "x must be an array, got str"),
        ([FIXED[0], ("a", "b")], r"batch index 1\): x must be an array"),
        ([(X[:3], Y[:3])], "first batch must hold batch_size = 8 examples, got 3"),
        ([FIXED[0], [X[:B], Y[:B]]], "structure"),
    ],
    ids=["one-shot", "empty", "shape", "dtype", "small-mid", "nan", "non-array", "non-array-later", "size", "tree"],
)
def test_hostile_sources(source, match):
    before = _threads()
    with pytest.raises(jreg.JregError, match=match):
        fit(source)
    assert _threads() <= before  # no reader thread left behind


def test_exhausted_after_one_epoch():
    shared = iter(FIXED)

    class Once:
        def __iter__(self):
            return shared

    with pytest.raises(jreg.JregError, match=r"no batch for epoch 2 \(an iterator exhausted"):
        fit(Once())


def test_streams_refuse_training_set_series():
    with pytest.raises(jreg.JregError, match="a stream does not hold"):
        fit(FIXED, monitor=("training_cost",))
    with pytest.raises(jreg.JregError, match="which a stream does not give"):
        fit(FIXED, evaluation=jreg.Evaluation((XV, YV), cost_convention="network2"))


def test_a_raising_source_names_epoch_and_batch_and_keeps_checkpoints(tmp_path):
    def source(epoch):
        for i, batch in enumerate(FIXED):
            if epoch == 1 and i == 3:
                raise OSError("disk gone")
            yield batch

    with pytest.raises(jreg.JregError, match=r"OSError: disk gone \(epoch 2, batch index 3\)") as info:
        fit(jreg.Stream(source, chunk=2), epochs=3, checkpoint=jreg.Checkpointing(tmp_path))
    assert isinstance(info.value.__cause__, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001.npz"]
    saved = jreg.load(tmp_path / "ckpt-000001.npz")
    assert saved.step == 1 and all(np.isfinite(a).all() for a in leaves(saved.params))


@pytest.mark.parametrize(
    "source, match",
    [
        (lambda e: None, "source\\(epoch\\) returned NoneType, which is not an iterable of batches"),
        (lambda e, f: FIXED, r"calling source\(epoch\) for epoch 1 raised TypeError: .*takes the epoch, or nothing"),
        (lambda *, epoch: FIXED, r"calling source\(\) for epoch 1 raised TypeError"),
    ],
    ids=["returns-None", "two-args", "keyword-only"],
)
def test_a_callable_source_that_cannot_be_called_or_returns_no_iterable(source, match):
    with pytest.raises(jreg.JregTypeError, match=match):
        fit(source)


def test_stream_options_checked():
    with pytest.raises(jreg.JregError, match="Stream.chunk"):
        jreg.Stream(FIXED, chunk=0)
    with pytest.raises(jreg.JregTypeError, match="Stream.source"):
        jreg.Stream(None)


def test_data_parallel_stream_on_four_virtual_devices():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).resolve().parent / "stream_worker.py"
    path = os.pathsep.join(filter(None, [str(worker.parent.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["devices"] == 4
    assert measured["gap"] < 1e-5 and measured["loss_gap"] < 1e-5
    assert measured["shards"] == [[4, 2, 6]]  # a chunk of 4 steps, each batch of 8 split over 4 devices


def test_a_short_last_chunk_is_padded_to_a_power_of_two_not_to_chunk():
    feed = jreg.train.stream.Feed(jreg.Stream(FIXED * 3, chunk=64), B, "include")  # 15 batches
    with feed.epoch(0).chunks() as chunks:
        assert [(c.count, c.size) for c in chunks] == [(15, 16)]
    feed = jreg.train.stream.Feed(jreg.Stream(FIXED * 3, chunk=4), B, "include")
    with feed.epoch(0).chunks() as chunks:
        assert [(c.count, c.size) for c in chunks] == [(4, 4)] * 3 + [(3, 4)]


def test_padded_steps_leave_a_model_state_unchanged():
    def counting(params, batch, *, state, train=True, key=None):
        x, y = batch
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x @ params["w"], y))
        return loss, {}, {"count": state["count"] + 1}

    start = {"count": jnp.zeros((), jnp.int32)}
    kw = dict(epochs=2, batch_size=B, key=KEY, model_state=start)
    seven = FIXED + FIXED[:2]
    _, state, _ = jreg.fit(counting, OPT, {"w": jnp.zeros((5, 3))}, jreg.Stream(seven, chunk=4), **kw)
    assert int(state["count"]) == 2 * len(seven)  # 7 batches in chunks of 4: one masked step per epoch
