"""How much the attractors look like training images: the memorization coefficient with its
held-out null, the dictionary rank, the Chamfer similarity of attractor sets."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from .dynamics import _unit


@dataclass
class Memorization:
    """Each decoded attractor's cosine similarity to its most similar training sample
    (``per_item``, ``nearest``), their mean and sd (``coefficient``, ``sd``), and the null: the
    same score for held-out samples against the training set."""

    coefficient: float
    sd: float
    per_item: np.ndarray
    nearest: np.ndarray
    null_mean: float
    null_sd: float
    null_per_item: np.ndarray

    @property
    def above_null(self) -> float:
        return self.coefficient - self.null_mean


def max_cosine(x, ref, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x``: the largest cosine similarity to a row of ``ref`` and that row's index."""
    ux, _ = _unit(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    ur, _ = _unit(np.asarray(ref, dtype=np.float64).reshape(len(ref), -1))
    best, arg = np.empty(len(ux)), np.empty(len(ux), dtype=np.int64)
    for i in range(0, len(ux), chunk):
        s = ux[i: i + chunk] @ ur.T
        arg[i: i + chunk] = s.argmax(1)
        best[i: i + chunk] = s.max(1)
    return best, arg


def memorization_coefficient(decoded_attractors, train_x, heldout_x=None) -> Memorization:
    """The paper's memorization coefficient: mean (sd) over attractors of the largest cosine similarity
    between the decoded attractor and a training sample; the null is the same statistic for held-out
    samples (``heldout_x``) against the training set (NaN if none are given)."""
    d = np.asarray(decoded_attractors, dtype=np.float64)
    if len(d) == 0:
        raise UserInputError("No attractors to score: no start converged. Raise the step cap or the tolerance.")
    sims, nearest = max_cosine(d, train_x)
    if heldout_x is not None and len(heldout_x):
        null, _ = max_cosine(heldout_x, train_x)
    else:
        null = np.full(1, np.nan)
    return Memorization(float(sims.mean()), float(sims.std()), sims, nearest, float(np.mean(null)),
                        float(np.std(null)), null)


def dictionary_rank(decoded_attractors, fraction: float = 0.9) -> int:
    """How many singular vectors of the decoded attractors (uncentred: a single attractor has rank 1)
    it takes to explain ``fraction`` of their energy (sum of squared singular values)."""
    d = np.asarray(decoded_attractors, dtype=np.float64)
    if len(d) == 0:
        return 0
    s2 = np.linalg.svd(d.reshape(len(d), -1), compute_uv=False) ** 2
    if s2.sum() <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(s2) / s2.sum(), fraction - 1e-12) + 1)


def chamfer_similarity(a, b) -> float:
    """Symmetric Chamfer similarity of two point sets under cosine similarity: the mean over each set
    of its points' best match in the other, averaged over the two directions (1 = same set)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return 0.5 * (float(max_cosine(a, b)[0].mean()) + float(max_cosine(b, a)[0].mean()))
