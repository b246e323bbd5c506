"""The layer-by-layer matrix: each layer's statistic computed once (a centred Gram matrix, a basis,
a ranked RDM, a neighbour list) and every pair from those; the CKA family's cross terms as one
matrix product of stacked Gram matrices (as in Google's efficient_CKA)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..errors import UserInputError
from ..validation import as_matrix
from .cost import GRAM_MEMORY_BYTES, check_memory
from .kernels import (
    _centred,
    _fro2,
    _hsic1_features,
    _is_constant,
    _linear_hsic_terms,
    _normalise,
    _scaled_gram,
    _self_hsic1,
    _self_terms,
    _stack,
    _t,
    center_gram,
    rbf_gram,
    u_center_gram,
)
from .measures import (
    Measure,
    SimilarityWarning,
    _canonical_correlations,
    _knn,
    _knn_overlap,
    _linear_cka_features,
    _orthonormal_basis,
    _pwcca_from,
    _ranked_rdm,
    _ratio,
    _unit_centered,
    measure_info,
)
from .minibatch import _minibatch_matrix


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
    from ..device import pick

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


def best_matches(df) -> list[tuple[str, str, float]]:
    """For each row layer (model A), the column layer (model B) with the highest similarity."""
    out = []
    for layer, row in df.iterrows():
        if row.notna().any():
            j = row.idxmax()
            out.append((layer, j, float(row[j])))
    return out


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
    from ..device import pick

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
