"""Invariant relative spaces: several relative projections side by side (Cannistraci et al., "From
Bricks to Bridges: Product of Invariances to Enhance Latent Space Communication", ICLR 2024).

A relative projection describes a sample by its similarity to a few anchors; which changes of the
space leave it unchanged depends on the similarity. Two networks' spaces are related by some
transformation nobody knows in advance, so the product space concatenates several projections,
each invariant to a different class, and lets whatever reads it use the ones that agree:

=============  ===============================================  ======================================
similarity     r_j(x)                                           invariant to (of the space)
=============  ===============================================  ======================================
cosine         cos(x - c, a_j - c), c = the anchors' mean       rotations and reflections, translations,
                                                                rescaling
euclidean      -||x - a_j||_2                                   rotations and reflections, translations
l1             -||x - a_j||_1                                   permutations and sign flips of the
                                                                coordinates, translations
linf           -||x - a_j||_inf                                 same as l1
=============  ===============================================  ======================================

Each projection is then normalised: every coordinate j is standard-scaled with its mean and
standard deviation over the anchors' own projections (r_j(a_1), ..., r_j(a_m)). This makes the
distance-based ones invariant to rescaling the space too, and puts the four on one scale before
they are concatenated. So the product is invariant to what all four share: translations,
coordinate permutations and sign flips, and rescaling; each part keeps its own invariances.

:class:`InvariantTranslator` turns the product space into a translator from X's space to Y's (the
``"invariant"`` method of :class:`analysis.translation.Translator`): x is projected with X's
anchors, and a ridge regression fitted on Y's side, from the projections of Y's rows (by Y's
anchors) back to those rows, decodes it in Y's space. The decoder needs rows of Y only, never pairs:
by default the anchors, or any rows of Y passed as ``Y_fit`` (a zero-shot stitching setting has
B's own data).
"""
from __future__ import annotations

import numpy as np

from .errors import UserInputError
from .validation import as_matrix

SIMILARITIES = ("cosine", "euclidean", "l1", "linf")
INVARIANCES = {  # transformation of the space -> similarities whose projection it leaves unchanged
    "rotation": ("cosine", "euclidean"),
    "translation": ("cosine", "euclidean", "l1", "linf"),
    "rescaling": ("cosine", "euclidean", "l1", "linf"),  # the distances after the normalisation
    "permutation": ("cosine", "euclidean", "l1", "linf"),
    "sign flip": ("cosine", "euclidean", "l1", "linf"),
}
RIDGE_ALPHAS = tuple(10.0 ** np.arange(-4, 3))
_EPS = 1e-12


def _cosine(x, a):
    c = a.mean(0)
    xc, ac = x - c, a - c
    xn = xc / np.maximum(np.linalg.norm(xc, axis=1, keepdims=True), _EPS)
    an = ac / np.maximum(np.linalg.norm(ac, axis=1, keepdims=True), _EPS)
    return xn @ an.T


def _minkowski(p):
    def similarity(x, a):
        from scipy.spatial.distance import cdist

        return -cdist(x, a, "minkowski", p=p) if np.isfinite(p) else -cdist(x, a, "chebyshev")
    return similarity


_FUNCTIONS = {"cosine": _cosine, "euclidean": _minkowski(2), "l1": _minkowski(1), "linf": _minkowski(np.inf)}


def relative(x, anchors, similarity: str = "cosine") -> np.ndarray:
    """The raw relative projection r_j(x) = sim(x, a_j) under one similarity (n x anchors)."""
    if similarity not in _FUNCTIONS:
        raise UserInputError(f"Unknown similarity {similarity!r}; use one of {', '.join(SIMILARITIES)}.")
    x = as_matrix(x, "X", min_rows=1, dtype=np.float64)
    a = as_matrix(anchors, "anchors", min_rows=2, dtype=np.float64)
    if x.shape[1] != a.shape[1]:
        raise UserInputError("Samples and anchors must live in the same space (same number of columns).")
    return _FUNCTIONS[similarity](x, a)


def _anchor_stats(anchors, similarity: str):
    r = relative(anchors, anchors, similarity)
    mu, sd = r.mean(0), r.std(0)
    return mu, np.where(sd > _EPS * max(float(np.abs(r).max(initial=0.0)), 1.0), sd, 1.0)


def invariant_projection(x, anchors, similarities=SIMILARITIES) -> np.ndarray:
    """The product space: each similarity's relative projection, standard-scaled per anchor with
    the anchors' own projections, concatenated (n x len(similarities) * anchors)."""
    parts = []
    for s in similarities:
        mu, sd = _anchor_stats(anchors, s)
        parts.append((relative(x, anchors, s) - mu) / sd)
    return np.hstack(parts)


class InvariantTranslator:
    """Translate X's space into Y's through the invariant relative space (see the module docstring)."""

    def __init__(self, similarities=SIMILARITIES):
        unknown = [s for s in similarities if s not in SIMILARITIES]
        if unknown or not similarities:
            raise UserInputError(f"Unknown similarity {unknown[0] if unknown else '(none)'}; use some of "
                                 f"{', '.join(SIMILARITIES)}.")
        self.similarities = tuple(similarities)

    def fit(self, X_anchors, Y_anchors, Y_fit=None) -> "InvariantTranslator":
        from sklearn.linear_model import RidgeCV

        xa = as_matrix(X_anchors, "anchors of X", dtype=np.float64)
        ya = as_matrix(Y_anchors, "anchors of Y", dtype=np.float64)
        if len(xa) != len(ya):
            raise UserInputError(f"X has {len(xa)} anchors and Y {len(ya)}: anchors come in pairs.")
        rows = ya if Y_fit is None else as_matrix(Y_fit, "rows of Y", dtype=np.float64)
        if rows.shape[1] != ya.shape[1]:
            raise UserInputError("The rows of Y for the decoder must have Y's width.")
        self.x_anchors_, self.y_anchors_ = xa, ya
        self.dim_x_, self.dim_y_ = xa.shape[1], ya.shape[1]
        features = invariant_projection(rows, ya, self.similarities)
        self.decoder_ = RidgeCV(alphas=RIDGE_ALPHAS).fit(features, rows)
        self.warnings_ = []
        return self

    def project(self, X, side: str = "x") -> np.ndarray:
        """The invariant relative coordinates of rows of X (``side="x"``) or of Y (``"y"``)."""
        anchors = self.x_anchors_ if side == "x" else self.y_anchors_
        return invariant_projection(X, anchors, self.similarities)

    def transform(self, X) -> np.ndarray:
        if not hasattr(self, "decoder_"):
            raise UserInputError("Fit the translator on anchors first.")
        x = as_matrix(X, "X", min_rows=1, dtype=np.float64)
        if x.shape[1] != self.dim_x_:
            raise UserInputError(f"X has {x.shape[1]} dimensions; the translator was fitted on {self.dim_x_}.")
        return self.decoder_.predict(self.project(x, "x"))


def retrieval_curve(x, y, anchor_counts, selection: str = "random", labels=None, seed: int = 0,
                    progress=None) -> dict:
    """Retrieval MRR (row i of X finding row i of Y; anchors left out of the queries) versus the
    number of anchors: in the cosine relative space ("relative"), in the invariant product space
    ("invariant space"), after orthogonal translation ("ortho") and after the invariant translator
    whose decoder saw every row of Y, unpaired ("invariant")."""
    from .translation import Translator, retrieval_scores, select_anchors, translate
    from .validation import check_aligned

    x, y = as_matrix(x, "X"), as_matrix(y, "Y")
    check_aligned(x, y)
    counts = [int(c) for c in anchor_counts if 2 <= int(c) <= len(x) - 2]
    keys = ("relative", "invariant space", "ortho", "invariant")
    out = {"anchors": np.asarray(counts, dtype=float), **{k: np.full(len(counts), np.nan) for k in keys}}
    for i, m in enumerate(counts):
        if progress:
            progress(i / max(len(counts), 1), f"retrieval with {m} anchors ({i + 1}/{len(counts)})")
        idx = select_anchors(x, m, selection, labels, seed)
        scores = {
            "relative": (relative(x, x[idx]), relative(y, y[idx])),
            "invariant space": (invariant_projection(x, x[idx]), invariant_projection(y, y[idx])),
            "ortho": (translate(x, x[idx], y[idx], "ortho"), y),
            "invariant": (Translator("invariant").fit(x[idx], y[idx], Y_fit=y).transform(x), y),
        }
        for key, (a, b) in scores.items():
            out[key][i] = retrieval_scores(a, b, exclude=idx)["mrr"]
    if progress:
        progress(1.0, "retrieval done")
    return out
