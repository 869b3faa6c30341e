"""Sizes before work (issue 28, item 3): jreg.mlp, fit and sweep estimate what they are about to allocate from
shapes alone and refuse, before allocating, a run over the memory they may use (jreg/_memory.py,
jreg/train/memory.py)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg import _memory
from jreg._checks import check_finite
from jreg.train import memory

X = np.random.default_rng(0).random((40, 784), np.float32)
Y = np.arange(40) % 10


@pytest.fixture
def limit(monkeypatch):
    def set_limit(text):
        monkeypatch.setenv(_memory.ENV, text)

    return set_limit


def _build(model):
    def build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(0.1)

    return build


def test_mlp_refuses_absurd_widths_at_construction_fast():
    started = time.perf_counter()
    with pytest.raises(jreg.JregError, match=r"jreg\.mlp\(\[784, 99999999999, 10\]\) needs at least 289\.2 TiB") as e:
        jreg.mlp([784, 99999999999, 10])
    assert time.perf_counter() - started < 5
    assert "(784, 99999999999) float32" in str(e.value) and "JREG_MEMORY_LIMIT" in str(e.value)
    assert "\n" not in str(e.value)


def test_mlp_counts_the_params_dtype(limit):
    limit("100KB")  # [784, 30, 10]: 23,860 params, 95,440 bytes as float32
    jreg.mlp([784, 30, 10])
    jreg.mlp([784, 50, 10], dtype=jnp.bfloat16)  # 39,760 params, 79,520 bytes as bfloat16
    with pytest.raises(jreg.JregError, match=r"params, 155\.3 KiB, its largest array of shape \(784, 50\) float32"):
        jreg.mlp([784, 50, 10])


def test_normal_runs_are_never_refused():
    """The demo's model and a K=64 sweep of [784, 30, 10] pass against the real limit (no JREG_MEMORY_LIMIT)."""
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    parts = memory.state_parts(optax.adam(0.1), params, 64, ema=True, best=True)
    assert {p.what.split(" of ")[0] for p in parts} >= {"params", "gradients", "optimizer state", "EMA copy"}
    memory.check(parts, "a K=64 sweep")
    result = jreg.sweep(_build(model), params, (X, Y), hparams={"lmbda": np.linspace(0, 1, 64)}, epochs=1,
                        batch_size=10, key=jax.random.key(1), evaluation=(X, Y))  # fmt: skip
    assert result.history.models == 64


def test_fit_refuses_before_allocating_and_names_every_part(limit):
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy)
    limit("300KB")
    with pytest.raises(jreg.JregError) as e:
        jreg.fit(objective, optax.adam(0.1), params, (X, Y), epochs=1, batch_size=10, key=jax.random.key(1),
                 ema=jreg.EMA(0.9))  # fmt: skip
    text = str(e.value)
    assert text.startswith("jreg.fit needs at least") and "over the limit JREG_MEMORY_LIMIT=300KB" in text
    assert "the largest part is the optimizer state" in text and "(784, 30) float32" in text
    assert "EMA copy" in text and "gradients" in text
    limit("off")
    jreg.fit(objective, optax.adam(0.1), params, (X, Y), epochs=1, batch_size=10, key=jax.random.key(1))


def test_restore_best_and_stream_prefetch_are_counted(limit):
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy)
    batches = [(X[i : i + 10], Y[i : i + 10]) for i in range(0, 40, 10)]
    limit("10KB")
    with pytest.raises(jreg.JregError) as e:
        jreg.fit(objective, optax.sgd(0.1), params, jreg.Stream(batches, chunk=4, prefetch=3), epochs=1,
                 batch_size=10, key=jax.random.key(1), evaluation=(X, Y),
                 early_stopping=jreg.EarlyStopping(patience=2, restore_best=True))  # fmt: skip
    assert "best-params copy (restore_best)" in str(e.value)
    assert "stream prefetch (3 chunks of 4 batches) 368.0 KiB" in str(e.value)  # 3*4*10*(784*4 + 4)


def test_sweep_of_an_init_function_is_refused_before_any_init_runs(limit):
    model = jreg.mlp([784, 30, 10])
    calls = []

    def init(key):
        if not isinstance(key, jax.core.Tracer):
            calls.append(key)
        return model.init(key)

    limit("1MB")
    with pytest.raises(jreg.JregError, match=r"jreg\.sweep needs .* params of 64 models, 5\.8 MiB.*\(64, 784, 30\)"):
        jreg.sweep(_build(model), init, (X, Y), hparams=jreg.grid(lmbda=[0.0, 1.0], seed=range(32)), epochs=1,
                   batch_size=10, key=jax.random.key(1))  # fmt: skip
    assert calls == []


def test_the_limit_from_the_environment_the_device_and_the_host(limit, monkeypatch):
    assert _memory.parse_size("8GiB") == 8 * 2**30 and _memory.parse_size("500MB") == 500 * 10**6
    assert _memory.parse_size("123") == 123 and _memory.parse_size(" off ") is None
    for bad in ("lots", "-3GB", "0", "8XB"):
        with pytest.raises(jreg.JregError, match="JREG_MEMORY_LIMIT"):
            _memory.parse_size(bad)
    limit("2GiB")
    assert _memory.limit() == (2 * 2**30, "the limit JREG_MEMORY_LIMIT=2GiB")
    monkeypatch.delenv(_memory.ENV)
    host, where = _memory.limit()  # this machine: its physical memory (a CPU backend)
    assert host is None or host > 2**26 and where == "this machine's memory"

    class Device:
        platform, device_kind = "gpu", "Fake GPU"

        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    monkeypatch.setattr(jax, "local_devices", lambda: [Device({"bytes_limit": 2**30})] * 2)
    assert _memory.limit() == (2**31, "the memory of 2 Fake GPU device(s)")
    with pytest.raises(jreg.JregError, match=r"over the memory of 2 Fake GPU device\(s\) \(2\.0 GiB\)"):
        _memory.check([_memory.Part("params", 2**31 + 1, (2**29 + 1,), "float32")], "test")
    monkeypatch.setattr(jax, "local_devices", lambda: [Device(None)])
    assert _memory.limit() == (None, "unknown")  # no statistics: nothing refused
    _memory.check([_memory.Part("params", 2**60)], "test")


def test_human_units_and_exact_sizes():
    assert _memory.human(512) == "512 B" and _memory.human(1536) == "1.5 KiB"
    assert _memory.human(784 * 99999999999 * 4) == "285.2 TiB"
    assert _memory.array_bytes((2**40, 2**40), "float32") == 2**82  # Python integers: no overflow


def test_check_finite_scans_no_integers_and_counts_once():
    check_finite(np.zeros(10**6, np.int64), "x")  # integers are always finite
    check_finite(jnp.ones(3, bool), "x")
    with pytest.raises(jreg.JregError, match="holds 2 non-finite"):
        check_finite(np.array([1.0, np.nan, np.inf]), "x")
