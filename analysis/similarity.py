"""Representational similarity: the CKA family and related measures, one pair or layer by layer.

Notation: X (n x p1) and Y (n x p2) hold the same n samples in the same row order.

Estimators that subtract large terms (HSIC, Gram centering) run in float64. The layer-by-layer
matrix computes each layer's statistics once (a centred or U-centred Gram matrix, an orthonormal
basis, a ranked RDM, a neighbour list) and every pair from those, the cross terms of the CKA
family as one matrix product of stacked Gram matrices (as in Google's efficient_CKA).

Every Gram or covariance product is formed from column-centred features divided by a power of two
(:func:`_centred`): a large constant offset or an extreme scale (1e+-100) changes no value.

A value means little without its chance level: :func:`calibrated` (one pair) and
:func:`calibrated_matrix` / :func:`layer_calibration` (the heatmap) put each value beside its
permutation null at the same n and dimensions, with the calibrated score
(value - null mean) / (maximum - null mean) and a p-value. Each layer's statistic is computed once
and only permuted (for CKA the centred Gram matrix), so a null costs one product per permutation.

References: Kornblith et al. 2019 (CKA), Song et al. 2012 (unbiased HSIC), Nguyen, Raghu &
Kornblith 2021 (minibatch CKA), Raghu et al. 2017 (SVCCA), Morcos et al. 2018 (PWCCA),
Ding et al. 2021 (Procrustes), Kriegeskorte et al. 2008 (RSA), Huh et al. 2024 (mutual k-NN).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .errors import UserInputError
from .validation import as_matrix, check_aligned

INVARIANCES = ("orthogonal", "isotropic scaling", "invertible linear", "translation")
GRAM_MEMORY_BYTES = 1.5e9  # stacked Gram matrices above this switch to the feature form


class SimilarityWarning(UserWarning):
    """Degenerate input: a constant layer, or n <= p for a measure that then reads ~1."""


# =========================================================================== kernels and HSIC
def _t(x, device=None):
    import torch

    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64, device=device)


def _exponent(t) -> int:
    """e with max|t| = m 2^e, 0.5 <= m < 1 (0 for an all-zero or empty tensor)."""
    peak = float(t.abs().max()) if t.numel() else 0.0
    return math.frexp(peak)[1] if peak > 0 and math.isfinite(peak) else 0


def _times_power_of_two(t, e: int):
    """t * 2^-e, a new tensor. Exact: only exponents change (outside the subnormal range)."""
    factor = math.ldexp(1.0, -e)
    return t * factor if factor > 0 and math.isfinite(factor) else t.clone()


def _centred(x, device=None, exponent: int | None = None, rescale: bool = True):
    """(X with centred columns as a new float64 tensor, the power of two it was divided by).

    Every Gram or covariance product of the CKA family is formed from this. Centring first keeps a
    constant offset out of the products: X X^T of features shifted by 1e8 holds 1e16-sized terms,
    and centring that Gram matrix afterwards subtracts them back with errors of their size (the
    heatmap read 0.056 where the centred value is 0.484). With ``rescale`` X is also divided by a
    power of two, before centring (so the mean cannot overflow) and after (so the largest centred
    entry lies in [0.5, 1)), or by 2^``exponent`` in all when it is given (the minibatch estimator
    keeps one per layer). Powers of two are exact and every CKA measure is scale-invariant, so
    values do not change; inputs scaled by 1e+-100 no longer overflow or underflow in the fourth
    powers HSIC forms."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x))
    t = t.to(device=device, dtype=torch.float64)
    first = _exponent(t) if rescale else 0
    t = _times_power_of_two(t, first)  # a copy: the caller's array is never written
    t -= t.mean(0, keepdim=True)
    if not rescale:
        return t, 0
    second = _exponent(t) if exponent is None else exponent - first
    return _times_power_of_two(t, second), first + second


def linear_gram(x):
    """K = Xc Xc^T with Xc the column-centred X (float64 torch tensor): H K H is the same as for
    X X^T, without the rounding errors a large constant offset would leave in it."""
    xc, _ = _centred(x, rescale=False)
    return xc @ xc.T


def _scaled_gram(x, device=None):
    """Xc Xc^T of the centred X divided by a power of two: the linear kernel of the ratio measures."""
    xc, _ = _centred(x, device)
    return xc @ xc.T


def _median(v):
    """np.median's convention, as in Kornblith et al.'s reference code: the mean of the two middle
    values when their count is even (torch.median returns the lower one)."""
    import torch

    m = v.numel()
    return (torch.kthvalue(v, (m + 1) // 2).values + torch.kthvalue(v, m // 2 + 1).values) / 2


def squared_distances(x):
    """Pairwise squared Euclidean distances of the rows (float64 torch), from the Gram matrix of the
    centred rows. A pair whose distance is at the rounding level of its squared norms
    (below 4 p eps (|xi|^2 + |xj|^2), e.g. duplicated rows, which give residues such as 7e-15
    instead of 0) counts as coincident: exactly 0."""
    import torch

    xc, _ = _centred(x)
    g = xc @ xc.T
    sq = torch.diagonal(g)
    scale = sq[:, None] + sq[None, :]
    d2 = (scale - 2 * g).clamp_min(0)
    tol = 4 * max(xc.shape[1], 1) * torch.finfo(torch.float64).eps
    return torch.where(d2 <= tol * scale, torch.zeros_like(d2), d2)


def rbf_gram(x, threshold: float = 1.0):
    """RBF kernel exp(-d^2 / (2 threshold^2 m)), with m the median squared distance over the full
    n x n matrix, zero diagonal included, and the two middle values averaged for an even count:
    exactly Kornblith et al.'s reference code (np.median). When over half the pairs coincide
    (duplicated rows, n = 2 with one point doubled) that median is 0 and the median of the
    non-zero distances is used instead; all points identical give a constant kernel (CKA: NaN)."""
    import torch

    d2 = squared_distances(x)
    med = _median(d2.flatten())
    if med <= 0:
        positive = d2[d2 > 0]
        if positive.numel() == 0:
            return torch.ones_like(d2)
        med = _median(positive)
    return torch.exp(-d2 / (2 * threshold ** 2 * med))


def center_gram(k):
    """H K H with H = I - 11^T/n."""
    k = k - k.mean(0, keepdim=True)
    return k - k.mean(1, keepdim=True)


def u_center_gram(k):
    """U-centring (Song et al. 2012): <u(K), u(L)>_F / (n (n-3)) is the unbiased HSIC_1."""
    n = k.shape[0]
    if n < 4:
        raise UserInputError(f"The unbiased HSIC needs at least 4 samples (got {n}).")
    k = k.clone()
    k.fill_diagonal_(0)
    m = k.sum(0) / (n - 2)
    m = m - m.sum() / (2 * (n - 1))
    k = k - m[:, None] - m[None, :]
    k.fill_diagonal_(0)
    return k


def _u_center_stack_(g) -> None:
    """U-centre a stack of Gram matrices (layers x n x n) in place; same result as u_center_gram."""
    n = g.shape[-1]
    diag = g.diagonal(dim1=-2, dim2=-1)
    diag.zero_()
    m = g.sum(-2) / (n - 2)
    m -= m.sum(-1, keepdim=True) / (2 * (n - 1))
    g -= m[..., :, None]
    g -= m[..., None, :]
    diag.zero_()


def hsic_biased(k, l):
    """tr(K H L H) / (n-1)^2 (Gretton et al. 2005)."""
    n = k.shape[0]
    return float((center_gram(k) * center_gram(l)).sum() / (n - 1) ** 2)


def hsic_unbiased(k, l):
    """HSIC_1 of Song et al. 2012, written out term by term (the reference formula)."""
    import torch

    n = k.shape[0]
    if n < 4:
        raise UserInputError(f"The unbiased HSIC needs at least 4 samples (got {n}).")
    kt, lt = k.clone(), l.clone()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    ones = torch.ones(n, dtype=kt.dtype, device=kt.device)
    term = (kt * lt).sum() + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (ones @ kt @ lt @ ones)
    return float(term / (n * (n - 3)))


def _ratio(cross, self_x, self_y):
    if not (self_x > 0 and self_y > 0):
        return float("nan")
    return float(cross / math.sqrt(self_x * self_y))


# =========================================================================== single-pair measures
def cka(x, y, kernel: str = "linear", threshold: float = 1.0, debiased: bool = False) -> float:
    """Centered kernel alignment. ``kernel`` "linear" or "rbf" (sigma = threshold x median distance).

    ``debiased=True`` uses the unbiased HSIC_1 estimator in numerator and denominator (can be
    negative; reads ~0 for independent data where the biased estimator is inflated at small n).
    Returns NaN when a representation is constant.
    """
    x, y = _pair(x, y)
    if kernel == "linear":
        if not debiased:
            return _linear_cka_features(x, y)
        if x.shape[0] < 4:
            raise UserInputError(f"Debiased CKA needs at least 4 samples (got {x.shape[0]}).")
        if x.shape[0] >= max(x.shape[1], y.shape[1]):  # feature form of HSIC_1: O(n p q), no n x n matrix
            px, py = _linear_hsic_terms(_centred(x)[0]), _linear_hsic_terms(_centred(y)[0])
            return _debiased_defined(_ratio(_hsic1_features(px, py), _self_hsic1(px), _self_hsic1(py)), x, y)
        k, l = _scaled_gram(x), _scaled_gram(y)
    elif kernel == "rbf":
        k, l = rbf_gram(x, threshold), rbf_gram(y, threshold)
    else:
        raise UserInputError(f"Unknown kernel {kernel!r}; use 'linear' or 'rbf'.")
    c = u_center_gram if debiased else center_gram
    kc, lc = c(k), c(l)
    value = _ratio((kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum())
    return _debiased_defined(value, x, y) if debiased else value


def _debiased_defined(value: float, x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased HSIC of a layer with itself can be <= 0 at small n (few distinct samples): then
    debiased CKA has no value. Say so instead of returning a NaN that looks like a constant layer."""
    if math.isnan(value) and not (_is_constant(x) or _is_constant(y)):
        raise UserInputError(f"Debiased CKA is undefined on these {x.shape[0]} samples: the unbiased HSIC "
                             "of a layer with itself is <= 0 (too few distinct samples). Use more samples "
                             "or linear CKA.")
    return value


def _linear_cka_features(x, y) -> float:
    """Feature form: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X, Y (the Gram
    form when n < p, where it is cheaper)."""
    x, y = _centred(x)[0], _centred(y)[0]
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        kx, ly = x @ x.T, y @ y.T
        return _ratio((kx * ly).sum(), (kx * kx).sum(), (ly * ly).sum())
    xy = x.T @ y
    return _ratio((xy * xy).sum(), _fro2(x.T @ x), _fro2(y.T @ y))


def _fro2(a) -> float:
    return float((a * a).sum())


def linear_cka(x, y) -> float:
    return cka(x, y, "linear")


def rbf_cka(x, y, threshold: float = 1.0) -> float:
    return cka(x, y, "rbf", threshold=threshold)


def debiased_linear_cka(x, y) -> float:
    return cka(x, y, "linear", debiased=True)


def _orthonormal_basis(x: np.ndarray, variance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis of the centred column space (rank-truncated); with ``variance`` keep the top
    singular directions explaining that fraction of the variance (SVCCA)."""
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    if s.size == 0 or s[0] <= 0:
        return u[:, :0], s[:0]
    keep = int((s > s[0] * max(x.shape) * np.finfo(float).eps).sum())
    if variance is not None:
        frac = np.cumsum(s[:keep] ** 2) / np.sum(s[:keep] ** 2)
        keep = int(np.searchsorted(frac, variance - 1e-12) + 1)  # variance fraction, not singular values
    return u[:, :keep], s[:keep]


def _canonical_correlations(qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return np.array([])
    return np.clip(np.linalg.svd(qx.T @ qy, compute_uv=False), 0.0, 1.0)


def cca(x, y) -> float:
    """Mean squared canonical correlation R^2_CCA over min(rank X, rank Y) pairs (reads 1 if n <= p)."""
    x, y = _pair(x, y)
    rho = _canonical_correlations(_orthonormal_basis(x)[0], _orthonormal_basis(y)[0])
    return float(np.mean(rho ** 2)) if rho.size else float("nan")


def svcca(x, y, variance: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): keep the directions explaining ``variance`` of each, then mean rho."""
    x, y = _pair(x, y)
    rho = _canonical_correlations(_orthonormal_basis(x, variance)[0], _orthonormal_basis(y, variance)[0])
    return float(np.mean(rho)) if rho.size else float("nan")


def pwcca(x, y) -> float:
    """Projection-weighted CCA (Morcos et al. 2018), weights from X's neurons: asymmetric."""
    x, y = _pair(x, y)
    return _pwcca_from(x - x.mean(0), _orthonormal_basis(x)[0], _orthonormal_basis(y)[0])


def _pwcca_from(xc: np.ndarray, qx: np.ndarray, qy: np.ndarray) -> float:
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return float("nan")
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    rho = np.clip(rho, 0, 1)
    h = qx @ u[:, : rho.size]  # canonical variates of X, unit norm
    alpha = np.abs(h.T @ xc).sum(1)
    return float((alpha * rho).sum() / alpha.sum()) if alpha.sum() > 0 else float("nan")


def procrustes(x, y) -> float:
    """Orthogonal Procrustes similarity ||X^T Y||_* of centred, unit-Frobenius X, Y; in [0, 1].
    The Procrustes distance of Ding et al. 2021 is 2 - 2 s; the angular one of Williams et al. arccos s."""
    x, y = _pair(x, y)
    xn, yn = _unit_centered(x), _unit_centered(y)
    if xn is None or yn is None:
        return float("nan")
    return float(np.linalg.svd(xn.T @ yn, compute_uv=False).sum())


def _unit_centered(x: np.ndarray):
    x = x - x.mean(0)
    norm = np.linalg.norm(x)
    return None if norm <= 0 else x / norm


def rsa(x, y, rdm: str = "correlation") -> float:
    """Spearman correlation of the two RDMs' upper triangles (``rdm``: "correlation" or "euclidean")."""
    x, y = _pair(x, y)
    if x.shape[0] < 3:
        raise UserInputError(f"RSA correlates distances between pairs of samples: it needs at least 3 samples "
                             f"(got {x.shape[0]}).")
    a, b = _ranked_rdm(x, rdm), _ranked_rdm(y, rdm)
    for which, ranks, arr in (("X", a, x), ("Y", b, y)):
        if ranks is None:
            raise UserInputError(_rdm_undefined(which, arr, rdm))
    return float(a @ b)


def _rdm_undefined(which: str, x: np.ndarray, rdm: str) -> str:
    flat = int((x == x[:, :1]).all(1).sum())
    if rdm == "correlation" and flat:
        return (f"RSA is undefined for {which}: {flat} sample(s) have all features equal, so their correlation "
                "distance is undefined. Use rdm='euclidean'.")
    return f"RSA is undefined for {which}: every pair of samples is equally far apart (the RDM has no ranks)."


def _ranked_rdm(x: np.ndarray, rdm: str):
    """Standardised ranks of the RDM's upper triangle (so Spearman = dot product / m)."""
    from scipy.stats import rankdata

    if rdm == "correlation":
        xc = x - x.mean(1, keepdims=True)
        norms = np.linalg.norm(xc, axis=1)
        if np.any(norms <= 0):
            return None  # a sample with all features equal has no correlation
        xc = xc / norms[:, None]
        d = 1 - xc @ xc.T
    elif rdm == "euclidean":
        d = np.sqrt(squared_distances(x).numpy())
    else:
        raise UserInputError(f"Unknown RDM {rdm!r}; use 'correlation' or 'euclidean'.")
    iu = np.triu_indices(len(x), 1)
    r = rankdata(d[iu])
    r = r - r.mean()
    norm = np.linalg.norm(r)
    return None if norm <= 0 else r / norm


def mutual_knn(x, y, k: int = 10) -> float:
    """Mutual k-NN alignment (Huh et al. 2024): mean |N_k^X(i) & N_k^Y(i)| / k, cosine neighbours,
    self excluded. Chance level is k / (n - 1)."""
    x, y = _pair(x, y)
    nx, ny = _knn(x, k), _knn(y, k)
    return _knn_overlap(nx, ny)


def _knn(x: np.ndarray, k: int):
    """Sorted indices of each row's k nearest rows (cosine, self excluded); None for a constant layer."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise UserInputError(f"mutual_knn needs 1 <= k < n (k={k}, n={n}).")
    if np.all(x == x[:1]):
        return None  # every sample identical: neighbours are arbitrary
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norms > 0, norms, 1)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return np.sort(idx, axis=1)


def _knn_overlap(nx, ny) -> float:
    if nx is None or ny is None:
        return float("nan")
    k = nx.shape[1]
    hits = (nx[:, :, None] == ny[:, None, :]).sum((1, 2))
    return float(hits.mean() / k)


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_matrix(x, "X"), as_matrix(y, "Y")
    check_aligned(x, y)
    return x, y


def _is_constant(x: np.ndarray) -> bool:
    """Every sample identical: any similarity is 0/0 (rounding would leave a meaningless residue)."""
    return bool((x == x[:1]).all())


def _undefined_for_constant(fn):
    """Wrap a measure so a constant representation gives NaN instead of a rounding residue."""
    import functools

    @functools.wraps(fn)
    def wrapper(x, y, *args, **kwargs):
        xa, ya = _pair(x, y)
        if _is_constant(xa) or _is_constant(ya):
            return float("nan")
        return fn(xa, ya, *args, **kwargs)

    return wrapper


# =========================================================================== registry
@dataclass(frozen=True)
class Measure:
    name: str
    label: str
    fn: Callable
    family: str  # "cka", "cca", "procrustes", "rsa", "knn"
    value_range: tuple[float, float]
    higher_is_more_similar: bool
    symmetric: bool
    invariances: Mapping[str, bool]
    description: str
    params: Mapping[str, object] = field(default_factory=dict)
    needs_n_greater_than_p: bool = False


def _inv(orthogonal, isotropic, linear, translation):
    return dict(zip(INVARIANCES, (orthogonal, isotropic, linear, translation)))


MEASURES: dict[str, Measure] = {m.name: dataclasses.replace(m, fn=_undefined_for_constant(m.fn)) for m in [
    Measure("linear_cka", "Linear CKA", linear_cka, "cka", (0, 1), True, True, _inv(True, True, False, True),
            "Centered kernel alignment with a linear kernel (Kornblith et al. 2019)."),
    Measure("rbf_cka", "RBF CKA", rbf_cka, "cka", (0, 1), True, True, _inv(True, True, False, True),
            "CKA with a Gaussian kernel, sigma = threshold x median distance.", {"threshold": 1.0}),
    Measure("debiased_linear_cka", "Debiased linear CKA", debiased_linear_cka, "cka", (-1, 1), True, True,
            _inv(True, True, False, True),
            "Linear CKA from the unbiased HSIC_1 estimator: ~0 for independent data at any n."),
    Measure("cca", "CCA (mean R²)", cca, "cca", (0, 1), True, True, _inv(True, True, True, True),
            "Mean squared canonical correlation; reads 1 whenever n <= p.", needs_n_greater_than_p=True),
    Measure("svcca", "SVCCA", svcca, "cca", (0, 1), True, True, _inv(True, True, False, True),
            "CCA on the top singular directions explaining 99% of the variance (Raghu et al. 2017).",
            {"variance": 0.99}, needs_n_greater_than_p=True),
    Measure("pwcca", "PWCCA", pwcca, "cca", (0, 1), True, False, _inv(False, True, False, True),
            "Canonical correlations weighted by how much of X each explains (Morcos et al. 2018).",
            needs_n_greater_than_p=True),
    Measure("procrustes", "Procrustes", procrustes, "procrustes", (0, 1), True, True,
            _inv(True, True, False, True),
            "Orthogonal Procrustes similarity ||X^T Y||_* of centred, normalised X, Y (distance 2 - 2s)."),
    Measure("rsa", "RSA", rsa, "rsa", (-1, 1), True, True, _inv(False, True, False, False),
            "Spearman correlation of correlation-distance RDMs (Kriegeskorte et al. 2008).",
            {"rdm": "correlation"}),
    Measure("mutual_knn", "Mutual k-NN", mutual_knn, "knn", (0, 1), True, True, _inv(True, True, False, False),
            "Fraction of shared cosine k-nearest neighbours (Huh et al. 2024); chance is k/(n-1).", {"k": 10}),
]}


def measure_info(name: str) -> Measure:
    if name not in MEASURES:
        raise UserInputError(f"Unknown measure {name!r}; use one of {', '.join(MEASURES)}.")
    return MEASURES[name]


def compute(name: str, x, y, **params) -> float:
    """One measure on one pair of representations."""
    m = measure_info(name)
    return m.fn(x, y, **{**m.params, **params})


# =========================================================================== layer-by-layer matrix
def _check_layers(acts: Mapping[str, np.ndarray], which: str, dtype=np.float64) -> dict[str, np.ndarray]:
    if not acts:
        raise UserInputError(f"No layers selected for model {which}.")
    return {name: as_matrix(a, f"model {which}, layer '{name}'", dtype=dtype) for name, a in acts.items()}


def _constant_layers(acts: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name, a in acts.items() if _is_constant(a)]


def similarity_matrix(acts_a: Mapping[str, np.ndarray], acts_b: Mapping[str, np.ndarray],
                      measure: str = "linear_cka", batch_size: int | None = None, device=None,
                      progress: Callable[[float, str], None] | None = None, **params):
    """Similarity of every layer of A (rows) with every layer of B (columns), as a DataFrame.

    With ``batch_size`` the CKA measures use the minibatch estimator of Nguyen et al. 2021
    (unbiased HSIC per batch, averaged). ``df.attrs["warnings"]`` lists degenerate layers.
    """
    import pandas as pd

    m = measure_info(measure)
    params = {**m.params, **params}
    _check_matrix_memory(acts_a, acts_b, measure, batch_size)
    # The minibatch estimator converts each batch itself: validate without a float64 copy of everything.
    dtype = None if (batch_size is not None and m.family == "cka") else np.float64
    a, b = _check_layers(acts_a, "A", dtype), _check_layers(acts_b, "B", dtype)
    n = next(iter(a.values())).shape[0]
    for name, arr in {**{f"A:{k}": v for k, v in a.items()}, **{f"B:{k}": v for k, v in b.items()}}.items():
        if arr.shape[0] != n:
            raise UserInputError(f"Layer {name} has {arr.shape[0]} rows but others have {n}: rows must align.")
    notes = []
    const_a, const_b = set(_constant_layers(a)), set(_constant_layers(b))
    const = [f"A:{l}" for l in a if l in const_a] + [f"B:{l}" for l in b if l in const_b]
    if const:
        notes.append(f"Constant layer(s) {', '.join(const)}: similarity is undefined (NaN).")
    if m.needs_n_greater_than_p:
        wide = [f"{k} ({v.shape[1]} dims)" for k, v in {**a, **b}.items() if v.shape[1] >= n]
        if wide:
            notes.append(f"n = {n} samples <= dimensions for {', '.join(wide)}: {m.label} reads ~1 for any "
                         "representations there (Kornblith et al. 2019, Thm 1). Use more samples or CKA.")
    for note in notes:
        warnings.warn(note, SimilarityWarning, stacklevel=2)

    if m.family == "cka":
        if batch_size is not None:
            if measure == "rbf_cka":
                raise UserInputError("The minibatch estimator is defined for linear CKA; use linear_cka or "
                                     "debiased_linear_cka with a batch size, or RBF CKA without one.")
            values = _minibatch_matrix(a, b, int(batch_size), device, progress)
        else:
            values = _cka_matrix(a, b, measure, params, device, progress)
    else:
        values = _pairwise_matrix(a, b, m, params, progress)
    values = np.array(values, dtype=float)
    undefined = ([f"A:{l}" for i, l in enumerate(a) if l not in const_a and np.isnan(values[i]).all()]
                 + [f"B:{l}" for j, l in enumerate(b) if l not in const_b and np.isnan(values[:, j]).all()])
    if undefined:  # never a silent NaN: say which layers and why it can happen
        note = (f"{m.label} is undefined (NaN) for {', '.join(undefined)}: e.g. samples with all features "
                "equal under a correlation RDM, or too few distinct samples.")
        notes.append(note)
        warnings.warn(note, SimilarityWarning, stacklevel=2)
    for i, name in enumerate(a):
        if name in const_a:
            values[i, :] = np.nan
    for j, name in enumerate(b):
        if name in const_b:
            values[:, j] = np.nan
    df = pd.DataFrame(values, index=list(a), columns=list(b))
    df.index.name, df.columns.name = "model A layer", "model B layer"
    df.attrs.update({"measure": measure, "n": n, "batch_size": batch_size, "warnings": notes, "params": params})
    if progress:
        progress(1.0, "done")
    return df


def _check_matrix_memory(acts_a, acts_b, measure, batch_size) -> None:
    shapes = [np.shape(x) for x in list(acts_a.values()) + list(acts_b.values())]
    if not shapes or any(len(s) == 0 for s in shapes):
        return  # validation reports it
    dims = [int(np.prod(s[1:])) if len(s) > 1 else 1 for s in shapes]
    check_memory(shapes[0][0], dims[:len(acts_a)], dims[len(acts_a):], measure, batch_size)


def _cka_matrix(a, b, measure, params, device, progress) -> np.ndarray:
    """Every CKA pair from per-layer statistics: stacked (U-)centred Gram matrices and one product,
    or, when those would not fit in memory, the feature form for linear kernels."""
    from .device import pick

    dev = pick(device)
    n = next(iter(a.values())).shape[0]
    debiased = measure == "debiased_linear_cka"
    if debiased and n < 4:
        raise UserInputError(f"Debiased CKA needs at least 4 samples (got {n}).")
    gram_bytes = 8.0 * n * n * (len(a) + len(b))
    if measure != "rbf_cka" and gram_bytes > GRAM_MEMORY_BYTES:
        return _linear_cka_feature_matrix(a, b, debiased, dev, progress)
    if gram_bytes > GRAM_MEMORY_BYTES:
        raise UserInputError(f"RBF CKA on n = {n} samples needs {gram_bytes / 1e9:.1f} GB of Gram matrices; "
                             "use fewer samples or linear CKA with a minibatch size.")
    step = (lambda lo, hi: (lambda f, msg: progress(lo + (hi - lo) * f, msg))) if progress else (lambda lo, hi: None)
    ga = _stacked_grams(a, measure, params, dev, step(0.0, 0.9 * len(a) / (len(a) + len(b))))
    gb = _stacked_grams(b, measure, params, dev, step(0.9 * len(a) / (len(a) + len(b)), 0.9))
    return _normalise((ga @ gb.T).cpu().numpy(), _self_terms(ga), _self_terms(gb))


def _stacked_grams(acts, measure: str, params, dev, progress=None):
    """The (U-)centred Gram matrix of every layer, flattened and stacked: (layers x n^2) float64."""
    center = u_center_gram if measure == "debiased_linear_cka" else center_gram
    rows = []
    for i, x in enumerate(acts.values()):
        k = rbf_gram(_t(x, dev), params.get("threshold", 1.0)) if measure == "rbf_cka" else _scaled_gram(x, dev)
        rows.append(center(k).flatten())
        if progress:
            progress((i + 1) / len(acts), "Gram matrices")
    return _stack(rows)


def _self_terms(g) -> np.ndarray:
    return (g * g).sum(1).cpu().numpy()


def _stack(rows):
    import torch

    return torch.stack(rows)


def _normalise(cross, self_a, self_b) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt(np.outer(self_a, self_b))
        out = np.where(denom > 0, cross / np.where(denom > 0, denom, 1), np.nan)
    return out


def _linear_hsic_terms(x):
    """Per-layer pieces of the feature-space HSIC formulas, from column-centred features (float64
    torch, see :func:`_centred`): HSIC_1 of a linear kernel is translation invariant, and uncentred
    features would make the formula a small difference of huge terms."""
    n = x.shape[0]
    row_sq = (x * x).sum(1)  # diag(K)
    col_sum = x.sum(0)  # X^T 1
    k1 = x @ col_sum - row_sq  # K~ 1 (zero-diagonal K times ones)
    return {"x": x, "row_sq": row_sq, "k1": k1, "sum": float(col_sum @ col_sum - row_sq.sum()), "n": n}


def _self_hsic1(p) -> float:
    """n(n-3) HSIC_1 of a layer with itself; a rounding residue of the centring (the exact value is 0,
    e.g. one non-zero sample) counts as 0, as the Gram form computes it."""
    value = _hsic1_features(p, p)
    return value if value > 1e-9 * float(p["row_sq"].sum()) ** 2 else 0.0


def _hsic1_features(p, q) -> float:
    """n(n-3) HSIC_1 for linear kernels without forming n x n matrices (O(n p q))."""
    n = p["n"]
    xy = p["x"].T @ q["x"]
    tr = float((xy * xy).sum() - (p["row_sq"] * q["row_sq"]).sum())  # tr(K~ L~)
    return tr + p["sum"] * q["sum"] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(p["k1"] @ q["k1"])


def _linear_cka_feature_matrix(a, b, debiased, dev, progress) -> np.ndarray:
    def prep(x):
        xc, _ = _centred(x, dev)
        return _linear_hsic_terms(xc) if debiased else xc

    pa = [prep(x) for x in a.values()]
    pb = [prep(x) for x in b.values()]
    if debiased:
        self_a = np.array([_hsic1_features(p, p) for p in pa])
        self_b = np.array([_hsic1_features(q, q) for q in pb])
        cross = np.array([[_hsic1_features(p, q) for q in pb] for p in pa])
    else:
        self_a = np.array([_fro2(x.T @ x) for x in pa])
        self_b = np.array([_fro2(y.T @ y) for y in pb])
        cross = np.array([[_fro2(x.T @ y) for y in pb] for x in pa])
    return _normalise(cross, self_a, self_b)


def _pairwise_matrix(a, b, m: Measure, params, progress) -> np.ndarray:
    """Non-CKA measures: per-layer statistics once, then each pair from them."""
    n = next(iter(a.values())).shape[0]
    st = _statistic(m, params, n)
    sa = [st.of(x) for x in a.values()]
    sb = [st.of(y) for y in b.values()]
    out = np.empty((len(sa), len(sb)))
    for i, s in enumerate(sa):
        for j, t in enumerate(sb):
            out[i, j] = st.pair(s, t)
        if progress:
            progress(0.1 + 0.9 * (i + 1) / len(sa), f"{m.label}: row {i + 1}/{len(sa)}")
    return out


# =========================================================================== per-layer statistics
@dataclass(frozen=True)
class _Statistic:
    """A measure read from per-layer statistics: ``of`` computes a layer's statistic once, ``pair``
    gives the measure from two of them, and ``permute`` gives the statistic of the layer with its
    rows permuted (``perm``) without recomputing it, so a permutation null costs one ``pair`` per
    permutation: a centred Gram matrix permutes its rows and columns, a basis or a normalised
    layer its rows, a ranked RDM its pairs, a neighbour list its rows and their entries."""

    of: Callable
    pair: Callable
    permute: Callable


def _unless_none(fn):
    """pair(s, t) that is NaN when either layer has no statistic (a degenerate layer)."""
    return lambda s, t: float("nan") if s is None or t is None else fn(s, t)


def _permuted_rows(s, perm):
    return None if s is None else s[perm]


def _permuted_neighbours(s, perm):
    """Neighbour lists of the layer with rows permuted: row i is old row perm[i], and old row j is
    now row inverse[j]."""
    if s is None:
        return None
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return inverse[s[perm]]


def _permuted_condensed(r, perm):
    """The upper triangle (row-major, as np.triu_indices) of a symmetric matrix with zero diagonal
    whose rows and columns are both permuted by ``perm``."""
    if r is None:
        return None
    n = len(perm)
    i, j = np.triu_indices(n, 1)
    a, b = perm[i], perm[j]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return r[n * lo - lo * (lo + 1) // 2 + hi - lo - 1]


def _statistic(m: Measure, params: Mapping, n: int, device=None) -> _Statistic:
    if m.family == "cka":
        return _cka_statistic(m.name, params, n, device)
    if m.family == "rsa":
        rdm = params.get("rdm", "correlation")
        return _Statistic(lambda x: _ranked_rdm(x, rdm), _unless_none(lambda s, t: float(s @ t)),
                          _permuted_condensed)
    if m.family == "knn":
        k = int(params.get("k", 10))
        return _Statistic(lambda x: _knn(x, k), _knn_overlap, _permuted_neighbours)
    if m.family == "procrustes":
        return _Statistic(_unit_centered, _unless_none(lambda s, t: float(np.linalg.svd(s.T @ t, compute_uv=False).sum())),
                          _permuted_rows)
    if m.name == "pwcca":
        return _Statistic(lambda x: (x - x.mean(0), _orthonormal_basis(x)[0]), lambda s, t: _pwcca_from(s[0], s[1], t[1]),
                          lambda s, perm: (s[0][perm], s[1][perm]))
    variance = params.get("variance") if m.name == "svcca" else None
    agg = (lambda r: float(np.mean(r))) if m.name == "svcca" else (lambda r: float(np.mean(r ** 2)))
    return _Statistic(lambda x: _orthonormal_basis(x, variance)[0],
                      lambda s, t: (lambda r: agg(r) if r.size else float("nan"))(_canonical_correlations(s, t)),
                      _permuted_rows)


def _cka_statistic(measure: str, params: Mapping, n: int, device=None) -> _Statistic:
    """The (U-)centred Gram matrix and its squared norm per layer, or, for linear kernels when three
    n x n matrices would not fit, the centred features (the feature form per pair)."""
    from .device import pick

    dev = pick(device)
    debiased = measure == "debiased_linear_cka"
    if measure == "rbf_cka" or 3 * 8.0 * n * n <= GRAM_MEMORY_BYTES:
        def of(x):
            g = _stacked_grams({"x": x}, measure, params, dev)[0].view(n, n)
            return g, float((g * g).sum())

        def permute(s, perm):
            import torch

            p = torch.as_tensor(perm, device=s[0].device)
            return s[0][p][:, p], s[1]

        return _Statistic(of, lambda s, t: _ratio((s[0] * t[0]).sum(), s[1], t[1]), permute)
    if not debiased:
        return _Statistic(lambda x: _centred(x, dev)[0], _linear_cka_features, lambda s, perm: s[perm])

    def pair(s, t):
        ps, pt = _linear_hsic_terms(s), _linear_hsic_terms(t)
        return _ratio(_hsic1_features(ps, pt), _self_hsic1(ps), _self_hsic1(pt))

    return _Statistic(lambda x: _centred(x, dev)[0], pair, lambda s, perm: s[perm])


# =========================================================================== minibatch CKA
class MinibatchCKA:
    """Streaming minibatch CKA (Nguyen, Raghu & Kornblith 2021): HSIC_1 of each batch for the cross
    term and both self terms, averaged over batches, then the ratio. Memory does not grow with n.

    >>> acc = MinibatchCKA(["a1", "a2"], ["b1"])
    >>> for xa, xb in batches:            # dicts layer -> (batch x p) arrays, same rows
    ...     acc.update(xa, xb)
    >>> acc.result()                      # DataFrame, A layers x B layers
    """

    def __init__(self, layers_a, layers_b, device=None):
        from .device import pick

        self.layers_a, self.layers_b = list(layers_a), list(layers_b)
        self.device = pick(device)
        self.cross = np.zeros((len(self.layers_a), len(self.layers_b)))
        self.self_a = np.zeros(len(self.layers_a))
        self.self_b = np.zeros(len(self.layers_b))
        self.batches = 0
        self.samples = 0
        self._buffers: dict = {}
        self._exponents: dict = {}

    def _grams(self, acts, layers, which):
        """One batch's zero-diagonal Gram matrices (layers x b^2, in a buffer reused across batches),
        their row sums (layers x b) and totals (layers): the pieces of Song et al.'s HSIC_1 formula.

        Columns are centred first (in float64, see :func:`_centred`): HSIC_1 of a linear kernel is
        translation invariant, and centring keeps the formula from subtracting huge terms when
        features have large means."""
        import torch

        xs = []
        for name in layers:
            x = np.asarray(acts[name])
            if x.ndim != 2 or x.shape[0] < 4:
                raise UserInputError(f"Model {which}, layer '{name}': a batch needs shape (rows >= 4, features), "
                                     f"got {x.shape}.")
            xs.append(x)
        sizes = {x.shape[0] for x in xs}
        if len(sizes) != 1:
            raise UserInputError(f"Model {which}: layers of one batch have different numbers of rows {sizes}.")
        b = sizes.pop()
        buf = self._buffers.get(which)
        if buf is None or buf.shape[1:] != (b, b):
            buf = torch.empty((len(layers), b, b), dtype=torch.float64, device=self.device)
            self._buffers[which] = buf
        for i, (name, x) in enumerate(zip(layers, xs)):
            # one power of two per layer for every batch (the first batch's): per-batch scales would
            # weight the batches differently in the averaged HSIC terms
            xt, self._exponents[which, name] = _centred(x, self.device, self._exponents.get((which, name)))
            torch.matmul(xt, xt.T, out=buf[i])
        buf.diagonal(dim1=-2, dim2=-1).zero_()
        flat = buf.view(len(layers), b * b)
        rows = buf.sum(-1)
        totals = rows.sum(-1)
        finite = torch.isfinite(totals) & torch.isfinite(rows).all(-1)
        if not bool(finite.all()):
            bad = [layers[i] for i in range(len(layers)) if not bool(finite[i])]
            raise UserInputError(f"Model {which}, layer '{bad[0]}': NaN/inf values in this batch. Drop those "
                                 "samples or check the model for overflow.")
        return flat, rows, totals, b

    def update(self, acts_a: Mapping[str, np.ndarray], acts_b: Mapping[str, np.ndarray]) -> None:
        import torch

        ga, ra, sa, b = self._grams(acts_a, self.layers_a, "A")
        gb, rb, sb, b_b = self._grams(acts_b, self.layers_b, "B")
        if b != b_b:
            raise UserInputError(f"Batch rows differ between the models ({b} vs {b_b}).")
        scale = 1.0 / (b * (b - 3))
        sa_, sb_ = sa.cpu().numpy(), sb.cpu().numpy()
        self.cross += (ga @ gb.T + torch.as_tensor(np.outer(sa_, sb_) / ((b - 1) * (b - 2)), device=ga.device)
                       - 2.0 / (b - 2) * (ra @ rb.T)).cpu().numpy() * scale
        for g, r, tot, acc in ((ga, ra, sa_, self.self_a), (gb, rb, sb_, self.self_b)):
            sq = torch.linalg.vector_norm(g, dim=1).cpu().numpy() ** 2
            rr = (torch.linalg.vector_norm(r, dim=1).cpu().numpy()) ** 2
            acc += (sq + tot ** 2 / ((b - 1) * (b - 2)) - 2.0 / (b - 2) * rr) * scale
        self.batches += 1
        self.samples += b

    def values(self) -> np.ndarray:
        if self.batches == 0:
            raise UserInputError("No batches were given to the minibatch CKA estimator.")
        return _normalise(self.cross, self.self_a, self.self_b)

    def result(self):
        import pandas as pd

        df = pd.DataFrame(self.values(), index=self.layers_a, columns=self.layers_b)
        df.index.name, df.columns.name = "model A layer", "model B layer"
        df.attrs.update({"measure": "minibatch_cka", "n": self.samples, "batches": self.batches})
        return df


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches; a last batch of fewer than 4 rows (HSIC_1 needs 4) joins the previous one."""
    if batch_size < 4:
        raise UserInputError(f"Minibatch size must be at least 4 (got {batch_size}).")
    starts = list(range(0, n, batch_size))
    slices = [slice(s, min(s + batch_size, n)) for s in starts]
    if len(slices) > 1 and slices[-1].stop - slices[-1].start < 4:
        slices[-2] = slice(slices[-2].start, n)
        slices.pop()
    if not slices or slices[-1].stop - slices[-1].start < 4:
        raise UserInputError(f"Minibatch CKA needs at least 4 samples (got {n}).")
    return slices


def _minibatch_matrix(a, b, batch_size, device, progress) -> np.ndarray:
    n = next(iter(a.values())).shape[0]
    acc = MinibatchCKA(list(a), list(b), device)
    slices = batch_slices(n, batch_size)
    for i, sl in enumerate(slices):
        acc.update({k: v[sl] for k, v in a.items()}, {k: v[sl] for k, v in b.items()})
        if progress:
            progress((i + 1) / len(slices), f"minibatch {i + 1}/{len(slices)}")
    return acc.values()


# =========================================================================== statistics for one cell
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


# =========================================================================== calibration
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
    from .store import default_store, make_key
    from .vector_field import array_sha

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
    from .device import pick

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


def best_matches(df) -> list[tuple[str, str, float]]:
    """For each row layer (model A), the column layer (model B) with the highest similarity."""
    out = []
    for layer, row in df.iterrows():
        if row.notna().any():
            j = row.idxmax()
            out.append((layer, j, float(row[j])))
    return out


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


def streaming_cka(model_a, model_b, ds, layers_a=None, layers_b=None, batch_size: int = 256,
                  pooling: str = "mean", device=None, progress=None):
    """Minibatch CKA computed while both models run, one batch at a time: activations are never
    held for the whole dataset, so memory does not grow with n. Batches follow the dataset's row
    order, exactly as :func:`batch_slices` cuts them (a last batch under 4 rows joins the previous)."""
    from .activations import iter_batches

    layers_a = list(model_a.layers if layers_a is None else layers_a)
    layers_b = list(model_b.layers if layers_b is None else layers_b)
    model_a.check_data(ds)
    model_b.check_data(ds)
    if batch_size < 4:
        raise UserInputError(f"Minibatch size must be at least 4 (got {batch_size}).")
    acc = MinibatchCKA(layers_a, layers_b, device)
    from contextlib import closing

    # closing(): a stream left unfinished still releases its model lock and hooks at once
    with closing(iter_batches(model_a, ds, layers_a, pooling, batch_size, device)) as stream_a, \
            closing(iter_batches(model_b, ds, layers_b, pooling, batch_size, device, progress)) as stream_b:
        # One batch is held back so that a last batch under 4 rows (HSIC_1 needs 4) joins it, as
        # batch_slices does for the in-memory estimator: both paths see the same batches.
        held = None
        for (rows, xa, _), (_, xb, _) in zip(stream_a, stream_b):
            if held is not None and rows.stop - rows.start < 4:
                held = ({k: np.concatenate([held[0][k], v]) for k, v in xa.items()},
                        {k: np.concatenate([held[1][k], v]) for k, v in xb.items()})
                continue
            if held is not None:
                acc.update(*held)
            held = (xa, xb)
        if held is not None:
            acc.update(*held)
    return acc.result()


# =========================================================================== models -> matrix, cached
CACHE_VERSION = 2  # 2: Gram products of centred features (values at large offsets changed), median convention
FLOPS_PER_SECOND = 3e9  # a conservative CPU rate for the estimate shown before a run


def _stage(progress):
    return (lambda lo, hi: (lambda f, msg: progress(lo + (hi - lo) * f, msg))) if progress else (lambda lo, hi: None)


def _layer_job(kind: str, model_a, model_b, ds, measure: str, layers_a, layers_b, pooling: str, params, **extra):
    """(the measure, its full parameters, both layer lists, the result-store key) of a layer-by-layer job
    keyed by the model hashes, the data hash, the measure and parameters, the layers and the pooling."""
    from .store import make_key

    m = measure_info(measure)
    params = {**m.params, **params}
    layers_a = list(model_a.layers if layers_a is None else layers_a)
    layers_b = list(model_b.layers if layers_b is None else layers_b)
    key = make_key(kind, a=model_a.sha256, b=model_b.sha256, data=ds.sha256, measure=measure, params=params,
                   layers_a=layers_a, layers_b=layers_b, pooling=pooling, v=CACHE_VERSION, **extra)
    return m, params, layers_a, layers_b, key


def _layer_activations(model_a, model_b, ds, layers_a, layers_b, pooling, measure, batch_size, device, stage):
    """Both models' pooled activations, refused before the models run when the matrix would not fit
    (the activations alone can be most of the time)."""
    from .activations import extract, pooled_dims

    check_memory(len(ds), pooled_dims(model_a, ds, layers_a, pooling), pooled_dims(model_b, ds, layers_b, pooling),
                 measure, batch_size)
    return (extract(model_a, ds, layers_a, pooling, device, stage(0.0, 0.3)),
            extract(model_b, ds, layers_b, pooling, device, stage(0.3, 0.6)))


def layer_similarity(model_a, model_b, ds, measure: str = "linear_cka", layers_a=None, layers_b=None,
                     pooling: str = "mean", batch_size: int | None = None, device=None, progress=None,
                     store=None, **params):
    """The A-layers x B-layers matrix for two models on a dataset, cached in the result store by
    (model hashes, data hash, measure and parameters, layers, pooling, batch size)."""
    import pandas as pd

    from .store import default_store

    m, params, layers_a, layers_b, key = _layer_job("similarity", model_a, model_b, ds, measure, layers_a, layers_b,
                                                    pooling, params, batch_size=batch_size)
    store = store or default_store()
    hit = store.get(key)
    if hit is not None:
        meta = store.meta(key) or {}
        df = pd.DataFrame(hit["values"], index=layers_a, columns=layers_b)
        df.index.name, df.columns.name = "model A layer", "model B layer"
        df.attrs.update({"measure": measure, "n": len(ds), "batch_size": batch_size,
                         "warnings": meta.get("warnings", []), "params": params, "cached": True})
        if progress:
            progress(1.0, "loaded from the result store")
        return df
    stage = _stage(progress)
    acts_a, acts_b = _layer_activations(model_a, model_b, ds, layers_a, layers_b, pooling, measure, batch_size,
                                        device, stage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimilarityWarning)  # reported through df.attrs["warnings"]
        df = similarity_matrix(acts_a, acts_b, measure, batch_size, device, stage(0.6, 1.0), **params)
    store.put(key, {"values": df.to_numpy()}, {"warnings": df.attrs["warnings"], "measure": measure,
                                               "a": model_a.ref, "b": model_b.ref, "data": ds.name},
              kind="similarity")
    df.attrs["cached"] = False
    return df


def layer_calibration(model_a, model_b, ds, measure: str = "linear_cka", n_perm: int = 100, seed: int = 0,
                      layers_a=None, layers_b=None, pooling: str = "mean", device=None, progress=None,
                      store=None, **params) -> CalibratedMatrix:
    """:func:`calibrated_matrix` for two models on a dataset (the heatmap's calibrated colour scale
    and each cell's null), cached in the result store like :func:`layer_similarity`. It calibrates
    the full-batch estimator; :func:`calibration_seconds` estimates its cost beforehand."""
    from .store import default_store

    m, params, layers_a, layers_b, key = _layer_job("similarity_calibration", model_a, model_b, ds, measure, layers_a,
                                                    layers_b, pooling, params, n_perm=int(n_perm), seed=int(seed))
    store = store or default_store()
    hit = store.get(key)
    if hit is not None:
        if progress:
            progress(1.0, "loaded from the result store")
        return _calibrated_frames(hit["value"], hit["null"], layers_a, layers_b, m, seed, cached=True)
    stage = _stage(progress)
    acts_a, acts_b = _layer_activations(model_a, model_b, ds, layers_a, layers_b, pooling, measure, None,
                                        device, stage)
    value, null = _calibration_arrays(acts_a, acts_b, measure, n_perm, seed, device, stage(0.6, 1.0), params)
    store.put(key, {"value": value, "null": null}, {"measure": measure, "a": model_a.ref, "b": model_b.ref,
                                                    "data": ds.name, "n_perm": int(n_perm)}, kind="similarity")
    return _calibrated_frames(value, null, layers_a, layers_b, m, seed)


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
    from .resources import USABLE_FRACTION, check_fits, fmt_bytes

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
    from .resources import available_bytes

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
