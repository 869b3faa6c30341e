"""Wall-clock time of the main job, `python -m jreg demo`, from process start to exit.

    python benchmarks/demo_time.py [--runs 3] [--baseline DIR] [-- extra demo options]

Each run is a fresh Python process (imports, data loading, compilation and the
PNG included), as a user would see it. Prints every run, the median and min-max.
``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add DIR HEAD~1``)
runs that tree's demo too, interleaved run by run with this one (``PYTHONPATH=DIR``),
so machine drift hits both alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="a checkout of the commit to compare with, run interleaved")
    parser.add_argument("demo_args", nargs="*", help="extra options for jreg demo (after --)")
    args = parser.parse_args()
    trees = {"this checkout": None} if args.baseline is None else {"baseline": args.baseline, "this checkout": None}
    times: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.runs):
            for name, tree in trees.items():
                env = dict(os.environ)
                if tree is not None:
                    env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                start = time.perf_counter()
                subprocess.run(
                    # a fresh folder per run: jreg demo refuses to replace an earlier run's results
                    [sys.executable, "-m", "jreg", "demo", "--quiet", "--out", f"{out}/{name}-{i}", *args.demo_args],
                    check=True,
                    stdout=subprocess.DEVNULL if i else None,
                    env=env,
                    cwd=tree or os.getcwd(),
                )
                times[name].append(time.perf_counter() - start)
                print(f"run {i + 1} ({name}): {times[name][-1]:.2f} s", flush=True)
    import jax

    for name, values in times.items():
        print(
            f"jreg demo wall time ({name}): median {statistics.median(values):.2f} s, min {min(values):.2f} s, "
            f"max {max(values):.2f} s over {args.runs} runs"
        )
    machine = platform.processor() or platform.machine()
    print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores, {machine}")


if __name__ == "__main__":
    main()
