"""fit's option objects (Evaluation, Checkpointing, DataParallel) and the older keywords they replace."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import jreg

from .test_train import setup, toy


def test_older_keywords_still_work_and_equal_the_option_objects(tmp_path):
    _, params, obj = setup()
    kw = dict(epochs=3, batch_size=10, key=jax.random.key(0))
    a, ha = jreg.fit(
        obj, optax.sgd(0.5), params, toy(), checkpoint_dir=tmp_path / "a", checkpoint_every=2, keep=1, **kw
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
        (dict(resume=3), jreg.JregTypeError, "resume must be a checkpoint file or folder path"),
    ],
)
def test_bad_options_fail_before_any_work(kwargs, error, match):
    _, params, obj = setup()
    with pytest.raises(error, match=match):
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
