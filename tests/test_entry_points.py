"""Issue 12, items 4 and 5: every public entry point validates before it works, one named test per case found.

Each case gave a raw exception from inside JAX, NumPy or Python before (or, for the CLI, trained for the
whole run and then lost its results); now it gives a correct result or a jreg error naming the argument,
what was expected and what came. The CLI reports every user error as one line on stderr, exit status 2.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg import cli

MODEL = jreg.mlp([4, 3, 3])
DROPOUT = jreg.mlp([4, 3, 3], drop_rate=0.5)
PARAMS = MODEL.init(jax.random.key(0))
X, Y = jnp.ones((2, 4)), jnp.array([0, 1])
ROOT = Path(__file__).resolve().parents[1]

BAD_KEYS = {
    "int": 3,
    "float array": jnp.ones(2),
    "string": "abc",
    "typed keys of shape (3,)": jax.random.split(jax.random.key(0), 3),
    "raw key data of shape (3,)": jnp.zeros(3, jnp.uint32),
    "raw keys of shape (2, 2)": jax.random.split(jax.random.PRNGKey(0), 2),
}


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("model", [MODEL, DROPOUT], ids=["plain", "dropout"])
@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_apply_refuses_a_bad_key(model, key):
    # before: a plain model ignored the key; a dropout model raised JAX's TypeError "invalid PRNG key data"
    # or ValueError "split accepts a single key"
    with pytest.raises(jreg.JregTypeError, match="key must be a single JAX PRNG key"):
        model.apply(PARAMS, X, key=key)


def test_apply_takes_good_keys_typed_and_raw():
    for key in (jax.random.key(1), jax.random.PRNGKey(1)):
        assert DROPOUT.apply(PARAMS, X, key=key).shape == (2, 3)
    assert jax.jit(lambda k: DROPOUT.apply(PARAMS, X, key=k))(jax.random.key(1)).shape == (2, 3)


def test_an_objective_refuses_a_bad_key():
    # before: TypeError "JAX encountered invalid PRNG key data" from inside the model's dropout
    objective = jreg.objective(DROPOUT.apply, jreg.losses.cross_entropy)
    with pytest.raises(jreg.JregTypeError, match="key must be a single JAX PRNG key"):
        objective(PARAMS, (X, Y), key=5)


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_a_step_refuses_a_bad_key(key):
    # already a jreg error before this change (make_step checks its key); kept as the issue lists it
    step = jreg.make_step(jreg.objective(DROPOUT.apply, jreg.losses.cross_entropy), optax.sgd(0.1))
    with pytest.raises(jreg.JregTypeError, match="key must be a single JAX PRNG key"):
        step(PARAMS, optax.sgd(0.1).init(PARAMS), (X, Y), key)


# --------------------------------------------------------------------------- losses and one_hot


@pytest.mark.parametrize(
    "loss",
    [
        jreg.losses.cross_entropy,
        jreg.losses.quadratic,
        jreg.losses.log_likelihood,
        jreg.losses.softmax_cross_entropy,
        jreg.losses.sigmoid_cross_entropy,
    ],
)
def test_losses_refuse_none(loss):
    # already jreg errors before this change; kept as the issue lists them
    with pytest.raises(jreg.JregTypeError, match="must be an array, got NoneType"):
        loss(None, Y)
    with pytest.raises(jreg.JregTypeError, match="targets must be an array, got NoneType"):
        loss(jnp.ones((2, 3)), None)


@pytest.mark.parametrize("one_hot", [jreg.losses.one_hot, jreg.data.one_hot], ids=["losses", "data"])
def test_one_hot_refuses_none_labels(one_hot):
    # already a jreg error before this change
    with pytest.raises(jreg.JregTypeError, match="labels must be an array, got NoneType"):
        one_hot(None, 10)


@pytest.mark.parametrize("classes", [None, "3", 2.5, True, 0, -1])
@pytest.mark.parametrize("one_hot", [jreg.losses.one_hot, jreg.data.one_hot], ids=["losses", "data"])
def test_one_hot_refuses_bad_classes(one_hot, classes):
    # before: TypeError "'>=' not supported between instances of 'int' and 'NoneType'", numpy's
    # UFuncTypeError for "3", "'float' object cannot be interpreted as an integer" for 2.5
    with pytest.raises(jreg.JregError, match="classes must be a positive integer"):
        one_hot(Y, classes)


# --------------------------------------------------------------------------- params


MISSING_B = [{"w": PARAMS[0]["w"]}, PARAMS[1]]
B_IS_NONE = [{"w": PARAMS[0]["w"], "b": None}, PARAMS[1]]
LAYER_IS_NONE = [None, PARAMS[1]]
W_IS_A_FLOAT = [{"w": 1.0, "b": PARAMS[0]["b"]}, PARAMS[1]]
BAD_PARAMS = {
    "missing b": (
        MISSING_B,
        r"params\[0\] must be a dict \{'w': \(4, 3\), 'b': \(3,\)\}, got a dict with keys \['w'\]",
    ),
    "b is None": (B_IS_NONE, r"params\[0\]\['b'\] must be an array of shape \(3,\), got NoneType"),
    "layer is None": (LAYER_IS_NONE, r"params\[0\] must be a dict .*, got NoneType"),
    "w is a float": (W_IS_A_FLOAT, r"params\[0\]\['w'\] must be an array of shape \(4, 3\), got float"),
}


@pytest.mark.parametrize("params, match", list(BAD_PARAMS.values()), ids=list(BAD_PARAMS))
def test_apply_refuses_params_missing_b_or_holding_none(params, match):
    # before: KeyError 'b', AttributeError "'NoneType' object has no attribute 'shape'", TypeError
    # "'NoneType' object is not subscriptable"
    with pytest.raises(jreg.JregError, match=match):
        MODEL.apply(params, X)


@pytest.mark.parametrize("params, match", list(BAD_PARAMS.values()), ids=list(BAD_PARAMS))
def test_fit_and_sweep_name_the_bad_layer(params, match):
    # before: a jreg error that only quoted the raw one ("train: ... KeyError: 'b'")
    objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)
    if params is W_IS_A_FLOAT:  # fit's own leaf check comes first
        match = "params: leaf '0/w' is float, not an array"
    with pytest.raises(jreg.JregError, match=match):
        jreg.fit(objective, optax.sgd(0.1), params, (X, Y), epochs=1, batch_size=2, key=jax.random.key(0))
    with pytest.raises(jreg.JregError, match=match):
        jreg.sweep(
            lambda h: (objective, optax.sgd(0.1)),
            params,
            (X, Y),
            hparams={"a": [1.0]},
            epochs=1,
            batch_size=2,
            key=jax.random.key(0),
        )


@pytest.mark.parametrize("params, match", list(BAD_PARAMS.values()), ids=list(BAD_PARAMS))
def test_make_step_refuses_params_missing_b_or_holding_none(params, match):
    # before: KeyError 'b', AttributeError, TypeError from inside the traced step
    step = jreg.make_step(jreg.objective(MODEL.apply, jreg.losses.cross_entropy), optax.sgd(0.1))
    if params is W_IS_A_FLOAT:  # jit turns a Python float into a scalar array, which apply's shape check names
        match = r"params\[0\] must hold w of shape \(4, 3\) and b of shape \(3,\), got w \(\)"
    with pytest.raises(jreg.JregError, match=match):
        step(params, optax.sgd(0.1).init(PARAMS), (X, Y))


def test_penalties_take_any_tree_so_a_missing_b_or_a_none_is_a_correct_result():
    # penalties act on any pytree (None is an empty subtree): these were correct before and stay so
    weights_only = 0.5 * 0.1 * sum(float(jnp.sum(layer["w"] ** 2)) for layer in PARAMS)
    for params in (MISSING_B, B_IS_NONE):
        assert float(jreg.penalties.l2(0.1)(params)) == pytest.approx(weights_only, rel=1e-6)


INT_PARAMS = jax.tree.map(lambda a: (10 * a).astype(jnp.int32), PARAMS)


def test_fit_refuses_integer_weights_naming_the_leaf():
    # already a jreg error before this change (fit checks its params); kept as the issue lists it
    objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)
    with pytest.raises(jreg.JregTypeError, match=r"params: leaf '0/b' must be floating point to be trained, got int32"):
        jreg.fit(objective, optax.sgd(0.1), INT_PARAMS, (X, Y), epochs=1, batch_size=2, key=jax.random.key(0))


def test_make_step_and_make_epoch_refuse_integer_weights_naming_the_leaf():
    # before: TypeError "grad requires real- or complex-valued inputs ... but got int32"
    objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)
    opt_state = optax.sgd(0.1).init(INT_PARAMS)
    match = r"params: leaf '0/b' must be floating point to be trained, got int32\[3\]"
    with pytest.raises(jreg.JregTypeError, match=match):
        jreg.make_step(objective, optax.sgd(0.1))(INT_PARAMS, opt_state, (X, Y))
    with pytest.raises(jreg.JregTypeError, match=match):
        jreg.make_epoch(objective, optax.sgd(0.1), 2)(INT_PARAMS, opt_state, (X, Y), jax.random.key(0))


def test_a_failing_step_with_good_params_keeps_its_own_error():
    """The params check after a failure explains bad params only; a user's own bug comes through unchanged."""

    def broken(params, batch):
        raise ZeroDivisionError("the user's bug")

    with pytest.raises(ZeroDivisionError, match="the user's bug"):
        jreg.make_step(broken, optax.sgd(0.1))(PARAMS, optax.sgd(0.1).init(PARAMS), (X, Y))


@pytest.mark.parametrize("monitor", [5, 5.0, b"x", [5], [None]])
def test_fit_refuses_a_monitor_that_is_not_series_names(monitor):
    # already a jreg error before this change; kept as the issue lists it
    objective = jreg.objective(MODEL.apply, jreg.losses.cross_entropy)
    with pytest.raises(jreg.JregError, match="monitor must be a sequence of series names"):
        jreg.fit(
            objective, optax.sgd(0.1), PARAMS, (X, Y), epochs=1, batch_size=2, key=jax.random.key(0), monitor=monitor
        )


# --------------------------------------------------------------------------- data.expand


@pytest.mark.parametrize(
    "side, error",
    [("28", jreg.JregTypeError), (28.0, jreg.JregTypeError), (None, jreg.JregTypeError), (True, jreg.JregTypeError)]
    + [(0, jreg.JregError), (-28, jreg.JregError)],
)
def test_expand_refuses_a_side_that_is_not_a_positive_integer(side, error):
    # before: TypeError "can't multiply sequence by non-int of type 'str'", "Shapes must be 1D sequences of
    # concrete values of integer type" (28.0), "reshape new_sizes must all be positive" (-28); True passed as 1
    with pytest.raises(error, match="side must be a positive integer"):
        jreg.data.expand((jnp.ones((3, 784)), jnp.arange(3)), side=side)


@pytest.mark.parametrize(
    "data, match",
    [
        ((None, jnp.arange(3)), "data: x must be an array with a leading axis of examples, got NoneType"),
        (("abc", jnp.arange(3)), "data: x must be an array with a leading axis of examples, got str"),
        (([[0.0] * 4] * 3, jnp.arange(3)), "data: x must be an array with a leading axis of examples, got list"),
        ((np.full((3, 4), "a"), np.arange(3)), "data: x must hold pixel values"),
    ],
)
def test_expand_names_what_its_data_should_be(data, match):
    # before: "got ()" for None or a string and "got (3, 4)" for a list (its shape, though it is no array);
    # an array of strings reached jnp.roll
    with pytest.raises(jreg.JregError, match=match):
        jreg.data.expand(data, side=2)


def test_expand_with_a_numpy_integer_side_still_works():
    xs, ys = jreg.data.expand((jnp.arange(8.0).reshape(2, 4), jnp.arange(2)), side=np.int64(2))
    assert xs.shape == (10, 4) and ys.shape == (10,)


# --------------------------------------------------------------------------- nuclear_norm in low precision


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_nuclear_norm_works_in_low_precision_against_a_float32_reference(dtype):
    # before: NotImplementedError "Unsupported dtype bfloat16" from XLA's SVD (value, gradient and prox)
    params = jreg.mlp([6, 5, 4]).init(jax.random.key(1))
    low = jax.tree.map(lambda a: a.astype(dtype), params)
    reference = jax.tree.map(lambda a: a.astype(jnp.float32), low)  # the same rounded weights, in float32
    penalty = jreg.penalties.nuclear_norm(0.3)
    value = penalty(low)
    assert value.dtype == dtype
    tol = float(jnp.finfo(dtype).eps) * 4
    assert float(value) == pytest.approx(float(penalty(reference)), rel=tol)
    grads, ref_grads = jax.grad(penalty)(low), jax.grad(penalty)(reference)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        assert g.dtype == dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), r, atol=tol, rtol=tol)
    shrunk, ref_shrunk = penalty.prox(low, 0.5), penalty.prox(reference, 0.5)
    for s, r in zip(jax.tree.leaves(shrunk), jax.tree.leaves(ref_shrunk)):
        assert s.dtype == dtype
        np.testing.assert_allclose(np.asarray(s, np.float32), r, atol=2 * tol, rtol=2 * tol)


# --------------------------------------------------------------------------- the CLI


def run_cli(*argv: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "jreg", *argv], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    return done, time.perf_counter() - started


def test_demo_with_an_existing_file_as_out_fails_at_once_and_leaves_the_file(tmp_path):
    """The done-when of issue 12: a one-line message, exit status 2, before any training, the file untouched.

    Before: the demo trained for the whole run (400 epochs) and then lost its results in a
    FileExistsError traceback. The time is the interpreter's start, ``import jreg`` (which loads no JAX:
    see the next test) and a few system calls, about 0.3 s here: asserted loosely, since other processes
    share this machine.
    """
    target = tmp_path / "results"
    target.write_bytes(b"a user's file\n")
    done, seconds = run_cli("demo", "--out", str(target), "--quiet")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("jreg demo: error: --out: ")
    assert "is a file, not a folder" in done.stderr and done.stdout == ""
    assert target.read_bytes() == b"a user's file\n"
    print(f"jreg demo --out <existing file>: exit 2 after {seconds:.2f} s")
    assert seconds < 5


def test_import_jreg_and_a_refused_command_line_load_no_jax():
    """Why the refusal is quick: ``import jreg`` loads its submodules (and JAX, ~1 s) on first use only."""
    code = (
        "import sys, jreg, jreg.cli\n"
        "assert 'jax' not in sys.modules, 'import jreg loaded jax'\n"
        "try:\n"
        "    jreg.cli.main(['demo', '--out', sys.argv[1], '--quiet'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 2, exc.code\n"
        "assert 'jax' not in sys.modules, 'the refused command line loaded jax'\n"
        "assert callable(jreg.objective) and jreg.fit.__module__ == 'jreg.train.fit'\n"
        "import jreg.objective\n"
        "assert callable(jreg.objective), 'importing the submodule replaced the function'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code, __file__], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--seed", "99999999999999999999"], "argument --seed: must be an integer from 0 to 4294967294"),
        (["--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967294"),
        (["--seed", "4294967295"], "argument --seed: must be an integer from 0 to 4294967294"),
        (["--seed", "abc"], "argument --seed: must be an integer, got 'abc'"),
        (["--epochs", "0"], "argument --epochs: must be a positive integer"),
        (["--epochs", "x"], "argument --epochs: must be an integer, got 'x'"),
        (["--eta", "fast"], "argument --eta: must be a number, got 'fast'"),
        (["--lmbda"], "argument --lmbda: expected at least one argument"),
        (["--out", ""], "argument --out: must be a folder name"),
        (["--init", "huge"], "argument --init: invalid choice"),
    ],
)
def test_demo_reports_a_bad_option_in_one_line(argv, match, capsys, monkeypatch):
    # before: a seed too large for a key raised OverflowError from jax.random.key (a traceback); the other
    # options gave argparse's usage block and "invalid _positive_int value" style messages
    monkeypatch.setattr(cli, "demo", lambda args: pytest.fail("the demo must not start"))
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("jreg demo: error: ")
    assert match in err


def test_a_demo_error_raised_by_jreg_becomes_a_one_line_usage_error(tmp_path, capsys, monkeypatch):
    # before: a JregError (e.g. a --batch-size larger than the 1,000 training images) was a traceback
    def refuses(args):
        raise jreg.JregError("batch_size must be at most the number of training examples (1000),\ngot 5000")

    monkeypatch.setattr(cli, "demo", refuses)
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--out", str(tmp_path / "new")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "jreg demo: error: batch_size must be at most the number of training examples (1000), got 5000" in err


def out_error(out: Path, capsys, monkeypatch, *extra: str) -> str:
    monkeypatch.setattr(cli, "demo", lambda args: pytest.fail("the demo must not start"))
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("jreg demo: error: --out: ")
    return err


def test_demo_refuses_an_out_inside_a_file(tmp_path, capsys, monkeypatch):
    # before: trained the whole run, then NotADirectoryError / FileExistsError from mkdir
    (tmp_path / "f").write_text("x")
    assert "is a file, so" in out_error(tmp_path / "f" / "sub" / "deeper", capsys, monkeypatch)


def test_demo_refuses_a_folder_it_cannot_write(tmp_path, capsys, monkeypatch):
    # before: trained the whole run, then PermissionError. (os.access is stubbed: root may write anywhere.)
    real_access = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    assert "cannot write the folder" in out_error(tmp_path / "new", capsys, monkeypatch)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_demo_refuses_a_read_only_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert "cannot write into" in out_error(folder, capsys, monkeypatch)
    finally:
        folder.chmod(0o755)


def test_demo_refuses_a_folder_holding_an_earlier_runs_results(tmp_path, capsys, monkeypatch):
    # before: an existing results.json (a user's, or an earlier run's) was silently replaced
    (tmp_path / "results.json").write_text('{"mine": 1}')
    err = out_error(tmp_path, capsys, monkeypatch)
    assert "results.json already exists" in err and "--overwrite" in err
    assert (tmp_path / "results.json").read_text() == '{"mine": 1}'
    (tmp_path / "results.json").unlink()
    (tmp_path / "overfitting.png").mkdir()  # --overwrite replaces plain files only
    assert "not a plain file" in out_error(tmp_path, capsys, monkeypatch, "--overwrite")


def test_publish_never_replaces_a_file_that_appeared_during_the_run(tmp_path):
    target = tmp_path / "results.json"
    assert cli.publish(target, b"first") == target
    assert cli.publish(target, b"second") == tmp_path / "results-2.json"
    assert target.read_bytes() == b"first" and (tmp_path / "results-2.json").read_bytes() == b"second"
    assert cli.publish(target, b"third", overwrite=True) == target and target.read_bytes() == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results-2.json", "results.json"]  # no temporary left


def test_demo_overwrite_replaces_its_two_files_and_nothing_else(tmp_path, capsys):
    (tmp_path / "results.json").write_text("old")
    (tmp_path / "notes.txt").write_text("a user's notes")
    argv = ["demo", "--epochs", "1", "--hidden", "5", "--lmbda", "0.1", "--out", str(tmp_path), "--quiet"]
    assert cli.main([*argv, "--overwrite"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["lmbda"] == 0.1
    assert (tmp_path / "overfitting.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "notes.txt").read_text() == "a user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "overfitting.png", "results.json"]


# --------------------------------------------------------------------------- keywords: misspelt, missing, legacy

OBJ = jreg.objective(MODEL.apply, jreg.losses.softmax_cross_entropy)
DATA = (jnp.ones((8, 4)), jnp.arange(8) % 3)


def build(hp):
    return OBJ, optax.sgd(0.1)


#: each front end called with what it requires (its checks run before any work)
FRONT_ENDS = {
    "fit": (lambda **kw: jreg.fit(OBJ, optax.sgd(0.1), PARAMS, DATA, **kw), dict(epochs=1, batch_size=4)),
    "sweep": (lambda **kw: jreg.sweep(build, PARAMS, DATA, **kw), dict(hparams={"a": [1.0]}, epochs=1, batch_size=4)),
    "regularization_path": (
        lambda **kw: jreg.regularization_path(build, PARAMS, DATA, **kw),
        dict(epochs=1, batch_size=4),
    ),
    "pbt": (
        lambda **kw: jreg.pbt(build, PARAMS, DATA, **kw),
        dict(hparams={"a": [1.0, 2.0]}, explore={"a": (0.8, 1.25)}, every=1, epochs=2, batch_size=4),
    ),
}


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize(
    "wrong, right", [("epoch", "epochs"), ("batchsize", "batch_size"), ("evaluaton", "evaluation"), ("kye", "key")]
)
def test_a_misspelt_keyword_says_did_you_mean(front_end, wrong, right):
    call, required = FRONT_ENDS[front_end]
    kw = {**required, "key": jax.random.key(0)}
    kw[wrong] = kw.pop(right, None)
    with pytest.raises(
        jreg.JregTypeError,
        match=rf"^{front_end}\(\) got unexpected keyword argument\(s\) \['{wrong}'\]: did you mean '{right}'\?$",
    ):
        call(**kw)


def test_several_misspelt_keywords_are_all_named_and_a_stranger_lists_the_real_ones():
    call, _ = FRONT_ENDS["fit"]
    with pytest.raises(
        jreg.JregTypeError,
        match=r"\['batchsize', 'epoch'\]: did you mean 'batch_size' \(for 'batchsize'\), 'epochs' \(for 'epoch'\)\?",
    ):
        call(epoch=1, batchsize=4, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"\['zzz'\]; its keyword arguments are batch_size, callback, "):
        call(epochs=1, batch_size=4, key=jax.random.key(0), zzz=1)  # still a TypeError for `except TypeError`


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("left_out", ["key", "epochs", "batch_size"])
def test_a_missing_required_keyword_names_it_and_the_fix(front_end, left_out):
    call, required = FRONT_ENDS[front_end]
    kw = {**required, "key": jax.random.key(0)}
    del kw[left_out]
    fix = {
        "key": r"key= is required: pass a JAX PRNG key, e\.g\. key=jax\.random\.key\(0\)",
        "epochs": r"epochs= is required: .* e\.g\. epochs=30",
        "batch_size": r"batch_size= is required: .* batch_size=10",
    }
    with pytest.raises(jreg.JregTypeError, match=rf"^{front_end}\(\): {fix[left_out]}"):
        call(**kw)


def test_missing_or_surplus_positional_arguments_show_the_call():
    with pytest.raises(
        jreg.JregTypeError,
        match=r"^fit\(\) is missing the argument\(s\) params, train: call fit\(objective, optimizer, params, train, "
        r"\*, epochs=\.\.\., batch_size=\.\.\., key=\.\.\., \.\.\.\)",
    ):
        jreg.fit(OBJ, optax.sgd(0.1), epochs=1, batch_size=4, key=jax.random.key(0))
    with pytest.raises(
        jreg.JregTypeError,
        match=r"fit\(\) takes 4 positional argument\(s\) .* but 6 were given; "
        r"pass the others by keyword \(epochs=, batch_size=, key=\.\.\.\)",
    ):
        jreg.fit(OBJ, optax.sgd(0.1), PARAMS, DATA, 1, 4)
    with pytest.raises(jreg.JregTypeError, match=r"sweep\(\): hparams= is required: pass \{name: K values\}"):
        jreg.sweep(build, PARAMS, DATA, epochs=1, batch_size=4, key=jax.random.key(0))
    with pytest.raises(jreg.JregTypeError, match=r"fit\(\) got 'train' twice"):
        jreg.fit(OBJ, optax.sgd(0.1), PARAMS, DATA, train=DATA, epochs=1, batch_size=4, key=jax.random.key(0))


def test_make_step_and_make_epoch_say_did_you_mean():
    with pytest.raises(jreg.JregTypeError, match=r"^make_step\(\) .*\['donat'\]: did you mean 'donate'\?"):
        jreg.make_step(OBJ, optax.sgd(0.1), donat=True)
    with pytest.raises(jreg.JregTypeError, match=r"^make_epoch\(\) .*did you mean 'partial_batch'\?"):
        jreg.make_epoch(OBJ, optax.sgd(0.1), 4, partial_batches="drop")
    with pytest.raises(jreg.JregTypeError, match=r"^make_step\(\) is missing the argument\(s\) optimizer"):
        jreg.make_step(OBJ)


def test_unsupported_and_older_keywords_keep_their_own_errors():
    """pbt/path name the sweep options they refuse; fit's older keywords still reach fit (and warn)."""
    call, required = FRONT_ENDS["pbt"]
    with pytest.raises(jreg.JregTypeError, match=r"pbt\(\) does not support callback="):
        call(**required, key=jax.random.key(0), callback=print)
    call, required = FRONT_ENDS["regularization_path"]
    with pytest.raises(jreg.JregTypeError, match=r"regularization_path\(\) does not support ema="):
        call(**required, key=jax.random.key(0), ema=jreg.EMA())
    with pytest.raises(jreg.JregError, match="keep must be a positive integer"), pytest.warns(DeprecationWarning):
        FRONT_ENDS["fit"][0](epochs=1, batch_size=4, key=jax.random.key(0), keep=0)


def test_the_front_ends_keep_their_readable_signatures():
    import inspect

    sig = inspect.signature(jreg.fit)
    assert list(sig.parameters)[:7] == ["objective", "optimizer", "params", "train", "epochs", "batch_size", "key"]
    assert sig.parameters["key"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["key"].default is inspect.Parameter.empty  # required, as the docs say
    for fn in (jreg.sweep, jreg.regularization_path, jreg.pbt, jreg.make_step, jreg.make_epoch):
        assert (
            "key" not in inspect.signature(fn).parameters
            or inspect.signature(fn).parameters["key"].default is inspect.Parameter.empty
        )
    assert jreg.fit.__name__ == "fit" and "Train for ``epochs`` epochs" in jreg.fit.__doc__


# --------------------------------------------------------------------------- the package's names


def test_dir_of_jreg_lists_only_public_names():
    names = dir(jreg)
    for private in ("sys", "Any", "importlib", "types", "annotations", "TYPE_CHECKING", "_Package", "_FROM"):
        assert private not in names
    assert not [n for n in names if n.startswith("_") and n != "__version__"]
    assert names == sorted(jreg.__all__)
    assert {"fit", "sweep", "regularization_path", "pbt", "Evaluation", "JregError"} <= set(names)
    assert all(hasattr(jreg, n) for n in names)  # each one loads


# --------------------------------------------------------------------------- the demo's progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_demo_progress_is_one_plain_line_per_epoch_off_a_terminal():
    stream = io.StringIO()  # a log file or a CI log: not a terminal
    update, close = cli.epoch_progress(3, [0.0, 0.1], stream=stream)
    for epoch in range(3):
        update(epoch, {"evaluation_accuracy": np.array([0.5, 0.25 * epoch])})
    close()
    text = stream.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        "training: epoch 1/3: test acc λ=0: 50.00%  λ=0.1: 0.00%",
        "training: epoch 2/3: test acc λ=0: 50.00%  λ=0.1: 25.00%",
        "training: epoch 3/3: test acc λ=0: 50.00%  λ=0.1: 50.00%",
    ]
    terminal = _Terminal()
    update, close = cli.epoch_progress(3, [0.0], stream=terminal)
    update(0, {"evaluation_accuracy": np.array([0.5])})
    close()
    assert "\r" in terminal.getvalue()  # a terminal gets tqdm's bar
    quiet = io.StringIO()
    update, close = cli.epoch_progress(3, [0.0], quiet=True, stream=quiet)
    update(0, {"evaluation_accuracy": np.array([0.5])})
    close()
    assert quiet.getvalue() == ""


def test_the_demo_under_a_captured_stderr_prints_one_line_per_epoch(tmp_path, capsys):
    argv = ["demo", "--epochs", "3", "--hidden", "5", "--lmbda", "0.1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(":")[1] for line in err.splitlines()] == [" epoch 1/3", " epoch 2/3", " epoch 3/3"]
