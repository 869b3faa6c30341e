"""Degenerate shapes (issue 28, item 2): zero-size layers, a single unit, 1x1 matrices and scalars given to every
penalty of the catalog, every proximal map, every selector and every metric.

The rule: a correct value (equal to a direct NumPy reference, zero where the maths says so) or a jreg error
naming the argument; never a raw error, never NaN; gradients finite and of the leaf's shape; jit and not.

The conventions the references encode (the package's own, stated in :mod:`jreg.penalties.catalog`): a leaf is
a matrix ``(everything else, output units)``; a vector ``(n,)`` is the row ``(1, n)``, a scalar the ``1 x 1``
matrix. An empty matrix has no singular value (nuclear norm 0) and is the zero map (``sigma_max`` 0), so
``spectral_target`` is ``c * target^2`` there (a constant, no gradient), and ``orthogonality`` on ``(0, n)`` is
``c * n`` (``n`` output units with empty weight vectors, none of norm 1). Every other penalty of an empty leaf is 0.

The catalog is enumerated from the package (every public function of ``jreg.penalties``' modules that returns a
``Penalty``, ``InputPenalty`` or ``OutputPenalty``), so a new penalty without a case here fails
:func:`test_every_penalty_constructor_has_a_degenerate_shape_case`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jreg
from jreg import metrics as M
from jreg import penalties as P
from jreg import selectors as S
from jreg.penalties import InputPenalty, OutputPenalty, Penalty

from .conftest import VARIANTS

#: sides per axis: 0 and 1 (the degenerate ones) drawn twice as often as 2 and 3; rank 0 to 4
SIDES = st.sampled_from([0, 0, 1, 1, 2, 3])
SHAPES = st.lists(SIDES, min_size=0, max_size=4).map(tuple)
SEEDS = st.integers(0, 2**32 - 1)
few = settings(max_examples=12)

#: the shapes the issue names, and their neighbours, checked by name (the hypothesis tests draw the rest)
NAMED = [(3, 0), (0, 5), (0,), (0, 0), (2, 3, 0), (), (1,), (1, 1)]

#: coefficients, target and step size of every case
C1, C2, TARGET, T = 0.7, 0.3, 0.6, 0.45
ITERATIONS = 3  # power-iteration steps of the spectral penalties (20 by default: the shapes matter here, not those)


def normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def close(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=2e-5 * (1 + np.max(np.abs(expected), initial=0)))


# --------------------------------------------------------------------------- NumPy references


def matrix(w: np.ndarray) -> np.ndarray:
    """``(everything else, output units)``; a vector is a row, a scalar the 1x1 matrix."""
    if w.ndim == 0:
        return w.reshape(1, 1)
    return w.reshape(math.prod(w.shape[:-1]), w.shape[-1])


def unit_norms(w: np.ndarray, groups: str) -> np.ndarray:
    """Each unit's norm, shaped to broadcast against ``w`` (a vector is the row (1, n), a scalar 1x1)."""
    a = w.reshape((1,) * (2 - w.ndim) + w.shape) if w.ndim < 2 else w
    axis = a.ndim - 1 if groups == "columns" else a.ndim - 2
    norms = np.sqrt(np.sum(a**2, axis=tuple(i for i in range(a.ndim) if i != axis), keepdims=True))
    return norms.reshape(norms.shape[2 - w.ndim :]) if w.ndim < 2 else norms


def soft(w, threshold):
    return np.sign(w) * np.maximum(np.abs(w) - threshold, 0.0)


def singular_values(m: np.ndarray) -> np.ndarray:
    return np.linalg.svd(m, compute_uv=False) if m.size else np.zeros(0)


def power_sigma(w: np.ndarray, iterations: int = ITERATIONS) -> float:
    """The catalog's ``sigma_max``: ``iterations`` power-iteration steps from the fixed start, in float64."""
    m = matrix(w)
    v = np.ones(m.shape[1]) / np.sqrt(m.shape[1]) if m.shape[1] else np.zeros(0)
    u = np.zeros(m.shape[0])
    for _ in range(iterations):
        u = m @ v
        u = u / (np.linalg.norm(u) + 1e-12)
        v = m.T @ u
        v = v / (np.linalg.norm(v) + 1e-12)
    return float(u @ m @ v)


def nuclear_prox(w, t, c):
    m = matrix(w)
    if not m.size:
        return w
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return ((u * np.maximum(s - t * c, 0.0)) @ vt).reshape(w.shape)


def group_prox(w, t, c, groups):
    n = unit_norms(w, groups)
    return w * np.where(n > 0, np.maximum(0.0, 1.0 - t * c / np.where(n > 0, n, 1.0)), 0.0)


def max_norm_prox(w, c, groups):
    n = unit_norms(w, groups)
    return w * np.minimum(1.0, c / np.where(n > 0, n, 1.0))


def orthogonality_grad(w, c):
    m = matrix(w)
    return (4 * c * m @ (m.T @ m - np.eye(m.shape[1]))).reshape(w.shape)


class Case(typing.NamedTuple):
    """One catalog penalty: how to build it, and its value, gradient (None: finite and shaped only) and proximal
    map (None: it has none) in NumPy, as functions of the leaf ``w`` and the center ``w0``."""

    name: str
    build: typing.Callable[..., Penalty]
    value: typing.Callable[..., float]
    grad: typing.Callable[..., np.ndarray] | None
    prox: typing.Callable[..., np.ndarray] | None


def elementwise(name, build, f, g, prox, centered: bool) -> Case:
    """A case of l2/l1/elastic_net, moved to the center ``w0`` when ``centered`` (``build(mask, w0)`` ignores
    ``w0`` otherwise, like the structured penalties' cases)."""
    if not centered:
        return Case(
            name, lambda mask, w0: build(mask=mask), lambda w, w0: f(w), lambda w, w0: g(w), lambda w, w0: prox(w)
        )
    return Case(
        name + "(center)",
        lambda mask, w0: build(mask=mask, center=w0),
        lambda w, w0: f(w - w0),
        lambda w, w0: g(w - w0),
        lambda w, w0: w0 + prox(w - w0),
    )


def _cases() -> list[Case]:
    l2 = (
        "l2",
        lambda mask, center=None: P.l2(C1, mask=mask, center=center),
        lambda d: C1 / 2 * np.sum(d**2),
        lambda d: C1 * d,
        lambda d: d / (1 + T * C1),
    )
    l1 = (
        "l1",
        lambda mask, center=None: P.l1(C1, mask=mask, center=center),
        lambda d: C1 * np.sum(np.abs(d)),
        lambda d: C1 * np.sign(d),
        lambda d: soft(d, T * C1),
    )
    en = (
        "elastic_net",
        lambda mask, center=None: P.elastic_net(C1, C2, mask=mask, center=center),
        lambda d: C1 * np.sum(np.abs(d)) + C2 / 2 * np.sum(d**2),
        lambda d: C1 * np.sign(d) + C2 * d,
        lambda d: soft(d, T * C1) / (1 + T * C2),
    )
    cases = [elementwise(*spec, centered) for spec in (l2, l1, en) for centered in (False, True)]
    for groups in ("columns", "rows"):
        cases += [
            Case(
                f"group_lasso({groups})",
                lambda mask, w0, g=groups: P.group_lasso(C1, groups=g, mask=mask),
                lambda w, w0, g=groups: C1 * np.sum(unit_norms(w, g)),
                lambda w, w0, g=groups: C1 * w / unit_norms(w, g),
                lambda w, w0, g=groups: group_prox(w, T, C1, g),
            ),
            Case(
                f"max_norm({groups})",
                lambda mask, w0, g=groups: P.max_norm(C1, groups=g, mask=mask),
                lambda w, w0: 0.0,
                lambda w, w0: np.zeros_like(w),
                lambda w, w0, g=groups: max_norm_prox(w, C1, g),
            ),
        ]
    cases += [
        Case(
            "nuclear_norm",
            lambda mask, w0: P.nuclear_norm(C1, mask=mask),
            lambda w, w0: C1 * np.sum(singular_values(matrix(w))),
            None,  # U V^T: finite for distinct singular values, as drawn here
            lambda w, w0: nuclear_prox(w, T, C1),
        ),
        Case(
            "spectral_norm",
            lambda mask, w0: P.spectral_norm(C1, iterations=ITERATIONS, mask=mask),
            lambda w, w0: C1 / 2 * power_sigma(w) ** 2,
            None,  # differentiated through the iterations
            None,
        ),
        Case(
            "spectral_target",
            lambda mask, w0: P.spectral_target(C1, TARGET, iterations=ITERATIONS, mask=mask),
            lambda w, w0: C1 * (power_sigma(w) - TARGET) ** 2,
            None,
            None,
        ),
        Case(
            "spectral_target(exponent=2)",
            lambda mask, w0: P.spectral_target(C1, TARGET, exponent=2.0, iterations=ITERATIONS, mask=mask),
            lambda w, w0: C1 * (power_sigma(w) ** 2 - TARGET) ** 2,
            None,
            None,
        ),
        Case(
            "orthogonality",
            lambda mask, w0: P.orthogonality(C1, mask=mask),
            lambda w, w0: C1 * np.sum((matrix(w).T @ matrix(w) - np.eye(matrix(w).shape[1])) ** 2),
            lambda w, w0: orthogonality_grad(w, C1),
            None,
        ),
    ]
    return cases


CASES = _cases()
BY_NAME = {c.name: c for c in CASES}

#: the constructors that build penalties from a user's own formula (checked with the catalog's, not listed here)
BUILDERS = {"term", "sum"}


def constructors() -> dict[str, type]:
    """Every public function of jreg.penalties' modules that returns a Penalty, InputPenalty or OutputPenalty."""
    found = {}
    for info in pkgutil.iter_modules(P.__path__):
        module = importlib.import_module(f"jreg.penalties.{info.name}")
        for name, f in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(f) or f.__module__ != module.__name__:
                continue
            returns = typing.get_type_hints(f).get("return")
            if returns in (Penalty, InputPenalty, OutputPenalty):
                found[name] = returns
    return found


def test_every_penalty_constructor_has_a_degenerate_shape_case():
    found = constructors()
    params_penalties = {n for n, r in found.items() if r is Penalty} - BUILDERS
    covered = {c.name.split("(")[0] for c in CASES}
    assert params_penalties == covered, f"penalties without a degenerate-shape case: {params_penalties - covered}"
    function_space = {n for n, r in found.items() if r is not Penalty}
    assert function_space == set(FUNCTION_SPACE), f"without a case: {function_space - set(FUNCTION_SPACE)}"
    assert set(BUILDERS) <= set(found)


# --------------------------------------------------------------------------- the penalties and their proximal maps


def check_case(case: Case, w: jax.Array, w0: jax.Array, jit: bool) -> None:
    """Value, gradient, proximal map (Penalty.prox and jreg.proximal) of ``case`` on ``{"w": w}``, mask ``"*"``:
    all in one function, called as is or under ``jax.jit`` (one compilation per shape)."""
    wn, w0n = np.asarray(w, np.float64), np.asarray(w0, np.float64)
    penalty = case.build("*", {"w": w0})
    params = {"w": w}
    what = f"{case.name} on {tuple(w.shape)}{' under jit' if jit else ''}"

    def run(p):
        out = {"value": penalty(p), "grad": jax.grad(lambda q: penalty(q))(p)["w"]}
        if case.prox is not None:
            out["prox"] = penalty.prox(p, T)["w"]
            step = jreg.proximal(penalty, T)  # the optax form: its update lands on the same point
            updates, _ = step.update(jax.tree.map(jnp.zeros_like, p), step.init(p), p)
            out["proximal"] = p["w"] + updates["w"]
        return out

    out = (jax.jit(run) if jit else run)(params)
    assert out["value"].shape == () and np.isfinite(out["value"]), f"{what}: {out['value']}"
    close(out["value"], case.value(wn, w0n), what)
    grad = out["grad"]
    assert grad.shape == w.shape and grad.dtype == w.dtype, f"{what}: gradient {grad.shape} {grad.dtype}"
    assert np.all(np.isfinite(grad)), f"{what}: gradient {grad}"
    if case.grad is not None:
        close(grad, case.grad(wn, w0n), f"{what}: gradient")
    if case.prox is None:
        with pytest.raises(jreg.JregError, match="has no proximal map"):
            penalty.prox(params, T)
        return
    for key in ("prox", "proximal"):
        assert out[key].shape == w.shape and out[key].dtype == w.dtype, f"{what}: {key} {out[key].shape}"
        assert np.all(np.isfinite(out[key])), f"{what}: {key} {out[key]}"
        close(out[key], case.prox(wn, w0n), f"{what}: {key}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@settings(max_examples=12)
@given(shape=SHAPES, seed=SEEDS, jit=st.booleans())
def test_every_penalty_on_degenerate_shapes(case, shape, seed, jit):
    check_case(case, normal(seed, shape), normal(seed + 1, shape), jit)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_named_shapes_and_what_an_empty_layer_costs(case):
    """The issue's shapes by name; on an empty leaf every penalty is 0 but the two whose formula has a constant."""
    for shape in NAMED:
        check_case(case, normal(7, shape), normal(8, shape), jit=True)  # eager: the hypothesis test, and the next
        if math.prod(shape):
            continue
        value = float(case.build("*", {"w": jnp.zeros(shape)})({"w": jnp.zeros(shape)}))
        if case.name.startswith("spectral_target"):
            expected = C1 * TARGET**2  # sigma_max of the zero map is 0
        elif case.name == "orthogonality":
            expected = C1 * matrix(np.zeros(shape)).shape[1]  # n empty columns, none of norm 1
        else:
            expected = 0.0
        assert value == pytest.approx(expected, abs=1e-7), (case.name, shape, value)


def test_the_issues_defect_structured_penalties_on_a_layer_with_no_output_units():
    """Was ``ZeroDivisionError: integer modulo by zero`` (``reshape(-1, 0)`` in ``_matrix``)."""
    params = {"w": jnp.zeros((3, 0))}
    for penalty in (P.spectral_norm(1.0), P.nuclear_norm(1.0), P.orthogonality(1.0), P.spectral_target(1.0)):
        assert float(penalty(params)) == (1.0 if penalty.terms[0].name == "spectral_target" else 0.0)
        assert jax.grad(penalty)(params)["w"].shape == (3, 0)
        assert float(jax.jit(penalty)(params)) == float(penalty(params))
    assert P.nuclear_norm(1.0).prox(params, 0.5)["w"].shape == (3, 0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_default_mask_takes_empty_matrices_and_refuses_a_lone_vector(case):
    """The default mask (weights: rank >= 2) selects an empty kernel like any other; params with no such leaf
    are a jreg error naming the penalty."""
    params = {"w": jnp.zeros((0, 4)), "b": jnp.zeros(4)}
    penalty = case.build(None, jax.tree.map(jnp.zeros_like, params))
    assert [r["path"] for r in P.describe(penalty, params)] == ["w"]
    assert np.isfinite(float(penalty(params)))
    vectors = {"b": jnp.zeros(0), "s": jnp.zeros(())}
    with pytest.raises(jreg.JregError, match="selects no leaf"):
        case.build(None, vectors)(vectors)


@pytest.mark.parametrize("variant", VARIANTS)
@few
@given(shape=SHAPES, seed=SEEDS, threshold=st.sampled_from([0.0, 0.3, "per-entry"]))
def test_soft_threshold(variant, shape, seed, threshold):
    w = normal(seed, shape)
    if threshold == "per-entry":
        threshold = jnp.abs(normal(seed + 1, shape))
    out = variant(P.soft_threshold)(w, threshold)
    assert out.shape == w.shape and np.all(np.isfinite(out))
    close(out, soft(np.asarray(w, np.float64), np.asarray(threshold, np.float64)), f"soft_threshold on {shape}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("groups", ["columns", "rows"])
@few
@given(shape=SHAPES, seed=SEEDS)
def test_unit_norm_projection(variant, groups, shape, seed):
    """The equality form of max_norm: each unit back to norm 1; rank < 2 is refused, naming the leaf."""
    w = {"w": normal(seed, shape)}
    step = jreg.unit_norm(groups, mask="*")
    zeros = jax.tree.map(jnp.zeros_like, w)
    if len(shape) < 2:
        with pytest.raises(jreg.JregError, match="leaf 'w' of shape"):
            step.update(zeros, step.init(w), w)
        return
    updates, _ = variant(step.update)(zeros, step.init(w), w)
    wn = np.asarray(w["w"], np.float64)
    close(w["w"] + updates["w"], wn / np.maximum(unit_norms(wn, groups), 1e-12), f"unit_norm on {shape}")


def test_width_scaled_gives_an_empty_kernel_coefficient_zero():
    """fan_in 0 (a (0, n) or (2, 0, n) kernel) holds no weight: its coefficient is 0, not 0^-1 (a ZeroDivisionError
    before)."""
    params = {"w": jnp.ones((0, 5)), "k": jnp.ones((2, 0, 3)), "v": jnp.ones((2, 3))}
    for exponent in (-1.0, -0.5, 0.0, 1.0):
        penalty = P.l2(P.width_scaled(2.0, exponent), mask="*")
        assert float(penalty(params)) == pytest.approx(2.0 * 2.0**exponent * 6 / 2)
        coefficients = {r["path"]: r["coefficients"] for r in P.describe(penalty, params)}
        assert coefficients["w"] == coefficients["k"] == "0"


# --------------------------------------------------------------------------- selectors


LEAF_NAMES = st.sampled_from(["w", "b", "kernel", "scale", "embedding"])
DTYPES = st.sampled_from([np.float32, np.int32, np.bool_])


def selectors() -> dict[str, tuple[S.Selector, typing.Callable[[str, np.ndarray], bool]]]:
    """Every selector constructor of jreg.selectors (checked by name below), with a reference predicate."""
    floating = lambda x: np.issubdtype(x.dtype, np.floating)  # noqa: E731
    return {
        "path": (S.path("w", "*/kernel"), lambda p, x: p == "w" or p.endswith("/kernel")),
        "name": (S.name("kernel", "b"), lambda p, x: p.split("/")[-1] in ("kernel", "b")),
        "rank": (S.rank(min=1, max=2), lambda p, x: 1 <= x.ndim <= 2),
        "dtype": (S.dtype("float"), lambda p, x: floating(x)),
        "everything": (S.everything(), lambda p, x: True),
        "weights": (S.weights(), lambda p, x: floating(x) and x.ndim >= 2 and p.split("/")[-1] not in S.NOT_WEIGHTS),
    }


def test_every_selector_constructor_is_checked():
    public = {
        n
        for n, f in vars(S).items()
        if not n.startswith("_") and inspect.isfunction(f) and typing.get_type_hints(f).get("return") is S.Selector
    }
    assert public == set(selectors())


@given(shape=SHAPES, name=LEAF_NAMES, dtype=DTYPES, folder=st.sampled_from(["", "layer/"]))
def test_selectors_on_degenerate_leaves(shape, name, dtype, folder):
    leaf, path = jnp.zeros(shape, dtype), folder + name
    for label, (selector, reference) in selectors().items():
        chosen = selector(path, leaf)
        assert isinstance(chosen, bool) and chosen == reference(path, np.zeros(shape, dtype)), (label, path, shape)
        assert (~selector)(path, leaf) == (not chosen)
    flags = P.mask_tree({"a": {name: leaf}}, S.weights())
    assert flags == {"a": {name: selectors()["weights"][1](name, np.zeros(shape, dtype))}}


# --------------------------------------------------------------------------- metrics


def metric_cases() -> dict[str, typing.Callable[..., jax.Array]]:
    """Every metric of jreg.metrics (checked by name below); top_k_accuracy by its k."""
    return {"accuracy": M.accuracy, "mse": M.mse, "mae": M.mae, **{f"top_{k}": M.top_k_accuracy(k) for k in (1, 2)}}


def test_every_metric_is_checked():
    metrics = {n for n in M.__all__ if n not in ("Metric", "as_metrics", "unweighted")}
    assert {n if not n.startswith("top_") else "top_k_accuracy" for n in metric_cases()} == metrics


def per_example_mean(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values


def metric_reference(name: str, out: np.ndarray, targets: np.ndarray) -> np.ndarray | str:
    """The per-example values, or the start of the jreg error the metric must raise."""
    if name in ("mse", "mae"):
        if 0 in out.shape[1:]:
            return f"{name}: outputs of shape"
        y = targets if targets.dtype.kind == "f" else np.eye(out.shape[-1])[targets]
        diff = out - y
        return per_example_mean(diff**2 if name == "mse" else np.abs(diff))
    k = 1 if name == "accuracy" else int(name.split("_")[1])
    if name == "accuracy" and (out.ndim < 2 or out.shape[-1] < 2):
        return "accuracy needs outputs (batch, classes) with at least 2 classes"
    if out.ndim < 2:
        return "top_k_accuracy needs outputs"
    if k > out.shape[-1]:
        return "top_k_accuracy: k must be at most the number of classes"
    if 0 in out.shape[1:]:
        return f"{'accuracy' if name == 'accuracy' else 'top_k_accuracy'}: outputs of shape"
    labels = targets if targets.dtype.kind == "i" else np.argmax(targets, axis=-1)
    best = np.argsort(-out, axis=-1)[..., :k]
    return per_example_mean(np.any(best == labels[..., None], axis=-1).astype(np.float64))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", sorted(metric_cases()))
@few
@given(shape=st.lists(SIDES, min_size=1, max_size=4).map(tuple), seed=SEEDS, labels=st.booleans())
def test_every_metric_on_degenerate_outputs(variant, name, shape, seed, labels):
    """Outputs ``(batch, ...)``: a batch of 0 examples gives ``(0,)`` values; an axis of size 0 after the batch
    axis (no value to average for an example) or too few classes is a jreg error naming the metric and the shape."""
    out = normal(seed, shape)
    if labels and len(shape) >= 2 and shape[-1] >= 1:
        targets = jnp.asarray(np.random.default_rng(seed).integers(0, shape[-1], size=shape[:-1]), jnp.int32)
    else:
        targets = normal(seed + 1, shape)
    expected = metric_reference(name, np.asarray(out, np.float64), np.asarray(targets))
    metric = metric_cases()[name]
    if isinstance(expected, str):
        with pytest.raises(jreg.JregError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            variant(metric)(out, targets)
        return
    values = variant(metric)(out, targets)
    assert values.shape == shape[:1] and np.all(np.isfinite(values))
    close(values, expected, f"{name} on {shape}")


# --------------------------------------------------------------------------- function-space penalties


def linear(w: jax.Array):
    return lambda x: x @ w


#: every function-space constructor (checked by name above), built with c = C1
FUNCTION_SPACE = {
    "z_loss": lambda: P.z_loss(C1),
    "input_gradient": lambda: P.input_gradient(C1),
    "jacobian_norm": lambda: P.jacobian_norm(C1),
}


@pytest.mark.parametrize("variant", VARIANTS)
@few
@given(shape=SHAPES, seed=SEEDS)
def test_z_loss_on_degenerate_logits(variant, shape, seed):
    """Logits ``(batch, ..., classes)``: rank < 2 or any axis of size 0 (log Z of no class is -inf, a mean over
    no example NaN) is a jreg error naming z_loss; otherwise ``c * mean (log Z)^2``."""
    z = normal(seed, shape)
    penalty = FUNCTION_SPACE["z_loss"]()
    if len(shape) < 2 or 0 in shape:
        with pytest.raises(jreg.JregError, match="z_loss: the model's outputs"):
            variant(lambda z: penalty(z))(z)
        return
    value = variant(lambda z: penalty(z))(z)
    zn = np.asarray(z, np.float64)
    log_z = np.log(np.sum(np.exp(zn - zn.max(-1, keepdims=True)), -1)) + zn.max(-1)
    close(value, C1 * np.mean(log_z**2), f"z_loss on {shape}")
    grad = variant(jax.grad(lambda z: penalty(z)))(z)
    assert grad.shape == z.shape and np.all(np.isfinite(grad))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["input_gradient", "jacobian_norm"])
@settings(max_examples=8)  # double backprop, op by op without jit: the slowest of this file
@given(n=SIDES, d=SIDES, k=SIDES, seed=SEEDS)
def test_input_penalties_of_a_linear_model_on_degenerate_shapes(variant, name, n, d, k, seed):
    """``f(x) = x W`` with ``x (n, d)``, ``W (d, k)``: the Jacobian of every example is ``W^T``, so
    ``jacobian_norm = c/2 ||W||^2``, and the quadratic cost's input gradient is ``(x W - y) W^T``. No input
    (``d = 0``) or no output (``k = 0``) gives 0; no example (``n = 0``) is a jreg error naming x."""
    w, x, y = normal(seed, (d, k)), normal(seed + 1, (n, d)), normal(seed + 2, (n, k))
    penalty = FUNCTION_SPACE[name]()

    def value(w):
        return penalty(linear(w), jreg.losses.quadratic, x, y)

    if n == 0:
        with pytest.raises(jreg.JregError, match=rf"{name}: x \(the inputs\) must have a leading batch axis"):
            variant(value)(w)
        return
    wn, xn, yn = (np.asarray(a, np.float64) for a in (w, x, y))
    if name == "jacobian_norm":
        expected = C1 / 2 * np.sum(wn**2)
    else:
        expected = C1 / 2 * np.sum(((xn @ wn - yn) @ wn.T) ** 2) / n
    close(variant(value)(w), expected, f"{name} on n={n} d={d} k={k}")
    grad = variant(jax.grad(value))(w)
    assert grad.shape == (d, k) and np.all(np.isfinite(grad))


def test_a_scalar_input_is_refused_by_the_input_penalties():
    for name in ("input_gradient", "jacobian_norm"):
        with pytest.raises(jreg.JregError, match=rf"{name}: x \(the inputs\).*got shape \(\)"):
            FUNCTION_SPACE[name]()(lambda x: x, jreg.losses.quadratic, jnp.ones(()), jnp.ones(()))


def test_an_empty_layer_through_a_proximal_step():
    """An empty layer through a whole proximal step (sgd + group lasso prox) and the default-mask l2 objective."""
    params = {"w": jnp.ones((3, 0)), "v": jnp.ones((3, 2))}
    opt = optax.chain(optax.sgd(0.1), jreg.proximal(P.group_lasso(0.5), 0.1))
    grads = jax.grad(P.l2(1.0) + P.nuclear_norm(0.1))(params)
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    assert new["w"].shape == (3, 0) and np.all(np.isfinite(new["v"]))
