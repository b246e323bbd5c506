"""Memory the server can give one computation, and the refusal of work that would not fit.

A computation estimates its peak memory first and calls :func:`check_fits`; when the estimate is
over what the machine has free, it is refused before it starts, with the estimate and the ways
around it, instead of swapping the server to a halt or being killed half-way. Loops over many
batches call :func:`release_freed_memory` so that what they freed does not stay resident.
"""
from __future__ import annotations

import ctypes
import functools
import os

from .errors import UserInputError

LIMIT_ENV = "REPLENS_MEMORY_LIMIT_MB"
USABLE_FRACTION = 0.8  # leave room for the server, other sessions and the interpreter's own peaks


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_free() -> int | None:
    """Room left under a cgroup v2 memory limit (containers), if there is one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError):
        return None


def available_bytes() -> int:
    """Memory available now: ``$REPLENS_MEMORY_LIMIT_MB`` if set (a cap chosen by whoever runs the
    server), else psutil's figure if installed, else /proc/meminfo, lowered to a cgroup's limit."""
    env = os.environ.get(LIMIT_ENV)
    if env:
        try:
            return int(float(env) * 2**20)
        except ValueError:
            pass
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:
        free = _meminfo_available()
    if free is None:
        free = 8 * 2**30  # unknown platform: assume a modest machine
    cgroup = _cgroup_free()
    return min(free, cgroup) if cgroup is not None else free


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.0f} kB"


def check_fits(estimate: float, what: str, ways_around: str, available: int | None = None) -> None:
    """Raise UserInputError when ``estimate`` bytes exceed the usable share of free memory."""
    free = available_bytes() if available is None else available
    usable = USABLE_FRACTION * free
    if estimate > usable:
        raise UserInputError(
            f"{what} would need about {fmt_bytes(estimate)} of memory; this server has "
            f"{fmt_bytes(free)} free (at most {fmt_bytes(usable)} for one computation), so it was not "
            f"started. {ways_around}"
        )


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows have none)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols already loaded: libc's, where it has one
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


# Resident bytes gained since the last release that make the next one worth its cost. Released
# pages are faulted in again when reused: on a 4-block GPT-2 (batches of 128 texts) 64 MB halved the
# extraction's throughput (492 against 957 rows/s), 256 MB kept 0.9-1.0x of it and the peak 250-300 MB
# under what no release reached (measured over 4,000 texts).
RELEASE_SLACK = 256 << 20
_resident_after_release = [0]  # the heap is the process's, so this record is too


def release_freed_memory(slack: int = RELEASE_SLACK) -> None:
    """Give the pages of freed heap memory back to the operating system (glibc; elsewhere nothing),
    once the resident size has grown by ``slack`` bytes since the last time.

    A forward pass allocates and frees hundreds of MB of temporaries whose sizes change with each
    batch's padded length. glibc raises its mmap threshold after the first large free, so these
    come from the heap, where freed blocks of ever-different sizes stay resident instead of being
    returned: a pass over many batches ends up hundreds of MB above what it holds (measured on a
    4-block GPT-2 over 12,000 texts: 160 to 173 MB in use throughout, 1,037 MB more resident and
    free at the peak). Called once per batch, this keeps the resident size within ``slack`` of one
    batch's working set. Released pages are faulted in again when reused, so it only releases when
    that much has gathered; a fixed mmap threshold would bound memory too, for about 30 % more CPU
    time (every large tensor page-faulted afresh)."""
    trim = _malloc_trim()
    if trim is None:
        return
    rss = _rss_bytes()
    if rss is not None and rss - _resident_after_release[0] < slack:
        return
    trim(0)
    _resident_after_release[0] = _rss_bytes() or 0
