"""The goldens' raw values, to say how far a change that moves bits moved them (max |Δ| per case).

tests/test_goldens.py keeps only digests. This runs the same cases with the checkout on ``PYTHONPATH`` and saves
every params leaf and history series; run it on the commit before the change and on the change, then compare:

    PYTHONPATH=<old checkout> python tools/golden_values.py --tests <old checkout>/tests --out /tmp/old.npz
    PYTHONPATH=<new checkout> python tools/golden_values.py --tests <new checkout>/tests --out /tmp/new.npz
    python tools/golden_values.py --compare /tmp/old.npz /tmp/new.npz
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np


def values(tests: Path) -> dict[str, np.ndarray]:
    import jax

    sys.path.insert(0, str(tests.parent))
    spec = importlib.util.spec_from_file_location("tests.test_goldens", tests / "test_goldens.py")
    goldens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goldens)

    def raw(params, history, opt_state=None, model_state=None, **extra):
        out = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            out["params" + jax.tree_util.keystr(path)] = np.asarray(leaf, np.float64)
        for name in sorted(history.keys()):
            out["history." + name] = np.asarray(history[name], np.float64)
        return out

    goldens.record = raw
    found = {}
    for name, case in goldens.CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            for key, value in case(Path(tmp)).items():
                found[f"{name}/{key}"] = value
    return found


def compare(old: Path, new: Path) -> None:
    a, b = np.load(old), np.load(new)
    cases = sorted({k.split("/")[0] for k in a.files})
    print(f"{'case':>16} {'max |Δ| params':>15} {'max |Δ| history':>16}  (leaves moved / leaves)")
    for case in cases:
        moved = {"params": [0.0, 0, 0], "history": [0.0, 0, 0]}
        for key in (k for k in a.files if k.startswith(case + "/")):
            kind = "params" if key.split("/", 1)[1].startswith("params") else "history"
            u, v = a[key], b[key]
            finite = np.isfinite(u) & np.isfinite(v)
            delta = float(np.max(np.abs(u - v)[finite], initial=0.0)) if u.shape == v.shape else float("inf")
            moved[kind][0] = max(moved[kind][0], delta)
            moved[kind][1] += int(u.shape != v.shape or not np.array_equal(u, v, equal_nan=True))
            moved[kind][2] += 1
        p, h = moved["params"], moved["history"]
        print(f"{case:>16} {p[0]:15.3g} {h[0]:16.3g}  ({p[1]}/{p[2]} params, {h[1]}/{h[2]} series)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=Path, default=Path(__file__).resolve().parent.parent / "tests")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", type=Path, nargs=2)
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        np.savez(args.out, **values(args.tests.resolve()))


if __name__ == "__main__":
    main()
