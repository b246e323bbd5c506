"""The similarity measures on one pair of representations (the CKA family, CCA, SVCCA, PWCCA,
Procrustes, RSA, mutual k-NN) and their registry :data:`MEASURES` with ranges and invariances."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..errors import UserInputError
from .kernels import (
    _centred,
    _fro2,
    _hsic1_features,
    _is_constant,
    _linear_hsic_terms,
    _pair,
    _scaled_gram,
    _self_hsic1,
    center_gram,
    rbf_gram,
    squared_distances,
    u_center_gram,
)

INVARIANCES = ("orthogonal", "isotropic scaling", "invertible linear", "translation")


class SimilarityWarning(UserWarning):
    """Degenerate input: a constant layer, or n <= p for a measure that then reads ~1."""


def _ratio(cross, self_x, self_y):
    if not (self_x > 0 and self_y > 0):
        return float("nan")
    return float(cross / math.sqrt(self_x * self_y))


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


CACHE_VERSION = 2  # 2: Gram products of centred features (values at large offsets changed), median convention
