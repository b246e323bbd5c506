"""Statistics of a value: bootstrap interval, permutation test, calibrated scores against the
permutation null (one pair and the whole heatmap), stability on subsets, per-class values.
Each layer's statistic is computed once and only permuted."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..errors import UserInputError
from .cost import GRAM_MEMORY_BYTES
from .kernels import _is_constant, _normalise, _pair, _self_terms
from .matrix import _check_layers, _check_matrix_memory, _stacked_grams, _statistic
from .measures import CACHE_VERSION, Measure, compute, measure_info

@dataclass
class CellStatistics:
    value: float
    ci_low: float
    ci_high: float
    level: float
    p_value: float
    n_boot: int
    n_perm: int
    null_mean: float
    null_std: float = float("nan")
    calibrated: float = float("nan")  # (value - null mean) / (maximum - null mean), see calibrated()


def bootstrap_ci(x, y, measure: str = "linear_cka", n_boot: int = 200, level: float = 0.95, seed: int = 0,
                 **params) -> tuple[float, float]:
    """Percentile bootstrap interval over samples (rows resampled jointly, with replacement)."""
    x, y = _pair(x, y)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    # A bootstrap sample repeats rows, so its Gram matrices must be centred anew (unlike a
    # permutation's): the bootstrap evaluates the measure itself.
    vals = [compute(measure, x[idx], y[idx], **params) for idx in (rng.integers(0, n, n) for _ in range(n_boot))]
    vals = np.array(vals)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _permutation_null(x, y, measure: str, n_perm: int, seed: int, params) -> tuple[float, np.ndarray]:
    """(the measure on X, Y; the measure on X and row-permuted Y for ``n_perm`` permutations), both
    from the same per-layer statistics (see :class:`_Statistic`)."""
    m = measure_info(measure)
    params = {**m.params, **params}
    compute(measure, x, y, **params)  # the measure's own refusals (too few samples, undefined RSA)
    st = _statistic(m, params, len(x))
    sx, sy = st.of(x), st.of(y)
    rng = np.random.default_rng(seed)
    null = np.array([st.pair(sx, st.permute(sy, rng.permutation(len(y)))) for _ in range(int(n_perm))])
    return st.pair(sx, sy), null


def p_values(observed, null, higher_is_more_similar: bool = True):
    """(1 + #{null values at least as similar as observed}) / (1 + permutations), elementwise over the
    leading axes of ``null`` (permutations on the last axis); ties within rounding count as reached,
    NaN where the observed value is NaN."""
    obs = np.asarray(observed, dtype=float)[..., None]
    null = np.asarray(null, dtype=float)
    tol = 1e-12 * np.maximum(1.0, np.abs(obs))
    with np.errstate(invalid="ignore"):
        hits = (null >= obs - tol) if higher_is_more_similar else (null <= obs + tol)
    p = np.where(np.isfinite(obs[..., 0]), (1 + hits.sum(-1)) / (1 + null.shape[-1]), np.nan)
    return float(p) if p.ndim == 0 else p


def calibrated_score(value, null_mean, top):
    """(value - null mean) / (top - null mean): 0 at the chance level of these n and dimensions, 1 at
    the measure's maximum ``top``; NaN where the null already reaches the maximum (works elementwise)."""
    value, null_mean = np.asarray(value, dtype=float), np.asarray(null_mean, dtype=float)
    span = top - null_mean
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (value - null_mean) / np.where(span > 0, span, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def permutation_test(x, y, measure: str = "linear_cka", n_perm: int = 200, seed: int = 0,
                     **params) -> tuple[float, np.ndarray]:
    """p-value of the observed similarity against rows of Y shuffled (pairing destroyed):
    (1 + #{null >= observed}) / (1 + n_perm), for measures where higher is more similar."""
    x, y = _pair(x, y)
    observed, null = _permutation_null(x, y, measure, n_perm, seed, params)
    return p_values(observed, null, measure_info(measure).higher_is_more_similar), null


def statistics_seconds(x, y, measure: str = "linear_cka", n_boot: int = 200, n_perm: int = 200,
                       **params) -> float:
    """Expected wall time of :func:`cell_statistics` plus :func:`stability_curve` on this pair, from
    timing one evaluation (after a warm-up call) of the path each will take."""
    import time

    x, y = _pair(x, y)
    m = measure_info(measure)
    params = {**m.params, **params}
    compute(measure, x[:64], y[:64], **params)  # imports and BLAS start-up are not the estimate
    t0 = time.perf_counter()
    compute(measure, x, y, **params)
    one = time.perf_counter() - t0
    st = _statistic(m, params, len(x))
    t0 = time.perf_counter()
    sx, sy = st.of(x), st.of(y)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    st.pair(sx, st.permute(sy, np.arange(len(x))))
    per_permutation = time.perf_counter() - t0
    return n_boot * one + setup + n_perm * per_permutation + 40 * 0.5 * one


def cell_statistics(x, y, measure: str = "linear_cka", n_boot: int = 200, n_perm: int = 200,
                    level: float = 0.95, seed: int = 0, **params) -> CellStatistics:
    """The value with its bootstrap interval, its permutation p-value, and its null (mean, standard
    deviation and the calibrated score): what the drill-down of one heatmap cell shows."""
    value = compute(measure, x, y, **params)
    lo, hi = bootstrap_ci(x, y, measure, n_boot, level, seed, **params)
    p, null = permutation_test(x, y, measure, n_perm, seed + 1, **params)
    mean, std = float(np.mean(null)), float(np.std(null, ddof=1)) if len(null) > 1 else float("nan")
    return CellStatistics(value, lo, hi, level, p, n_boot, n_perm, mean, std,
                          calibrated_score(value, mean, measure_info(measure).value_range[1]))


@dataclass
class Calibration:
    """A similarity beside its chance level: the same measure on row-permuted pairings, which keeps
    n, the dimensions and each representation's own structure and destroys only the pairing.

    value : the measure; null_mean, null_std : mean and standard deviation of the null;
    score : (value - null_mean) / (top - null_mean), ~0 at chance, 1 at the maximum ``top`` (the
    upper end of the measure's value range); p_value : (1 + #{null >= value}) / (1 + n_perm);
    null : the permuted values themselves."""

    measure: str
    value: float
    null_mean: float
    null_std: float
    score: float
    p_value: float
    n_perm: int
    n: int
    top: float
    seed: int
    null: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    @property
    def summary(self) -> str:
        """One line for a page: the value, the null and the calibrated score."""
        return (f"{self.value:.3f} (null {self.null_mean:.3f} ± {self.null_std:.3f} over {self.n_perm} "
                f"permutations; calibrated {self.score:.3f}, p = {self.p_value:.3g})")


def calibration_from_null(measure: str, value: float, null: np.ndarray, n: int, seed: int, top: float,
                          higher_is_more_similar: bool = True) -> Calibration:
    """A :class:`Calibration` from a value and its permutation null (any similarity, e.g. the LFM's)."""
    null = np.asarray(null, dtype=float)
    mean = float(np.mean(null))
    std = float(np.std(null, ddof=1)) if null.size > 1 else float("nan")
    return Calibration(measure, float(value), mean, std, calibrated_score(value, mean, top),
                       p_values(value, null, higher_is_more_similar), int(null.size), int(n), float(top),
                       int(seed), null)


def calibrated(x, y, measure: str = "linear_cka", n_perm: int = 200, seed: int = 0, store=None,
               use_cache: bool = True, **params) -> Calibration:
    """The measure on (X, Y) against its permutation null at the same n and dimensions, with the
    calibrated score and the p-value (see :class:`Calibration`). Cheap: each layer's statistic (for
    CKA its centred Gram matrix) is computed once and only permuted. Cached in the result store by
    the arrays' contents, the measure and its parameters, ``n_perm`` and ``seed``."""
    from ..store import default_store, make_key
    from ..vector_field import array_sha

    x, y = _pair(x, y)
    m = measure_info(measure)
    params = {**m.params, **params}
    if int(n_perm) < 1:
        raise UserInputError("A calibration needs at least one permutation (n_perm >= 1).")
    store = store or default_store()
    key = make_key("similarity_calibration", x=array_sha(x), y=array_sha(y), measure=measure, params=params,
                   n_perm=int(n_perm), seed=int(seed), v=CACHE_VERSION)
    hit = store.get(key) if use_cache else None
    if hit is None:
        value, null = _permutation_null(x, y, measure, n_perm, seed, params)
        hit = {"value": np.asarray(value), "null": null}
        if use_cache:
            store.put(key, hit, {"measure": measure, "n_perm": int(n_perm)}, kind="similarity")
    return calibration_from_null(measure, float(hit["value"]), hit["null"], len(x), seed, m.value_range[1],
                                 m.higher_is_more_similar)


@dataclass
class CalibratedMatrix:
    """A layer-by-layer matrix beside its per-cell permutation null (one set of row permutations
    shared by every cell). Each field is an A-layers x B-layers DataFrame; ``score`` is the
    calibrated colour scale (0 at chance, 1 at the maximum)."""

    value: "object"
    null_mean: "object"
    null_std: "object"
    score: "object"
    p_value: "object"
    measure: str
    n_perm: int
    seed: int
    top: float
    cached: bool = False


def calibrated_matrix(acts_a: Mapping[str, np.ndarray], acts_b: Mapping[str, np.ndarray],
                      measure: str = "linear_cka", n_perm: int = 100, seed: int = 0, device=None,
                      progress: Callable[[float, str], None] | None = None, **params) -> CalibratedMatrix:
    """:func:`similarity_matrix` with the permutation null of every cell (the rows of B's layers
    permuted together). The CKA family permutes the stacked centred Gram matrices of B and takes
    one matrix product per permutation; the other measures permute their per-layer statistics."""
    value, null = _calibration_arrays(acts_a, acts_b, measure, n_perm, seed, device, progress, params)
    return _calibrated_frames(value, null, list(acts_a), list(acts_b), measure_info(measure), seed)


def _calibration_arrays(acts_a, acts_b, measure: str, n_perm: int, seed: int, device, progress, params):
    """(values: layers_a x layers_b, null: layers_a x layers_b x n_perm)."""
    from ..device import pick

    m = measure_info(measure)
    params = {**m.params, **params}
    if int(n_perm) < 1:
        raise UserInputError("A calibration needs at least one permutation (n_perm >= 1).")
    _check_matrix_memory(acts_a, acts_b, measure, None)
    a, b = _check_layers(acts_a, "A"), _check_layers(acts_b, "B")
    n = next(iter(a.values())).shape[0]
    for name, arr in {**{f"A:{k}": v for k, v in a.items()}, **{f"B:{k}": v for k, v in b.items()}}.items():
        if arr.shape[0] != n:
            raise UserInputError(f"Layer {name} has {arr.shape[0]} rows but others have {n}: rows must align.")
    if m.name == "debiased_linear_cka" and n < 4:
        raise UserInputError(f"Debiased CKA needs at least 4 samples (got {n}).")
    say = progress or (lambda f, msg: None)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(int(n_perm))]
    dev = pick(device)
    grams = 8.0 * n * n * (len(a) + 2 * len(b))
    if m.family == "cka" and grams <= GRAM_MEMORY_BYTES:
        value, null = _calibrated_gram_matrix(a, b, measure, params, perms, dev, say)
    else:
        value, null = _calibrated_pairwise_matrix(a, b, m, params, perms, dev, say)
    for i, x in enumerate(a.values()):
        if _is_constant(x):
            value[i], null[i] = np.nan, np.nan
    for j, y in enumerate(b.values()):
        if _is_constant(y):
            value[:, j], null[:, j] = np.nan, np.nan
    say(1.0, "calibration done")
    return value, null


def _calibrated_gram_matrix(a, b, measure, params, perms, dev, say):
    import torch

    n = next(iter(a.values())).shape[0]
    ga = _stacked_grams(a, measure, params, dev)
    gb = _stacked_grams(b, measure, params, dev)
    self_a, self_b = _self_terms(ga), _self_terms(gb)
    value = _normalise((ga @ gb.T).cpu().numpy(), self_a, self_b)
    cube = gb.view(len(b), n, n)
    null = np.empty(value.shape + (len(perms),))
    for k, perm in enumerate(perms):
        p = torch.as_tensor(perm, device=gb.device)
        permuted = cube[:, p][:, :, p].reshape(len(b), n * n)
        null[:, :, k] = _normalise((ga @ permuted.T).cpu().numpy(), self_a, self_b)
        if k % 10 == 0:
            say(0.1 + 0.9 * k / len(perms), f"permutation {k + 1}/{len(perms)}")
    return value, null


def _calibrated_pairwise_matrix(a, b, m, params, perms, dev, say):
    import contextlib

    from threadpoolctl import threadpool_limits

    n = next(iter(a.values())).shape[0]
    widest = max(x.shape[1] for x in list(a.values()) + list(b.values()))
    # thousands of small products and SVDs: BLAS threads cost more than they give (3.5x slower at 128 wide)
    with threadpool_limits(1, user_api="blas") if widest <= 256 else contextlib.nullcontext():
        return _pairwise_null(a, b, m, params, perms, dev, say, n)


def _pairwise_null(a, b, m, params, perms, dev, say, n):
    st = _statistic(m, params, n, dev)
    sa, sb = [st.of(x) for x in a.values()], [st.of(y) for y in b.values()]
    value = np.array([[st.pair(s, t) for t in sb] for s in sa], dtype=float).reshape(len(sa), len(sb))
    null = np.empty(value.shape + (len(perms),))
    for k, perm in enumerate(perms):
        permuted = [st.permute(t, perm) for t in sb]
        null[:, :, k] = [[st.pair(s, t) for t in permuted] for s in sa]
        if k % 10 == 0:
            say(0.1 + 0.9 * k / len(perms), f"permutation {k + 1}/{len(perms)}")
    return value, null


def _calibrated_frames(value, null, layers_a, layers_b, m: Measure, seed: int, cached: bool = False):
    import pandas as pd

    top = float(m.value_range[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN cells (constant layers) stay NaN
        mean = np.nanmean(null, axis=-1) if null.shape[-1] else np.full(value.shape, np.nan)
        std = np.nanstd(null, axis=-1, ddof=1) if null.shape[-1] > 1 else np.full(value.shape, np.nan)
    p = p_values(value, null, m.higher_is_more_similar)

    def frame(arr):
        df = pd.DataFrame(np.asarray(arr, dtype=float), index=layers_a, columns=layers_b)
        df.index.name, df.columns.name = "model A layer", "model B layer"
        return df

    return CalibratedMatrix(frame(value), frame(mean), frame(std), frame(calibrated_score(value, mean, top)),
                            frame(p), m.name, int(null.shape[-1]), int(seed), top, cached)


def stability_curve(x, y, measure: str = "linear_cka", sizes=None, repeats: int = 5, seed: int = 0,
                    **params):
    """The measure on random subsets of growing size: mean and spread per size (estimator stability)."""
    import pandas as pd

    x, y = _pair(x, y)
    n = x.shape[0]
    if sizes is None:
        sizes = sorted({int(s) for s in np.unique(np.geomspace(min(10, n), n, 8).astype(int)) if s >= 4})
    rng = np.random.default_rng(seed)
    rows = []
    for s in sizes:
        reps = 1 if s == n else repeats
        vals = [compute(measure, x[idx], y[idx], **params)
                for idx in (rng.choice(n, s, replace=False) for _ in range(reps))]
        rows.append({"n": s, "mean": float(np.nanmean(vals)), "std": float(np.nanstd(vals)), "repeats": reps})
    return pd.DataFrame(rows)


def per_class_similarity(x, y, labels, measure: str = "linear_cka", min_samples: int = 5, **params):
    """The measure restricted to each class's samples (classes with too few samples are skipped)."""
    import pandas as pd

    x, y = _pair(x, y)
    labels = np.asarray(labels)
    rows = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        if idx.size >= max(min_samples, 4):
            rows.append({"class": c, "n": int(idx.size), "value": compute(measure, x[idx], y[idx], **params)})
    return pd.DataFrame(rows)
