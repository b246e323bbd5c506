"""What runs inside a worker (a pool process, a Ray task, or the caller's thread): resolve the
task's function by its dotted name and call it with a progress callback that also carries cancel.

Only functions under ``analysis.`` can be named, so a task description can never make a worker
import arbitrary code.
"""
from __future__ import annotations

import importlib
import os
import threading
import time

from .base import JobCancelled, Task


def resolve(fn: str):
    module, _, name = fn.partition(":")
    if not (module == "analysis" or module.startswith("analysis.")) or not name.isidentifier():
        raise ValueError(f"not a RepLens task function: {fn!r}")
    return getattr(importlib.import_module(module), name)


class Reporter:
    """A progress callback that forwards (throttled) progress and raises JobCancelled once the job
    is cancelled: every long computation reports progress, so every one can be stopped."""

    def __init__(self, send, cancelled: threading.Event | None = None, every_s: float = 0.2):
        self.send, self.cancelled, self.every_s = send, cancelled, every_s
        self.last = 0.0

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise JobCancelled()
        now = time.monotonic()
        if now - self.last >= self.every_s or fraction >= 1.0:
            self.last = now
            self.send(float(fraction), str(message))


def run(task: Task, send, cancelled: threading.Event | None = None):
    send(0.0, "started")
    return resolve(task.fn)(**task.kwargs, progress=Reporter(send, cancelled))


# ------------------------------------------------------------------ pool processes
_QUEUE = None


def init_pool_worker(queue, threads: int) -> None:
    """Runs once in each pool process: where progress goes, and how many threads torch may use
    (the workers share the machine's cores with each other and the server)."""
    global _QUEUE
    _QUEUE = queue
    os.environ["REPLENS_IN_WORKER"] = "1"
    # OpenMP (scikit-learn's t-SNE) and numba (UMAP) start one thread per core unless told: with
    # several workers on few cores, their spinning threads made a t-SNE 10x slower (measured).
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(max(1, threads)))
    from ..numba_cache import configure

    configure()  # before any task imports umap: its compiled code is kept in the store
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:
        pass


def pool_entry(task: Task):
    """The function a pool process runs for one task; its return value must be small (results go
    to the store, not through the pipe)."""
    pid = os.getpid()

    def send(fraction: float, message: str) -> None:
        if _QUEUE is not None:
            _QUEUE.put((task.key, fraction, message, pid))

    return run(task, send)
