"""Hostile input for the training engine's new entry points: any-batch data, model state, metrics, option objects.

As in test_hostile.py: the only outcomes allowed are a correct result or a jreg.JregError with a message.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jreg

from .test_hostile import HOSTILE_SCALARS, MODEL, OBJ, PARAMS, arrays, only_jreg_errors

# each fit example compiles anew: fewer examples than the cheap properties
training = settings(
    max_examples=int(os.environ.get("JREG_HOSTILE_FIT_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
cheap = settings(
    max_examples=int(os.environ.get("JREG_HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

HOSTILE = st.one_of(
    HOSTILE_SCALARS,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


def finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact))


@cheap
@given(
    data=HOSTILE,
    metrics=st.one_of(HOSTILE, st.dictionaries(st.text(max_size=3), HOSTILE, max_size=2)),
    batch_size=HOSTILE,
    every=HOSTILE,
)
def test_evaluation_options_with_random_fields(data, metrics, batch_size, every):
    only_jreg_errors(jreg.Evaluation, data, metrics=metrics, batch_size=batch_size, every=every)


@cheap
@given(directory=HOSTILE, every=HOSTILE, keep=HOSTILE, mesh=HOSTILE, axis=HOSTILE, fmt=HOSTILE)
def test_checkpointing_and_data_parallel_with_random_fields(directory, every, keep, mesh, axis, fmt):
    only_jreg_errors(jreg.Checkpointing, directory, every=every, keep=keep)
    only_jreg_errors(jreg.Checkpointing, "ck", format=fmt)
    only_jreg_errors(jreg.DataParallel, mesh, data_axis=axis)


@training
@given(
    legacy=st.dictionaries(
        st.sampled_from(["checkpoint_dir", "checkpoint_every", "keep", "mesh", "data_axis", "param_specs", "bogus"]),
        HOSTILE,
        max_size=3,
    ),
    monitor=st.one_of(HOSTILE, st.lists(st.sampled_from(["training_cost", "evaluation_mse", "epoch_loss", "x"]))),
)
def test_fit_with_random_option_keywords(tmp_path_factory, legacy, monitor):
    if isinstance(legacy.get("checkpoint_dir"), str):
        legacy["checkpoint_dir"] = str(tmp_path_factory.mktemp("ck") / (legacy["checkpoint_dir"] or "d"))
    x, y = jnp.ones((6, 4)), jnp.arange(6) % 3
    only_jreg_errors(
        jreg.fit,
        OBJ,
        optax.sgd(0.1),
        PARAMS,
        (x, y),
        epochs=1,
        batch_size=3,
        key=jax.random.key(0),
        monitor=monitor,
        **legacy,
    )


@training  # every example's new shapes compile the eager ops anew
@given(out=arrays(), t=arrays(), k=st.integers(-1, 4))
def test_metrics_with_random_inputs(out, t, k):
    for fn in (jreg.metrics.accuracy, jreg.metrics.mse, jreg.metrics.mae):
        result = only_jreg_errors(fn, out, t)
        if result is not None:  # one value per example
            assert result.shape == out.shape[:1]
    for fn in (jreg.losses.softmax_cross_entropy, jreg.losses.sigmoid_cross_entropy):
        result = only_jreg_errors(fn, out, t)
        if result is not None:  # one value per example, the last axis being the classes
            assert result.shape == out.shape[:-1]
    top = only_jreg_errors(jreg.metrics.top_k_accuracy, k)
    if top is not None:
        only_jreg_errors(top, out, t)


@cheap
@given(out=arrays(), y=arrays(), w=st.one_of(arrays(max_dims=1), HOSTILE))
def test_weighted_loss_with_random_targets(out, y, w):
    only_jreg_errors(jreg.losses.weighted(jreg.losses.quadratic), out, (y, w))
    only_jreg_errors(jreg.losses.weighted(jreg.losses.quadratic), out, y)


@training
@given(
    n=st.integers(0, 8),
    data=st.data(),
    hostile=st.sets(st.sampled_from(["x", "y", "w", "z"]), max_size=2),
    batch_size=st.integers(1, 9),
)
def test_fit_with_random_dict_batches(n, data, hostile, batch_size):
    """Mostly well-formed dict batches (x, labels y, weights w, an extra leaf z), some leaves replaced by anything."""
    batch = {
        "x": data.draw(hnp.arrays(np.float32, (n, 4), elements=st.floats(-10, 10, width=32))),
        "y": data.draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, 2))),
        "w": data.draw(hnp.arrays(np.float32, (n,), elements=st.floats(0, 2, width=32))),
        "z": data.draw(hnp.arrays(np.float32, (n, 2))),
    }
    batch.update({k: data.draw(arrays(max_dims=2)) for k in hostile})

    def split(b):
        return b["x"], (b["y"], b["w"])

    obj = jreg.objective(MODEL.apply, jreg.losses.weighted(jreg.losses.cross_entropy), split=split)
    try:
        params, history = jreg.fit(
            obj, optax.sgd(0.1), PARAMS, batch, epochs=1, batch_size=batch_size, key=jax.random.key(0)
        )
    except jreg.DivergenceError as e:
        assert finite(e.params)
    except jreg.JregError as e:
        assert str(e)
    else:
        assert finite(params) and len(history) == 1
        trained.append(1)


trained: list[int] = []  # how many examples of the property above trained (see the test below)


def test_the_dict_batch_property_reaches_training():
    """A property whose every example errors out would test only the checks: some must train."""
    if not trained:
        test_fit_with_random_dict_batches()
    assert trained, "no random dict batch trained: the strategy never builds a valid batch"


def stateful_apply(params, x, *, state, train, key=None):
    out = MODEL.apply(params, x)
    new = jax.tree.map(lambda s: s + 1, state) if train else state
    return out, new


@training
@given(state=st.one_of(HOSTILE, st.dictionaries(st.text(max_size=2), arrays(max_dims=2), max_size=2)))
def test_stateful_fit_and_step_with_random_model_state(state):
    obj = jreg.objective(stateful_apply, jreg.losses.cross_entropy)
    x, y = jnp.ones((6, 4)), jnp.arange(6) % 3
    out = only_jreg_errors(
        jreg.fit, obj, optax.sgd(0.1), PARAMS, (x, y), epochs=1, batch_size=3, key=jax.random.key(0), model_state=state
    )
    if out is not None:
        assert len(out) == 3
    only_jreg_errors(
        jreg.make_step(obj, optax.sgd(0.1)), PARAMS, optax.sgd(0.1).init(PARAMS), (x, y), model_state=state
    )


@training
@given(
    params=st.one_of(HOSTILE, st.lists(st.dictionaries(st.sampled_from(["w", "b"]), arrays(max_dims=2)), max_size=2))
)
def test_fit_with_hostile_params(params):
    x, y = jnp.ones((6, 4)), jnp.arange(6) % 3
    only_jreg_errors(jreg.fit, OBJ, optax.sgd(0.1), params, (x, y), epochs=1, batch_size=3, key=jax.random.key(0))
