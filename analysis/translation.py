"""Latent space translation (Maiorca et al., NeurIPS 2023) and relative representations
(Moschella et al., ICLR 2023): map one latent space into another from a few anchor pairs.

``Translator(method).fit(X_anchors, Y_anchors).transform(X)``: zero-pad the smaller space,
standard-scale each space with its own anchor statistics, estimate the map (orthogonal Procrustes,
least squares, orthogonalised least squares, or affine), and scale back into the target space.
``relative_projection`` gives the anchor-relative cosine coordinates, ``select_anchors`` picks
anchors (random, farthest-point, k-means, class-balanced) and ``retrieval_scores`` measures how
well translated rows find their own counterpart (MRR, top-k Jaccard).
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from .errors import UserInputError
from .validation import as_matrix, check_aligned

METHODS = ("ortho", "linear", "l-ortho", "affine", "invariant")
INVARIANT = "invariant"  # the product of invariant relative spaces (analysis.relative_spaces)
SELECTIONS = ("random", "farthest-point", "k-means", "class-balanced")
SCALINGS = ("feature", "global", "none")
_EPS = np.finfo(np.float64).eps


class TranslationWarning(UserWarning):
    """The fitted translation is not determined by the anchors (or reproduces them and no more)."""


def small_blas(fn):
    """Run ``fn`` with one BLAS thread. Its dense matrices are thin (anchors x width, n x K, K x K):
    threads buy little there, and on a busy 2-core machine OpenBLAS's spinning threads made lstsq
    ~70x and a whole functional-map fit ~4x slower."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- pure functions
def procrustes(x, y) -> np.ndarray:
    """The orthogonal R minimising ||x R - y||_F: SVD of x^T y = U S V^T, R = U V^T."""
    u, _, vt = np.linalg.svd(np.asarray(x).T @ np.asarray(y), full_matrices=False)
    return u @ vt


def orthogonalize(m) -> np.ndarray:
    """The orthogonal matrix nearest to ``m`` (polar factor)."""
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    return u @ vt


def pad(x, d: int) -> np.ndarray:
    """Zero-pad the columns of ``x`` to ``d``."""
    return x if x.shape[1] >= d else np.hstack([x, np.zeros((len(x), d - x.shape[1]))])


def _stats(x, scaling: str):
    mu = x.mean(0)
    if scaling == "feature":
        sd = x.std(0)
        sd = np.where(sd < 10 * _EPS, 1.0, sd)
    elif scaling == "global":  # one number: the RMS distance to the mean (rotation equivariant)
        sd = float(np.sqrt(((x - mu) ** 2).sum(1).mean()))
        sd = np.full(x.shape[1], sd if sd >= 10 * _EPS else 1.0)
    else:
        mu, sd = np.zeros(x.shape[1]), np.ones(x.shape[1])
    return mu, sd


def _rank(m: np.ndarray) -> int:
    s = np.linalg.svd(m, compute_uv=False)
    return int((s > s[0] * max(m.shape) * _EPS).sum()) if s.size and s[0] > 0 else 0


def _silent_units(a: np.ndarray) -> int:
    """Units constant on the anchors (a ReLU unit that never fires there): the anchors say nothing
    about how they map."""
    return int((np.ptp(a, axis=0) == 0).sum())


def _not_unique(method: str, xa, ya, xs, ys, centred: bool) -> list[str]:
    """Why the fitted map is not the only one that fits the anchors equally well, if it is not.

    The orthogonal maps (ortho, l-ortho) are unique as far as the translation of a sample goes when
    the anchors' cross-covariance xs^T ys (standardised, unpadded) has rank min(d_X, d_Y); the
    least-squares maps (linear, affine) when xs has rank d_X. Centring uses one degree of freedom, so
    m anchors give rank at most m - 1, and a unit that never fires on the anchors gives none."""
    d = min(xs.shape[1], ys.shape[1]) if method in ("ortho", "l-ortho") else xs.shape[1]
    rank = _rank(xs.T @ ys) if method in ("ortho", "l-ortho") else _rank(xs)
    if rank >= d:
        return []
    why = []
    fixed = len(xa) - 1 if centred else len(xa)
    if fixed < d:
        why.append(f"{len(xa)} anchors fix at most {fixed}" + (", as centring takes one" if centred else ""))
    silent_x, silent_y = _silent_units(xa), _silent_units(ya)
    if silent_x or silent_y:
        why.append(f"{silent_x} unit(s) of X and {silent_y} of Y never change on the anchors (e.g. never fire)")
    reason = "; ".join(why) or "the anchors are linearly dependent"
    fix = f"Use more anchors than dimensions (at least {d + 1 if centred else d})"
    fix += ", and drop units that never fire." if silent_x or silent_y else "."
    return [f"The {method} translation is not unique: the anchors determine only {rank} of the {d} directions it "
            f"needs ({reason}). Other maps fit the anchors equally well and translate other samples differently. "
            + fix]


class Translator:
    """Translate X's space into Y's from anchor pairs (scikit-learn style).

    Parameters
    ----------
    method : "ortho" (Procrustes), "linear" (least squares), "l-ortho" (least squares, then the
        nearest orthogonal matrix), "affine" (least squares with a bias) or "invariant" (through the
        product of invariant relative spaces, see :mod:`analysis.relative_spaces`; ``scaling`` does
        not apply to it)
    scaling : "feature" (standard-scale every dimension with the anchors' mean and std, the paper's
        choice), "global" (centre, divide by one RMS spread: keeps rotations exact) or "none"

    Fitted attributes: ``R_`` (d x d, d the larger dimension), ``bias_`` (affine), ``mean_x_``,
    ``scale_x_``, ``mean_y_``, ``scale_y_``, ``warnings_`` (sentences for the user: a fit that is
    not unique, or that only reproduces the anchors; each is also issued as a
    :class:`TranslationWarning`, which a page can catch with ``warnings.catch_warnings``).
    """

    def __init__(self, method: str = "ortho", scaling: str = "feature"):
        self.method = method
        self.scaling = scaling

    def fit(self, X_anchors, Y_anchors, Y_fit=None):
        if self.method == INVARIANT:  # ``Y_fit``: rows of Y (unpaired) for its decoder; the anchors by default
            from .relative_spaces import InvariantTranslator

            self.inner_ = InvariantTranslator().fit(X_anchors, Y_anchors, Y_fit)
            self.dim_x_, self.dim_y_, self.warnings_ = self.inner_.dim_x_, self.inner_.dim_y_, self.inner_.warnings_
            return self
        if self.method not in METHODS:
            raise UserInputError(f"Unknown translation {self.method!r}; use one of {', '.join(METHODS)}.")
        if self.scaling not in SCALINGS:
            raise UserInputError(f"Unknown scaling {self.scaling!r}; use one of {', '.join(SCALINGS)}.")
        xa, ya = as_matrix(X_anchors, "anchors of X"), as_matrix(Y_anchors, "anchors of Y")
        check_aligned(xa, ya, "anchors of X", "anchors of Y")
        self.dim_x_, self.dim_y_ = xa.shape[1], ya.shape[1]
        d = max(self.dim_x_, self.dim_y_)
        self.mean_x_, self.scale_x_ = _stats(xa, self.scaling)
        self.mean_y_, self.scale_y_ = _stats(ya, self.scaling)
        xs = pad((xa - self.mean_x_) / self.scale_x_, d)
        ys = pad((ya - self.mean_y_) / self.scale_y_, d)
        self.warnings_ = []
        self.bias_ = np.zeros(d)
        if self.method == "ortho":
            self.R_ = procrustes(xs, ys)
        elif self.method in ("linear", "l-ortho"):
            self.R_ = np.linalg.lstsq(xs, ys, rcond=None)[0]
            if self.method == "l-ortho":
                self.R_ = orthogonalize(self.R_)
        else:
            sol = np.linalg.lstsq(np.hstack([xs, np.ones((len(xs), 1))]), ys, rcond=None)[0]
            self.R_, self.bias_ = sol[:-1], sol[-1]
        if self.method in ("linear", "affine") and len(xa) <= self.dim_x_:
            self.warnings_.append(
                f"{len(xa)} anchors for a {self.dim_x_}-dimensional space: the {self.method} fit reproduces the "
                "anchors exactly and says little about other samples. Use more anchors than dimensions, "
                "or the orthogonal map.")
        if not self.warnings_:  # the exactly determined fit above is also not unique: one sentence is enough
            self.warnings_ += _not_unique(self.method, xa, ya, xs[:, : self.dim_x_], ys[:, : self.dim_y_],
                                          centred=self.scaling != "none")
        for message in self.warnings_:
            warnings.warn(message, TranslationWarning, stacklevel=2)
        return self

    def transform(self, X) -> np.ndarray:
        if self.method == INVARIANT and hasattr(self, "inner_"):
            return self.inner_.transform(X)
        if not hasattr(self, "R_"):
            raise UserInputError("Fit the translator on anchors first.")
        x = as_matrix(X, "X", min_rows=1)
        if x.shape[1] != self.dim_x_:
            raise UserInputError(f"X has {x.shape[1]} dimensions; the translator was fitted on {self.dim_x_}.")
        z = pad((x - self.mean_x_) / self.scale_x_, self.R_.shape[0]) @ self.R_ + self.bias_
        return z[:, : self.dim_y_] * self.scale_y_ + self.mean_y_

    def fit_transform(self, X_anchors, Y_anchors, X=None) -> np.ndarray:
        return self.fit(X_anchors, Y_anchors).transform(X_anchors if X is None else X)


@contextlib.contextmanager
def quiet_sweep():
    """A sweep over anchor counts (retrieval, stitching) starts where the anchors underdetermine the
    map, on purpose: its curve shows that, so the per-fit TranslationWarning would only repeat it at
    every point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranslationWarning)
        yield


def translate(x, x_anchors, y_anchors, method: str = "ortho", scaling: str = "feature") -> np.ndarray:
    """Function form of ``Translator(method, scaling).fit(x_anchors, y_anchors).transform(x)``."""
    return Translator(method, scaling).fit(x_anchors, y_anchors).transform(x)


def relative_projection(x, anchors, center: bool = True) -> np.ndarray:
    """r(x)_j = cos(x - c, a_j - c) with c the anchors' mean (``center``) or 0."""
    x, a = as_matrix(x, "X", min_rows=1), as_matrix(anchors, "anchors", min_rows=1)
    if x.shape[1] != a.shape[1]:
        raise UserInputError("Samples and anchors must live in the same space (same number of columns).")
    c = a.mean(0) if center else np.zeros(a.shape[1])
    xc, ac = x - c, a - c
    xn = xc / np.maximum(np.linalg.norm(xc, axis=1, keepdims=True), 1e-12)
    an = ac / np.maximum(np.linalg.norm(ac, axis=1, keepdims=True), 1e-12)
    return xn @ an.T


# --------------------------------------------------------------------------- anchors
def select_anchors(x, m: int, method: str = "random", labels=None, seed: int = 0) -> np.ndarray:
    """``m`` distinct row indices of ``x`` to use as anchors."""
    x = as_matrix(x, "X")
    n = len(x)
    m = int(m)
    if not 1 <= m <= n:
        raise UserInputError(f"The anchor budget must lie between 1 and the number of samples ({n}); got {m}.")
    rng = np.random.default_rng(seed)
    if method == "random":
        return np.sort(rng.choice(n, m, replace=False))
    if method == "farthest-point":
        chosen = [int(rng.integers(n))]
        dist = np.linalg.norm(x - x[chosen[0]], axis=1)
        for _ in range(m - 1):
            nxt = int(np.argmax(dist))
            chosen.append(nxt)
            dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
        return np.asarray(chosen)
    if method == "k-means":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=m, n_init=1, random_state=seed).fit(x)
        d = ((x[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1) if n * m <= 4_000_000 else None
        chosen: list[int] = []
        for j in range(m):  # nearest unused sample to each centroid
            dj = d[:, j] if d is not None else ((x - km.cluster_centers_[j]) ** 2).sum(1)
            for i in np.argsort(dj):
                if int(i) not in chosen:
                    chosen.append(int(i))
                    break
        return np.asarray(chosen)
    if method == "class-balanced":
        if labels is None:
            raise UserInputError("Class-balanced anchors need labels; this dataset has none. Pick another selection.")
        labels = np.asarray(labels)
        pools = [list(rng.permutation(np.nonzero(labels == c)[0])) for c in np.unique(labels)]
        chosen = []
        while len(chosen) < m:
            for pool in pools:
                if pool and len(chosen) < m:
                    chosen.append(int(pool.pop()))
        return np.asarray(chosen)
    raise UserInputError(f"Unknown anchor selection {method!r}; use one of {', '.join(SELECTIONS)}.")


# --------------------------------------------------------------------------- retrieval
def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_scores(x, y, k: int = 10, exclude=None) -> dict:
    """Row i of ``x`` (translated, or relative coordinates) should retrieve row i of ``y``.
    MRR of that rank under cosine similarity, top-1 accuracy, and the mean Jaccard index of each
    row's k nearest neighbours in ``x`` and in ``y``. ``exclude``: rows left out of the queries (anchors)."""
    x, y = as_matrix(x, "X"), as_matrix(y, "Y")
    check_aligned(x, y)
    if x.shape[1] != y.shape[1]:
        raise UserInputError("Retrieval compares rows in one space: translate X into Y first.")
    n = len(x)
    queries = np.setdiff1d(np.arange(n), np.asarray(exclude if exclude is not None else [], dtype=np.int64))
    sim = _unit(x[queries]) @ _unit(y).T
    true = sim[np.arange(len(queries)), queries]
    ranks = 1 + (sim > true[:, None]).sum(1)
    k = int(min(k, n - 1))
    nx, ny = _knn_sets(x, k), _knn_sets(y, k)
    inter = (nx[queries][:, :, None] == ny[queries][:, None, :]).sum((1, 2))
    jac = inter / (2 * k - inter)
    return {"mrr": float(np.mean(1.0 / ranks)), "top1": float(np.mean(ranks == 1)),
            "jaccard": float(np.mean(jac)), "k": k, "chance_mrr": float(np.mean(1.0 / np.arange(1, n + 1)))}


def _knn_sets(x, k):
    s = _unit(x) @ _unit(x).T
    np.fill_diagonal(s, -np.inf)
    return np.argpartition(-s, k - 1, axis=1)[:, :k]


@small_blas
def retrieval_curve(x, y, anchor_counts, selection: str = "random", labels=None, seed: int = 0,
                    lfm_params: dict | None = None, scaling: str = "feature", progress=None) -> dict:
    """Retrieval MRR versus the number of anchors for three ways of relating X and Y (rows aligned):
    "lfm+ortho" (an LFM fitted from the anchors gives a dense correspondence; Procrustes on all of
    it), "ortho" (Procrustes on the anchors alone) and "relative" (relative representations with
    respect to the anchors). Queries exclude the anchors."""
    x, y = as_matrix(x, "X"), as_matrix(y, "Y")
    check_aligned(x, y)
    counts = [int(c) for c in anchor_counts if 2 <= int(c) <= len(x) - 2]
    out = {"anchors": np.asarray(counts, dtype=float)}
    for key in ("lfm+ortho", "ortho", "relative", "lfm_matches"):
        out[key] = np.full(len(counts), np.nan)
    with quiet_sweep():
        _retrieval_points(x, y, counts, selection, labels, seed, lfm_params, scaling, progress, out)
    if progress:
        progress(1.0, "retrieval done")
    return out


def _retrieval_points(x, y, counts, selection, labels, seed, lfm_params, scaling, progress, out) -> None:
    from .fmaps import LatentFunctionalMap

    for i, m in enumerate(counts):
        if progress:
            progress(i / max(len(counts), 1), f"{m} anchors ({i + 1}/{len(counts)})")
        idx = select_anchors(x, m, selection, labels, seed)
        out["ortho"][i] = retrieval_scores(translate(x, x[idx], y[idx], "ortho", scaling), y, exclude=idx)["mrr"]
        out["relative"][i] = retrieval_scores(relative_projection(x, x[idx]), relative_projection(y, y[idx]),
                                              exclude=idx)["mrr"]
        lfm = LatentFunctionalMap(**(lfm_params or {})).fit(x, y, anchors=idx, rows_aligned=True)
        p2p = lfm.correspondence()  # y_j matched with x_{p2p[j]}
        out["lfm+ortho"][i] = retrieval_scores(translate(x, x[p2p], y, "ortho", scaling), y, exclude=idx)["mrr"]
        out["lfm_matches"][i] = float(np.mean(p2p == np.arange(len(p2p))))
