"""A short, fixed piece of numerical work: how fast this machine runs it calibrates the cost
models' constants (estimates then hold on another machine), and it is a job of known length."""
from __future__ import annotations

import time

import numpy as np


def matmul_rate(seconds: float = 0.3, size: int = 256) -> float:
    """Floating-point operations per second of float64 matrix products on this machine (one thread
    of whatever BLAS numpy uses), measured for about ``seconds``."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    a @ b  # warm-up: BLAS start-up is not the rate
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2.0 * size ** 3 * count / (time.perf_counter() - t0)


def busy(seconds: float, progress=None) -> dict:
    """Work for ``seconds`` (matrix products), reporting progress: a job whose length is known."""
    t0 = time.perf_counter()
    rate = 0.0
    while (elapsed := time.perf_counter() - t0) < seconds:
        rate = matmul_rate(min(0.2, max(seconds - elapsed, 0.01)))
        if progress is not None:
            progress(min(elapsed / seconds, 1.0), "working")
    return {"seconds": time.perf_counter() - t0, "rate": rate}
