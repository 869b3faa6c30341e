"""The ``"wide"`` sweep's compiled step moves no weight: no transpose in XLA's optimized program of the loop body.

``sweep(vectorize="wide")`` carries each stacked leaf in the layout its matmuls want (:mod:`jreg.train.wide_layout`):
the first layer, which meets the shared mini-batch, model axis second ``(784, K, 30)``; a deeper layer, which meets
per-model activations in a batched matmul, model axis first ``(K, 30, 10)``; the optimizer state and the EMA as
their params. Checked here in the optimized HLO of the compiled epoch on the CPU
(``jax.jit(...).lower(...).compile().as_text()``), counting ``transpose`` ops and layout-changing ``copy`` ops in
the body of the loop over mini-batches (and whatever it calls: fusions), for the issue's workload (``jreg.mlp``
[784, 30, 10], cross-entropy + ``l2(λ/n)``, SGD, mini-batch 10, K = 4, 40 examples), with Adam and a traced η,
with an L1 penalty, with momentum, an EMA and early stopping's learning-rate scale; and the layout rule itself.

Before the per-leaf layout, every weight matrix was carried model axis second, and the loop body of the issue's
workload held 10 transposes: 5 of them moved the second layer's weights, its gradient and the penalty's
``2λ·W`` between ``(30, K, 10)`` and the batched matmul's ``(K, 30, 10)``. What remains (5) moves activations only,
structurally: the first layer's wide matmul gives its output batch-major ``(B, K, 30)``, the second layer's batched
matmul wants it model-major ``(K, B, 30)`` (and its ``aᵀ`` as ``(K, 30, B)``), and the backward pass hands the first
layer's wide weight gradient ``xᵀ·δ`` its ``δ`` back batch-major ``(B, K, 30)``; XLA fuses each into the
neighbouring elementwise op (the sigmoid, its derivative), duplicating the forward one into its three consumers.
These are B·K·30 numbers per step against 784·K·30 in the first layer's weights.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jreg
from jreg.train import engine, wide_layout
from jreg.train.config import EMA
from jreg.train.plan import EpochPlan
from jreg.train.state import TrainState

from .test_train import toy

N, K = 40, 4

cpu_only = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the counts are of XLA's CPU program (another backend lays out its own)"
)

# ---- reading XLA's optimized HLO text ------------------------------------------------------------------------------

_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_INSTRUCTION = re.compile(r"^(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\](?:\{([\d,]*)[^}]*\})? (\w[\w\-]*)\((.*)")


def computations(hlo: str) -> dict[str, list[str]]:
    """``{computation name: its instruction lines}``."""
    out, current = {}, None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = out.setdefault(header.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None and line.strip():
            current.append(line.strip())
    return out


def reachable(comps: dict[str, list[str]], root: str) -> list[str]:
    seen, todo = [], [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.append(name)
        for line in comps[name]:
            todo += _CALLED.findall(line)
            for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
                todo += [b.strip().lstrip("%") for b in group.split(",")]
    return seen


#: a matmul in optimized HLO: XLA's own op, or a library call (cuBLAS/cuDNN on a GPU)
_MATMUL = re.compile(r" (dot|convolution)\(|custom_call_target=\"__(cublas|cudnn)")


def matmul_loop_bodies(hlo: str) -> list[list[list[str]]]:
    """The instructions of every ``while`` loop whose body (with what it calls) holds a matmul, one list per
    computation of each."""
    comps = computations(hlo)
    bodies = [b for lines in comps.values() for line in lines for b in re.findall(r"body=%([\w.\-]+)", line)]
    found = []
    for body in dict.fromkeys(bodies):
        parts = [comps[c] for c in reachable(comps, body)]
        if any(_MATMUL.search(line) for part in parts for line in part):
            found.append(parts)
    return found


def step_loop_body(hlo: str) -> list[list[str]]:
    """The instructions of the loop over mini-batches, one list per computation (its body and what it calls)."""
    found = matmul_loop_bodies(hlo)
    assert len(found) == 1, f"expected one loop over mini-batches, found {len(found)}"
    return found[0]


def _parse(line: str):
    m = _INSTRUCTION.match(line)
    if not m:
        return None
    name, _, dims, layout, op, rest = m.groups()
    dims = tuple(int(d) for d in dims.split(",")) if dims else ()
    layout = tuple(int(d) for d in layout.split(",")) if layout else tuple(reversed(range(len(dims))))
    operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
    return name, dims, layout, op, operands


def _physical(dims, layout):
    """The axes of a shape from the slowest-varying in memory to the fastest, size-1 axes left out."""
    return [d for d in reversed(layout) if dims[d] != 1]


def layout_moves(parts: list[list[str]]) -> list[tuple[str, tuple[int, ...]]]:
    """``(op, shape)`` of every ``transpose`` and every layout-changing ``copy`` in ``parts`` (a transpose is listed
    even when its layouts make it free; a copy only when its output's memory order differs from its input's)."""
    moves = []
    for part in parts:
        shapes = {}
        for line in part:
            parsed = _parse(line)
            if parsed is None:
                continue
            name, dims, layout, op, operands = parsed
            shapes[name] = (dims, layout)
            if op == "transpose":
                moves.append((op, dims))
            elif op == "copy" and operands and operands[0] in shapes:
                source_dims, source_layout = shapes[operands[0]]
                if source_dims == dims and _physical(source_dims, source_layout) != _physical(dims, layout):
                    moves.append((op, dims))
    return moves


# ---- the workload ----------------------------------------------------------------------------------------------------


def compiled_wide_epoch(
    optimizer="sgd", penalty="l2", batch_size=10, ema=False, lr_scale=False, k: int = K, n: int = N
) -> str:
    """The optimized HLO (default backend) of one "wide" training epoch of ``k`` models on ``n`` examples (the part
    of the sweep's compiled epoch that loops over the mini-batches)."""
    model = jreg.mlp([784, 30, 10])
    params = model.init(jax.random.key(0))

    def build(hp):
        strength = hp["lmbda"] / n
        pen = jreg.penalties.l2(strength) if penalty == "l2" else jreg.penalties.l1(strength)
        opt = {
            "sgd": lambda: optax.sgd(hp["eta"]),
            "sgd 0.5": lambda: optax.sgd(0.5),
            "adam": lambda: optax.adam(hp["eta"]),
            "momentum": lambda: optax.sgd(hp["eta"], momentum=0.9),
        }[optimizer]()
        return jreg.objective(model.apply, jreg.losses.cross_entropy, pen), opt

    hp = {"lmbda": jnp.linspace(0.1, 5.0, k), "eta": jnp.linspace(0.1, 0.5, k), "decay": jnp.full((k,), 0.9)}
    state = jax.vmap(
        lambda h: TrainState.create(build(h)[1], params, lr_scale=1.0 if lr_scale else None, ema=ema)
    )(hp)  # fmt: skip
    x = jax.random.uniform(jax.random.key(1), (n, 784))
    train = (x, jax.nn.one_hot(jnp.arange(n) % 10, 10))
    train_wide = engine._wide_trainer(
        build, EpochPlan(n, batch_size), EMA(decay="decay") if ema else None, None, True, None
    )  # fmt: skip
    return jax.jit(train_wide).lower(hp, state, train, jax.random.key(2)).compile().as_text()


#: the activation transposes that remain in the issue's workload (the module docstring says why)
ACTIVATION_TRANSPOSES = 5


def transposes(hlo: str) -> list[tuple[int, ...]]:
    return [shape for op, shape in layout_moves(step_loop_body(hlo)) if op == "transpose"]


@cpu_only
def test_the_issues_workload_has_only_the_activation_transposes():
    """jreg.mlp [784, 30, 10], cross-entropy + l2(λ/n), sgd(η) with η traced, mini-batch 10, K = 4: 5 transposes,
    all of activations (10 before the per-leaf layout)."""
    found = transposes(compiled_wide_epoch("sgd"))
    assert len(found) == ACTIVATION_TRANSPOSES, found
    activations = {(K, 10, 30), (10, K, 30), (K, 30, 10)}  # (K, 30, 10) is also W2's shape: batch 10 = 10 outputs
    assert set(found) <= activations, found


@cpu_only
@pytest.mark.parametrize(
    "options",
    [
        dict(optimizer="sgd 0.5"),
        dict(optimizer="adam"),
        dict(optimizer="sgd", penalty="l1"),
        dict(optimizer="momentum", ema=True, lr_scale=True),
    ],
    ids=["sgd 0.5", "adam traced eta", "l1", "momentum ema lr_scale"],
)
def test_no_weight_moves_in_the_step(options):
    """With a mini-batch of 5 (no activation shares a weight's shape): no transpose or layout-changing copy of an
    array shaped like a weight, its gradient or its optimizer state, whatever the optimizer (a traced η included),
    the penalty, the EMA and early stopping's learning-rate scale; the activation transposes stay as many."""
    moves = layout_moves(step_loop_body(compiled_wide_epoch(batch_size=5, **options)))
    weights = {(784, K, 30), (K, 784, 30), (30, K, 10), (K, 30, 10), (K, 10, 30), (10, K, 30), (K, 30, 784)}
    assert [m for m in moves if m[1] in weights] == []
    assert len([m for m in moves if m[0] == "transpose"]) == ACTIVATION_TRANSPOSES, moves


@cpu_only
def test_adam_with_a_traced_eta_has_only_the_activation_transposes():
    found = transposes(compiled_wide_epoch("adam"))
    assert len(found) == ACTIVATION_TRANSPOSES, found


@cpu_only
def test_an_l1_penalty_has_only_the_activation_transposes():
    found = transposes(compiled_wide_epoch("sgd", penalty="l1"))
    assert len(found) == ACTIVATION_TRANSPOSES, found


# ---- the layout rule -------------------------------------------------------------------------------------------------


def _stacked(tree):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (K, *jnp.shape(a))), tree)


def test_the_rule_puts_the_shared_input_layer_second_and_deeper_layers_first():
    model = jreg.mlp([6, 5, 4, 3])
    params = model.init(jax.random.key(0))

    def build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.adam(
            hp["eta"]
        )

    hp = {"lmbda": jnp.ones(K), "eta": jnp.ones(K)}
    state = _stacked(TrainState.create(optax.adam(0.1), params, ema=True))
    data = (jnp.ones((8, 6)), jnp.ones((8, 3)))
    axes = wide_layout.carry_axes(build, hp, state, data, 4, keyed=False)
    expected = [{"b": 0, "w": 1}, {"b": 0, "w": 0}, {"b": 0, "w": 0}]
    assert axes.params == expected and axes.ema == expected
    adam = axes.opt_state[0]
    assert adam.mu == expected and adam.nu == expected and adam.count == 0
    assert axes.step == 0


@pytest.mark.parametrize("options", [dict(drop_rate=0.2), dict(policy="bf16")], ids=["dropout", "bf16"])
def test_the_rule_reads_a_keyed_model_and_a_mixed_precision_one(options):
    """Dropout (the objective takes the step's key) and a bf16 policy (the weights cast before each matmul)."""
    model = jreg.mlp([6, 8, 5, 3], **options)

    def build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(0.1)

    state = _stacked(TrainState.create(optax.sgd(0.1), model.init(jax.random.key(0))))
    data = (jnp.ones((8, 6)), jnp.ones((8, 3)))
    axes = wide_layout.carry_axes(build, {"lmbda": jnp.ones(K)}, state, data, 4, keyed="drop_rate" in options)
    assert [layer["w"] for layer in axes.params] == [1, 0, 0]


def test_a_model_the_rule_cannot_read_keeps_the_model_axis_second():
    """A build that fails when traced on shapes alone: every leaf with two or more axes of its own keeps the model
    axis second (the real trace reports any genuine error)."""
    params = {"w": jnp.ones((3, 2)), "v": jnp.ones((2, 2)), "b": jnp.ones(2)}

    def build(hp):
        raise RuntimeError("not here")

    state = _stacked(TrainState.create(optax.sgd(0.1), params))
    axes = wide_layout.carry_axes(build, {"eta": jnp.ones(K)}, state, (jnp.ones((8, 3)),), 4, keyed=False)
    assert axes.params == {"w": 1, "v": 1, "b": 0}


def test_the_carry_round_trips():
    tree = {"w": np.arange(K * 6.0).reshape(K, 2, 3), "b": np.arange(K * 2.0).reshape(K, 2)}
    axes = {"w": 1, "b": 0}
    carried = wide_layout.to_carry(tree, axes)
    assert carried["w"].shape == (2, K, 3) and carried["b"].shape == (K, 2)
    back = wide_layout.from_carry(carried, axes)
    np.testing.assert_array_equal(back["w"], tree["w"])
    np.testing.assert_array_equal(back["b"], tree["b"])


@pytest.mark.parametrize("framework", ["linen", "equinox"])
def test_the_rule_reads_flax_and_equinox_models(framework):
    """The same rule through the adapters: the kernel that meets the 6 inputs (linen's (6, 5), Equinox's (5, 6))
    second, the deeper ones first, biases first."""
    x = jnp.ones((8, 6))
    if framework == "linen":
        import flax.linen as fnn

        class MLP(fnn.Module):
            @fnn.compact
            def __call__(self, z):
                return fnn.Dense(3)(jax.nn.sigmoid(fnn.Dense(4)(jax.nn.sigmoid(fnn.Dense(5)(z)))))

        model = jreg.frameworks.from_linen(MLP(), x, key=jax.random.key(0))
    else:
        import equinox as eqx

        mlp = eqx.nn.MLP(6, 3, 5, 2, activation=jax.nn.sigmoid, key=jax.random.key(0))
        model = jreg.frameworks.from_equinox(mlp)
    params = model.params

    def build(hp):
        return jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"])), optax.sgd(0.1)

    state = _stacked(TrainState.create(optax.sgd(0.1), params))
    axes = wide_layout.carry_axes(build, {"lmbda": jnp.ones(K)}, state, (x, jnp.ones((8, 3))), 4, keyed=False)
    pairs = list(zip(jax.tree.leaves(params), jax.tree.leaves(axes.params)))
    assert sorted((jnp.shape(a), ax) for a, ax in pairs) == sorted(
        (jnp.shape(a), 1 if jnp.ndim(a) == 2 and 6 in jnp.shape(a) else 0) for a, _ in pairs
    ), axes.params


def test_a_deep_wide_sweep_with_adam_and_l1_equals_vmap():
    """Layers carried in both layouts, Adam's moments following them, a traced η, an L1 penalty, an EMA: the
    "wide" sweep trains what "vmap" trains, up to float reassociation (every param, Adam's state, every series)."""
    model = jreg.mlp([6, 8, 5, 3])

    def build(hp):
        obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l1(hp["lmbda"]))
        return obj, optax.adam(hp["eta"])

    runs = {
        v: jreg.sweep(
            build,
            model.init(jax.random.key(0)),
            toy(24, seed=0),
            hparams={"lmbda": [0.0, 0.01], "eta": [0.01, 0.03]},
            epochs=2,
            batch_size=8,
            key=jax.random.key(3),
            monitor=("training_cost", "epoch_loss"),
            ema=jreg.EMA(0.9),
            vectorize=v,
        )  # fmt: skip
        for v in ("vmap", "wide")
    }
    for name in ("params", "opt_state"):
        u, v = getattr(runs["vmap"], name), getattr(runs["wide"], name)
        assert jax.tree.structure(u) == jax.tree.structure(v), name
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)):
            assert a.shape == b.shape, name
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=name)
    for name in runs["vmap"].history.keys():
        np.testing.assert_allclose(runs["wide"].history[name], runs["vmap"].history[name], rtol=2e-5, atol=2e-6)
