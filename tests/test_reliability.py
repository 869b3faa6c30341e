"""Runs that survive: checkpoints in fit, exact resume and determinism across processes, kill -9 during a save,
and the divergence guard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg

WORKER = Path(__file__).resolve().parent / "reliability_worker.py"


def worker(*args: str, timeout: int = 600) -> None:
    done = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]


def bits_equal(a: Path, b: Path) -> bool:
    pa, pb = jreg.load(a).params, jreg.load(b).params
    return all(np.array_equal(u, v) and u.dtype == v.dtype for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))


@pytest.mark.slow
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    worker("straight", str(tmp_path / "straight.npz"))
    worker("first", str(tmp_path / "ckpt"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [f"ckpt-00000{i}.npz" for i in (3, 4, 5)]
    worker("second", str(tmp_path / "ckpt"), str(tmp_path / "resumed.npz"))
    assert bits_equal(tmp_path / "straight.npz", tmp_path / "resumed.npz")


@pytest.mark.slow
def test_same_seed_same_params_bit_for_bit_in_separate_processes(tmp_path):
    worker("straight", str(tmp_path / "a.npz"))
    worker("straight", str(tmp_path / "b.npz"))
    assert bits_equal(tmp_path / "a.npz", tmp_path / "b.npz")


@pytest.mark.slow
def test_a_killed_job_rerun_with_resume_auto_ends_bit_identical(tmp_path):
    """A preemptible job: the same command, killed with SIGKILL mid-run and run again, equals one straight run."""
    worker("straight", str(tmp_path / "straight.npz"))
    command = [sys.executable, str(WORKER), "auto", str(tmp_path / "ckpt"), str(tmp_path / "auto.npz")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        while (line := proc.stdout.readline()) and line.strip() != "EPOCH 4":
            pass
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "auto.npz").exists()
    assert any(p.name.startswith("ckpt-") for p in (tmp_path / "ckpt").iterdir())
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)  # the same command again
    assert done.returncode == 0, done.stderr[-4000:]
    first = int(done.stdout.split()[1])
    assert 2 <= first <= 5, done.stdout  # it went on from a checkpoint (epoch 3 or 4), not from epoch 1
    assert bits_equal(tmp_path / "straight.npz", tmp_path / "auto.npz")


def test_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "model.npz"
    proc = subprocess.Popen([sys.executable, str(WORKER), "slow-save", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "WRITING"  # the second save is half-way through its write
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert jreg.load(path).step == 1  # the first checkpoint, intact
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.npz"]
    assert all(name.startswith(".model.npz.") for name in leftovers)  # only the dead write's temporary file


def setup(n=200):
    (x, y), _ = jreg.data.load_mnist_small()
    model = jreg.mlp([784, 30, 10])
    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(1e-4))
    return obj, model.init(jax.random.key(0)), (x[:n], y[:n])


def test_fit_checkpoints_every_k_epochs_and_keeps_the_last_n(tmp_path):
    obj, params, train = setup()
    opt = optax.sgd(0.5)
    trained, history = jreg.fit(
        obj,
        opt,
        params,
        train,
        epochs=7,
        batch_size=10,
        key=jax.random.key(0),
        checkpoint=jreg.Checkpointing(tmp_path, every=2, keep=2),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000006.npz", "ckpt-000007.npz"]
    last = jreg.load(tmp_path / "ckpt-000007.npz", params=params, opt_state=opt.init(params))
    assert last.step == 7 and all(
        np.array_equal(u, v) for u, v in zip(jax.tree.leaves(last.params), jax.tree.leaves(trained))
    )
    assert last.meta["history"] == history.to_dict()


def test_resume_in_process_matches_and_checks_its_inputs(tmp_path):
    obj, params, train = setup()
    opt = optax.adam(1e-2)
    kw = dict(batch_size=10, key=jax.random.key(3))
    straight, hs = jreg.fit(obj, opt, params, train, epochs=4, **kw)
    jreg.fit(obj, opt, params, train, epochs=2, checkpoint=jreg.Checkpointing(tmp_path), **kw)
    resumed, hr = jreg.fit(obj, opt, params, train, epochs=4, resume=tmp_path, **kw)
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)))
    assert hr.to_dict() == hs.to_dict()
    with pytest.raises(jreg.JregError, match="resume: key differs"):
        jreg.fit(obj, opt, params, train, epochs=4, resume=tmp_path, batch_size=10, key=jax.random.key(4))
    with pytest.raises(jreg.JregError, match="resume: batch_size 20 differs from the run's 10"):
        jreg.fit(obj, opt, params, train, epochs=4, resume=tmp_path, batch_size=20, key=jax.random.key(3))
    with pytest.raises(jreg.JregError, match="beyond epochs=1"):
        jreg.fit(obj, opt, params, train, epochs=1, resume=tmp_path, **kw)
    narrow = jreg.mlp([784, 20, 10])
    narrow_obj = jreg.objective(narrow.apply, jreg.losses.cross_entropy)
    with pytest.raises(jreg.CheckpointError, match=r"leaf '0/b' is float32\[30\] in the checkpoint but float32\[20\]"):
        jreg.fit(narrow_obj, opt, narrow.init(jax.random.key(0)), train, epochs=4, resume=tmp_path, **kw)
    with pytest.raises(jreg.CheckpointError, match="missing.npz: no such checkpoint"):
        jreg.fit(obj, opt, params, train, epochs=4, resume=tmp_path / "missing.npz", **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(jreg.JregError, match=r"no checkpoint \(ckpt-\*.npz\) in"):
        jreg.fit(obj, opt, params, train, epochs=4, resume=tmp_path / "empty", **kw)


def test_divergence_names_epoch_step_and_quantity_and_keeps_finite_params(tmp_path):
    obj, params, train = setup()
    # plain SGD with l2(c) is unstable once eta * c > 2: here eta * c = 5, the weights grow x4 in size per step
    with pytest.raises(jreg.DivergenceError) as info:
        jreg.fit(
            obj, optax.sgd(5e4), params, train, epochs=3, batch_size=10, key=jax.random.key(1),
            checkpoint=jreg.Checkpointing(tmp_path),
        )  # fmt: skip
    err = info.value
    assert err.step is not None and f"epoch {err.epoch + 1} of 3, step {err.step + 1}" in str(err)
    assert "the loss became inf" in err.quantity or "gradient" in err.quantity
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(err.params))
    assert len(err.history) == err.epoch  # the epochs completed before it
    for ckpt in tmp_path.iterdir():  # nothing non-finite was ever checkpointed
        params_saved = jreg.load(ckpt).params
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params_saved))
    assert len(list(tmp_path.iterdir())) == err.epoch


def test_divergence_from_a_nan_learning_rate(tmp_path):
    obj, params, train = setup()
    with pytest.raises(jreg.DivergenceError, match=r"epoch 1 of 2, step 1\b"):
        jreg.fit(obj, optax.sgd(float("nan")), params, train, epochs=2, batch_size=10, key=jax.random.key(1))


def test_a_run_that_stays_finite_never_trips_the_guard():
    obj, params, train = setup()
    _, history = jreg.fit(obj, optax.sgd(0.5), params, train, epochs=2, batch_size=10, key=jax.random.key(1))
    assert len(history) == 2 and "__finite__" not in history


def test_an_optimizer_state_overflowing_while_the_params_stay_finite_is_divergence(tmp_path):
    """Adam's second moment g^2 overflows to inf for |g| ~ 1e20; its update m / sqrt(inf) is 0: finite params."""

    def steep(params, batch):
        value = 1e20 * jnp.sum(params["w"]) + 0.0 * jnp.sum(batch[0])
        return value, {"data": value}

    params = {"w": jnp.ones((3, 2))}
    with pytest.raises(jreg.DivergenceError) as info:
        jreg.fit(
            steep,
            optax.adam(1e-3),
            params,
            (jnp.ones((8, 3)), jnp.zeros(8)),
            epochs=2,
            batch_size=4,
            key=jax.random.key(0),
            checkpoint=jreg.Checkpointing(tmp_path),
        )
    assert (
        info.value.step == 0
        and "the optimizer state" in info.value.quantity
        and "became non-finite" in info.value.quantity
    )
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(info.value.opt_state))
    assert list(tmp_path.iterdir()) == []  # nothing non-finite was checkpointed


def infinite_loss_finite_gradient(params, batch):
    """A loss of +inf whose gradient is finite (the inf carries no gradient): only the loss value shows it."""
    data = jnp.mean((batch[0] @ params["w"]) ** 2)
    value = data + jax.lax.stop_gradient(jnp.where(jnp.sum(params["w"]) < 100.0, jnp.inf, 0.0))
    return value, {"data": value}


@pytest.mark.parametrize("monitor", [(), None], ids=["monitor-off", "monitor-default"])
def test_a_non_finite_loss_with_a_finite_gradient_is_divergence_even_unmonitored(tmp_path, monitor):
    """The guard always sees the loss value: with monitor=() the steps used to take the gradient only."""
    params = {"w": jnp.ones((3, 2))}
    kwargs = {} if monitor is None else {"monitor": monitor}
    with pytest.raises(jreg.DivergenceError) as info:
        jreg.fit(
            infinite_loss_finite_gradient,
            optax.sgd(0.1),
            params,
            (jnp.ones((8, 3)), jnp.zeros(8)),
            epochs=2,
            batch_size=4,
            key=jax.random.key(0),
            checkpoint=jreg.Checkpointing(tmp_path),
            **kwargs,
        )
    assert info.value.epoch == 0 and info.value.step == 0 and "the loss became inf" in info.value.quantity
    np.testing.assert_array_equal(info.value.params["w"], params["w"])  # the last finite params: the initial ones
    assert list(tmp_path.iterdir()) == []  # nothing was checkpointed


def test_a_sweep_flags_a_model_whose_loss_alone_goes_non_finite_even_unmonitored():
    def build(hp):
        def objective(params, batch):
            data = jnp.mean((batch[0] @ params["w"]) ** 2)
            value = data + jax.lax.stop_gradient(jnp.where(hp["bad"] > 0, jnp.inf, 0.0))
            return value, {"data": value}

        return objective, optax.sgd(0.1)

    trained, history = jreg.sweep(
        build,
        {"w": jnp.ones((3, 2))},
        (jnp.ones((8, 3)), jnp.zeros(8)),
        hparams={"bad": np.array([0.0, 1.0])},
        epochs=2,
        batch_size=4,
        key=jax.random.key(0),
        monitor=(),
    )
    assert list(history.diverged) == [1] and history.diverged[1]["epoch"] == 1 and history.diverged[1]["step"] == 1
    assert "the loss became inf" in history.diverged[1]["quantity"]
    np.testing.assert_array_equal(trained["w"][1], jnp.ones((3, 2)))  # frozen at its last finite state
    assert not np.array_equal(trained["w"][0], jnp.ones((3, 2)))
