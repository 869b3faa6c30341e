"""Wall-clock time of the main job, `python -m jreg demo`, from process start to exit.

    python benchmarks/demo_time.py [--runs 3] [-- extra demo options]

Each run is a fresh Python process (imports, data loading, compilation and the
PNG included), as a user would see it. Prints every run, the median and min-max.
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
    parser.add_argument("demo_args", nargs="*", help="extra options for jreg demo (after --)")
    args = parser.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.runs):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "jreg", "demo", "--quiet", "--out", out, *args.demo_args],
                check=True,
                stdout=subprocess.DEVNULL if i else None,
            )
            times.append(time.perf_counter() - start)
            print(f"run {i + 1}: {times[-1]:.2f} s", flush=True)
    import jax

    print(
        f"jreg demo wall time: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
        f"max {max(times):.2f} s over {args.runs} runs; jax {jax.__version__} on {jax.default_backend()}, "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    )


if __name__ == "__main__":
    main()
