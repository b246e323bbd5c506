"""Estimates that learn: every computed view section records its estimated and its actual run time
in the result store, and later estimates of the same kind are corrected by the median ratio of the
last runs on this machine. A cost model's constants come from one machine; this is how "about N s"
stays within 2x of the truth on another one. Runs both estimated and measured under half a second are
not recorded: their time is mostly start-up, not the work the estimate models. A run estimated long
that came back fast is recorded (the correction is bounded to [1/8, 8]).
"""
from __future__ import annotations

import hashlib
import statistics
import threading

KEEP = 20  # runs remembered per kind
MIN_ACTUAL_S = 0.5
_LOCK = threading.Lock()
_CACHE: dict[str, float] = {}


def _doc_id(kind: str) -> str:
    return hashlib.sha256(f"timing:{kind}".encode()).hexdigest()[:32]


def _store():
    from ..store import default_store

    return default_store()


def history(kind: str) -> list[dict]:
    try:
        body = _store().get_doc("timing", _doc_id(kind))
    except Exception:  # estimates never break a page: no history is a valid answer
        return []
    return list((body or {}).get("runs", []))


def record(kind: str, estimate: float, seconds: float) -> None:
    """Keep (estimate, actual) for ``kind``."""
    estimate = float(estimate)
    # a run that was estimated long and came back fast teaches as much as one that was slow
    if not kind or estimate <= 0 or max(seconds, estimate) < MIN_ACTUAL_S:
        return
    with _LOCK:
        runs = (history(kind) + [{"estimate": estimate, "actual": float(seconds)}])[-KEEP:]
        try:
            _store().put_doc("timing", _doc_id(kind), {"kind": kind, "runs": runs}, name=kind)
        except Exception:
            return
        _CACHE.pop(kind, None)


def correction(kind: str) -> float:
    """Median of actual / estimated time over the recent runs of ``kind`` (1 with no history),
    bounded to [1/8, 8] so one odd run cannot make an estimate absurd."""
    with _LOCK:
        if kind in _CACHE:
            return _CACHE[kind]
    runs = history(kind)
    ratios = [r["actual"] / r["estimate"] for r in runs if r.get("estimate", 0) > 0]
    value = min(max(statistics.median(ratios), 0.125), 8.0) if ratios else 1.0
    with _LOCK:
        _CACHE[kind] = value
    return value


def corrected(kind: str, seconds: float) -> float:
    return seconds * correction(kind)
