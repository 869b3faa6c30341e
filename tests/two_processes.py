"""Two processes on JAX's distributed runtime (127.0.0.1, gloo CPU collectives): the launcher the tests use
(:func:`run_pair`) and the start each worker script makes (:func:`start`)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: a worker's exit code when this jaxlib has no gloo CPU collectives (the test then skips)
NO_GLOO = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(worker: Path, out: Path, env: dict[str, str], limit: float) -> None:
    """Run ``python worker i port out`` for processes 0 and 1; kill both and fail with their stderr past ``limit``
    seconds (a hung collective fails the test, never the suite); skip when a worker finds no gloo."""
    port = free_port()
    logs = [open(out / f"stderr-{i}.txt", "w+") for i in range(2)]  # noqa: SIM115 - closed below
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(i), str(port), str(out)], env=env, stdout=logs[i],
                         stderr=logs[i])
        for i in range(2)
    ]  # fmt: skip
    deadline = time.monotonic() + limit
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):  # one failed: the other would wait for it
                time.sleep(2)
                break
            time.sleep(0.2)
    finally:
        hung = [p for p in procs if p.poll() is None]
        for p in hung:
            p.kill()
            p.wait()
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read()[-3000:])
            log.close()
    codes = [p.returncode for p in procs]
    if NO_GLOO in codes:
        pytest.skip(f"this jaxlib has no gloo CPU collectives: {texts[codes.index(NO_GLOO)].strip()[-300:]}")
    what = "timed out" if hung else f"exit codes {codes}"
    assert codes == [0, 0] and not hung, f"workers {what}:\n" + "\n---\n".join(texts)


def start(process_id: int, port: int, devices: int) -> None:
    """In a worker, before JAX is used: ``devices`` CPU devices, gloo collectives (exit :data:`NO_GLOO` without
    them) and the distributed runtime of the two processes, coordinated on ``port``."""
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception as exc:  # noqa: BLE001 - a jaxlib built without gloo
        print(f"no gloo CPU collectives: {exc}", file=sys.stderr)
        sys.exit(NO_GLOO)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id, initialization_timeout=60
    )
