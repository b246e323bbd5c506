"""Representational similarity: the CKA family and related measures, one pair or layer by layer.

Notation: X (n x p1) and Y (n x p2) hold the same n samples in the same row order.

Estimators that subtract large terms (HSIC, Gram centering) run in float64. The layer-by-layer
matrix computes each layer's statistics once (a centred or U-centred Gram matrix, an orthonormal
basis, a ranked RDM, a neighbour list) and every pair from those, the cross terms of the CKA
family as one matrix product of stacked Gram matrices (as in Google's efficient_CKA).

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


def linear_gram(x):
    """K = X X^T (float64 torch tensor)."""
    x = _t(x) if isinstance(x, np.ndarray) else x
    return x @ x.T


def rbf_gram(x, threshold: float = 1.0):
    """RBF kernel with sigma^2 = threshold^2 * median squared distance (Kornblith's reference code:
    the median over the full n x n squared-distance matrix, zero diagonal included)."""
    import torch

    x = _t(x) if isinstance(x, np.ndarray) else x
    g = x @ x.T
    sq = torch.diagonal(g)
    d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    med = torch.median(d2.flatten())
    if med <= 0:  # over half the pairs coincide (n = 2, duplicate rows): the median of the others
        positive = d2[d2 > 0]
        if positive.numel() == 0:
            return torch.ones_like(d2)  # every point identical: a constant kernel (CKA reads NaN)
        med = torch.median(positive)
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
            px, py = _linear_hsic_terms(_t(x)), _linear_hsic_terms(_t(y))
            return _debiased_defined(_ratio(_hsic1_features(px, py), _self_hsic1(px), _self_hsic1(py)), x, y)
        k, l = linear_gram(x), linear_gram(y)
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


def _linear_cka_features(x: np.ndarray, y: np.ndarray) -> float:
    """Feature form: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X, Y."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    if x.shape[0] < max(x.shape[1], y.shape[1]):  # Gram form is cheaper when n < p
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
        sq = (x * x).sum(1)
        d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
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
    kernel = "rbf" if measure == "rbf_cka" else "linear"
    if debiased and n < 4:
        raise UserInputError(f"Debiased CKA needs at least 4 samples (got {n}).")
    gram_bytes = 8.0 * n * n * (len(a) + len(b))
    if kernel == "linear" and gram_bytes > GRAM_MEMORY_BYTES:
        return _linear_cka_feature_matrix(a, b, debiased, dev, progress)
    if gram_bytes > GRAM_MEMORY_BYTES:
        raise UserInputError(f"RBF CKA on n = {n} samples needs {gram_bytes / 1e9:.1f} GB of Gram matrices; "
                             "use fewer samples or linear CKA with a minibatch size.")
    center = u_center_gram if debiased else center_gram
    total = len(a) + len(b)

    def stacked(acts, offset):
        rows = []
        for i, x in enumerate(acts.values()):
            xt = _t(x, dev)
            k = rbf_gram(xt, params.get("threshold", 1.0)) if kernel == "rbf" else xt @ xt.T
            rows.append(center(k).flatten())
            if progress:
                progress(0.9 * (offset + i + 1) / total, "Gram matrices")
        return _stack(rows)

    ga, gb = stacked(a, 0), stacked(b, len(a))
    cross = (ga @ gb.T).cpu().numpy()
    self_a = (ga * ga).sum(1).cpu().numpy()
    self_b = (gb * gb).sum(1).cpu().numpy()
    return _normalise(cross, self_a, self_b)


def _stack(rows):
    import torch

    return torch.stack(rows)


def _normalise(cross, self_a, self_b) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt(np.outer(self_a, self_b))
        out = np.where(denom > 0, cross / np.where(denom > 0, denom, 1), np.nan)
    return out


def _linear_hsic_terms(x):
    """Per-layer pieces of the feature-space HSIC formulas (float64 torch). The columns are centred
    first: HSIC_1 of a linear kernel is translation invariant, and uncentred features would make
    the formula a small difference of huge terms (catastrophic cancellation for large means)."""
    x = x - x.mean(0, keepdim=True)
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
        xt = _t(x, dev)
        return _linear_hsic_terms(xt) if debiased else xt - xt.mean(0)

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
    if m.family == "rsa":
        stat = lambda x: _ranked_rdm(x, params.get("rdm", "correlation"))
        pair = lambda s, t: float("nan") if s is None or t is None else float(s @ t)
    elif m.family == "knn":
        stat = lambda x: _knn(x, int(params.get("k", 10)))
        pair = _knn_overlap
    elif m.family == "procrustes":
        stat = _unit_centered
        pair = lambda s, t: float("nan") if s is None or t is None else float(
            np.linalg.svd(s.T @ t, compute_uv=False).sum())
    elif m.name == "pwcca":
        stat = lambda x: (x - x.mean(0), _orthonormal_basis(x)[0])
        pair = lambda s, t: _pwcca_from(s[0], s[1], t[1])
    else:
        variance = params.get("variance") if m.name == "svcca" else None
        stat = lambda x: _orthonormal_basis(x, variance)[0]
        agg = (lambda r: float(np.mean(r))) if m.name == "svcca" else (lambda r: float(np.mean(r ** 2)))
        pair = lambda s, t: (lambda r: agg(r) if r.size else float("nan"))(_canonical_correlations(s, t))
    sa = [stat(x) for x in a.values()]
    sb = [stat(y) for y in b.values()]
    out = np.empty((len(sa), len(sb)))
    for i, s in enumerate(sa):
        for j, t in enumerate(sb):
            out[i, j] = pair(s, t)
        if progress:
            progress(0.1 + 0.9 * (i + 1) / len(sa), f"{m.label}: row {i + 1}/{len(sa)}")
    return out


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

    def _grams(self, acts, layers, which):
        """One batch's zero-diagonal Gram matrices (layers x b^2, in a buffer reused across batches),
        their row sums (layers x b) and totals (layers): the pieces of Song et al.'s HSIC_1 formula.

        Columns are centred first (in float64): HSIC_1 of a linear kernel is translation invariant,
        and centring keeps the formula from subtracting huge terms when features have large means."""
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
        for i, x in enumerate(xs):
            xt = torch.as_tensor(x, device=self.device).to(torch.float64)
            xt = xt - xt.mean(0, keepdim=True)
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


def _center_np(k: np.ndarray) -> np.ndarray:
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def _u_center_np(k: np.ndarray) -> np.ndarray:
    n = k.shape[0]
    k = k.copy()
    np.fill_diagonal(k, 0)
    m = k.sum(0) / (n - 2)
    m = m - m.sum() / (2 * (n - 1))
    k = k - m[:, None] - m[None, :]
    np.fill_diagonal(k, 0)
    return k


class _GramResampler:
    """Linear (debiased) CKA under row permutations from the two Gram matrices, computed once.

    Permuting the rows of Y permutes its (U-)centred Gram matrix, so a permutation costs one n^2
    product. (A bootstrap sample would need the resampled Gram matrices re-centred, slower than the
    feature form for p << n, so the bootstrap evaluates the measure itself.)
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, debiased: bool):
        self.k, self.l = x @ x.T, y @ y.T
        self.center = _u_center_np if debiased else _center_np
        self.kc, self.lc = self.center(self.k), self.center(self.l)
        self.kk, self.ll = float((self.kc * self.kc).sum()), float((self.lc * self.lc).sum())

    def value(self) -> float:
        return _ratio((self.kc * self.lc).sum(), self.kk, self.ll)

    def permuted(self, perm: np.ndarray) -> float:
        return _ratio((self.kc * self.lc[np.ix_(perm, perm)]).sum(), self.kk, self.ll)


def _resampler(x, y, measure: str):
    if measure in ("linear_cka", "debiased_linear_cka") and x.shape[0] <= 5000:
        return _GramResampler(x, y, debiased=measure == "debiased_linear_cka")
    return None


def bootstrap_ci(x, y, measure: str = "linear_cka", n_boot: int = 200, level: float = 0.95, seed: int = 0,
                 **params) -> tuple[float, float]:
    """Percentile bootstrap interval over samples (rows resampled jointly, with replacement)."""
    x, y = _pair(x, y)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    # Re-centring resampled n x n Gram matrices costs more than the feature form (n p^2) here, so
    # the bootstrap evaluates the measure itself; permutations use the Gram shortcut.
    vals = [compute(measure, x[idx], y[idx], **params) for idx in (rng.integers(0, n, n) for _ in range(n_boot))]
    vals = np.array(vals)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def permutation_test(x, y, measure: str = "linear_cka", n_perm: int = 200, seed: int = 0,
                     **params) -> tuple[float, np.ndarray]:
    """p-value of the observed similarity against rows of Y shuffled (pairing destroyed):
    (1 + #{null >= observed}) / (1 + n_perm), for measures where higher is more similar."""
    x, y = _pair(x, y)
    fast = _resampler(x, y, measure)
    observed = fast.value() if fast else compute(measure, x, y, **params)
    rng = np.random.default_rng(seed)
    perms = (rng.permutation(len(y)) for _ in range(n_perm))
    null = np.array([fast.permuted(p) if fast else compute(measure, x, y[p], **params) for p in perms])
    p = (1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm)
    return float(p), null


def statistics_seconds(x, y, measure: str = "linear_cka", n_boot: int = 200, n_perm: int = 200,
                       **params) -> float:
    """Expected wall time of :func:`cell_statistics` plus :func:`stability_curve` on this pair, from
    timing one evaluation (after a warm-up call) of the path each will take."""
    import time

    x, y = _pair(x, y)
    compute(measure, x[:64], y[:64], **params)  # imports and BLAS start-up are not the estimate
    t0 = time.perf_counter()
    compute(measure, x, y, **params)
    one = time.perf_counter() - t0
    fast = _resampler(x, y, measure)
    per_permutation = one
    if fast is not None:
        t0 = time.perf_counter()
        fast.permuted(np.arange(len(x)))
        per_permutation = time.perf_counter() - t0
    return n_boot * one + n_perm * per_permutation + 40 * 0.5 * one


def cell_statistics(x, y, measure: str = "linear_cka", n_boot: int = 200, n_perm: int = 200,
                    level: float = 0.95, seed: int = 0, **params) -> CellStatistics:
    value = compute(measure, x, y, **params)
    lo, hi = bootstrap_ci(x, y, measure, n_boot, level, seed, **params)
    p, null = permutation_test(x, y, measure, n_perm, seed + 1, **params)
    return CellStatistics(value, lo, hi, level, p, n_boot, n_perm, float(np.mean(null)))


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
CACHE_VERSION = 1
FLOPS_PER_SECOND = 3e9  # a conservative CPU rate for the estimate shown before a run


def layer_similarity(model_a, model_b, ds, measure: str = "linear_cka", layers_a=None, layers_b=None,
                     pooling: str = "mean", batch_size: int | None = None, device=None, progress=None,
                     store=None, **params):
    """The A-layers x B-layers matrix for two models on a dataset, cached in the result store by
    (model hashes, data hash, measure and parameters, layers, pooling, batch size)."""
    import pandas as pd

    from .activations import extract
    from .store import default_store, make_key

    m = measure_info(measure)
    params = {**m.params, **params}
    layers_a = list(model_a.layers if layers_a is None else layers_a)
    layers_b = list(model_b.layers if layers_b is None else layers_b)
    store = store or default_store()
    key = make_key("similarity", a=model_a.sha256, b=model_b.sha256, data=ds.sha256, measure=measure,
                   params=params, layers_a=layers_a, layers_b=layers_b, pooling=pooling, batch_size=batch_size,
                   v=CACHE_VERSION)
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
    from .activations import pooled_dims

    # Refuse before the models run: the activations alone can be most of the time.
    check_memory(len(ds), pooled_dims(model_a, ds, layers_a, pooling), pooled_dims(model_b, ds, layers_b, pooling),
                 measure, batch_size)
    stage = (lambda lo, hi: (lambda f, msg: progress(lo + (hi - lo) * f, msg))) if progress else (lambda lo, hi: None)
    acts_a = extract(model_a, ds, layers_a, pooling, device, stage(0.0, 0.3))
    acts_b = extract(model_b, ds, layers_b, pooling, device, stage(0.3, 0.6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimilarityWarning)  # reported through df.attrs["warnings"]
        df = similarity_matrix(acts_a, acts_b, measure, batch_size, device, stage(0.6, 1.0), **params)
    store.put(key, {"values": df.to_numpy()}, {"warnings": df.attrs["warnings"], "measure": measure,
                                               "a": model_a.ref, "b": model_b.ref, "data": ds.name},
              kind="similarity")
    df.attrs["cached"] = False
    return df


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
