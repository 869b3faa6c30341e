"""network2.py's JSON model format (``Network.save``, ``network2.load``): jreg MLP params written and read."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from .._checks import check_path
from .._errors import JregError, JregTypeError
from .common import Fields, read_json


def save_network2(path: str | os.PathLike[str], params: Any, cost: str = "CrossEntropyCost") -> Path:
    """Write jreg MLP params in network2.py's JSON format (``Network.save``).

    ``{"sizes": [...], "weights": [...], "biases": [...], "cost": "CrossEntropyCost"}`` with
    weights as ``(n_out, n_in)`` nested lists and biases as ``(n_out, 1)``; the file loads
    with ``network2.load(filename)``. What :func:`load_network2` would refuse is refused here: non-finite
    weights or biases, a ``cost`` that is not a string.
    """
    path = check_path(path, "path")
    if not isinstance(cost, str):
        raise JregTypeError(f"cost must be the cost's name (a string), got {type(cost).__name__}: {cost!r}")
    layers = _check_mlp_params(params, "params")
    for i, (w, b) in enumerate(layers):
        for what, arr in (("w", w), ("b", b)):
            if not np.all(np.isfinite(arr)):
                raise JregError(
                    f"params[{i}]: {what} holds non-finite values (NaN or infinity), which network2 JSON cannot "
                    "hold and load_network2 refuses"
                )
    sizes = [layers[0][0].shape[0]] + [w.shape[1] for w, _ in layers]
    data = {
        "sizes": sizes,
        "weights": [w.T.tolist() for w, _ in layers],
        "biases": [b.reshape(-1, 1).tolist() for _, b in layers],
        "cost": cost,
    }
    return io.write_bytes(path, json.dumps(data).encode())


#: The largest network2 JSON file read: ~13 million numbers at ~20 characters each, far beyond what network2.py
#: trains in pure NumPy; parsing it takes a few GB of Python objects. Larger models belong in :func:`save`'s format.
NETWORK2_MAX_BYTES = 256 * 2**20


def _numbers(value: Any, shape: tuple[int, ...]) -> bool:
    """Whether ``value`` is nested lists of exactly ``shape`` holding JSON numbers (no bools, strings or nulls)."""
    if not shape:
        return type(value) in (int, float)
    if type(value) is not list or len(value) != shape[0]:
        return False
    if len(shape) == 1:
        return all(type(v) in (int, float) for v in value)
    return all(_numbers(v, shape[1:]) for v in value)


def _only_numbers(value: Any, depth: int) -> bool:
    """Whether ``value`` is a number, or lists (at most ``depth`` deep) holding numbers only."""
    if type(value) in (int, float):
        return True
    return type(value) is list and depth > 0 and all(_only_numbers(v, depth - 1) for v in value)


def _network2_array(value: Any, shapes: Sequence[tuple[int, ...]], field: str, fields: Fields, rule: str) -> np.ndarray:
    """``value`` as a float64 array of the first of ``shapes`` it has; finite numbers only."""
    for shape in shapes:
        if _numbers(value, shape):
            try:
                arr = np.asarray(value, dtype=np.float64).reshape(shape)
            except OverflowError:  # an integer beyond float64's range
                raise fields.fail(field, f"{rule} (a number beyond float64's range)", value) from None
            if not np.all(np.isfinite(arr)):
                raise fields.fail(field, f"{rule} (not all finite: NaN or infinity)", value)
            return arr
    if not _only_numbers(value, 2):
        raise fields.fail(field, f"{rule} (not numeric)", value)
    raise fields.fail(field, f"{rule} (not of that shape)", value)


def _float_dtype(dtype: Any, name: str) -> np.dtype:
    """``dtype`` as a NumPy dtype, refusing anything that is not a floating dtype (bfloat16 and friends included)."""
    try:
        resolved = jnp.dtype(dtype)
    except Exception as exc:  # noqa: BLE001 - NumPy and JAX raise TypeError or ValueError by dtype spelling
        raise JregTypeError(f"{name} must be a floating dtype such as jnp.float32, got {dtype!r}") from exc
    if not jnp.issubdtype(resolved, jnp.floating):
        raise JregTypeError(f"{name} must be a floating dtype such as jnp.float32, got {resolved}")
    return resolved


def load_network2(path: str | os.PathLike[str], dtype: Any = jnp.float32) -> tuple[list[dict[str, jax.Array]], str]:
    """Read a model saved by network2.py (``Network.save``): ``(params, cost name)``, params in jreg's layout.

    The file must be a JSON object with ``sizes`` (at least two positive integers), ``weights`` and ``biases``
    (one per layer, ``(n_out, n_in)`` and ``(n_out, 1)`` nested lists of finite numbers; biases may also be flat)
    and optionally ``cost`` (a string); anything else, or a file over :data:`NETWORK2_MAX_BYTES`, raises
    :class:`CheckpointError` naming the file. ``dtype`` is the floating dtype the arrays get.
    """
    path = check_path(path, "path")
    dtype = _float_dtype(dtype, "dtype")
    data = read_json(
        path, "network2 JSON model", NETWORK2_MAX_BYTES, "jreg.checkpoint.NETWORK2_MAX_BYTES", "no such file"
    )
    fields = Fields(path, "not a valid network2 JSON model: ")
    fields.obj(data, "", ("sizes", "weights", "biases"))
    sizes = fields.integers(data["sizes"], "sizes", low=1, min_len=2)
    layers = len(sizes) - 1
    for name in ("weights", "biases"):
        if not isinstance(data[name], list) or len(data[name]) != layers:
            raise fields.fail(
                name, f"must be a list of {layers} matrices, one per layer of 'sizes' {sizes}", data[name]
            )
    cost = fields.string(data.get("cost", "CrossEntropyCost"), "cost", rule="the cost's name (a string)")
    params = []
    for layer, (w, b) in enumerate(zip(data["weights"], data["biases"])):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        w_rule = f"must be layer {layer}'s {(n_out, n_in)} (n_out, n_in) weights: nested lists of finite numbers"
        b_rule = f"must be layer {layer}'s {n_out} biases, {(n_out, 1)} nested lists (or flat) of finite numbers"
        w = _network2_array(w, [(n_out, n_in)], f"weights[{layer}]", fields, w_rule)
        b = _network2_array(b, [(n_out, 1), (n_out,), (1, n_out)], f"biases[{layer}]", fields, b_rule)
        params.append({"w": jnp.asarray(w.T, dtype), "b": jnp.asarray(b.reshape(-1), dtype)})
    return params, cost


def _check_mlp_params(params: Any, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if not isinstance(params, (list, tuple)) or not params:
        raise JregTypeError(f"{name} must be jreg MLP params: a list of {{'w', 'b'}} layers")
    layers = []
    for i, p in enumerate(params):
        if not isinstance(p, dict) or set(p) != {"w", "b"}:
            raise JregTypeError(f"{name}[{i}] must be a dict with 'w' and 'b'")
        w, b = np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64)
        if w.ndim != 2 or b.shape != (w.shape[1],) or (layers and layers[-1][0].shape[1] != w.shape[0]):
            raise JregError(f"{name}[{i}]: w {w.shape} and b {b.shape} do not form an MLP layer")
        layers.append((w, b))
    return layers
