"""Hostile input for the entry points issue 12 added: the checkpoint readers (read_header, verify, check_run_meta),
the cost convention (Evaluation, total_cost) and a fit checkpoint's file given as a whole folder of random bytes.

As in test_hostile.py: the only outcomes allowed are a correct result or a jreg.JregError with a message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jreg
from jreg import checkpoint as ckpt

from .test_hostile import HOSTILE_SCALARS, OBJ, PARAMS, only_jreg_errors

cheap = settings(
    max_examples=int(os.environ.get("JREG_HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12,
)
HOSTILE = st.one_of(HOSTILE_SCALARS, st.lists(st.integers(), max_size=2), JSON)
X = jnp.asarray(np.random.default_rng(0).normal(size=(12, 4)), jnp.float32)
Y = jnp.arange(12) % 2


@pytest.fixture(scope="module")
def fit_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ck")
    jreg.fit(
        OBJ,
        __import__("optax").sgd(0.1),
        PARAMS,
        (X, Y),
        epochs=2,
        batch_size=4,
        key=jax.random.key(0),
        checkpoint=jreg.Checkpointing(folder),
        monitor=("training_cost",),
        early_stopping=jreg.EarlyStopping(patience=3, monitor="training_cost"),
    )
    return folder / "ckpt-000002.npz"


@cheap
@given(content=st.binary(max_size=300), named=st.sampled_from(["f.npz", "f.npy", "ckpt-000001.npz"]))
def test_the_checkpoint_readers_on_random_bytes(tmp_path_factory, content, named):
    path = tmp_path_factory.mktemp("bytes") / named
    path.write_bytes(content)
    for reader in (ckpt.read_header, ckpt.verify):
        with pytest.raises(ckpt.CheckpointError):  # random bytes are never a checkpoint
            reader(path)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.verify(path.parent)  # a folder


@cheap
@given(
    field=st.sampled_from(["history", "history_epochs", "batch_size", "global_step", "early_stopping", None]),
    value=HOSTILE,
)
def test_check_run_meta_with_a_random_field(fit_checkpoint, field, value):
    meta = ckpt.read_header(fit_checkpoint)["meta"]
    assert ckpt.check_run_meta(meta, fit_checkpoint, 2) == meta  # the real meta passes
    forged = value if field is None else {**meta, field: value}
    only_jreg_errors(ckpt.check_run_meta, forged, fit_checkpoint, 2)


@cheap
@given(convention=HOSTILE, n_train=HOSTILE)
def test_the_cost_convention_options_with_random_values(convention, n_train):
    only_jreg_errors(jreg.Evaluation, (X, Y), cost_convention=convention)
    value = only_jreg_errors(jreg.total_cost, OBJ, PARAMS, (X, Y), cost_convention=convention, n_train=n_train)
    if value is not None:
        assert bool(jnp.isfinite(value))


def test_verify_passes_a_real_checkpoint_and_names_a_flipped_byte(fit_checkpoint, tmp_path):
    ckpt.verify(fit_checkpoint)  # intact: no error
    data = bytearray(fit_checkpoint.read_bytes())
    header = ckpt.read_header(fit_checkpoint)
    assert json.dumps(header["meta"])  # the header is plain JSON
    first = data.find(b"\x93NUMPY", data.find(b"params0.npy"))  # the first array member's .npy data
    data[first + 130] ^= 0xFF  # a byte of the array, after its 128-byte .npy header: the checksum fails
    bad = tmp_path / "ckpt-000002.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=str(bad)):
        ckpt.verify(bad)
