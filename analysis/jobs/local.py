"""The embedded backends: ``InlineExecutor`` runs a task in the caller's thread (the CLI, tests),
``PoolExecutor`` in a local pool of worker processes (the app's default).

The pool is pebble's ProcessPool: cancelling a running task terminates its worker process (the
pool starts a fresh one), which is what makes a job stoppable whatever library it is inside
(numba, BLAS, ARPACK). Store writes are atomic, so a killed worker leaves the store whole.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading

from ..errors import UserInputError
from .base import CANCELLED, DONE, FAILED, Executor, Job, JobCancelled
from .limits import fmt_seconds
from . import worker

log = logging.getLogger("replens.jobs")


def failure(exc: BaseException) -> tuple[str, bool]:
    """(message for the user, whether it is the user's to fix). Never a traceback or a server path."""
    if isinstance(exc, UserInputError):
        return str(exc), True
    return (f"The computation failed ({type(exc).__name__}). It was logged on the server; "
            "retry, or change the parameters."), False


def over_time(limits) -> tuple[str, bool]:
    """The message of a job stopped at the server's time limit (the user can make it smaller)."""
    return (f"Stopped after {fmt_seconds(limits.max_seconds)}, this server's limit per job (REPLENS_MAX_JOB_S). "
            "Use fewer samples or layers, or the command line on a machine of your own."), True


WORKER_DIED = ("The worker running this computation stopped (out of memory or killed). "
               "The result store is intact; retry, or use fewer samples.")


class InlineExecutor(Executor):
    """Runs each task to completion inside ``submit`` (so a job is finished when submit returns)."""

    name = "inline"

    def _start(self, job: Job) -> None:
        job._cancel = threading.Event()
        try:
            result = worker.run(job.task, lambda f, m: self._progress(job, f, m), job._cancel)
        except JobCancelled:
            self._settle(job, CANCELLED, "cancelled")
        except Exception as exc:  # noqa: BLE001 - reported on the job, logged in full
            if not isinstance(exc, UserInputError):
                log.exception("job %s failed", job.task.title or job.key)
            self._settle(job, FAILED, *failure(exc))
        else:
            self._settle(job, DONE, result=result)

    def _kill(self, job: Job) -> None:
        getattr(job, "_cancel", threading.Event()).set()


def default_workers() -> int:
    try:
        return max(1, int(os.environ.get("REPLENS_WORKERS", "")))
    except ValueError:
        return max(1, min(2, os.cpu_count() or 1))


class PoolExecutor(Executor):
    """A local pool of worker processes (``REPLENS_WORKERS``, default min(2, cores))."""

    name = "pool"

    def __init__(self, workers: int | None = None, limits=None):
        super().__init__(limits)
        from pebble import ProcessPool

        self.workers = workers or default_workers()
        ctx = multiprocessing.get_context("spawn")  # never fork a server full of threads
        self._queue = ctx.Queue()
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        self._pool = ProcessPool(max_workers=self.workers, initializer=worker.init_pool_worker,
                                 initargs=(self._queue, threads), context=ctx)
        self._futures: dict[str, object] = {}
        threading.Thread(target=self._listen, name="replens-job-progress", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                key, fraction, message, pid = self._queue.get()
            except (EOFError, OSError):
                return
            job = self.get(key)
            if job is not None and job.state not in (DONE, FAILED, CANCELLED):
                job.worker_pid = pid
                self._progress(job, fraction, message)

    def _start(self, job: Job) -> None:
        # Memory is reserved before the task reaches a worker; waiting happens off the caller's thread.
        threading.Thread(target=self._dispatch, args=(job,), name=f"replens-job-{job.key[:8]}",
                         daemon=True).start()

    def _dispatch(self, job: Job) -> None:
        job.message = "waiting for memory held by other jobs"
        while not self.limits.reserve(job.task, timeout=1.0):
            if job.state == CANCELLED:
                return
        if job.state == CANCELLED:
            self.limits.release(job.task)
            return
        job.message = "waiting for a worker"
        future = self._pool.schedule(worker.pool_entry, args=(job.task,), timeout=self.limits.max_seconds)
        self._futures[job.key] = future
        future.add_done_callback(lambda f, job=job: self._done(job, f))

    def _done(self, job: Job, future) -> None:
        from concurrent.futures import CancelledError, TimeoutError

        from pebble import ProcessExpired

        self._futures.pop(job.key, None)
        try:
            result = future.result()
        except CancelledError:
            self._settle(job, CANCELLED, "cancelled")
        except TimeoutError:
            self._settle(job, FAILED, *over_time(self.limits))
        except ProcessExpired as exc:
            log.error("worker of job %s died: %s", job.task.title or job.key, exc)
            self._settle(job, FAILED, WORKER_DIED)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, UserInputError):
                log.error("job %s failed: %r", job.task.title or job.key, exc)
            self._settle(job, FAILED, *failure(exc))
        else:
            self._settle(job, DONE, result=result)

    def _kill(self, job: Job) -> None:
        future = self._futures.pop(job.key, None)
        if future is not None:
            future.cancel()  # pebble terminates the worker process running it

    def shutdown(self) -> None:
        super().shutdown()
        self._pool.stop()
        self._pool.join(timeout=5)
