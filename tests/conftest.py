"""Shared fixtures, and the two tiers of the suite.

Layout: one test file per module or promise of the package (``test_penalties.py`` for ``jreg/penalties``,
``test_unroll.py`` for the epoch loop's ``unroll``, ``test_hostile.py`` for "random input gives a result or a
jreg error", ...); a review's cases go into the file of what they test. Core tests take a ``variant`` fixture
parametrized over ``VARIANTS``: the function as is ("nojit") and under ``jax.jit`` ("jit").

Two tiers, marked here by rule (``pytest_collection_modifyitems``), never by hand in the test files:

* the full suite, ``python -m pytest -q -n 2`` (the README's command and ``.ci/run``): every test;
* the fast tier, ``python -m pytest -q -m "not slow" -n 2``: every test not marked ``slow``.

A test is ``slow`` when (1) its file is in ``SLOW_FILES`` (subprocesses, several processes, a local server, whole
scripts; with ``-m "not slow"`` these files are not even imported), (2) it reads the real MNIST files (its code names
``SHARED``, the ``../shared/data/mnist`` folder), (3) it trains: its code (or its file's helpers it calls) names
``fit``, ``sweep``, ``pbt``, ``regularization_path``, ``cross_validate``, ``make_step``, ``make_epoch``, ``make_update``
or ``run_epoch`` -- except in ``FAST_FILES`` (``test_goldens.py``: every front end's results bit for bit, the guard of
every refactoring, stays fast), (4) it is a hypothesis property (``@given``: many examples, each compiled anew), (5) it
is the "nojit" variant of a core test (its "jit" variant stays fast), or (6) it is listed in ``SLOW_TESTS`` (measured
slow with ``--durations``, each with its reason). A ``@pytest.mark.slow`` written in a test file still counts. The suite
shares JAX's persistent compilation cache (below), so a second run of either tier compiles little.

Under ``-n 2`` (pyproject's addopts say ``--dist loadgroup``), the tests that use a module-scoped fixture of their own
file (a subprocess worker, a sweep trained once for the file) carry ``xdist_group(<file name>)``, set here by rule:
they run on one worker, so that the fixture's work is done once rather than once per worker given one of them.
"""

from __future__ import annotations

import inspect
import os
import types
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

# JAX's persistent compilation cache, for the suite only: many tests compile the same program (the same small
# model on the same shapes, the jit and nojit variants, each example script), and a cache hit skips XLA's
# compilation of it (a small fit: about 4 s to under 1 s). The executable is the one a compilation gives, so no
# result moves. Set in the environment too, so that the examples' and experiments' subprocesses share it; a
# JAX_COMPILATION_CACHE_DIR already set is kept, and JREG_TEST_JAX_CACHE=0 turns the cache off. No size bound: JAX
# bounds it only behind a file lock that every read takes (two workers then wait on each other); it grows by
# about 6 KiB per program, and deleting .pytest_cache clears it.
JAX_CACHE_DIR = Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"
if os.environ.get("JREG_TEST_JAX_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(JAX_CACHE_DIR)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

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
    "test_member_sharding.py": "worker subprocesses with several host devices, two jax.distributed processes",
    "test_sharding.py": "worker subprocesses with several host devices",
    "test_reliability.py": "child processes killed mid-save, a whole training run each",
    "test_experiments.py": "runs each experiment script in a subprocess",
    "test_examples.py": "runs each example script",
    "test_download.py": "a local HTTP server, retries and timeouts",
}

# Tests measured slow outside the files above: "file::name" (all its parameters) -> the time of its slowest
# parameter (call or setup) in ``pytest -q -m "not slow" -n 2 --durations=60`` on the shared 2-core machine under
# load (every test of 20 s or more there).
SLOW_TESTS: dict[str, str] = {
    "test_checkpoint.py::test_fit_resumes_from_a_checkpoint_written_before_the_engine": "25 s",
    "test_cli_io.py::test_python_dash_m_jreg_demo": "23 s",
    "test_cost_convention.py::test_the_default_is_unchanged_and_training_is_not_affected": "23 s",
    "test_early_stopping.py::test_the_halving_schedule_is_exactly_a_smaller_learning_rate": "44 s",
    "test_ema.py::test_monitored_figures_are_the_ema_params_figures": "24 s",
    "test_ema.py::test_resume_continues_the_ema_bit_for_bit": "29 s",
    "test_ema.py::test_sweep_over_decays_equals_one_fit_per_decay": "35 s",
    "test_evaluate.py::test_batched_figures_equal_full_batch_ones": "86 s",
    "test_frameworks_state.py::test_equinox_model_with_batchnorm_state": "24 s",
    "test_frameworks_state.py::test_flax_linen_cnn_with_batchnorm_and_dropout": "42 s",
    "test_function_penalties.py::test_input_gradient_of_a_linear_quadratic_model_has_its_closed_form": "22 s",
    "test_function_penalties.py::test_jacobian_norm_of_a_linear_model_is_its_frobenius_norm": "40 s",
    "test_function_penalties.py::test_training_with_function_space_penalties_lowers_them": "21 s",
    "test_hostile.py::test_sweep_with_random_hyperparameters": "61 s",
    "test_hostile_engine.py::test_stateful_fit_and_step_with_random_model_state": "48 s",
    "test_hparams.py::test_seeds_times_strengths_in_one_call_each_member_its_own_fit": "25 s",
    "test_identities.py::test_identity1_output_gradient_unchanged_by_penalty": "24 s",
    "test_identities.py::test_identity2_weight_gradient_gains_lambda_over_n_w": "21 s",
    "test_identities.py::test_identity3_sgd_step_is_network2_update": "36 s",
    "test_identities.py::test_identity4_coupled_l2_equals_decoupled_weight_decay_under_sgd": "39 s",
    "test_mixing.py::test_cutmix_on_flat_and_grayscale_images": "21 s",
    "test_mixing.py::test_fit_and_sweep_train_with_mixup_without_plumbing": "33 s",
    "test_optax_extra_args.py::test_data_parallel_passes_the_global_mini_batch_value": "a subprocess: two fits",
    "test_path.py::test_every_member_is_near_a_cold_fit_at_its_strength_on_embedded_mnist": "36 s",
    "test_penalties.py::test_objective_gradients_against_finite_differences": "34 s",
    "test_result.py::test_a_sweep_continues_from_its_result_and_refuses_a_fits": "22 s",
    "test_sam.py::test_fit_and_sweep_over_rho": "21 s",
    "test_stochastic.py::test_fit_with_dropout_is_reproducible_and_monitors_in_eval_mode": "23 s",
    "test_stochastic.py::test_sweep_over_traced_drop_rates_equals_one_fit_per_rate": "25 s",
    "test_stream.py::test_data_parallel_stream_on_four_virtual_devices": "26 s",
    "test_sweep.py::test_a_diverging_model_is_frozen_and_flagged_while_the_others_go_on": "23 s",
    "test_sweep.py::test_a_sweep_leaks_no_tracer": "34 s",
    "test_sweep.py::test_sweep_equals_one_fit_per_model": "25 s",
    "test_sweep.py::test_wide_equals_vmap_with_dropout_momentum_ema_and_a_partial_batch": "30 s",
    "test_sweep_checkpoint.py::test_resume_in_a_new_process_is_bit_exact": "33 s",
    "test_sweep_checkpoint.py::test_resume_is_bit_exact_with_stopped_and_diverged_models": "24 s",
    "test_sweep_stopping.py::test_each_model_equals_fit_with_the_same_early_stopping": "36 s",
    "test_train.py::test_fit_history_and_learning": "22 s",
    "test_unroll.py::test_auto_unroll_unrolls_small_steps_of_long_epochs_on_every_backend": "28 s",
    "test_unroll.py::test_fit_unrolled_equals_fit_step_by_step": "23 s",
    "test_unroll.py::test_make_epoch_unrolled_equals_step_by_step": "50 s",
    "test_wide_gradients.py::test_a_wide_sweep_with_an_input_gradient_penalty_differentiates_through_the_rule": "23 s",
}

TRAINING = frozenset(
    {
        "fit",
        "sweep",
        "pbt",
        "regularization_path",
        "cross_validate",
        "make_step",
        "make_epoch",
        "make_update",
        "run_epoch",
    }
)

# Files whose training tests stay in the fast tier all the same: the guard of every refactoring.
FAST_FILES = {"test_goldens.py": "every front end's results, bit for bit"}


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
    if names & TRAINING and path.name not in FAST_FILES:
        return "trains (names a front end or a step/epoch maker): test_goldens.py checks every front end bit for bit"
    if getattr(getattr(item, "function", None), "is_hypothesis_test", False):
        return "a hypothesis property (many examples, each compiled anew): fuzzing is the full suite's"
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "variant" in callspec.params and "nojit" in callspec.id.split("-"):
        return "the nojit variant (its jit variant checks the same thing in the fast tier)"
    return None


def _module_fixtures(item) -> list[str]:
    """The module- or session-scoped fixtures of the test's own file that it uses (a subprocess worker, a sweep
    trained once for the file's tests)."""
    info = getattr(item, "_fixtureinfo", None)
    module = getattr(getattr(item, "module", None), "__name__", None)
    return sorted(
        name
        for name, defs in (getattr(info, "name2fixturedefs", None) or {}).items()
        if defs
        and defs[-1].scope in ("module", "session")
        and module is not None
        and getattr(defs[-1].func, "__module__", None) == module
    )


# tryfirst: before pytest-xdist's worker reads the xdist_group marks (it names each test's group in its node id).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _slow_reason(item) is not None:
            item.add_marker(pytest.mark.slow)
        # pytest -n 2 (with pyproject's --dist loadgroup): the tests that share a module-scoped fixture run on one
        # worker, so the fixture's work (a subprocess worker of 30 s, a trained sweep) is done once, not once per
        # worker that happens to receive one of its tests.
        if _module_fixtures(item):
            item.add_marker(pytest.mark.xdist_group(Path(str(item.fspath)).name))
