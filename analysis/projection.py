"""Low-dimensional views of a layer. PCA here; UMAP / t-SNE and alignment come with the projections page."""
from __future__ import annotations

import numpy as np

from .validation import as_matrix


def pca(x, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal components of the centred rows and the fraction of variance each explains.
    Signs are fixed so each component's largest-magnitude loading is positive (stable across runs)."""
    x = as_matrix(x, "layer")
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(k, vt.shape[0])
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt[:k]), axis=1)])
    signs[signs == 0] = 1
    coords = u[:, :k] * s[:k] * signs
    total = float((s ** 2).sum())
    ratio = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    if coords.shape[1] < 2:  # a 1-D layer: pad so a 2-D scatter still draws
        coords = np.hstack([coords, np.zeros((len(coords), 2 - coords.shape[1]))])
        ratio = np.concatenate([ratio, np.zeros(2 - len(ratio))])
    return coords, ratio
