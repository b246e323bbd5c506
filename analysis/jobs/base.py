"""The job runner's vocabulary: a task (what to run), its cost (estimated seconds and peak memory),
the job that tracks it (state, progress, owners), and the executor interface every backend
implements (in-process, local process pool, Ray).

Three rules hold for every backend:
- single flight: a task whose key is already queued or running is not started again; the caller
  becomes one more owner of the running job;
- admission: a task whose estimate is over the server's ceiling is refused before it starts, and
  memory is reserved across running jobs (see :mod:`analysis.jobs.limits`);
- ownership: a job whose owners are all gone (their browser sessions ended) is cancelled.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)

Progress = Callable[[float, str], None]


class JobCancelled(Exception):
    """Raised inside a computation (by its progress callback) when its job was cancelled."""


@dataclass(frozen=True)
class Cost:
    """An estimate made before a computation starts."""

    seconds: float = 0.0
    bytes: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        # Sections run one after another: times add up, the peak is the largest one.
        return Cost(self.seconds + other.seconds, max(self.bytes, other.bytes))


@dataclass(frozen=True)
class Task:
    """What a worker runs: ``fn`` is a dotted name ``analysis.<module>:<function>`` (never a
    pickled callable, so a task can cross to any backend) called as ``fn(**kwargs, progress=...)``.
    ``key`` identifies the result (single flight); ``ways_around`` is said when it is refused."""

    fn: str
    kwargs: dict
    key: str
    title: str = ""
    kind: str = ""  # what is computed ("similarity:matrix"): estimates are corrected per kind
    cost: Cost = field(default_factory=Cost)
    ways_around: str = ""


@dataclass
class Job:
    task: Task
    state: str = QUEUED
    fraction: float = 0.0
    message: str = "waiting for a worker"
    error: str | None = None
    user_error: bool = False
    owners: set = field(default_factory=set)
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    worker_pid: int | None = None  # the process running it (pool backends)
    owned: bool = False  # started for a browser session: cancelled when its sessions are all gone
    orphaned_since: float | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def key(self) -> str:
        return self.task.key

    @property
    def finished_ok(self) -> bool:
        return self.state == DONE

    def elapsed(self) -> float:
        end = self.finished or time.time()
        return end - (self.started or self.submitted)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _finish(self, state: str, error: str | None = None, user_error: bool = False, result=None) -> None:
        self.state, self.error, self.user_error, self.result = state, error, user_error, result
        self.finished = time.time()
        if state == DONE:
            self.fraction, self.message = 1.0, "done"
        self._done.set()


class Executor:
    """The interface of a job backend. Subclasses implement ``_start`` and ``_kill``."""

    name = "base"

    def __init__(self, limits=None):
        from .limits import Limits

        self.limits = limits or Limits.from_env()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- public
    def submit(self, task: Task, owner: str | None = None) -> Job:
        """Start ``task`` (or join the job already running it); raises UserInputError when the
        task is over the server's ceiling."""
        with self._lock:
            job = self._jobs.get(task.key)
            if job is not None and job.state not in FINISHED:
                if owner:
                    job.owners.add(owner)
                    job.orphaned_since = None
                return job
            self.limits.admit(task)
            job = Job(task, owners={owner} if owner else set(), owned=bool(owner))
            self._jobs[task.key] = job
        self._start(job)
        return job

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def cancel(self, key: str) -> None:
        with self._lock:
            job = self._jobs.get(key)
        if job is not None and job.state not in FINISHED:
            self._kill(job)
            self._settle(job, CANCELLED, "cancelled")

    def forget(self, key: str) -> None:
        """Drop a finished job's record (a retry then starts afresh)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state in FINISHED:
                del self._jobs[key]

    def active(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.state not in FINISHED]

    def reap(self, is_alive: Callable[[str], bool], grace_s: float = 2.0) -> list[str]:
        """Cancel the jobs whose owners have all been gone for ``grace_s`` seconds (a reloaded tab
        gets that long to claim its job again). Returns the keys cancelled."""
        now, gone = time.time(), []
        for job in self.active():
            with self._lock:
                job.owners = {o for o in job.owners if is_alive(o)}
                if job.owners or not job.owned:
                    job.orphaned_since = None
                    continue
                job.orphaned_since = job.orphaned_since or now
                expired = now - job.orphaned_since >= grace_s
            if expired:
                self.cancel(job.key)
                gone.append(job.key)
        return gone

    def shutdown(self) -> None:
        for job in self.active():
            self.cancel(job.key)

    # ---------------------------------------------------------------- for backends
    def _start(self, job: Job) -> None:
        raise NotImplementedError

    def _kill(self, job: Job) -> None:
        raise NotImplementedError

    def _progress(self, job: Job, fraction: float, message: str) -> None:
        if job.state == QUEUED:
            job.state, job.started = RUNNING, time.time()
        job.fraction = min(max(float(fraction), 0.0), 1.0)
        job.message = str(message)[:200]

    def _settle(self, job: Job, state: str, error: str | None = None, user_error: bool = False,
                result=None) -> None:
        with self._lock:
            if job.state in FINISHED:
                return
            job._finish(state, error, user_error, result)
        self.limits.release(job.task)
