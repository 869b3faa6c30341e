"""Hostile input: random shapes, dtypes and values thrown at the public API.

The only outcomes allowed are a correct result or a jreg.JregError with a message:
never a raw traceback from deep inside JAX or NumPy, never a hang.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jreg
from jreg import checkpoint as ckpt
from jreg import cli

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.uint8, np.bool_, np.complex64])
MODEL = jreg.mlp([4, 3, 3])
PARAMS = MODEL.init(jax.random.key(0))
OBJ = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(0.1))


def arrays(max_dims=3):
    """Any of those dtypes, rank 0 to max_dims, sides 0 to 6, values across the dtype's range (NaN, inf included)."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=6)
    small_ints = st.integers(-3, 12)
    return DTYPES.flatmap(
        lambda dt: hnp.arrays(dt, shapes, elements=small_ints if dt == np.int32 else None) | hnp.arrays(dt, shapes)
    )


def only_jreg_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except jreg.JregError as e:
        assert str(e), "a jreg error must say what is wrong"
        return None


relaxed = settings(
    max_examples=int(__import__("os").environ.get("JREG_HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@relaxed
@given(x=arrays(), y=arrays(), batch_size=st.integers(-2, 9), epochs=st.integers(-1, 2))
def test_fit_with_random_data(x, y, batch_size, epochs):
    out = only_jreg_errors(
        jreg.fit, OBJ, optax.sgd(0.1), PARAMS, (x, y), epochs=epochs, batch_size=batch_size, key=jax.random.key(0)
    )
    if out is not None:  # it trained: then the input was valid and the result is finite or diverged cleanly
        params, history = out
        assert len(history) == epochs


@relaxed
@given(z=arrays(), t=arrays())
@pytest.mark.parametrize("loss", [jreg.losses.cross_entropy, jreg.losses.quadratic, jreg.losses.log_likelihood])
def test_losses_with_random_inputs(loss, z, t):
    out = only_jreg_errors(loss, z, t)
    if out is not None:  # one value per example: quadratic sums every axis but the first, the others the classes
        assert out.shape == (z.shape[:1] if loss is jreg.losses.quadratic else z.shape[:-1])


@relaxed
@given(x=arrays())
def test_apply_with_random_inputs(x):
    out = only_jreg_errors(MODEL.apply, PARAMS, x)
    if out is not None:
        assert out.shape[-1] == 3


@relaxed
@given(
    c=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-5, 5),
        st.text(max_size=3),
        st.none(),
        arrays(max_dims=2),
        st.lists(st.floats(allow_nan=True), max_size=3),
    )
)
@pytest.mark.parametrize("make", [jreg.penalties.l2, jreg.penalties.l1, lambda c: jreg.penalties.elastic_net(c, c)])
def test_penalties_with_random_coefficients(make, c):
    penalty = only_jreg_errors(make, c)
    if penalty is not None:
        value = only_jreg_errors(penalty, PARAMS)
        if value is not None:
            # huge finite coefficients may overflow float32 to inf: that is the correct float result
            assert np.ndim(value) == 0 and not bool(jnp.isnan(value)) and float(value) >= 0


@relaxed
@given(sizes=st.lists(st.one_of(st.integers(-2, 5), st.floats(0, 3), st.text(max_size=2)), max_size=4))
def test_mlp_with_random_sizes(sizes):
    model = only_jreg_errors(jreg.mlp, sizes)
    if model is not None:
        assert len(model.init(jax.random.key(0))) == len(sizes) - 1


@relaxed
@given(x=arrays(), y=arrays(), batch_size=st.integers(-2, 9))
def test_batches_and_expand_with_random_data(x, y, batch_size):
    only_jreg_errors(jreg.data.batches, (x, y), batch_size, jax.random.key(0))
    only_jreg_errors(jreg.data.expand, (x, y))


@relaxed
@given(blob=st.binary(max_size=300))
def test_load_random_bytes(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("blobs") / "x.npz"
    path.write_bytes(blob)
    only_jreg_errors(jreg.load, path)
    json_path = path.with_suffix(".json")
    json_path.write_bytes(blob)
    only_jreg_errors(jreg.load_network2, json_path)


@relaxed
@given(
    hp=st.dictionaries(
        st.sampled_from(["lmbda", "eta"]),
        st.one_of(arrays(max_dims=2), st.lists(st.floats(allow_nan=True), max_size=3)),
        max_size=2,
    )
)
def test_sweep_with_random_hyperparameters(hp):
    def build(h):
        return (
            jreg.objective(MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(h.get("lmbda", 0.0))),
            optax.sgd(0.1),
        )

    x = jnp.ones((6, 4))
    y = jnp.arange(6) % 3
    only_jreg_errors(jreg.sweep, build, PARAMS, (x, y), hparams=hp, epochs=1, batch_size=3, key=jax.random.key(0))


@relaxed
@given(
    n=st.integers(0, 12),
    x_dtype=DTYPES,
    y_kind=st.sampled_from(["labels", "onehot", "float-labels"]),
    data=st.data(),
    batch_size=st.integers(1, 13),
    lam=st.floats(allow_nan=True, allow_infinity=True),
    eta=st.one_of(st.floats(-10, 1e6), st.just(float("nan"))),
)
def test_fit_with_plausible_shapes_and_hostile_values(n, x_dtype, y_kind, data, batch_size, lam, eta):
    x = data.draw(hnp.arrays(x_dtype, (n, 4)))
    if y_kind == "labels":
        y = data.draw(hnp.arrays(np.int32, (n,), elements=st.integers(-1, 3)))
    elif y_kind == "onehot":
        y = data.draw(hnp.arrays(np.float32, (n, 3)))
    else:
        y = data.draw(hnp.arrays(np.float32, (n,)))
    penalty = only_jreg_errors(jreg.penalties.l2, lam)
    if penalty is None:
        return
    obj = jreg.objective(MODEL.apply, jreg.losses.cross_entropy, penalty)
    try:
        out = jreg.fit(obj, optax.sgd(eta), PARAMS, (x, y), epochs=1, batch_size=batch_size, key=jax.random.key(0))
    except jreg.DivergenceError as e:  # a clean stop with finite params
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(e.params))
        return
    except jreg.JregError as e:
        assert str(e)
        return
    params, history = out
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params))


HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=2),
    arrays(max_dims=1),
)


@relaxed
@given(rate=HOSTILE_SCALARS, stddev=HOSTILE_SCALARS, x=arrays())
def test_stochastic_functions_with_random_arguments(rate, stddev, x):
    key = jax.random.key(0)
    for fn in (
        lambda: jreg.stochastic.dropout(key, x, rate),
        lambda: jreg.stochastic.gaussian_noise(key, x, stddev),
        lambda: jreg.mlp([4, 3], drop_rate=rate, input_drop_rate=rate).apply(PARAMS[:1], x, key=key),
        lambda: jreg.stochastic.with_input_noise(MODEL.apply, stddev)(PARAMS, x, key=key),
    ):
        only_jreg_errors(fn)


@relaxed
@given(
    patience=HOSTILE_SCALARS,
    factor=HOSTILE_SCALARS,
    c=HOSTILE_SCALARS,
    projections=st.one_of(st.none(), st.integers(-2, 3), st.floats(allow_nan=True)),
)
def test_early_stopping_and_input_penalties_with_random_arguments(patience, factor, c, projections):
    only_jreg_errors(jreg.EarlyStopping, patience=patience, lr_factor=factor)
    only_jreg_errors(jreg.penalties.input_gradient, c)
    only_jreg_errors(jreg.penalties.jacobian_norm, 1.0, projections=projections)


# ---------------------------------------------------------------- issue 12: entry points, keys, dtypes, the CLI

ANYTHING = st.one_of(HOSTILE_SCALARS, arrays(), st.lists(st.integers(), max_size=2))


@relaxed
@given(z=ANYTHING, t=ANYTHING)
@example(z=",", t=None)  # NumPy read the string as a dtype spelling: a raw SyntaxError from labels_of
@example(z=b"(", t="i4")
@pytest.mark.parametrize(
    "loss",
    [jreg.losses.cross_entropy, jreg.losses.quadratic, jreg.losses.log_likelihood, jreg.losses.labels_of],
    ids=["cross_entropy", "quadratic", "log_likelihood", "labels_of"],
)
def test_losses_with_anything(loss, z, t):
    if loss is jreg.losses.labels_of:
        only_jreg_errors(loss, z)
    else:
        only_jreg_errors(loss, z, t)


@relaxed
@given(labels=ANYTHING, classes=st.one_of(HOSTILE_SCALARS, st.integers(-2, 12)))
def test_one_hot_with_anything(labels, classes):
    out = only_jreg_errors(jreg.losses.one_hot, labels, classes)
    if out is not None:  # a correct one-hot encoding
        assert out.shape == (*np.shape(labels), classes)
        np.testing.assert_array_equal(np.argmax(out, axis=-1), np.asarray(labels))
        assert np.all(np.sum(out, axis=-1) == 1)


KEYS = st.one_of(
    HOSTILE_SCALARS,
    arrays(max_dims=2),
    st.integers(0, 3).map(lambda n: jax.random.split(jax.random.key(0), n)),
    st.integers(0, 3).map(lambda n: jax.random.key_data(jax.random.split(jax.random.key(0), n))),
    st.just(jax.random.key(1)),
    st.just(jax.random.PRNGKey(1)),
)
DROPOUT_MODEL = jreg.mlp([4, 3, 3], drop_rate=0.5)


@relaxed
@given(key=KEYS, dropout=st.booleans())
def test_apply_with_random_keys(key, dropout):
    model = DROPOUT_MODEL if dropout else MODEL
    out = only_jreg_errors(model.apply, PARAMS, jnp.ones((2, 4)), key=key)
    if out is not None and key is not None:  # only a single key, typed or raw, may come through
        assert out.shape == (2, 3)
        assert jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype == jnp.uint32
        assert key.shape == (() if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else (2,))


@relaxed
@given(side=st.one_of(HOSTILE_SCALARS, st.integers(-3, 5)), x=arrays(), y=arrays())
def test_expand_with_random_sides(side, x, y):
    out = only_jreg_errors(jreg.data.expand, (x, y), side=side)
    if out is not None:
        assert out[0].shape == (5 * x.shape[0], side * side) and out[1].shape[0] == 5 * y.shape[0]


LOW_AND_FULL = st.sampled_from([jnp.bfloat16, jnp.float16, jnp.float32, np.float64, jnp.int32, jnp.uint8, np.bool_])


@relaxed
@given(dtypes=st.lists(LOW_AND_FULL, min_size=4, max_size=4), c=st.floats(0, 10))
def test_nuclear_norm_with_random_dtypes(dtypes, c):
    """Each leaf of the params in its own dtype: a correct value (against float32 on the same rounded weights)."""
    leaves, treedef = jax.tree.flatten(PARAMS)
    params = jax.tree.unflatten(treedef, [jnp.asarray(leaf, dt) for leaf, dt in zip(leaves, dtypes)])
    value = only_jreg_errors(jreg.penalties.nuclear_norm(c), params)
    if value is None:
        return
    as_f32 = jax.tree.map(lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
    reference = jreg.penalties.nuclear_norm(c)(as_f32)
    coarsest = max(jnp.finfo(a.dtype).eps for a in jax.tree.leaves(params) if jnp.issubdtype(a.dtype, jnp.floating))
    assert float(value) == pytest.approx(float(reference), rel=4 * float(coarsest), abs=1e-6)


CLI_TOKENS = st.one_of(
    st.sampled_from(
        ["--lmbda", "--epochs", "--hidden", "--eta", "--batch-size", "--init", "--seed", "--out", "--quiet"]
        + ["--overwrite", "--bogus", "0", "1", "-1", "0.1", "nan", "inf", "1e400", "large", "default"]
        + ["99999999999999999999", "4294967294", "4294967295", "", "x", "/", "/dev/null", "."]
    ),
    st.text(max_size=6),
    st.integers().map(str),
    st.floats().map(str),
)


@relaxed
@given(argv=st.lists(CLI_TOKENS, max_size=6))
def test_the_demo_command_line_with_random_arguments(argv, capsys, monkeypatch, tmp_path_factory):
    """Random ``jreg demo`` argument lists, nothing trained: the demo starts with valid arguments, or a usage error.

    A usage error is one line on stderr and exit status 2; the demo itself is replaced by a stub that
    records its arguments (the checks of ``--out`` still run, on the real file system).
    """
    started = []
    monkeypatch.setattr(jreg.cli, "demo", lambda args: started.append(args) or {"runs": []})
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # relative --out values land in a fresh folder
    try:
        code = cli.main(["demo", *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    if code == 0:
        (args,) = started
        assert err == "" and 0 <= args.seed <= cli.SEED_MAX and args.epochs > 0 and args.hidden > 0
        assert np.isfinite(args.eta) and args.eta > 0 and all(np.isfinite(v) and v >= 0 for v in args.lmbda)
    else:
        assert code == 2 and not started, (argv, code, err)
        assert err.count("\n") == 1 and err.startswith(("jreg demo: error: ", "jreg: error: ")), err


# --------------------------------------------------------------------------- issue 12's entry points
# The checkpoint readers (read_header, verify, check_run_meta), the cost convention (Evaluation, total_cost)
# and a fit checkpoint's file given as a whole folder of random bytes.

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


@relaxed
@given(content=st.binary(max_size=300), named=st.sampled_from(["f.npz", "f.npy", "ckpt-000001.npz"]))
def test_the_checkpoint_readers_on_random_bytes(tmp_path_factory, content, named):
    path = tmp_path_factory.mktemp("bytes") / named
    path.write_bytes(content)
    for reader in (ckpt.read_header, ckpt.verify):
        with pytest.raises(ckpt.CheckpointError):  # random bytes are never a checkpoint
            reader(path)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.verify(path.parent)  # a folder


@relaxed
@given(
    field=st.sampled_from(["history", "history_epochs", "batch_size", "global_step", "early_stopping", None]),
    value=HOSTILE,
)
def test_check_run_meta_with_a_random_field(fit_checkpoint, field, value):
    meta = ckpt.read_header(fit_checkpoint)["meta"]
    assert ckpt.check_run_meta(meta, fit_checkpoint, 2) == meta  # the real meta passes
    forged = value if field is None else {**meta, field: value}
    only_jreg_errors(ckpt.check_run_meta, forged, fit_checkpoint, 2)


@relaxed
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
