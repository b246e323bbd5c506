"""The Ray backend of the job runner: each task runs as a Ray task on a cluster, so a lab server
(or the CLI) spreads views and sweeps over many machines and GPUs.

Select it with ``REPLENS_RAY`` (``auto`` joins the cluster this machine belongs to, e.g. after
``ray start --head``; ``host:6379`` or ``ray://host:10001`` name one), with ``REPLENS_JOBS=ray``
(a local cluster started in this process when ``REPLENS_RAY`` is unset), or ``--ray ADDRESS`` on
the command line. Ray is an optional extra (``requirements-cluster.txt``); only this package's Ray
modules import it.

The executor keeps the runner's rules: single flight and ownership come from :class:`Executor`;
admission checks a task against the largest node's memory and the server's time limit, and Ray's
``memory`` resource reserves the estimate across running tasks. A task is retried on another
worker when its worker dies (``max_retries``); its store writes are atomic and keyed by content,
so a retry rewrites the same entry whole and nothing is duplicated. Progress goes through a small
actor that the executor polls; cancel is ``ray.cancel(ref, force=True)``, which kills the worker.

A worker reads and writes the store named by the settings the task carries (``REPLENS_STORE``,
``REPLENS_DATABASE_URL``, ...): on a cluster that is a PostgreSQL index and a shared folder or an
fsspec URL that every node reaches (docs/scaling.md).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

try:
    import ray
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("The Ray backend needs Ray: pip install -r requirements-cluster.txt") from exc

from ..errors import UserInputError
from .base import CANCELLED, DONE, FAILED, FINISHED, RUNNING, Executor, Job
from .limits import Limits, max_job_seconds
from .local import WORKER_DIED, default_workers, failure, over_time
from . import worker

log = logging.getLogger("replens.jobs")

RAY_ENV = "REPLENS_RAY"
GPUS_ENV = "REPLENS_RAY_GPUS"  # GPUs per task (fractions share one); default 1 on a cluster with GPUs
MAX_RETRIES = 3
POLL_S = 0.2  # progress and the time limit are checked this often; a finished task is noticed at once
REPO_ROOT = Path(__file__).resolve().parents[2]
# Settings a worker must share with the process that submitted the task (where results go, what
# may be loaded); every REPLENS_ variable travels, except those that choose the executor itself.
LOCAL_ONLY = {"REPLENS_JOBS", RAY_ENV, "REPLENS_WORKERS", "REPLENS_IN_WORKER"}
ALSO_SENT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")


# ------------------------------------------------------------------ the cluster
def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at ``address`` (``auto``, ``host:port``, ``ray://host:10001``), or start
    a local one when it is None. Returns True when this call started a local cluster."""
    if ray.is_initialized():
        return False
    if address and address != "auto":
        _check_reachable(address)
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    kw = dict(logging_level=logging.WARNING, log_to_driver=False,
              runtime_env={"env_vars": {"PYTHONPATH": path}})  # workers import this checkout's analysis
    try:
        if address:
            ray.init(address=address, **kw)
            return False
        ray.init(num_cpus=default_workers(), include_dashboard=False, **kw)
        return True
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserInputError(f"Could not reach the Ray cluster at {address or 'a new local cluster'} ({exc}). "
                             "Start it (ray start --head) or correct REPLENS_RAY / --ray.") from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once, naming the address, when nothing listens there (ray.init would wait minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except ValueError:
        problem = "not host:port"
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
    raise UserInputError(f"Could not reach the Ray cluster at {address} ({problem}). Start it (ray start --head) "
                         "or correct REPLENS_RAY / --ray: host:6379, ray://host:10001, or auto on a node of the "
                         "cluster.")


def largest_node_memory() -> int:
    """The most memory Ray offers tasks on any one node (bytes): no single task may ask for more."""
    sizes = [n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")]
    return int(max(sizes, default=0))


def task_gpus() -> float:
    raw = os.environ.get(GPUS_ENV)
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            raise UserInputError(f"{GPUS_ENV} must be a number of GPUs per task, not {raw!r}.") from None
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def settings() -> dict:
    """The environment a worker needs to act like this process (None: unset here). The store is
    always named: a worker's own default folder would be another store."""
    from ..store import default_root

    out = {k: v for k, v in os.environ.items() if k.startswith("REPLENS_") and k not in LOCAL_ONLY}
    out.update({k: os.environ.get(k) for k in ALSO_SENT})
    out.setdefault("REPLENS_STORE", str(default_root()))
    return out


def apply_settings(values: dict) -> None:
    """Make this worker's environment match the submitter's (workers are reused across tasks and
    jobs, so a setting absent here is removed, not left from an earlier task)."""
    for k in [k for k in os.environ if k.startswith("REPLENS_") and k not in LOCAL_ONLY and k not in values]:
        del os.environ[k]
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    os.environ["REPLENS_IN_WORKER"] = "1"


# ------------------------------------------------------------------ what runs on the cluster
@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where running tasks post progress; the executor takes what is new every POLL_S seconds."""

    def __init__(self):
        self.latest: dict = {}
        self.attempts: dict = {}

    def started(self, key: str, pid: int) -> None:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.latest[key] = (0.0, "started", pid, self.attempts[key])

    def report(self, key: str, fraction: float, message: str, pid: int) -> None:
        self.latest[key] = (fraction, message, pid, self.attempts.get(key, 1))

    def take(self) -> dict:
        out, self.latest = self.latest, {}
        return out

    def attempt(self, key: str) -> int:
        return self.attempts.get(key, 0)


@ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)
def run_on_worker(task, values: dict, board):
    """One task on a Ray worker: the submitter's settings, progress to the board, the result back
    (small: results go to the store)."""
    apply_settings(values)
    pid = os.getpid()
    board.started.remote(task.key, pid)
    return worker.run(task, lambda f, m: board.report.remote(task.key, f, m, pid))


# ------------------------------------------------------------------ the executor
class RayExecutor(Executor):
    """Jobs as Ray tasks on the cluster at ``address`` (see :func:`connect`)."""

    name = "ray"

    def __init__(self, address: str | None = None, limits: Limits | None = None):
        self.address = address if address is not None else (os.environ.get(RAY_ENV) or None)
        self._owns_cluster = connect(self.address)
        super().__init__(limits or Limits(max_job_seconds(), largest_node_memory()))
        self.gpus = task_gpus()
        self.board = ProgressBoard.remote()
        self._refs: dict[str, object] = {}
        self._stop = threading.Event()
        self._submitted = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="replens-ray-monitor", daemon=True)
        self._monitor.start()

    def attempts(self, key: str) -> int:
        """How many times the task of ``key`` has started (more than 1 after a worker died)."""
        return int(ray.get(self.board.attempt.remote(key), timeout=30))

    def _start(self, job: Job) -> None:
        options = {"num_gpus": self.gpus}
        if job.task.cost.bytes > 0:  # Ray's scheduler then reserves the estimate on a node
            options["memory"] = int(job.task.cost.bytes)
        job.message = "waiting for a Ray worker"
        ref = run_on_worker.options(**options).remote(job.task, settings(), self.board)
        with self._lock:
            self._refs[job.key] = ref
        self._submitted.set()

    def _kill(self, job: Job) -> None:
        with self._lock:
            ref = self._refs.pop(job.key, None)
        if ref is not None:
            ray.cancel(ref, force=True)  # kills the worker process: stops any library mid-call

    # ---------------------------------------------------------------- the monitor thread
    def _watch(self) -> None:
        last_board = 0.0
        while not self._stop.is_set():
            try:
                self._collect()  # returns as soon as a task ends, else after POLL_S
                if time.monotonic() - last_board >= POLL_S:
                    last_board = time.monotonic()
                    self._read_board()
                    self._enforce_time_limit()
            except Exception:  # noqa: BLE001 - the monitor must outlive any one bad poll
                if not self._stop.is_set():
                    log.exception("the Ray job monitor failed a poll")
                    self._stop.wait(POLL_S)

    def _collect(self) -> None:
        with self._lock:
            pending = {ref: key for key, ref in self._refs.items()}
        if not pending:
            self._submitted.wait(POLL_S)
            self._submitted.clear()
            return
        refs = list(pending)
        ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S, fetch_local=False)
        if ready:  # and every other one that has ended meanwhile
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        for ref in ready:
            key = pending[ref]
            with self._lock:
                if self._refs.get(key) is not ref:
                    continue
                del self._refs[key]
            job = self.get(key)
            if job is not None:
                self._finish(job, ref)

    def _finish(self, job: Job, ref) -> None:
        from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError

        try:
            result = ray.get(ref, timeout=30)
        except TaskCancelledError:
            self._settle(job, CANCELLED, "cancelled")
        except WorkerCrashedError:
            log.error("the Ray workers of job %s died %d times", job.task.title or job.key, MAX_RETRIES + 1)
            self._settle(job, FAILED, WORKER_DIED)
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            if not isinstance(cause, UserInputError):
                log.error("job %s failed on Ray: %s", job.task.title or job.key, exc)
            self._settle(job, FAILED, *failure(cause))
        except Exception as exc:  # noqa: BLE001 - a lost node, an object gone: reported, logged
            log.error("job %s failed on Ray: %r", job.task.title or job.key, exc)
            self._settle(job, FAILED, *failure(exc))
        else:
            self._settle(job, DONE, result=result)

    def _read_board(self) -> None:
        for key, (fraction, message, pid, attempt) in ray.get(self.board.take.remote(), timeout=30).items():
            job = self.get(key)
            if job is None or job.state in FINISHED:
                continue
            job.worker_pid = pid
            self._progress(job, fraction, message if attempt <= 1 else f"{message} (attempt {attempt})")

    def _enforce_time_limit(self) -> None:
        now = time.time()
        for job in self.active():
            if job.state == RUNNING and job.started and now - job.started > self.limits.max_seconds:
                self._kill(job)
                self._settle(job, FAILED, *over_time(self.limits))

    def shutdown(self) -> None:
        super().shutdown()
        self._stop.set()
        self._monitor.join(timeout=5)
        try:
            ray.kill(self.board)
        except Exception:  # noqa: BLE001 - the cluster may already be gone
            pass
        if self._owns_cluster:
            ray.shutdown()
