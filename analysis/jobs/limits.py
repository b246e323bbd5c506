"""Server ceilings on one job's time and memory, and memory reserved across running jobs.

``REPLENS_MAX_JOB_S`` caps the estimated (and the actual) run time of one job; a job estimated
over it is refused before it starts, with the ways around it, and a job that runs past it is
stopped. ``REPLENS_MEMORY_LIMIT_MB`` (else 80% of the memory free when the server started) is the
memory all running jobs may reserve together: a job that alone needs more is refused; one that
fits alone but not next to the running ones waits until they finish (admission control).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from ..errors import UserInputError
from ..resources import USABLE_FRACTION, available_bytes, fmt_bytes

MAX_JOB_ENV = "REPLENS_MAX_JOB_S"
DEFAULT_MAX_JOB_S = 1800.0


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def max_job_seconds() -> float:
    try:
        return float(os.environ.get(MAX_JOB_ENV, DEFAULT_MAX_JOB_S))
    except ValueError:
        return DEFAULT_MAX_JOB_S


@dataclass
class Limits:
    max_seconds: float
    memory_bytes: int
    _reserved: dict = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(max_job_seconds(), int(USABLE_FRACTION * available_bytes()))

    def check(self, task) -> None:
        """Refuse a task whose estimate alone is over a ceiling (UserInputError with the way around)."""
        cost, what = task.cost, task.title or "This computation"
        around = f" {task.ways_around}" if task.ways_around else ""
        if cost.seconds > self.max_seconds:
            raise UserInputError(
                f"{what} would take about {fmt_seconds(cost.seconds)}, over this server's limit of "
                f"{fmt_seconds(self.max_seconds)} per job ({MAX_JOB_ENV}), so it was not started.{around} "
                "Or run it with the command line (python -m analysis …) on a machine of your own.")
        if cost.bytes > self.memory_bytes:
            raise UserInputError(
                f"{what} would need about {fmt_bytes(cost.bytes)} of memory, over the "
                f"{fmt_bytes(self.memory_bytes)} this server gives its jobs (REPLENS_MEMORY_LIMIT_MB), so it "
                f"was not started.{around}")

    def admit(self, task) -> None:
        self.check(task)

    def reserve(self, task, timeout: float | None = None) -> bool:
        """Block until the task's memory fits next to the running jobs', then reserve it."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.in_use() + task.cost.bytes <= self.memory_bytes
                                     or not self._reserved, timeout)
            if ok:
                self._reserved[task.key] = task.cost.bytes
            return ok

    def release(self, task) -> None:
        with self._cond:
            self._reserved.pop(task.key, None)
            self._cond.notify_all()

    def in_use(self) -> int:
        return sum(self._reserved.values())
