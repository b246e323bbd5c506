"""Features of two models matched one-to-one by the correlation of their activations on the same
inputs (Hungarian assignment): the "universal" vs model-specific features."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from .features import sparse_codes
from .model import SparseAutoencoder


@dataclass
class FeatureMatch:
    """Latents of SAE(A) paired one-to-one with latents of SAE(B) (Hungarian assignment on the
    correlation of their activations over the same inputs), best pairs first."""

    a: np.ndarray  # latent of A
    b: np.ndarray  # its partner in B
    correlation: np.ndarray  # Pearson correlation of the pair's activations (match quality)
    best_a: np.ndarray  # per live latent of A, the best correlation with any latent of B (no assignment)
    live_a: np.ndarray  # indices of A's latents active on the inputs (dead ones are not matched)
    live_b: np.ndarray
    threshold: float = 0.5  # pairs at or above it are "shared", the rest model-specific

    @property
    def shared(self) -> np.ndarray:
        return self.correlation >= self.threshold

    def table(self):
        import pandas as pd

        return pd.DataFrame({"feature A": self.a, "feature B": self.b, "correlation": self.correlation,
                             "shared": self.shared})


def correlation_matrix(codes_a, codes_b) -> np.ndarray:
    """Pearson correlation between every column of two (n x m) activation matrices (dense or
    scipy sparse), in float64; a constant column correlates 0 with everything."""
    from scipy import sparse

    def dense(c):
        return np.asarray(c.todense() if sparse.issparse(c) else c, dtype=np.float64)

    a, b = dense(codes_a), dense(codes_b)
    if len(a) != len(b):
        raise UserInputError(f"The two SAEs were applied to {len(a)} and {len(b)} inputs: matching needs the same inputs.")
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    corr = (a.T @ b) / np.maximum(np.outer(na, nb), 1e-300)
    corr[na == 0] = 0.0
    corr[:, nb == 0] = 0.0
    return corr


def match_features(sae_a: SparseAutoencoder, acts_a, sae_b: SparseAutoencoder, acts_b, threshold: float = 0.5,
                   codes_a=None, codes_b=None, min_active: int = 3) -> FeatureMatch:
    """Match SAE(A)'s latents to SAE(B)'s by the correlation of their activations on the same
    inputs (rows of ``acts_a`` and ``acts_b`` are the same samples): Hungarian assignment
    (scipy.optimize.linear_sum_assignment, maximising total correlation) among the latents active
    on at least ``min_active`` inputs (two latents that fire on one and the same input correlate
    perfectly, which says nothing)."""
    from scipy import sparse
    from scipy.optimize import linear_sum_assignment

    ca = sparse.csc_matrix(sparse_codes(sae_a, acts_a) if codes_a is None else codes_a)
    cb = sparse.csc_matrix(sparse_codes(sae_b, acts_b) if codes_b is None else codes_b)
    live_a = np.nonzero(np.diff(ca.indptr) >= min_active)[0]
    live_b = np.nonzero(np.diff(cb.indptr) >= min_active)[0]
    if len(live_a) == 0 or len(live_b) == 0:
        raise UserInputError(f"One of the SAEs has no feature active on {min_active} or more of these inputs: "
                             "nothing to match. Use more samples.")
    corr = correlation_matrix(ca[:, live_a], cb[:, live_b])
    ra, rb = linear_sum_assignment(corr, maximize=True)
    order = np.argsort(-corr[ra, rb], kind="stable")
    ra, rb = ra[order], rb[order]
    return FeatureMatch(live_a[ra], live_b[rb], corr[ra, rb], corr.max(1), live_a, live_b, float(threshold))
