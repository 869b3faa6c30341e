"""A stream's reused host buffers (jreg/train/stream/feed.py: ``_Pool``, ``_Slot``) are safe: each batch is copied
when it is read (a source may reuse or mutate what it yielded), a chunk's buffers are reused only once the training
loop has released the chunk (on CPU the device array aliases them), padding never shows a previous chunk's rows,
and the common-case batch check (``quick``) accepts exactly what the full one (``convert``) accepts."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jreg
from jreg.data import batch_indices
from jreg.train import engine
from jreg.train.stream import Feed
from jreg.train.stream import feed as feed_module
from jreg.train.stream.batches import convert, first_batch, quick

N, B = 44, 8  # 5 full batches and a partial one of 4
KEY = jax.random.key(3)
MODEL = jreg.mlp([5, 7, 3])
OBJ = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy, jreg.penalties.l2(0.01))
P0 = MODEL.init(jax.random.key(0))
_rng = np.random.default_rng(0)
X = _rng.normal(size=(56, 5)).astype(np.float32)  # N for most tests, 56 (7 full batches) for one
Y = _rng.integers(0, 3, 56).astype(np.int32)


def batches(epoch: int, n: int = N) -> list[tuple[np.ndarray, np.ndarray]]:
    """Epoch ``epoch``'s batches, fresh arrays: for ``n = N`` in-memory fit's order (its shuffle of ``X[:N]``)."""
    if n == N:
        full, rest = batch_indices(N, B, jax.random.fold_in(KEY, epoch))
        idx = np.concatenate([np.asarray(full).reshape(-1), np.asarray(rest)])
    else:
        idx = np.random.default_rng([5, epoch]).permutation(n)
    return [(X[idx[i : i + B]], Y[idx[i : i + B]]) for i in range(0, n, B)]


def reusing(epoch: int):
    """The same batches, each yielded as views into ONE pair of arrays that the source overwrites when asked for
    the next batch (and fills with NaN and -1 at the epoch's end): what a loader with a reused output buffer does."""
    x, y = np.empty((B, 5), np.float32), np.empty((B,), np.int32)
    for bx, by in batches(epoch):
        x[: len(bx)], y[: len(by)] = bx, by
        yield x[: len(bx)], y[: len(by)]
    x[:], y[:] = np.nan, -1


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def assert_same(a, b):
    """Bit for bit on a CPU; elsewhere to float tolerance (a GPU contracts multiply-adds per program)."""
    for u, v in zip(leaves(a), leaves(b)):
        if jax.default_backend() == "cpu":
            np.testing.assert_array_equal(u, v)
        else:
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def train(source, chunk: int, prefetch: int = 2, epochs: int = 3):
    kw = dict(epochs=epochs, batch_size=B, key=KEY)
    return jreg.fit(OBJ, optax.sgd(0.2), P0, jreg.Stream(source, chunk=chunk, prefetch=prefetch), **kw)


def test_a_source_that_overwrites_what_it_yielded_trains_as_in_memory(monkeypatch):
    pools = []
    init = feed_module._Pool.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        pools.append(self)

    monkeypatch.setattr(feed_module._Pool, "__init__", record)
    monkeypatch.setattr(engine, "ONE_AS_VMAP", False)  # the in-memory program a stream's chunks run (plain, rolled)
    memory = jreg.fit(OBJ, optax.sgd(0.2), P0, (X[:N], Y[:N]), epochs=3, batch_size=B, key=KEY, unroll=1)
    # chunk 2: chunks of 2, 2 and 1 full batches an epoch (then the smaller last batch alone), 3 epochs,
    # prefetch 1: the slots go round many times, across epochs too, while the device may still read them
    for source in (batches, reusing):
        streamed = train(source, chunk=2, prefetch=1)
        assert_same(streamed.params, memory.params)
        np.testing.assert_allclose(streamed.history["epoch_loss"], memory.history["epoch_loss"], rtol=1e-6)
    # the buffers were reused: 9 chunks of full batches, no more slots than the queue and the loop hold
    assert len(pools) == 2 and all(1 <= p.made <= 1 + 3 for p in pools)


def feed(chunk: int = 4, source=None) -> Feed:
    made = Feed(jreg.Stream(source or batches, chunk=chunk, prefetch=1), B, "include")
    made.place(None)
    return made


def read(made: Feed, epoch: int) -> list:
    with made.epoch(epoch).chunks() as chunks:
        return list(chunks)


def expected(epoch: int, first: int, size: int) -> list[np.ndarray]:
    """Steps ``first .. first + size`` of ``epoch``, the epoch's last full batch repeated past its end."""
    full = [b for b in batches(epoch) if len(b[0]) == B]
    steps = [full[min(i, len(full) - 1)] for i in range(first, first + size)]
    return [np.stack([s[0] for s in steps]), np.stack([s[1] for s in steps])]


def test_a_chunk_not_released_keeps_its_values_while_later_chunks_are_read():
    made = feed(chunk=2)
    kept = read(made, 0) + read(made, 1)  # nothing released: every chunk has its own buffers
    assert made.pool.made == 6
    for epoch, chunk in [(0, c) for c in kept[:4]] + [(1, c) for c in kept[4:]]:
        got = leaves(chunk.batches)
        if chunk.rows == B:
            want = expected(epoch, chunk.first, chunk.size)
        else:  # the smaller last batch, a chunk of its own
            want = [b[None] for b in batches(epoch)[-1]]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_released_buffers_are_reused_and_a_padded_chunk_shows_no_earlier_rows():
    # 7 full batches: chunks of 4 and 3, the second padded to 4 with copies of its last batch
    made = feed(chunk=4, source=lambda epoch: [b for b in batches(epoch, 56)])
    seen = []
    for epoch in range(3):
        for chunk in read(made, epoch):
            # copies: on CPU np.asarray of the device array would be a view of the host buffer about to be reused
            seen.append((epoch, chunk.first, chunk.count, chunk.size, [np.array(a) for a in leaves(chunk.batches)]))
            chunk.release()
            chunk.release()  # idempotent: a slot is given back once
    assert made.pool.made <= 2 and len(made.pool.free) == made.pool.made
    assert [(s[1], s[2], s[3]) for s in seen] == [(0, 4, 4), (4, 3, 4)] * 3
    for epoch, first, _, size, got in seen:
        full = [b for b in batches(epoch, 56)]
        steps = [full[min(i, len(full) - 1)] for i in range(first, first + size)]
        np.testing.assert_array_equal(got[0], np.stack([s[0] for s in steps]))
        np.testing.assert_array_equal(got[1], np.stack([s[1] for s in steps]))


def test_the_host_buffers_are_aligned_and_on_cpu_the_device_array_aliases_them():
    """The reason a slot is reused only after its release: on CPU, device_put of an aligned host array does not
    copy it (if a JAX version copies, the release protocol is merely unneeded; nothing else changes)."""
    made = feed(chunk=4)
    chunk = read(made, 0)[0]
    slot = chunk.slot
    assert all(a.ctypes.data % feed_module._ALIGN == 0 for a in slot.arrays)
    x = jax.tree.leaves(chunk.batches)[0]
    if jax.default_backend() == "cpu" and x.unsafe_buffer_pointer() == slot.arrays[0].ctypes.data:
        slot.arrays[0][0, 0, 0] = 123.0
        assert float(x[0, 0, 0]) == 123.0  # what an early reuse would do to a chunk the device still reads


def test_a_later_batch_of_another_float_dtype_is_cast_like_the_first():
    """float64 after float32 (x64 off: both train as float32): cast into the buffer as before; int labels after
    float ones, or float pixels where the first were ints: a clear error naming the batch and the leaf."""
    wide = [(x.astype(np.float64) if i == 2 else x, y) for i, (x, y) in enumerate(batches(0))]
    same = [(x.astype(np.float64).astype(np.float32), y) for x, y in wide]
    assert_same(train(wide, chunk=2, epochs=1).params, train(same, chunk=2, epochs=1).params)
    bad = [(x, y.astype(np.float32) if i == 3 else y) for i, (x, y) in enumerate(batches(0))]
    with pytest.raises(jreg.JregTypeError, match=r"epoch 1, batch index 3\): y has dtype float32"):
        train(bad, chunk=2, epochs=1)


def test_a_nan_in_a_reused_buffer_is_named_by_its_batch():
    poisoned = [(np.where(i == 4, np.nan, x).astype(np.float32), y) for i, (x, y) in enumerate(batches(0))]
    made = feed(chunk=2)
    for chunk in read(made, 0):  # slots filled once, released: the next epoch reuses them
        chunk.release()
    made.source = lambda epoch: poisoned
    made.callable = True
    with pytest.raises(jreg.JregError, match=r"epoch 2, batch index 4\): x holds NaN or infinity"):
        read(made, 1)


_DTYPES = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, np.float16]


@st.composite
def pairs(draw):
    """A first batch and a later one that may differ in container, dtype, shape or leaf type."""
    rows = draw(st.integers(1, 4))
    trailing = [tuple(draw(st.lists(st.integers(1, 3), max_size=2))) for _ in range(draw(st.integers(1, 3)))]
    dtypes = [draw(st.sampled_from(_DTYPES)) for _ in trailing]
    container = draw(st.sampled_from([tuple, list, "dict"]))

    def make(rows, trailing, dtypes, container):
        arrays = [np.zeros((rows, *t), d) for t, d in zip(trailing, dtypes)]
        return {f"k{i}": a for i, a in enumerate(arrays)} if container == "dict" else container(arrays)

    first = make(rows, trailing, dtypes, container)
    later_rows = draw(st.sampled_from([rows, max(rows - 1, 1)]))
    later_dtypes = [draw(st.sampled_from([d, *_DTYPES])) for d in dtypes]
    later_trailing = [draw(st.sampled_from([t, (*t, 1)])) for t in trailing]
    later = make(later_rows, later_trailing, later_dtypes, draw(st.sampled_from([container, tuple, list])))
    if draw(st.booleans()) and not isinstance(later, dict):
        later = type(later)([jax.numpy.asarray(later[0]), *later[1:]])  # a non-NumPy leaf
    return first, later, rows


@given(pairs())
def test_the_quick_check_accepts_only_what_the_full_check_accepts_with_the_same_leaves(case):
    first, later, rows = case
    _, spec = first_batch(first, rows, 1, 0)
    fast = quick(later, spec)
    try:
        full = convert(later, spec, 0, 1)
    except jreg.JregError:
        assert fast is None
        return
    if fast is not None:
        assert len(fast) == len(full) and all(a is b for a, b in zip(fast, full))
        assert all(a.shape[0] == spec.rows for a in fast)


def _slow_loss(*args, **kwargs):
    """The loss plus zero times a few ms of matrix products: the device (async dispatch) stays busy with a chunk
    while the reader fills the next ones, so a buffer released too early would be overwritten while still read."""
    m = jax.numpy.full((384, 384), 1e-3, np.float32) + args[0].sum() * 1e-9
    for _ in range(3):
        m = jax.numpy.tanh(m @ m)
    return jreg.losses.softmax_cross_entropy(*args, **kwargs) + 0.0 * m.sum()


SLOW = jreg.objective(MODEL.apply, _slow_loss, jreg.penalties.l2(0.01))


def test_a_busy_device_reads_its_chunk_before_the_reader_reuses_the_buffer(monkeypatch):
    kw = dict(epochs=2, batch_size=B, key=KEY)
    monkeypatch.setattr(engine, "ONE_AS_VMAP", False)  # the in-memory program a stream's chunks run (plain, rolled)
    memory = jreg.fit(SLOW, optax.sgd(0.2), P0, (X[:N], Y[:N]), unroll=1, **kw)
    streamed = jreg.fit(SLOW, optax.sgd(0.2), P0, jreg.Stream(reusing, chunk=1, prefetch=1), **kw)
    assert_same(streamed.params, memory.params)
