"""Shared fixtures, and the two tiers of the suite.

Layout: one test file per module or promise of the package (``test_penalties.py`` for ``jreg/penalties``,
``test_unroll.py`` for the epoch loop's ``unroll``, ``test_hostile.py`` for "random input gives a result or a
jreg error", ...); a review's cases go into the file of what they test. Core tests take a ``variant`` fixture
parametrized over ``VARIANTS``: the function as is ("nojit") and under ``jax.jit`` ("jit").

Two tiers, marked here by rule (``pytest_collection_modifyitems``), never by hand in the test files:

* the full suite, ``python -m pytest -q -n 2`` (the README's command and ``.ci/run``): every test;
* the fast tier, ``python -m pytest -q -m "not slow" -n 2``: every test not marked ``slow``.

A test is ``slow`` when (1) its file is in ``SLOW_FILES`` (subprocesses, several processes, a local server, whole
scripts; with ``-m "not slow"`` these files are not even imported), (2) it reads the real MNIST files (its code
names ``SHARED``, the ``../shared/data/mnist`` folder), (3) it is the "nojit" variant of a test whose code (or
its file's helpers it calls) trains, naming ``fit``, ``sweep``, ``pbt``, ``make_step``, ``make_epoch``,
``make_update`` or ``run_epoch``: its "jit" variant checks the same thing in the fast tier, or (4) it is listed
in ``SLOW_TESTS`` (measured slow with ``--durations``, each with its reason). A ``@pytest.mark.slow`` written in
a test file still counts.
"""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

# Each core test is parametrized over these two "variants" (the pytest form of chex.variants).
VARIANTS = [pytest.param(lambda f: f, id="nojit"), pytest.param(jax.jit, id="jit")]

settings.register_profile(
    "jreg",
    max_examples=25,
    deadline=None,  # first calls compile
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("jreg")


@pytest.fixture
def no_one_hot(monkeypatch):
    """jax.nn.one_hot must not be reached: the count is refused before anything is allocated."""

    def refuse(*args, **kwargs):
        raise AssertionError("jax.nn.one_hot was called with an absurd class count")

    monkeypatch.setattr(jax.nn, "one_hot", refuse)


# --------------------------------------------------------------------------- the two tiers

SLOW_FILES = {
    "test_distributed.py": "several jax.distributed processes",
    "test_model_sharding.py": "worker subprocesses with several host devices",
    "test_sharding.py": "worker subprocesses with several host devices",
    "test_reliability.py": "child processes killed mid-save, a whole training run each",
    "test_experiments.py": "runs each experiment script in a subprocess",
    "test_examples.py": "runs each example script",
    "test_download.py": "a local HTTP server, retries and timeouts",
}

# Tests measured slow (``--durations``) outside the files above: "file::name" (all its parameters) -> reason.
SLOW_TESTS: dict[str, str] = {}

TRAINING = frozenset({"fit", "sweep", "pbt", "make_step", "make_epoch", "make_update", "run_epoch"})


def _names(code: types.CodeType, module=None, seen=None) -> set[str]:
    """The global and attribute names a function's code uses: nested functions and lambdas included, and the
    code of the test module's own helper functions it calls (``train`` calling ``jreg.fit``)."""
    seen = set() if seen is None else seen
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const, module, seen)
    for name in sorted(names - seen):
        helper = getattr(module, name, None)
        if isinstance(helper, types.FunctionType) and helper.__module__ == getattr(module, "__name__", None):
            seen.add(name)
            names |= _names(helper.__code__, module, seen)
    return names


def _deselects_slow(config) -> bool:
    """Whether the -m expression leaves out every test marked slow (e.g. ``-m "not slow"``)."""
    markexpr = config.getoption("markexpr", default="")
    if not markexpr:
        return False
    try:
        from _pytest.mark.expression import Expression

        return not Expression.compile(markexpr).evaluate(lambda name: name == "slow")
    except Exception:  # another pytest: collect everything, the marks still deselect
        return False


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.name in SLOW_FILES and _deselects_slow(config):
        return True  # not even imported: collecting costs time too
    return None


def _slow_reason(item) -> str | None:
    path = Path(str(item.fspath))
    if path.name in SLOW_FILES:
        return SLOW_FILES[path.name]
    name = f"{path.name}::{item.originalname}"
    if name in SLOW_TESTS:
        return SLOW_TESTS[name]
    function = getattr(item, "function", None)
    function = getattr(getattr(function, "hypothesis", None), "inner_test", function)  # @given wraps the test
    code = getattr(inspect.unwrap(function), "__code__", None) if function is not None else None
    if code is None:
        return None
    names = _names(code, getattr(item, "module", None))
    if "SHARED" in names:
        return "reads the real MNIST files (../shared/data/mnist)"
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "variant" in callspec.params and "nojit" in callspec.id.split("-"):
        if names & TRAINING:
            return "the nojit variant of a training test (its jit variant stays in the fast tier)"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _slow_reason(item) is not None:
            item.add_marker(pytest.mark.slow)
