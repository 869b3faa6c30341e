"""fit's option objects (Evaluation, Checkpointing, DataParallel) and the older keywords they replace."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings

import jax
import numpy as np
import optax
import pytest

import jreg
from jreg.train import config

from .test_train import setup, toy


def test_older_keywords_still_work_and_equal_the_option_objects(tmp_path):
    _, params, obj = setup()
    kw = dict(epochs=3, batch_size=10, key=jax.random.key(0))
    new = rf"pass checkpoint=jreg.Checkpointing\({str(tmp_path / 'a')!r}, every=2, keep=1\) instead"
    with pytest.warns(
        DeprecationWarning, match=r"fit\(checkpoint_dir=, checkpoint_every=, keep=\) is deprecated.*" + new
    ):
        a, ha = jreg.fit(
            obj, optax.sgd(0.5), params, toy(), checkpoint_dir=str(tmp_path / "a"), checkpoint_every=2, keep=1, **kw
        )
    b, hb = jreg.fit(
        obj, optax.sgd(0.5), params, toy(), checkpoint=jreg.Checkpointing(tmp_path / "b", every=2, keep=1), **kw
    )
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert ha.to_dict() == hb.to_dict()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["ckpt-000003.npz"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(checkpoint_dir="x", checkpoint=jreg.Checkpointing("y")), jreg.JregError, "not both"),
        (dict(bogus=1), jreg.JregTypeError, r"fit\(\) got unexpected keyword argument\(s\) \['bogus'\]"),
        (dict(checkpoint="folder"), jreg.JregTypeError, r"checkpoint must be a jreg.Checkpointing"),
        (dict(parallel="mesh"), jreg.JregTypeError, r"parallel must be a jreg.DataParallel"),
        (dict(keep=0), jreg.JregError, "keep must be a positive integer"),
        (dict(checkpoint_every=1.5), jreg.JregTypeError, "checkpoint_every must be a positive integer"),
        (dict(mesh="cpu"), jreg.JregTypeError, "mesh must be a jax.sharding.Mesh"),
        (dict(evaluation=jreg.Evaluation(every=2), monitor=("evaluation_cost",)), jreg.JregError, "evaluation data"),
        (
            dict(resume=3),
            jreg.JregTypeError,
            "resume must be a jreg.Result, a checkpoint file or folder path, or .auto.",
        ),
    ],
)
def test_bad_options_fail_before_any_work(kwargs, error, match):
    _, params, obj = setup()
    legacy = set(kwargs) & set(config.LEGACY)  # the older keywords warn first, then fail as before
    older = pytest.warns(DeprecationWarning, match="is deprecated") if legacy else contextlib.nullcontext()
    with pytest.raises(error, match=match), older:
        jreg.fit(obj, optax.sgd(0.1), params, toy(), epochs=1, batch_size=10, key=jax.random.key(0), **kwargs)


def test_option_objects_check_their_fields():
    with pytest.raises(jreg.JregTypeError, match="Checkpointing.dir must be a folder path"):
        jreg.Checkpointing(3)
    with pytest.raises(jreg.JregError, match="keep must be a positive integer"):
        jreg.Checkpointing("ck", keep=-1)
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(jreg.JregError, match="data_axis 'batch' is not an axis of the mesh"):
        jreg.DataParallel(mesh, data_axis="batch")
    assert jreg.DataParallel(mesh).data_axis == "data"
    with pytest.raises(jreg.JregTypeError, match="Evaluation.data must be data"):
        jreg.Evaluation(jreg.Evaluation())


def test_callback_gets_params_and_model_state_when_it_names_them():
    _, params, obj = setup()
    seen = []

    def callback(epoch, metrics, params):
        seen.append((epoch, float(jax.numpy.sum(params[0]["w"]))))

    trained, _ = jreg.fit(
        obj, optax.sgd(0.5), params, toy(), epochs=2, batch_size=10, key=jax.random.key(0), callback=callback
    )
    assert [e for e, _ in seen] == [0, 1]
    np.testing.assert_allclose(seen[-1][1], float(jax.numpy.sum(trained[0]["w"])), rtol=1e-6)


def test_each_older_keyword_warns_once_with_the_new_form_at_the_callers_line():
    """checkpoint_dir=, checkpoint_every=, keep=, mesh=, data_axis=, param_specs=: one DeprecationWarning per group,
    naming the keywords given and the option object that replaces them, attributed to the line that called fit."""
    _, params, obj = setup()
    mesh = jax.make_mesh((1,), ("data",))
    kw = dict(epochs=1, batch_size=10, key=jax.random.key(0), monitor=())
    with pytest.warns(DeprecationWarning) as caught:
        jreg.fit(obj, optax.sgd(0.1), params, toy(), mesh=mesh, data_axis="data", **kw)
    assert [str(w.message) for w in caught] == [
        "fit(mesh=, data_axis=) is deprecated and will be removed in the next release: "
        "pass parallel=jreg.DataParallel(mesh, data_axis='data') instead"
    ]
    assert caught[0].filename == __file__
    with pytest.warns(DeprecationWarning, match=r"jreg.DataParallel\(mesh, param_specs=specs\)"):
        jreg.fit(obj, optax.sgd(0.1), params, toy(), mesh=mesh, param_specs=None, **kw)
    with pytest.warns(DeprecationWarning, match=r"pass checkpoint=jreg.Checkpointing\('folder', keep=2\)"):
        jreg.fit(obj, optax.sgd(0.1), params, toy(), keep=2, **kw)  # validated even when unused, as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the option objects themselves warn about nothing
        jreg.fit(obj, optax.sgd(0.1), params, toy(), parallel=jreg.DataParallel(mesh), **kw)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: jreg.Evaluation(evry=2),
            r"Evaluation\(\) got unexpected keyword argument\(s\) \['evry'\]: did you mean 'every'\?",
        ),
        (lambda: jreg.Checkpointing("ck", kep=2), r"Checkpointing\(\) .*\['kep'\]: did you mean 'keep'\?"),
        (
            lambda: jreg.Checkpointing(every=2),
            r"Checkpointing\(\) is missing the argument\(s\) dir: call Checkpointing\(dir, every=\.\.\., keep=\.\.\., "
            r"every_steps=\.\.\., format=\.\.\.\)",
        ),
        (lambda: jreg.EarlyStopping(patiense=3), r"EarlyStopping\(\) .*did you mean 'patience'\?"),
        (lambda: jreg.EarlyStopping.nielsen(restore=True), r"did you mean 'restore_best'\?"),
        (lambda: jreg.EMA(decy=0.9), r"EMA\(\) .*did you mean 'decay'\?"),
        (lambda: jreg.DataParallel(jax.make_mesh((1,), ("data",)), data_axes="data"), r"did you mean 'data_axis'\?"),
        (
            lambda: jreg.ModelParallel(jax.make_mesh((1,), ("model",)), model_axes="model"),
            r"did you mean 'model_axis'\?",
        ),
        (lambda: jreg.Stream([], chunks=2), r"Stream\(\) .*did you mean 'chunk'\?"),
    ],
)
def test_option_objects_name_a_misspelt_or_missing_field(make, match):
    with pytest.raises(jreg.JregTypeError, match=match):
        make()


def test_option_objects_keep_their_signatures_and_still_work():
    assert list(inspect.signature(jreg.Evaluation).parameters) == [
        "data", "metrics", "batch_size", "every", "cost_convention", "default_metrics"
    ]  # fmt: skip
    assert list(inspect.signature(jreg.Checkpointing).parameters) == ["dir", "every", "keep", "every_steps", "format"]
    assert jreg.Checkpointing("ck", 2, 1) == jreg.Checkpointing(dir="ck", every=2, keep=1)
    assert jreg.EarlyStopping.nielsen(3, restore_best=True).restore_best
    assert dataclasses.replace(jreg.Evaluation(every=2), every=3).every == 3
