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
from .common import CheckpointError, _is_int, _regular_file, _short


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


def _network2_array(value: Any, shapes: Sequence[tuple[int, ...]], what: str, path: Path, rule: str) -> np.ndarray:
    """``value`` as a float64 array of the first of ``shapes`` it has; finite numbers only."""
    for shape in shapes:
        if _numbers(value, shape):
            try:
                arr = np.asarray(value, dtype=np.float64).reshape(shape)
            except OverflowError as exc:  # an integer beyond float64's range
                raise CheckpointError(f"{path}: {rule}; its {what} are not all finite numbers ({exc})") from exc
            if not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{path}: {rule}; its {what} are not all finite numbers (NaN or infinity)")
            return arr
    if not _only_numbers(value, 2):
        raise CheckpointError(f"{path}: {rule}; its {what} are not numeric, got {_short(value)}")
    raise CheckpointError(f"{path}: {rule}; its {what} do not have that shape")


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
    info = _regular_file(path, "network2 JSON model", "no such file")
    if info.st_size > NETWORK2_MAX_BYTES:
        raise CheckpointError(
            f"{path}: {info.st_size} bytes, more than the {NETWORK2_MAX_BYTES} a network2 JSON model may take "
            "(jreg.checkpoint.NETWORK2_MAX_BYTES)"
        )
    try:
        with open(path, "rb") as f:
            blob = f.read(NETWORK2_MAX_BYTES + 1)  # the file may have grown since
        if len(blob) > NETWORK2_MAX_BYTES:
            raise CheckpointError(f"{path}: more than the {NETWORK2_MAX_BYTES} bytes a network2 JSON model may take")
        data = json.loads(blob.decode())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{path}: not a network2 JSON model (nested too deeply)") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError, or an integer of too many digits
        raise CheckpointError(f"{path}: not a network2 JSON model ({exc})") from exc
    if not isinstance(data, dict) or not {"sizes", "weights", "biases"} <= set(data):
        raise CheckpointError(f"{path}: not a network2 JSON model (needs 'sizes', 'weights' and 'biases')")
    sizes, weights, biases = data["sizes"], data["weights"], data["biases"]
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(_is_int(n) and n >= 1 for n in sizes):
        raise CheckpointError(f"{path}: 'sizes' must be a list of at least two positive integers, got {_short(sizes)}")
    for name, value in (("weights", weights), ("biases", biases)):
        if not isinstance(value, list) or len(value) != len(sizes) - 1:
            got = f"{len(value)} {name}" if isinstance(value, list) else f"{name} {_short(value)}"
            raise CheckpointError(
                f"{path}: 'sizes' {_short(sizes)} does not match {got}: it makes {len(sizes) - 1} layers, so "
                f"{name!r} must list {len(sizes) - 1} matrices"
            )
    cost = data.get("cost", "CrossEntropyCost")
    if not isinstance(cost, str):
        raise CheckpointError(f"{path}: 'cost' must be the cost's name (a string), got {_short(cost)}")
    params = []
    for layer, (w, b) in enumerate(zip(weights, biases)):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        rule = f"layer {layer} must have weights {(n_out, n_in)} (n_out, n_in) and {n_out} biases ({n_out}, 1)"
        w = _network2_array(w, [(n_out, n_in)], "weights", path, rule)
        b = _network2_array(b, [(n_out, 1), (n_out,), (1, n_out)], "biases", path, rule)
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
