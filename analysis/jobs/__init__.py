"""Jobs: every view's computation runs through one executor.

``get_executor()`` gives the process's executor, chosen by ``REPLENS_JOBS``: ``pool`` (a local
pool of worker processes, the app's default), ``inline`` (the caller's thread: the CLI and tests)
or ``ray`` (a Ray cluster, see :mod:`analysis.jobs.ray_backend`); ``REPLENS_RAY=auto`` or
``REPLENS_RAY=ray://host:10001`` alone also selects Ray, at that address. A task names its function by a
dotted path, carries its estimated cost, and returns something small: results go to the store.
"""
from __future__ import annotations

import os
import threading

from .base import CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING, Cost, Executor, Job, JobCancelled, Task
from .limits import Limits, fmt_seconds, max_job_seconds

__all__ = ["Cost", "Task", "Job", "Executor", "JobCancelled", "Limits", "get_executor", "set_executor",
           "QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED", "FINISHED", "fmt_seconds", "max_job_seconds"]

JOBS_ENV = "REPLENS_JOBS"
RAY_ENV = "REPLENS_RAY"
_EXECUTOR: Executor | None = None
_LOCK = threading.Lock()


def make_executor(kind: str, address: str | None = None) -> Executor:
    """A new executor of ``kind``; ``address`` is the Ray cluster's (default: ``$REPLENS_RAY``)."""
    kind = kind.lower()
    if kind == "inline":
        from .local import InlineExecutor

        return InlineExecutor()
    if kind == "pool":
        from .local import PoolExecutor

        return PoolExecutor()
    if kind == "ray":
        try:
            from .ray_backend import RayExecutor
        except ImportError as exc:
            from ..errors import UserInputError

            raise UserInputError(f"{exc}. Or leave {RAY_ENV} and {JOBS_ENV}=ray unset: jobs then run in a "
                                 "local pool of worker processes.") from None
        return RayExecutor(address)
    raise ValueError(f"{JOBS_ENV} must be pool, inline or ray, not {kind!r}")


def get_executor(default: str = "pool") -> Executor:
    """The process-wide executor, created on first use: ``$REPLENS_JOBS`` if set, else Ray when
    ``$REPLENS_RAY`` names a cluster, else ``default``."""
    global _EXECUTOR
    with _LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = make_executor(os.environ.get(JOBS_ENV) or ("ray" if os.environ.get(RAY_ENV) else default))
        return _EXECUTOR


def set_executor(executor: Executor | None) -> Executor | None:
    """Replace the process-wide executor (tests, the CLI); returns the previous one."""
    global _EXECUTOR
    with _LOCK:
        previous, _EXECUTOR = _EXECUTOR, executor
        return previous
