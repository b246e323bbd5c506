"""A real local Ray cluster for the tests, started once per session (5–15 s on 2 cores).

``ray_cluster`` (session) runs ``ray start --head --block --num-cpus=2 --disable-usage-stats`` in
a process group of its own, with a temporary folder and free ports of its own (so it never meets
another Ray on the machine), connects this process to it and exports its address as
``RAY_ADDRESS`` for subprocesses (the CLI). At the end it disconnects and ends that process group
(the head's GCS, raylet and workers) — never ``ray stop``, which would stop every Ray on the machine.

Without Ray the Ray tests are skipped, except under ``CI=true``, where they fail: CI installs it
(requirements-cluster.txt, through requirements-dev.txt).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.store_backends import free_port, require

START_TIMEOUT_S = 120.0


@dataclass
class RayCluster:
    address: str
    proc: subprocess.Popen
    temp_dir: Path
    start_seconds: float


def _ray_cli() -> str | None:
    found = Path(sys.executable).parent / "ray"
    return str(found) if found.exists() else shutil.which("ray")


def start_cluster(num_cpus: int = 2) -> RayCluster:
    # pytest's hypothesis plugin imports this at the very end of a session; a session that had run Ray
    # failed that import with CPython 3.11.7's spurious "AST constructor recursion depth mismatch"
    # (python/cpython#106905, fixed in 3.11.8): import it before Ray's driver threads exist.
    import hypothesis.internal.observability  # noqa: F401

    try:
        import ray
    except ImportError:
        require("Ray (pip install -r requirements-cluster.txt)", False)
    cli = _ray_cli()
    require("the ray command (pip install -r requirements-cluster.txt)", cli is not None)
    # Short: Ray's unix sockets live under it, and a socket path has at most 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp"))
    port = free_port()
    log = open(temp_dir / "head.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [cli, "start", "--head", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0", "--disable-usage-stats",
         "--include-dashboard=false", "--node-ip-address=127.0.0.1", f"--port={port}",
         f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    address = f"127.0.0.1:{port}"
    cluster = RayCluster(address, proc, temp_dir, 0.0)
    while True:
        if proc.poll() is not None:
            stop_cluster(cluster)
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{(temp_dir / 'head.log').read_text()[-4000:]}")
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            break
        except (ConnectionError, RuntimeError):
            if time.monotonic() - t0 > START_TIMEOUT_S:
                stop_cluster(cluster)
                raise
            time.sleep(0.5)
    cluster.start_seconds = time.monotonic() - t0
    return cluster


def stop_cluster(cluster: RayCluster) -> None:
    try:
        import ray

        ray.shutdown()
    finally:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(cluster.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                cluster.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # the GCS may outlive `ray start` itself for a moment: the group goes too
            os.killpg(cluster.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster():
    cluster = start_cluster()
    previous = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = cluster.address
    print(f"\nRay cluster at {cluster.address} started in {cluster.start_seconds:.1f} s", file=sys.stderr)
    yield cluster
    if previous is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = previous
    stop_cluster(cluster)
