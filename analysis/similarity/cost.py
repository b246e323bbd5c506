"""What a layer-by-layer matrix costs before it runs: peak memory (refused when it does not fit,
with the way around) and wall time from a flop count."""
from __future__ import annotations

from ..errors import UserInputError
from .measures import measure_info


def estimate_bytes(n: int, dims_a: list[int], dims_b: list[int], measure: str,
                   batch_size: int | None = None) -> float:
    """Rough peak memory of ``similarity_matrix`` (bytes): the float64 activations plus what the
    measure holds per layer (Gram matrices, ranked RDMs, bases) and its largest temporaries."""
    m = measure_info(measure)
    n, la, lb = int(n), len(dims_a), len(dims_b)
    dims = list(dims_a) + list(dims_b)
    layers, widest = la + lb, max(dims, default=1)
    acts = 8.0 * n * sum(dims)
    square = 8.0 * n * n
    if m.family == "cka":
        if batch_size:
            b = min(int(batch_size), n)
            return acts / 2 + 8.0 * b * b * (layers + 3) + 8.0 * la * lb
        if m.name == "rbf_cka":
            return acts + square * (layers + 4)
        if square * layers > GRAM_MEMORY_BYTES:  # the feature form: per-layer copies, no n x n matrix
            return 2 * acts + 8.0 * widest * widest * 2
        return acts + square * (layers + 2)
    if m.family == "cca":
        return 2 * acts + 3 * 8.0 * n * min(n, widest)
    if m.family == "procrustes":
        return 2 * acts + 8.0 * widest * widest * 2
    if m.family == "rsa":  # a ranked upper triangle held per layer, ~6 n x n temporaries for one
        return acts + 0.5 * square * layers + 6 * square
    return acts + 3 * square  # mutual k-NN: similarities, their negation and the partition indices


def check_memory(n: int, dims_a: list[int], dims_b: list[int], measure: str, batch_size: int | None = None,
                 available: int | None = None) -> float:
    """Refuse (UserInputError) a layer-by-layer matrix that would not fit in this machine's free
    memory, with the estimate and the way around it; returns the estimate in bytes otherwise."""
    from ..resources import USABLE_FRACTION, check_fits, fmt_bytes

    m = measure_info(measure)
    usable = USABLE_FRACTION * (available if available is not None else _available())
    layers = len(dims_a) + len(dims_b)
    rbf_grams = lambda k: 8.0 * k * k * layers if (m.name == "rbf_cka" and not batch_size) else 0.0
    fits = lambda k: estimate_bytes(k, dims_a, dims_b, measure, batch_size) <= usable and \
        rbf_grams(k) <= GRAM_MEMORY_BYTES
    estimate = estimate_bytes(n, dims_a, dims_b, measure, batch_size)
    if fits(n):
        return estimate
    lo, hi = 0, int(n)  # the most samples that fit: fits(lo) holds, fits(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if m.family == "cka" and m.name != "rbf_cka":
        ways = (f"Use the minibatch estimator (a minibatch size such as 1024: memory then does not grow with "
                f"n) or fewer samples (about {lo:,} fit).")
    else:
        ways = f"Use fewer samples (about {lo:,} fit), or linear CKA with a minibatch size."
    what = f"{m.label} between {len(dims_a)} and {len(dims_b)} layers on {n:,} samples"
    if rbf_grams(n) > GRAM_MEMORY_BYTES and estimate <= usable:
        raise UserInputError(f"{what} needs {fmt_bytes(rbf_grams(n))} of Gram matrices, over the "
                             f"{fmt_bytes(GRAM_MEMORY_BYTES)} RepLens allows them, so it was not started. {ways}")
    check_fits(estimate, what, ways, available)
    return estimate


def _available() -> int:
    from ..resources import available_bytes

    return available_bytes()


def estimate_seconds(n: int, dims_a: list[int], dims_b: list[int], measure: str,
                     batch_size: int | None = None) -> float:
    """Rough wall time of ``similarity_matrix`` from a flop count (shown before a long run starts)."""
    m = measure_info(measure)
    la, lb = len(dims_a), len(dims_b)
    dims = list(dims_a) + list(dims_b)
    if m.family == "cka":
        b = min(batch_size or n, n)
        batches = max(1, n // b)
        flops = batches * (sum(2 * b * b * p for p in dims) + 2 * la * lb * b * b + 10 * (la + lb) * b * b)
        if m.name == "rbf_cka":
            flops += (la + lb) * 20 * n * n  # exp and the median
    elif m.family == "cca":
        flops = sum(4 * n * min(n, p) ** 2 for p in dims) + la * lb * 2 * n * min(dims) ** 2
    elif m.family == "procrustes":
        flops = la * lb * (2 * n * max(dims) ** 2 + 10 * max(dims) ** 3)
    elif m.family == "rsa":
        flops = sum(2 * n * n * p for p in dims) + (la + lb) * 40 * n * n + la * lb * n * n
    else:
        k = int(m.params.get("k", 10))
        flops = sum(2 * n * n * p for p in dims) + la * lb * n * k * k
    return 0.05 + flops / FLOPS_PER_SECOND


def calibration_seconds(n: int, dims_a: list[int], dims_b: list[int], measure: str, n_perm: int = 100) -> float:
    """Rough wall time of :func:`calibrated_matrix` (shown before the calibrated colour scale is
    computed): the matrix itself, then per permutation the pairs from permuted statistics."""
    m = measure_info(measure)
    la, lb = len(dims_a), len(dims_b)
    pairs = [(p, q) for p in dims_a for q in dims_b]
    if m.family == "cka" and 8.0 * n * n * (la + 2 * lb) <= GRAM_MEMORY_BYTES:
        per = 2 * la * lb * n * n + 40 * lb * n * n  # one product of stacked Grams; the permuted copy (memory-bound)
    elif m.family == "cka":
        per = sum(2 * n * p * q for p, q in pairs)  # the feature form per pair
    elif m.family in ("cca", "procrustes"):  # a product of two bases (or layers) and its SVD per pair
        k = (lambda p: min(n, p)) if m.family == "cca" else (lambda p: p)
        per = sum(2 * n * k(p) * k(q) + 10 * min(k(p), k(q)) ** 3 for p, q in pairs)
    elif m.family == "rsa":
        per = (lb * 10 + la * lb) * n * n / 2
    else:
        per = lb * n * int(m.params.get("k", 10)) + la * lb * n * int(m.params.get("k", 10)) ** 2
    return estimate_seconds(n, dims_a, dims_b, measure) + int(n_perm) * per / FLOPS_PER_SECOND


GRAM_MEMORY_BYTES = 1.5e9  # stacked Gram matrices above this switch to the feature form


FLOPS_PER_SECOND = 3e9  # a conservative CPU rate for the estimate shown before a run
