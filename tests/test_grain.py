"""grain as a training source (issue 27, item 3): grain's MapDataset, IterDataset and DataLoader streamed by fit and
sweep, their iterator state saved in mid-epoch checkpoints (``Checkpointing(every_steps=...)``) and resumed bit for
bit (in the same process and after a fresh process start), and the refusals: every_steps that is not a positive
int, mid-epoch checkpoints of in-memory data or of a source without a checkpointable iterator, a forged or
mismatched iterator state (a ``CheckpointError`` naming the field). Small runs on the embedded MNIST subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jreg
from jreg.checkpoint import CheckpointError
from jreg.train import checkpoint_folder
from jreg.train.stream import position

grain = pytest.importorskip("grain")

N, B, CHUNK, EVERY, EPOCHS = 120, 10, 4, 4, 2  # 12 steps an epoch: chunks of 4, a checkpoint after steps 4 and 8
KEY = jax.random.key(1)
MODEL = jreg.mlp([784, 8, 10])
OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-3))
OPT = optax.sgd(0.2)
P0 = MODEL.init(jax.random.key(0))
(_X, _Y), _ = jreg.data.load_mnist_small()
X, Y = np.asarray(_X[:N]), np.asarray(_Y[:N])
RECORDS = [(X[i], Y[i]) for i in range(N)]
SEED = 11


def shuffled(epoch: int):
    """Epoch ``epoch``: grain's shuffle with the epoch's seed (grain's own epoch ``epoch`` of ``shuffle(SEED)``)."""
    return grain.MapDataset.source(RECORDS).shuffle(seed=SEED + epoch).batch(B)


def stream(source=shuffled):
    return jreg.Stream(source, chunk=CHUNK, prefetch=1)


def fit(source=shuffled, **kw):
    return jreg.fit(OBJ, OPT, P0, stream(source), **{"epochs": EPOCHS, "batch_size": B, "key": KEY, **kw})


def leaves(result):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(result.params)]


def assert_same(a, b):
    assert all(np.array_equal(u, v) for u, v in zip(leaves(a), leaves(b)))
    assert np.array_equal(np.asarray(a.history["epoch_loss"]), np.asarray(b.history["epoch_loss"]), equal_nan=True)


def in_order(epoch: int):
    """The batches ``shuffled(epoch)`` yields, as a list (a plain stream of the same batches)."""
    return [tuple(np.asarray(a) for a in batch) for batch in shuffled(epoch)]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """An uninterrupted run writing mid-epoch checkpoints (kept), and its folder."""
    folder = tmp_path_factory.mktemp("grain") / "ck"
    return fit(checkpoint=jreg.Checkpointing(folder, every_steps=EVERY, keep=20)), folder


# --------------------------------------------------------------------------- grain as a source


def test_grain_sources_train_as_the_same_batches_given_as_a_list():
    listed = fit(lambda e: in_order(e))
    assert_same(fit(), listed)  # a callable epoch -> MapDataset
    whole = fit(lambda e: in_order(0))
    assert_same(fit(shuffled(0)), whole)  # a bare MapDataset: every epoch is a fresh iter(), the same order
    assert_same(fit(shuffled(0).to_iter_dataset()), whole)  # an IterDataset likewise


def test_a_data_loader_is_a_source():
    def loader(epoch):
        sampler = grain.samplers.IndexSampler(N, shuffle=True, seed=SEED + epoch, num_epochs=1)
        return grain.DataLoader(
            data_source=RECORDS, sampler=sampler, operations=[grain.transforms.Batch(B)], worker_count=0
        )

    batches = {e: [tuple(np.asarray(a) for a in b) for b in loader(e)] for e in range(EPOCHS)}
    assert_same(fit(loader), fit(lambda e: batches[e]))


# --------------------------------------------------------------------------- mid-epoch checkpoints and resume


def test_mid_epoch_checkpoints_are_written_at_chunk_boundaries(written):
    result, folder = written
    assert sorted(p.name for p in folder.glob("ckpt-*")) == [
        "ckpt-000000-000004.npz",
        "ckpt-000000-000008.npz",
        "ckpt-000001-000004.npz",
        "ckpt-000001-000008.npz",
        "ckpt-000001.npz",
        "ckpt-000002.npz",
    ]
    assert_same(result, fit())  # checkpointing changes nothing
    meta = jreg.load(folder / "ckpt-000001-000008.npz").meta
    assert meta["stream_position"]["epoch"] == 1 and meta["stream_position"]["step"] == 8
    assert meta["stream_position"]["rows"] == 8 * B
    assert meta["stream_position"]["iterator"] == {"kind": "json", "value": {"next_index": 8}}
    assert meta["global_step"] == 12 + 8 and meta["history_epochs"]["epoch_loss"] == [1]


@pytest.mark.parametrize("name", ["ckpt-000000-000004.npz", "ckpt-000001-000008.npz"])
def test_fit_resumes_mid_epoch_bit_for_bit(written, name):
    result, folder = written
    assert_same(fit(resume=folder / name), result)


def test_resume_auto_takes_the_newest_mid_epoch_checkpoint_and_goes_on_writing(written, tmp_path):
    result, folder = written
    run = tmp_path / "run"
    run.mkdir()
    for name in ("ckpt-000000-000004.npz", "ckpt-000000-000008.npz", "ckpt-000001.npz", "ckpt-000001-000004.npz"):
        (run / name).write_bytes((folder / name).read_bytes())  # a run preempted after epoch 2's step 4
    resumed = fit(checkpoint=jreg.Checkpointing(run, every_steps=EVERY, keep=20), resume="auto")
    assert_same(resumed, result)
    assert sorted(p.name for p in run.glob("ckpt-*"))[-3:] == [
        "ckpt-000001-000008.npz",
        "ckpt-000001.npz",
        "ckpt-000002.npz",
    ]


def test_sweep_resumes_mid_epoch_bit_for_bit(tmp_path):
    """K = 4 members, with early stopping that stops some of them before the checkpoint's epoch (their frozen
    state, patience and best params ride along)."""

    def build(hp):
        return jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(
            hp["eta"]
        )

    kw = dict(
        hparams=jreg.grid(lmbda=[0.0, 1e-2], eta=[0.2, 5.0]),
        epochs=3,
        batch_size=B,
        key=KEY,
        evaluation=(X[:40], Y[:40]),
        early_stopping=jreg.EarlyStopping(patience=1, restore_best=True),
    )
    whole = jreg.sweep(build, P0, stream(), checkpoint=jreg.Checkpointing(tmp_path, every_steps=8, keep=20), **kw)
    mid = tmp_path / "ckpt-000002-000008.npz"
    assert mid.exists() and not (tmp_path / "ckpt-000002-000004.npz").exists()
    assert len(jreg.load(mid).meta["stream_position"]["loss_sum"]) == 4
    assert any(v["epochs"] <= 2 for v in whole.history.stopped.values())  # a member frozen before epoch 3
    resumed = jreg.sweep(build, P0, stream(), resume=mid, **kw)
    assert_same(resumed, whole)
    assert resumed.history.stopped == whole.history.stopped


def test_a_sweep_member_diverging_holds_back_mid_epoch_checkpoints_of_that_epoch_only(tmp_path):
    def build(hp):
        return OBJ, optax.sgd(hp["eta"])

    kw = dict(hparams=jreg.grid(eta=[0.2, 1e38]), epochs=2, batch_size=B, key=KEY)
    whole = jreg.sweep(build, P0, stream(), checkpoint=jreg.Checkpointing(tmp_path, every_steps=4, keep=20), **kw)
    assert list(whole.history.diverged) == [1]
    assert [p.name for _, p in checkpoint_folder.positions(tmp_path)] == [
        "ckpt-000001.npz",  # epoch 1's mid-epoch checkpoints held back: member 1 diverged in it
        "ckpt-000001-000004.npz",
        "ckpt-000001-000008.npz",
        "ckpt-000002.npz",
    ]
    resumed = jreg.sweep(build, P0, stream(), resume=tmp_path / "ckpt-000001-000004.npz", **kw)
    assert_same(resumed, whole)
    assert list(resumed.history.diverged) == [1]


def test_a_data_loader_state_is_bytes_and_resumes(tmp_path):
    def loader(epoch):
        sampler = grain.samplers.IndexSampler(N, shuffle=True, seed=SEED + epoch, num_epochs=1)
        return grain.DataLoader(
            data_source=RECORDS, sampler=sampler, operations=[grain.transforms.Batch(B)], worker_count=0
        )

    whole = fit(loader, checkpoint=jreg.Checkpointing(tmp_path, every_steps=8))
    mid = tmp_path / "ckpt-000001-000008.npz"
    assert jreg.load(mid).meta["stream_position"]["iterator"]["kind"] == "bytes"
    assert_same(fit(loader, resume=mid), whole)


def test_early_stopping_ema_and_evaluation_resume_mid_epoch_bit_for_bit(tmp_path):
    """What the hooks keep between epochs (history, patience, best params in best.npz, the EMA) rides along."""
    kw = dict(
        epochs=3,
        evaluation=(X[:40], Y[:40]),
        early_stopping=jreg.EarlyStopping(patience=5, restore_best=True),
        ema=jreg.EMA(0.9),
    )
    whole = fit(checkpoint=jreg.Checkpointing(tmp_path, every_steps=8, keep=20), **kw)
    resumed = fit(resume=tmp_path / "ckpt-000002-000008.npz", **kw)
    assert_same(resumed, whole)
    assert resumed.history.history == whole.history.history


def test_a_diverging_run_writes_no_mid_epoch_checkpoint_of_its_bad_state(tmp_path):
    def blowing_up(params, batch, *, step):  # NaN from the second step of epoch 2 on
        total, parts = OBJ(params, batch)
        return total * jnp.where(step >= 13, jnp.nan, 1.0), parts

    with pytest.raises(jreg.DivergenceError) as caught:
        jreg.fit(blowing_up, OPT, P0, stream(), epochs=2, batch_size=B, key=KEY,
                 checkpoint=jreg.Checkpointing(tmp_path, every_steps=4))  # fmt: skip
    assert (caught.value.epoch, caught.value.step) == (1, 1)
    # the chunk of steps 0-3 of epoch 2 diverged: the checkpoint after it is not written
    assert [p.name for _, p in checkpoint_folder.positions(tmp_path)] == [
        "ckpt-000000-000004.npz",
        "ckpt-000000-000008.npz",
        "ckpt-000001.npz",
    ]


def test_an_epoch_whose_iterator_cannot_save_its_state_is_refused_when_it_comes(tmp_path):
    def source(epoch):  # epoch 1's is grain's, epoch 2's a list
        return shuffled(epoch) if epoch == 0 else in_order(epoch)

    with pytest.raises(jreg.JregTypeError, match=r"epoch 2\): Checkpointing\(every_steps=...\).*no get_state"):
        fit(source, checkpoint=jreg.Checkpointing(tmp_path, every_steps=4))


def test_resume_after_a_fresh_process_start_is_bit_for_bit(tmp_path):
    result = fit()  # the uninterrupted run, in this process
    worker = Path(__file__).resolve().parent / "grain_worker.py"
    path = os.pathsep.join(filter(None, [str(worker.parent.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    folder = str(tmp_path / "ck")
    killed = subprocess.run([sys.executable, str(worker), "interrupt", folder], capture_output=True, text=True,
                            timeout=600, env=env)  # fmt: skip
    assert killed.returncode == 17, killed.stderr[-4000:]
    newest = checkpoint_folder.positions(Path(folder))[-1][1].name
    assert newest == "ckpt-000001-000008.npz"  # killed mid-epoch, right after that checkpoint
    done = subprocess.run([sys.executable, str(worker), "resume", folder], capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ckpt-000002.npz" in out["files"]
    assert out["digest"]["epoch_loss"] == [float(v) for v in result.history["epoch_loss"]]
    import hashlib

    assert out["digest"]["params"] == hashlib.sha256(b"".join(leaf.tobytes() for leaf in leaves(result))).hexdigest()


# --------------------------------------------------------------------------- refusals, before any work


@pytest.mark.parametrize("every", [0, -3, 2.0, True, "8"])
def test_every_steps_must_be_a_positive_int(tmp_path, every):
    with pytest.raises(jreg.JregError, match="Checkpointing.every_steps must be a positive integer"):
        jreg.Checkpointing(tmp_path, every_steps=every)


def test_every_steps_with_in_memory_data_is_refused(tmp_path):
    folder = tmp_path / "ck"
    with pytest.raises(jreg.JregError, match=r"every_steps=4\).*in-memory data.*drop every_steps"):
        jreg.fit(OBJ, OPT, P0, (X, Y), epochs=1, batch_size=B, key=KEY,
                 checkpoint=jreg.Checkpointing(folder, every_steps=4))  # fmt: skip
    assert not folder.exists()  # refused before anything was made


@pytest.mark.parametrize("kind", ["callable of lists", "list of batches", "generator factory"])
def test_a_source_without_a_checkpointable_iterator_is_refused(tmp_path, kind):
    class Factory:
        def __iter__(self):
            yield from in_order(0)

    source = {
        "callable of lists": lambda e: in_order(e),
        "list of batches": in_order(0),
        "generator factory": Factory(),
    }[kind]
    folder = tmp_path / "ck"
    with pytest.raises(jreg.JregTypeError, match=r"has no get_state\(\) and set_state\(\).*grain\.MapDataset"):
        fit(source, checkpoint=jreg.Checkpointing(folder, every_steps=4))
    assert not folder.exists()
    with pytest.raises(jreg.JregTypeError, match=r"sweep: checkpoint=Checkpointing\(every_steps=4\)"):
        jreg.sweep(lambda hp: (OBJ, OPT), P0, stream(source), hparams=jreg.grid(seed=[0]), epochs=1, batch_size=B,
                   key=KEY, checkpoint=jreg.Checkpointing(folder, every_steps=4))  # fmt: skip
    assert not folder.exists()


def test_a_mid_epoch_checkpoint_resumed_with_a_source_without_state_is_refused(written):
    _, folder = written
    with pytest.raises(jreg.JregTypeError, match=r"mid-epoch checkpoint \(epoch 2, after step 8\).*get_state"):
        fit(lambda e: in_order(e), resume=folder / "ckpt-000001-000008.npz")


def test_a_mid_epoch_checkpoint_beyond_epochs_is_refused(written):
    _, folder = written
    with pytest.raises(jreg.JregError, match=r"inside epoch 2 \(after step 8\), beyond epochs=1; pass epochs=2"):
        fit(resume=folder / "ckpt-000001-000008.npz", epochs=1)


def forge(written, tmp_path, change) -> Path:
    """A copy of the epoch 2, step 8 checkpoint with its meta changed by ``change(meta)``."""
    _, folder = written
    loaded = jreg.load(folder / "ckpt-000001-000008.npz", params=P0, opt_state=OPT.init(P0))
    meta = json.loads(json.dumps(loaded.meta))
    change(meta)
    path = tmp_path / "ckpt-000001-000008.npz"
    jreg.save(path, loaded.params, opt_state=loaded.opt_state, step=loaded.step, key=loaded.key, meta=meta)
    return path


def _set(*keys, value):
    def change(meta):
        where = meta["stream_position"]
        for k in keys[:-1]:
            where = where[k]
        where[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, field",
    [
        (_set("iterator", "value", "next_index", value="8"), "stream_position.iterator.value.next_index"),
        (_set("iterator", "value", value={"next": 8}), "stream_position.iterator.value"),
        (_set("iterator", "value", "next_index", value=-5), "stream_position.iterator"),  # grain refuses it
        (_set("iterator", "value", "next_index", value=12), "stream_position.iterator"),  # no batch left
        (_set("iterator", "kind", value="bytes"), "stream_position.iterator.value"),  # not base64
        (_set("iterator", value={"kind": "bytes", "value": "e30="}), "stream_position.iterator.kind"),
        (_set("iterator", "kind", value="pickle"), "stream_position.iterator.kind"),
        (_set("step", value=0), "stream_position.step"),
        (_set("rows", value=-1), "stream_position.rows"),
        (_set("loss_sum", value=float("nan")), "stream_position.loss_sum"),
        (_set("loss_sum", value=[1.0, 2.0]), "stream_position.loss_sum"),
        (_set("epoch", value=0), "stream_position.epoch"),
        (lambda meta: meta.pop("streamed"), "stream_position"),
    ],
)
def test_a_forged_stream_position_is_a_checkpoint_error_naming_the_field(written, tmp_path, change, field):
    path = forge(written, tmp_path, change)
    folder = tmp_path / "ck"
    with pytest.raises(CheckpointError, match=f"'{field}"):
        fit(resume=path, checkpoint=jreg.Checkpointing(folder, every_steps=EVERY))
    assert not folder.exists()  # before any work


def test_a_state_of_another_pipeline_is_refused(written):
    _, folder = written

    def loader(epoch):
        sampler = grain.samplers.IndexSampler(N, shuffle=True, seed=SEED + epoch, num_epochs=1)
        return grain.DataLoader(
            data_source=RECORDS, sampler=sampler, operations=[grain.transforms.Batch(B)], worker_count=0
        )

    with pytest.raises(CheckpointError, match="'stream_position.iterator.kind' must be 'bytes'"):
        fit(loader, resume=folder / "ckpt-000001-000008.npz")


# --------------------------------------------------------------------------- the pieces


def test_checkpoint_names_and_their_order(tmp_path):
    assert checkpoint_folder.checkpoint_name(2, step=128) == "ckpt-000002-000128.npz"
    assert checkpoint_folder.checkpoint_name(2) == "ckpt-000002.npz"
    for name in ("ckpt-000003.npz", "ckpt-000002-000128.npz", "ckpt-000002.npz", "ckpt-000002-000064.npz"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for _, p in checkpoint_folder.positions(tmp_path)] == [
        "ckpt-000002.npz",
        "ckpt-000002-000064.npz",
        "ckpt-000002-000128.npz",
        "ckpt-000003.npz",
    ]
    assert checkpoint_folder.held(tmp_path)[1:3] == ["ckpt-000002-000064.npz", "ckpt-000002-000128.npz"]


def test_resuming_from_an_older_mid_epoch_checkpoint_would_branch_the_run(written, tmp_path):
    _, folder = written
    run = tmp_path / "run"
    run.mkdir()
    for name in ("ckpt-000000-000004.npz", "ckpt-000000-000008.npz"):
        (run / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(jreg.JregError, match="holds later checkpoints of this run"):
        fit(resume=run / "ckpt-000000-000004.npz", checkpoint=jreg.Checkpointing(run, every_steps=EVERY))


def test_iterator_states_are_stored_as_json_or_base64_and_compared_by_shape():
    assert position.encode({"a": (1, 2)}, "x") == {"kind": "json", "value": {"a": [1, 2]}}
    assert position.encode(b"{}", "x") == {"kind": "bytes", "value": "e30="}
    assert position.encode({"i": np.int64(3), "f": np.float32(0.5)}, "x")["value"] == {"i": 3, "f": 0.5}
    with pytest.raises(jreg.JregTypeError, match="cannot be stored in a checkpoint"):
        position.encode({"a": object()}, "x")
    fields = jreg.checkpoint.common.Fields("f", "meta ")
    position.check_like({"a": {"b": 3, "c": None}}, {"a": {"b": 0, "c": "s"}}, fields, "v")
    with pytest.raises(CheckpointError, match="'v.a.b' must be an integer"):
        position.check_like({"a": {"b": "3"}}, {"a": {"b": 0}}, fields, "v")
    with pytest.raises(CheckpointError, match=r"'v' must hold the keys .*missing \['b'\], extra \['c'\]"):
        position.check_like({"a": 1, "c": 1}, {"a": 1, "b": 0}, fields, "v")


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 30),
    batch=st.integers(1, 5),
    chunk=st.integers(1, 4),
    partial=st.sampled_from(["include", "drop"]),
    seed=st.integers(0, 2**16),
)
def test_a_feed_resumed_at_any_recorded_position_reads_exactly_the_rest_of_the_epoch(n, batch, chunk, partial, seed):
    """The reader's recorded states, restored into a fresh iterator, give the epoch's remaining chunks: the same
    batches at the same step indices (every boundary a mid-epoch checkpoint may be written at)."""
    rows = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    ds = grain.MapDataset.source([(rows[i], np.int32(i)) for i in range(n)]).shuffle(seed=seed).batch(batch)
    if len(rows) < batch:
        return  # the first batch must be a full one
    feed = jreg.train.stream.Feed(jreg.Stream(ds, chunk=chunk), batch, partial)
    feed.capture = True
    with feed.epoch(0).chunks() as chunks:
        items = [(c.first, c.count, jax.device_get(c.batches), c.position) for c in chunks]
    for k, (first, count, _, state) in enumerate(items[:-1]):  # a checkpoint is written only if the epoch goes on
        if state is None:
            continue
        again = jreg.train.stream.Feed(jreg.Stream(ds, chunk=chunk), batch, partial)
        at = {"epoch": 0, "step": first + count, "rows": 0, "loss_sum": 0.0, "iterator": state}
        again.resume_at(0, at, "test")
        with again.epoch(0).chunks() as chunks:
            rest = [(c.first, c.count, jax.device_get(c.batches)) for c in chunks]
        assert [(f, c) for f, c, _ in rest] == [(f, c) for f, c, _, _ in items[k + 1 :]]
        for (_, _, got), (_, _, want, _) in zip(rest, items[k + 1 :]):
            assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["epoch", "step", "rows", "loss_sum", "iterator", "iterator.kind", "iterator.value",
                              "iterator.value.next_index"]), value=_JSON)  # fmt: skip
def test_a_random_stream_position_field_is_accepted_or_a_checkpoint_error(field, value):
    """check_run_meta, then the restore into a live grain iterator: the position or a CheckpointError, nothing else."""
    meta = {
        "streamed": True,
        "stream_position": {
            "epoch": 1,
            "step": 8,
            "rows": 80,
            "loss_sum": 3.5,
            "iterator": {"kind": "json", "value": {"next_index": 8}},
        },
    }
    *parents, last = field.split(".")
    where = meta["stream_position"]
    for name in parents:
        where = where[name]
    where[last] = value
    try:
        checked = jreg.checkpoint.check_run_meta(meta, "f.npz", 1)
        position.restore(iter(shuffled(1)), checked["stream_position"], "f.npz")
    except CheckpointError:
        pass


def test_mid_epoch_checkpoints_in_the_orbax_format_resume_bit_for_bit(written, tmp_path):
    """``Checkpointing(format="orbax", every_steps=...)``: mid-epoch orbax folders, resumed as the ``.npz`` ones."""
    result, _ = written
    folder = tmp_path / "ck"
    again = fit(checkpoint=jreg.Checkpointing(folder, every_steps=EVERY, keep=20, format="orbax"))
    assert_same(again, result)
    names = sorted(p.name for p in folder.glob("ckpt-*"))
    assert "ckpt-000001-000008.orbax" in names and "ckpt-000002.orbax" in names
    assert_same(fit(resume=folder / "ckpt-000001-000004.orbax"), result)
