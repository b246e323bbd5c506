"""Estimates that learn: every computed view section records its estimated and its actual run time
in the result store, and later estimates of the same kind are corrected by the median ratio of the
last runs on this machine. A cost model's constants come from one machine; this is how "about N s"
stays within 2x of the truth on another one. Each run also records a short probe of the machine's
speed, so a lesson learned on a busy machine carries over to a quiet one (and back), and a kind that
has not run yet starts from what every other kind taught. Runs both estimated and measured under
half a second are not recorded: their time is mostly start-up, not the work the estimate models. A
run estimated long that came back fast is recorded (the correction is bounded to [1/8, 8]).
"""
from __future__ import annotations

import hashlib
import statistics
import threading

KEEP = 20  # runs remembered per kind
KEEP_ALL = 60  # runs of any kind remembered: the prior of a kind that has not run yet
PRIOR_RUNS = 3  # ... once at least this many runs of any kind were recorded
MIN_ACTUAL_S = 0.5
BOUND = 8.0  # a correction stays within [1/8, 8]: one odd run cannot make an estimate absurd
PROBE_S, PROBE_TTL_S = 0.03, 20.0
# The probe's speed on the machine where the cost models' constants were measured, at the load they
# were measured under: 46,000 rounds/s when that 2-core machine was quiet, and the default views ran
# 2.5-3.4x faster than their estimates then (benchmarks/estimates.py). Before any run is recorded,
# an estimate is scaled by REFERENCE_SPEED / machine_speed(). $REPLENS_MACHINE_SPEED pins the probe
# (the tests pin it to this value, so their estimates are the cost models' own numbers).
REFERENCE_SPEED = 17_000.0
SPEED_ENV = "REPLENS_MACHINE_SPEED"
_LOCK = threading.Lock()
_CACHE: dict[tuple[int, str], tuple[float, list[dict]]] = {}  # (store, kind) -> (read at, runs)
CACHE_TTL_S = 10.0  # the workers record in other processes: read their runs again after this
_SPEED: list[float] = []  # [measured at (monotonic), speed]
ALL = "*"


def _doc_id(kind: str) -> str:
    return hashlib.sha256(f"timing:{kind}".encode()).hexdigest()[:32]


def _store():
    from ..store import default_store

    return default_store()


def machine_speed() -> float:
    """How fast this machine runs a short fixed piece of single-threaded numpy work right now, in
    rounds per second: measured over PROBE_S at most every PROBE_TTL_S per process. Its ratio
    between a recorded run and now carries that run's lesson across a change of load (another job,
    other users) or of machine (a store shared by several servers)."""
    import os
    import time

    import numpy as np

    if os.environ.get(SPEED_ENV):
        return float(os.environ[SPEED_ENV])
    with _LOCK:
        if _SPEED and time.monotonic() - _SPEED[0] < PROBE_TTL_S:
            return _SPEED[1]
    a = np.linspace(0.0, 1.0, 20_000)
    rounds, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < PROBE_S:
        np.exp(a).sum()  # elementwise: one thread whatever BLAS threads the process allows
        rounds += 1
    speed = rounds / elapsed
    with _LOCK:
        _SPEED[:] = [time.monotonic(), speed]
    return speed


def history(kind: str) -> list[dict]:
    try:
        body = _store().get_doc("timing", _doc_id(kind))
    except Exception:  # estimates never break a page: no history is a valid answer
        return []
    return list((body or {}).get("runs", []))


def record(kind: str, estimate: float, seconds: float) -> None:
    """Keep (estimate, actual, machine speed) for ``kind``, and in the history of every kind."""
    estimate = float(estimate)
    # a run that was estimated long and came back fast teaches as much as one that was slow
    if not kind or estimate <= 0 or max(seconds, estimate) < MIN_ACTUAL_S:
        return
    run = {"estimate": estimate, "actual": float(seconds), "speed": machine_speed()}
    with _LOCK:
        try:
            for k, keep in ((kind, KEEP), (ALL, KEEP_ALL)):
                runs = (history(k) + [run])[-keep:]
                _store().put_doc("timing", _doc_id(k), {"kind": k, "runs": runs}, name=k)
                _CACHE.pop((id(_store()), k), None)
        except Exception:
            return


def _runs(kind: str) -> list[dict]:
    import time

    key = (id(_store()), kind)  # the store of this process's settings (tests switch stores)
    with _LOCK:
        if key in _CACHE and time.monotonic() - _CACHE[key][0] < CACHE_TTL_S:
            return _CACHE[key][1]
    runs = [r for r in history(kind) if r.get("estimate", 0) > 0]
    with _LOCK:
        _CACHE[key] = (time.monotonic(), runs)
    return runs


def correction(kind: str) -> float:
    """Median of actual / estimated time over the recent runs of ``kind``, each scaled by how much
    faster the machine was then than now (the probe's ratio); a kind that has not run yet takes the
    median over the recent runs of every kind; with fewer than PRIOR_RUNS of those, the probe's
    ratio to the machine the constants were measured on. Bounded to [1/8, 8]."""
    own = _runs(kind)
    runs = own or _runs(ALL)
    now = machine_speed()
    if len(runs) < (1 if own else PRIOR_RUNS):
        return min(max(REFERENCE_SPEED / now, 1 / BOUND), BOUND)
    ratios = [r["actual"] / r["estimate"] * (r.get("speed") or now) / now for r in runs]
    return min(max(statistics.median(ratios), 1 / BOUND), BOUND)


def corrected(kind: str, seconds: float) -> float:
    return seconds * correction(kind)
