"""Review of the "Fast by default" landing (issue 25): hostile probes of vectorize="auto", the wide sweep's
left-products rewrite and per-leaf layout, cross-validation as wide sweeps, and the MLflow pacing.

Each probe compares the new default against ``vectorize="vmap"`` (to float tolerance) or expects a clear jreg error.
Probes that found a defect are marked ``# DEFECT:``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train import prepare

from .test_train import toy

N = 12


def _obj(apply):
    return jreg.objective(apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-3))


def _build(apply):
    def build(hp):
        return _obj(apply), optax.sgd(hp["eta"])

    return build


def _sweep(apply, params, vectorize, **kw):
    kw.setdefault("hparams", {"eta": [0.1, 0.05, 0.2, 0.02]})  # K = 4: "auto" picks "wide" on a CPU from K = 4
    return jreg.sweep(
        _build(apply), params, toy(N, d=6), epochs=2, batch_size=4, key=jax.random.key(3), vectorize=vectorize, **kw
    )


def _close(a, b, tol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=tol, atol=tol)


def _auto_equals_vmap(apply, params, tol=1e-5, **kw):
    auto = _sweep(apply, params, "auto", **kw)
    ref = _sweep(apply, params, "vmap", **kw)
    _close(auto.params, ref.params, tol)
    np.testing.assert_allclose(np.asarray(auto.history["epoch_loss"]), np.asarray(ref.history["epoch_loss"]), rtol=tol)
    return auto


# ---- models --------------------------------------------------------------------------------------------------------


def test_both_sides_square_weight():
    """A params leaf used as both ``x @ W`` and ``W @ x``-style (``h @ W.T``): the rewrite must treat both."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {"W": 0.3 * jax.random.normal(k[0], (6, 6)), "V": 0.3 * jax.random.normal(k[1], (6, 3))}

    def apply(p, x):
        h = jnp.tanh(x @ p["W"])
        h = jnp.tanh(jnp.einsum("ij,bj->bi", p["W"], h))  # W @ h per example
        return h @ p["V"]

    _auto_equals_vmap(apply, params)


def test_shared_weight_two_layers():
    """One weight used by two layers (tied): its gradient is the sum of both uses."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {"W": 0.3 * jax.random.normal(k[0], (6, 6)), "V": 0.3 * jax.random.normal(k[1], (6, 3))}

    def apply(p, x):
        return jnp.tanh(jnp.tanh(x @ p["W"]) @ p["W"]) @ p["V"]

    _auto_equals_vmap(apply, params)


def test_mixed_matrix_and_3d_kernel_auto_not_wide():
    """A params pytree mixing matrices and a 3-D kernel: auto must not pick wide, and must still train."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {"K": 0.3 * jax.random.normal(k[0], (2, 6, 4)), "V": 0.3 * jax.random.normal(k[1], (4, 3))}
    assert prepare.default_vectorize("auto", 4, params=params) != "wide"

    def apply(p, x):
        return jnp.tanh(jnp.einsum("bi,kio->bo", x, p["K"])) @ p["V"]

    _auto_equals_vmap(apply, params, hparams={"eta": [0.1, 0.05, 0.2, 0.3]})


def test_loss_calls_jvp():
    """A model whose forward pass calls ``jax.jvp`` (a directional derivative as a feature)."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {"W": 0.3 * jax.random.normal(k[0], (6, 5)), "V": 0.3 * jax.random.normal(k[1], (5, 3))}

    def apply(p, x):
        f = lambda w: jnp.tanh(x @ w)  # noqa: E731
        h, dh = jax.jvp(f, (p["W"],), (jnp.ones_like(p["W"]),))
        return (h + 0.1 * dh) @ p["V"]

    _auto_equals_vmap(apply, params)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(dtype):
    """bfloat16/float16 params: auto (wide) equals vmap to the dtype's precision, or a clear error."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {
        "W": (0.3 * jax.random.normal(k[0], (6, 5))).astype(dtype),
        "V": (0.3 * jax.random.normal(k[1], (5, 3))).astype(dtype),
    }

    def apply(p, x):
        return jnp.tanh(x.astype(dtype) @ p["W"]) @ p["V"]

    try:
        auto = _sweep(apply, params, "auto")
    except jreg._errors.JregError:
        return
    ref = _sweep(apply, params, "vmap")
    assert jax.tree.leaves(auto.params)[0].dtype == dtype
    _close(auto.params, ref.params, 2e-2)


def test_stacked_params_auto():
    """stacked_params=True with auto: per-model init stacked along K."""
    model = jreg.mlp([6, 5, 3])
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(1), 4))
    _auto_equals_vmap(model.apply, params, stacked_params=True)


def test_scalar_and_vector_leaves():
    """A scalar temperature and a vector used in a matrix-vector product ``x @ v`` (dot_general with a 1-D leaf)."""
    k = jax.random.split(jax.random.key(0), 3)
    params = {
        "W": 0.3 * jax.random.normal(k[0], (6, 3)),
        "v": 0.3 * jax.random.normal(k[1], (6,)),
        "t": jnp.float32(1.5),
    }

    def apply(p, x):
        return (x @ p["W"]) * p["t"] + (x @ p["v"])[:, None]

    _auto_equals_vmap(apply, params)


def test_int_params_leaf():
    """An integer params leaf (a frozen index): auto gives vmap's result or a clear jreg error, never a raw one."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {"W": 0.3 * jax.random.normal(k[0], (6, 3)), "shift": jnp.arange(3, dtype=jnp.int32)}

    def apply(p, x):
        return x @ p["W"] + p["shift"].astype(x.dtype)

    outcomes = {}
    for v in ("auto", "vmap"):
        try:
            outcomes[v] = _sweep(apply, params, v)
        except jreg._errors.JregError as e:
            outcomes[v] = e
    assert type(outcomes["auto"]) is type(outcomes["vmap"]), outcomes
    if not isinstance(outcomes["auto"], Exception):
        _close(outcomes["auto"].params, outcomes["vmap"].params)


# ---- stateful model, EMA, early stopping, checkpoints under the new defaults ---------------------------------------

from .test_model_state import init as _state_init  # noqa: E402
from .test_model_state import objective as _state_objective  # noqa: E402


def _stateful_kw(**extra):
    params, state = _state_init(jax.random.key(0))
    kw = dict(
        hparams={"lam": [0.0, 0.05], "eta": [0.5, 3.0]},
        epochs=4,
        batch_size=4,
        key=jax.random.key(5),
        model_state=state,
        evaluation=toy(8, seed=1),
        ema=jreg.EMA(0.9, evaluate=False),
        early_stopping=jreg.EarlyStopping(patience=1, monitor="evaluation_cost", restore_best=True),
    )
    kw.update(extra)
    return params, kw


def _stateful_build(h):
    return _state_objective(h["lam"]), optax.sgd(h["eta"])


def test_k2_stateful_ema_early_stopping_auto_equals_vmap():
    params, kw = _stateful_kw()
    auto = jreg.sweep(_stateful_build, params, toy(N), **kw)
    ref = jreg.sweep(_stateful_build, params, toy(N), vectorize="vmap", **kw)
    _close(auto.params, ref.params)
    _close(auto.model_state, ref.model_state)
    np.testing.assert_allclose(
        np.asarray(auto.history["evaluation_cost"]), np.asarray(ref.history["evaluation_cost"]), rtol=1e-5
    )


class _Stop(Exception):
    pass


def _interrupt_after(epoch):
    def callback(e, metrics):
        if e + 1 == epoch:
            raise _Stop

    return callback


def _leaves_equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_auto_sweep_resumed_bit_for_bit(tmp_path):
    params, kw = _stateful_kw()
    whole = jreg.sweep(_stateful_build, params, toy(N), **kw)
    folder = tmp_path / "ck"
    with pytest.raises(_Stop):
        jreg.sweep(
            _stateful_build, params, toy(N), checkpoint=jreg.Checkpointing(folder), callback=_interrupt_after(2), **kw
        )
    resumed = jreg.sweep(_stateful_build, params, toy(N), checkpoint=jreg.Checkpointing(folder), resume=folder, **kw)
    _leaves_equal(resumed.params, whole.params)
    _leaves_equal(resumed.model_state, whole.model_state)


def test_vmap_checkpoint_resumed_with_default(tmp_path):
    """A checkpoint written with vectorize="vmap" resumed with the default ("auto" -> "wide"): either it resumes to
    vmap's result (to float tolerance) or a clear jreg error says the formulation changed."""
    params, kw = _stateful_kw()
    whole = jreg.sweep(_stateful_build, params, toy(N), vectorize="vmap", **kw)
    folder = tmp_path / "ck"
    with pytest.raises(_Stop):
        jreg.sweep(
            _stateful_build,
            params,
            toy(N),
            checkpoint=jreg.Checkpointing(folder),
            callback=_interrupt_after(2),
            vectorize="vmap",
            **kw,
        )
    try:
        resumed = jreg.sweep(
            _stateful_build, params, toy(N), checkpoint=jreg.Checkpointing(folder), resume=folder, **kw
        )
    except jreg._errors.JregError as e:
        assert "vectorize" in str(e)
        return
    _close(resumed.params, whole.params)
    _close(resumed.model_state, whole.model_state)


# ---- cross-validation as wide sweeps --------------------------------------------------------------------------------

_CV_MODEL = jreg.mlp([6, 5, 3])
_CV_PARAMS = _CV_MODEL.init(jax.random.key(1))


def _cv_build(hp):
    obj = jreg.objective(_CV_MODEL.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(0.3)


def _cv(vectorize, lmbdas, **kw):
    kw.setdefault("folds", 3)
    return jreg.cross_validate(_cv_build, _CV_PARAMS, toy(14), hparams={"lmbda": lmbdas}, epochs=2, batch_size=4,
                               key=jax.random.key(2), vectorize=vectorize, **kw)  # fmt: skip


def test_cv_one_setting_auto_not_wide():
    from jreg.train import members as per_member  # noqa: F401

    auto, ref = _cv("auto", [0.01]), _cv("vmap", [0.01])
    _close(auto.params, ref.params)
    _close(auto.mean, ref.mean)


def test_cv_unequal_explicit_folds():
    folds = [np.arange(0, 2), np.arange(2, 7), np.arange(7, 14)]
    auto, ref = _cv("auto", [0.0, 0.01], folds=folds), _cv("vmap", [0.0, 0.01], folds=folds)
    _close(auto.params, ref.params)
    _close(auto.mean, ref.mean)


def test_cv_early_stopping_checkpoint_resume_bit_for_bit(tmp_path):
    kw = dict(early_stopping=jreg.EarlyStopping(patience=1, monitor="evaluation_cost", restore_best=True))
    whole = jreg.cross_validate(_cv_build, _CV_PARAMS, toy(14), hparams={"lmbda": [0.0, 0.01]}, folds=3, epochs=4,
                                batch_size=4, key=jax.random.key(2), **kw)  # fmt: skip
    folder = tmp_path / "cv"
    with pytest.raises(_Stop):
        jreg.cross_validate(_cv_build, _CV_PARAMS, toy(14), hparams={"lmbda": [0.0, 0.01]}, folds=3, epochs=4,
                            batch_size=4, key=jax.random.key(2), checkpoint=jreg.Checkpointing(folder),
                            callback=_interrupt_after(2), **kw)  # fmt: skip
    resumed = jreg.cross_validate(_cv_build, _CV_PARAMS, toy(14), hparams={"lmbda": [0.0, 0.01]}, folds=3, epochs=4,
                                  batch_size=4, key=jax.random.key(2), checkpoint=jreg.Checkpointing(folder),
                                  resume=folder, **kw)  # fmt: skip
    _leaves_equal(resumed.params, whole.params)
    np.testing.assert_array_equal(np.asarray(resumed.mean), np.asarray(whole.mean))


def test_cv_custom_model_wide_equals_vmap():
    """A non-jreg.mlp model (left_products rewrite) in a CV wide sweep, its mini-batches gathered per fold."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {"W": 0.3 * jax.random.normal(k[0], (6, 5)), "V": 0.3 * jax.random.normal(k[1], (5, 3))}

    def apply(p, x):
        return jnp.tanh(x @ p["W"]) @ p["V"]

    def build(hp):
        return jreg.objective(apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(0.3)

    kw = dict(hparams={"lmbda": [0.0, 0.01]}, folds=3, epochs=2, batch_size=4, key=jax.random.key(2))
    out = {v: jreg.cross_validate(build, params, toy(14), vectorize=v, **kw) for v in ("auto", "vmap")}
    _close(out["auto"].params, out["vmap"].params)


# ---- MLflow pacing ---------------------------------------------------------------------------------------------------


class _Client:
    def __init__(self):
        import threading

        self.calls, self.lock = [], threading.Lock()

    def log_batch(self, run_id, metrics=(), params=(), synchronous=True):
        with self.lock:
            self.calls.append((run_id, [(m.key, m.value, m.step) for m in metrics]))

    def set_terminated(self, run_id):
        with self.lock:
            self.calls.append((run_id, "terminated"))


def test_mlflow_every_huge_int_is_a_clear_error():
    # DEFECT: MLflow(every=10**400) passes the finite check (an int is never == inf) and then float(every) raises a
    # raw OverflowError ("int too large to convert to float") instead of the JregTypeError naming `every`.
    pytest.importorskip("mlflow")
    with pytest.raises(jreg.JregTypeError, match="every must be a finite number of seconds"):
        jreg.writers.MLflow(every=10**400)


@pytest.mark.parametrize("every", [1e-300, 1e300])
def test_mlflow_every_tiny_and_huge_lose_nothing(every):
    """A tiny `every` sends each epoch; a huge one holds everything until close, which sends it all."""
    pytest.importorskip("mlflow")
    from jreg.writers._mlflow import _Pace, _Run

    client, pace = _Client(), _Pace(every)
    runs = [_Run(client, r, resumed=False, asynchronous=True, pace=pace) for r in ("a", "b")]
    for step in range(1, 6):
        for run in runs:
            run.write_scalars(step, {"loss": float(step)})
    for run in runs:
        run.close()
    for r in ("a", "b"):
        sent = [s for rid, m in client.calls if rid == r and m != "terminated" for _, _, s in m]
        assert sorted(sent) == [1, 2, 3, 4, 5]
        assert (r, "terminated") in client.calls


def test_mlflow_close_waits_for_batches_in_flight_before_sending_the_rest():
    # DEFECT: _Run.close() sends the metrics it holds synchronously on the caller's thread BEFORE waiting for the
    # batches still in flight on the sender thread (`if self.held: self._send(synchronous=True)` then `self.flush()`):
    # two threads use the MLflow client at once (the "one background thread" promise; SQLite stores), and a run's
    # batches arrive out of order (seen with every=1e-300: step 1 logged after steps 2-5).
    pytest.importorskip("mlflow")
    import threading
    import time

    from jreg.writers._mlflow import _Pace, _Run

    class Slow(_Client):
        active = 0

        def log_batch(self, run_id, metrics=(), params=(), synchronous=True):
            Slow.active += 1
            overlap = Slow.active > 1
            if threading.current_thread() is not threading.main_thread():
                time.sleep(0.2)  # a slow store: the batch is still in flight when close() is called
            Slow.active -= 1
            with self.lock:
                self.calls.append((run_id, [m.step for m in metrics], overlap))

    now = [0.0]
    pace = _Pace(5.0, clock=lambda: now[0])
    client = Slow()
    run = _Run(client, "a", resumed=False, asynchronous=True, pace=pace)
    now[0] = 10.0
    run.write_scalars(1, {"loss": 1.0})  # a round is due: sent on the sender thread (sleeps)
    run.write_scalars(2, {"loss": 2.0})  # same round: held
    run.close()
    batches = [c for c in client.calls if c[1] != "terminated"]
    assert [b[1] for b in batches] == [[1], [2]]
    assert not any(b[2] for b in batches), "two threads logged to the client at once"


def test_mlflow_pace_threads():
    """_Pace under concurrent current()/spent(): rounds only grow, no error."""
    import threading

    from jreg.writers._mlflow import _Pace

    pace, seen, errors = _Pace(1e-6), [], []

    def work():
        try:
            last = -1
            for _ in range(2000):
                r = pace.current()
                assert r >= last
                last = r
                pace.spent(1e-9)
            seen.append(last)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(seen) == 4 and pace.round >= max(seen)


# ---- PBT and the regularization path under auto ---------------------------------------------------------------------


def _custom_build(hp):
    k = jax.random.split(jax.random.key(0), 2)
    del k

    def apply(p, x):
        return jnp.tanh(x @ p["W"]) @ p["V"]

    obj = jreg.objective(apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"]))
    return obj, optax.sgd(hp["eta"], momentum=0.9)


_CUSTOM = {
    "W": 0.3 * jax.random.normal(jax.random.key(10), (6, 5)),
    "V": 0.3 * jax.random.normal(jax.random.key(11), (5, 3)),
}


def test_pbt_auto_equals_vmap():
    kw = dict(hparams={"lmbda": [0.0, 0.01, 0.1, 1.0], "eta": [0.05, 0.3, 1.0, 2.0]},
              explore={"lmbda": (0.8, 1.25), "eta": (0.5, 2.0)}, every=1, epochs=2, batch_size=4,
              key=jax.random.key(3), evaluation=toy(8, seed=1))  # fmt: skip
    auto = jreg.pbt(_custom_build, _CUSTOM, toy(N), **kw)
    ref = jreg.pbt(_custom_build, _CUSTOM, toy(N), vectorize="vmap", **kw)
    _close(auto.params, ref.params, 1e-4)


def test_regularization_path_auto_equals_vmap():
    kw = dict(strengths=[0.1, 0.01, 0.001], hparams={"eta": 0.5}, epochs=2, batch_size=4, key=jax.random.key(0))
    auto = jreg.regularization_path(_custom_build, _CUSTOM, toy(N), **kw)
    ref = jreg.regularization_path(_custom_build, _CUSTOM, toy(N), vectorize="vmap", **kw)
    _close(auto.params, ref.params)


def test_product_of_two_params_and_a_gram_penalty():
    """Low-rank W = A @ B (a dot_general of two params, neither the mini-batch) and a loss term W·Wᵀ on a param."""
    k = jax.random.split(jax.random.key(0), 3)
    params = {
        "A": 0.3 * jax.random.normal(k[0], (6, 2)),
        "B": 0.3 * jax.random.normal(k[1], (2, 5)),
        "V": 0.3 * jax.random.normal(k[2], (5, 3)),
    }

    def apply(p, x):
        w = p["A"] @ p["B"]
        gram = p["V"].T @ p["V"]  # (3, 3)
        return jnp.tanh(x @ w) @ p["V"] + 1e-2 * jnp.trace(gram)

    _auto_equals_vmap(apply, params)


def test_member_of_auto_sweep_equals_fit():
    """Model i of a default sweep equals jreg.fit with its hyperparameters (fit now runs as a one-model vmap)."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {"W": 0.3 * jax.random.normal(k[0], (6, 5)), "V": 0.3 * jax.random.normal(k[1], (5, 3))}

    def apply(p, x):
        return jnp.tanh(x @ p["W"]) @ p["V"]

    swept = _sweep(apply, params, "auto", hparams={"eta": [0.1, 0.05, 0.3]})
    for i, eta in enumerate([0.1, 0.05, 0.3]):
        one = jreg.fit(_obj(apply), optax.sgd(eta), params, toy(N, d=6), epochs=2, batch_size=4, key=jax.random.key(3))
        _close(jax.tree.map(lambda a, i=i: a[i], swept.params), one.params)


def test_embedding_gather_matrix_in_wide():
    """A matrix leaf used as an embedding table (a gather, not a matmul) and a matrix used elementwise: auto picks
    wide (every leaf is at most a matrix) and must still equal vmap."""
    k = jax.random.split(jax.random.key(0), 3)
    params = {
        "E": 0.3 * jax.random.normal(k[0], (6, 4)),
        "M": 0.3 * jax.random.normal(k[1], (6, 4)),
        "V": 0.3 * jax.random.normal(k[2], (4, 3)),
    }

    def apply(p, x):
        idx = jnp.argmax(x, axis=1)
        h = p["E"][idx] + (x[:, :, None] * p["M"][None]).sum(1)
        return jnp.tanh(h) @ p["V"]

    assert prepare.default_vectorize("auto", 4, params=params) == "wide"
    _auto_equals_vmap(apply, params)


def test_partial_last_batch_unroll_default():
    """13 examples in batches of 4 (a partial last batch) with unroll=None's CPU unrolling: auto equals vmap."""
    model = jreg.mlp([6, 5, 3])
    params = model.init(jax.random.key(1))
    kw = dict(hparams={"eta": [0.1, 0.2]}, epochs=2, batch_size=4, key=jax.random.key(3))
    out = {
        v: jreg.sweep(_build(model.apply), params, toy(13), vectorize=v, unroll=u, **kw)
        for v, u in (("auto", None), ("vmap", 1))
    }
    _close(out["auto"].params, out["vmap"].params)


@pytest.mark.parametrize("extra", [dict(resample="bootstrap"), dict(data_order="per_member")])
def test_per_member_data_auto_is_not_wide(extra):
    """Members that do not share mini-batches (bootstrap, per-member order): auto must not pick wide (refused)."""
    model = jreg.mlp([6, 5, 3])
    params = model.init(jax.random.key(1))
    kw = dict(hparams={"eta": [0.1, 0.2, 0.3, 0.4]}, epochs=2, batch_size=4, key=jax.random.key(3), **extra)
    auto = jreg.sweep(_build(model.apply), params, toy(N), **kw)
    ref = jreg.sweep(_build(model.apply), params, toy(N), vectorize="vmap", **kw)
    _close(auto.params, ref.params)


def test_cv_identical_explicit_folds():
    """Two explicit folds that are the same indices (the same training set): auto groups them and must equal vmap."""
    folds = [np.arange(0, 5), np.arange(0, 5)]
    try:
        auto = _cv("auto", [0.01], folds=folds)
    except jreg._errors.JregError:
        return  # refused clearly: fine
    ref = _cv("vmap", [0.01], folds=folds)
    _close(auto.params, ref.params)


def _two_layer():
    k = jax.random.split(jax.random.key(0), 2)
    return {"W": 0.3 * jax.random.normal(k[0], (6, 5)), "V": 0.3 * jax.random.normal(k[1], (5, 3))}


@pytest.mark.parametrize("penalty", ["input_gradient", "jacobian_norm"])
def test_double_backprop_penalty_in_wide(penalty):
    """An input-gradient penalty (double backpropagation through the rewritten dense layers) under auto (wide)."""

    def apply(p, x):
        return jnp.tanh(x @ p["W"]) @ p["V"]

    def build(hp):
        pen = getattr(jreg.penalties, penalty)(0.1)
        obj = jreg.objective(apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-3), input_penalty=pen)
        return obj, optax.sgd(hp["eta"])

    kw = dict(hparams={"eta": [0.1, 0.05]}, epochs=2, batch_size=4, key=jax.random.key(3))
    auto = jreg.sweep(build, _two_layer(), toy(N), **kw)
    ref = jreg.sweep(build, _two_layer(), toy(N), vectorize="vmap", **kw)
    _close(auto.params, ref.params)


def test_dense_inside_cond_inner_vmap_and_sequence_axis():
    """x @ W inside lax.cond, inside an inner per-example vmap, and with an extra sequence axis (B, T, d) @ W."""

    def apply(p, x):
        seq = x.reshape(x.shape[0], 2, 3) @ p["W"][:3]  # (B, 2, 5)
        per = jax.vmap(lambda xi: xi @ p["W"])(x)  # (B, 5)
        h = jax.lax.cond(x.shape[0] > 2, lambda: jnp.tanh(x @ p["W"]), lambda: x @ p["W"])
        return (h + per + seq.sum(1)) @ p["V"]

    _auto_equals_vmap(apply, _two_layer())


def test_tied_autoencoder_weight_in_both_layouts():
    """A non-square weight used as the first layer ``x @ W`` (meets the shared mini-batch: model axis second) and
    transposed as the decoder ``h @ Wᵀ`` (per-model activations: model axis first): the layout rule's conflict."""
    params = {"W": 0.3 * jax.random.normal(jax.random.key(0), (6, 3)), "b": jnp.zeros(6)}

    def apply(p, x):
        return jnp.tanh(x @ p["W"]) @ p["W"].T + p["b"]

    def build(hp):
        return jreg.objective(apply, jreg.losses.quadratic, jreg.penalties.l2(1e-3)), optax.adam(hp["eta"])

    x = toy(N)[0]
    kw = dict(hparams={"eta": [0.01, 0.03]}, epochs=2, batch_size=4, key=jax.random.key(3), ema=jreg.EMA(0.9))
    auto = jreg.sweep(build, params, (x, x), **kw)
    ref = jreg.sweep(build, params, (x, x), vectorize="vmap", **kw)
    _close(auto.params, ref.params)
    np.testing.assert_allclose(np.asarray(auto.history["epoch_loss"]), np.asarray(ref.history["epoch_loss"]), rtol=1e-5)


def test_weight_times_batch_transposed():
    """``(W @ xᵀ)ᵀ`` with W stored (out, in), Equinox style, meeting the shared mini-batch."""
    params = {
        "W": 0.3 * jax.random.normal(jax.random.key(0), (5, 6)),
        "V": 0.3 * jax.random.normal(jax.random.key(1), (3, 5)),
    }

    def apply(p, x):
        return (p["V"] @ jnp.tanh(p["W"] @ x.T)).T

    _auto_equals_vmap(apply, params)
