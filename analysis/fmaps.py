"""Latent functional maps (Fumero et al., NeurIPS 2024): compare two latent spaces through the
spectra of their kNN graphs.

Each space gets a symmetric kNN graph and its symmetric normalised Laplacian
L = I - D^-1/2 W D^-1/2 (eigenvalues in [0, 2]); the first K eigenvectors Phi are a basis of smooth
functions on the samples. A functional map C (K_Y x K_X) sends the spectral coefficients of a
function on X to those of the corresponding function on Y. It is estimated from descriptors
(functions known to correspond: geodesic distance to anchors, class indicators, the heat kernel
signature), refined by ZoomOut, and read three ways: as a similarity score
(1 - ||offdiag(C^T C)|| / ||C^T C||), as a point-to-point correspondence, and as diagnostics.

That score is not near 0 for unrelated spaces: it rises with n/K (0.42, 0.55, 0.69 at n = 200, 500,
1000 with K = 50). :meth:`LatentFunctionalMap.calibrated` and :func:`calibrated_similarity` put it
beside its permutation null (rows of Y shuffled: Phi_Y's rows permute, nothing is recomputed).

Two bugs of the official notebooks are avoided on purpose: geodesic distances are divided by
their median before exp(-d^2) (otherwise the descriptor depends on the units of the space), and the
point map is read as "for every y, its match in X" (the official ``FM_T`` pairs them backwards).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import UserInputError
from .translation import small_blas
from .validation import as_matrix, check_aligned

DESCRIPTORS = ("geodesic", "labels", "hks")
METRICS = ("cosine", "euclidean")
SCALABLE_FROM = 5000  # above this many samples a fit takes the scalable path (LatentFunctionalMap)
# rows of Y for the scalable path's intermediate ZoomOut steps (with 2,000, 10% fewer rows matched at n = 10,000)
ZOOMOUT_SAMPLE = 5000


# --------------------------------------------------------------------------- graph and spectrum
def default_neighbors(n: int) -> int:
    """min(300, n/10), at least 10 (and below n): the paper's k=300 is for thousands of points."""
    return int(max(1, min(n - 1, max(10, min(300, n // 10)))))


def knn_graph(x, n_neighbors: int | None = None, metric: str = "cosine", approximate: bool = False):
    """Symmetric kNN graph of the rows of ``x``. Returns ``(W, D)``: Gaussian affinities
    w_ij = exp(-4 d_ij^2 / d_k(x_i)^2) symmetrised as (W + W^T)/2, zero diagonal, and the matching
    symmetric distance graph (for geodesics); both scipy CSR matrices (n x n).

    The search is exact (scikit-learn's brute force, n^2 d) unless ``approximate`` and faiss is
    installed (requirements-fast.txt): then an inverted-file index (:func:`approximate_neighbors`).
    pynndescent took 117 s against 2.6 s at 20,000 points and k = 300 (its cost grows as k^2)."""
    import scipy.sparse as sp

    x = as_matrix(x, "layer")
    n = x.shape[0]
    if metric not in METRICS:
        raise UserInputError(f"Unknown graph metric {metric!r}; use one of {', '.join(METRICS)}.")
    k = default_neighbors(n) if n_neighbors is None else int(n_neighbors)
    if not 1 <= k < n:
        raise UserInputError(f"The kNN graph needs 1 <= neighbours < samples (got {k} with {n} samples).")
    if metric == "cosine":  # angles around the centroid (shift invariant); chord distance is monotone in them
        x = x - x.mean(0)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    faiss = _faiss() if approximate else None
    if faiss is None:
        from sklearn.neighbors import NearestNeighbors

        dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    else:
        dist, idx = approximate_neighbors(x, k + 1)
    # drop each point itself (the first neighbour, or wherever it sits among exact duplicates)
    keep = idx != np.arange(n)[:, None]
    drop_last = keep.all(1)  # the point was not found among its k+1 (many duplicates): drop the farthest
    keep[drop_last, -1] = False
    dist = dist[keep].reshape(n, k)
    idx = idx[keep].reshape(n, k)
    scale = np.maximum(dist[:, -1:], 1e-12)
    w = np.exp(-4.0 * (dist / scale) ** 2)
    # row i holds its k neighbours: CSR straight from the lists (building it from (row, column)
    # pairs sorted them first, 0.5 s per matrix at 20,000 points and k = 300)
    indptr = np.arange(0, n * k + 1, k)
    W = sp.csr_matrix((w.ravel(), idx.ravel(), indptr), shape=(n, n))
    W = (W + W.T) * 0.5
    D = sp.csr_matrix((np.maximum(dist.ravel(), 1e-12), idx.ravel(), indptr), shape=(n, n))
    D = D.maximum(D.T)  # an edge exists if either end lists the other; its length is the distance
    # no diagonal: each point's own index was dropped above (W.setdiag(0) took 20% of the assembly
    # inserting explicit zeros that eliminate_zeros then removed)
    W.eliminate_zeros()
    return W.tocsr(), D.tocsr()


NPROBE = 8  # inverted lists searched per query: recall@300 0.99 at 20,000 points (sqrt(n) lists)


def _faiss():
    """The faiss module where it is installed (requirements-fast.txt), else None."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def approximate_neighbors(x, k: int, nprobe: int = NPROBE):
    """Distances and indices of the ``k`` nearest rows of ``x`` to each of its rows (the row itself
    included), ascending, from a faiss inverted-file index: sqrt(n) k-means cells, each query
    compared with the rows of its ``nprobe`` nearest cells only (about nprobe / sqrt(n) of the
    exact search's work; recall@300 0.99 at 20,000 points). Rows whose cells hold fewer than k
    rows are searched exactly. One thread, like the fit's BLAS (small_blas)."""
    faiss = _faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, max(1, int(np.sqrt(n))))
        index.cp.min_points_per_centroid = 5  # sqrt(n) cells from n points: faiss would warn (it wants 39 each)
        index.train(x)
        index.add(x)
        index.nprobe = int(nprobe)
        d2, idx = index.search(x, int(k))
        short = np.flatnonzero((idx < 0).any(1))
        if len(short):
            exact = faiss.IndexFlatL2(d)
            exact.add(x)
            d2[short], idx[short] = exact.search(x[short], int(k))
    finally:
        faiss.omp_set_num_threads(threads)
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float64), idx.astype(np.int64)


def normalized_laplacian(W):
    """L = I - D^-1/2 W D^-1/2 (sparse). Isolated vertices get L_ii = 1."""
    import scipy.sparse as sp

    deg = np.asarray(W.sum(1)).ravel()
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    S = sp.diags(inv) @ W @ sp.diags(inv)
    return (sp.identity(W.shape[0], format="csr") - S).tocsr()


@dataclass
class Spectrum:
    eigenvalues: np.ndarray  # (K,), ascending, in [0, 2]
    eigenvectors: np.ndarray  # (n, K), orthonormal columns
    converged: bool
    seconds: float
    n_components: int


def laplacian_spectrum(W, k: int = 50, seed: int = 0, single: bool = False) -> Spectrum:
    """The ``k`` smallest eigenpairs of the normalised Laplacian of ``W`` with ARPACK (eigsh).

    The smallest eigenvalues of L = I - S are the largest of S = D^-1/2 W D^-1/2, which Lanczos finds
    without factorising anything (shift-invert needs a sparse LU, whose fill-in grows badly with k:
    at 10,000 points and k = 300 its LU held 25M entries and took 34 s against eigsh's 3 s; LOBPCG
    with pyamg's smoothed-aggregation preconditioner took 30-48 s against 4 s at 20,000 points).
    The cost is mostly its ~300 products with the sparse matrix; a looser tolerance (1e-4) saves under
    10%. ``single``: Lanczos in float32 to 1e-5 (the products move half the bytes: 1.6x faster at
    20,000 points; the basis spans the same subspace to 1e-5), then the vectors re-orthonormalised and
    the eigenvalues read as Rayleigh quotients of L in float64.
    """
    import scipy.sparse.linalg as sla
    from scipy.sparse.csgraph import connected_components

    t0 = time.perf_counter()
    n = W.shape[0]
    k = int(min(k, n - 1))
    n_comp = int(connected_components(W, directed=False)[0])
    S = (normalized_laplacian(W) * -1.0)
    S.setdiag(S.diagonal() + 1.0)  # S = I - L
    v0 = np.random.default_rng(seed).standard_normal(n)
    converged = True
    if n <= 400:  # small graphs: a dense solver is faster and exact
        vals, vecs = np.linalg.eigh(S.toarray())
        vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    else:
        try:
            if single:
                vals, vecs = sla.eigsh(S.astype(np.float32), k=k, which="LA", v0=v0.astype(np.float32), tol=1e-5,
                                       maxiter=max(1000, 20 * n))
            else:
                vals, vecs = sla.eigsh(S, k=k, which="LA", v0=v0, tol=1e-8, maxiter=max(1000, 20 * n))
        except sla.ArpackNoConvergence as exc:  # keep what converged; the caller warns
            converged = False
            vals, vecs = exc.eigenvalues, exc.eigenvectors
            if len(vals) < 2:
                raise UserInputError("The eigen-solver did not converge: fewer than 2 eigenvectors. Try more "
                                     "neighbours or fewer eigenvectors.") from exc
        order = np.argsort(-vals)
        vals, vecs = vals[order], vecs[:, order]
        if vecs.dtype != np.float64:  # float32 Lanczos: orthonormal to 1e-6 only, eigenvalues to 1e-6
            vecs = np.linalg.qr(vecs.astype(np.float64))[0]
            vals = np.einsum("ij,ij->j", vecs, S @ vecs)
            order = np.argsort(-vals)
            vals, vecs = vals[order], vecs[:, order]
    lam = np.clip(1.0 - vals, 0.0, 2.0)
    # fix signs (largest-magnitude entry positive) so runs are reproducible
    piv = np.argmax(np.abs(vecs), axis=0)
    signs = np.sign(vecs[piv, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return Spectrum(lam, vecs * signs, converged, time.perf_counter() - t0, n_comp)


# --------------------------------------------------------------------------- descriptors
def geodesic_descriptors(D, anchors) -> np.ndarray:
    """exp(-(d_G / median d_G)^2) for the graph distance d_G from every sample to each anchor
    (one column per anchor; unreachable samples get 0). Dividing by the median makes it unit-free."""
    from scipy.sparse.csgraph import dijkstra

    d = dijkstra(D, directed=False, indices=np.asarray(anchors, dtype=np.int64)).T  # (n, m)
    finite = d[np.isfinite(d) & (d > 0)]
    med = float(np.median(finite)) if finite.size else 1.0
    out = np.exp(-(d / (med or 1.0)) ** 2)
    out[~np.isfinite(d)] = 0.0
    return out


def label_descriptors(labels, classes) -> np.ndarray:
    """One indicator column per class."""
    labels = np.asarray(labels)
    return (labels[:, None] == np.asarray(classes)[None, :]).astype(np.float64)


def hks_times(eigenvalues, n_times: int = 10) -> np.ndarray:
    """Log-spaced times in [4 ln10 / lambda_max, 4 ln10 / lambda_1] (lambda_1: first nonzero)."""
    lam = np.asarray(eigenvalues)
    nonzero = lam[lam > 1e-8]
    if nonzero.size == 0:
        return np.ones(n_times)
    return np.geomspace(4 * np.log(10) / nonzero.max(), 4 * np.log(10) / nonzero.min(), n_times)


def heat_kernel_signature(eigenvalues, eigenvectors, times) -> np.ndarray:
    """HKS(x, t) = sum_i exp(-lambda_i t) phi_i(x)^2, one column per time."""
    return (eigenvectors ** 2) @ np.exp(-np.outer(eigenvalues, times))


def _unit_columns(f: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(f, axis=0, keepdims=True)
    return f / np.where(norms > 0, norms, 1.0)


# --------------------------------------------------------------------------- the functional map
def _energy_terms(phi_x, phi_y, lam_x, lam_y, F, G, w_lap):
    A, B = phi_x.T @ F, phi_y.T @ G  # (K_X, p), (K_Y, p)
    diff = (lam_x[None, :] - lam_y[:, None]) ** 2  # (K_Y, K_X)
    lap = diff / diff.sum() if diff.sum() > 0 else diff
    # Phi^T diag(f_p) Phi, one per descriptor (a matrix product each: einsum here was 15x slower)
    mx = np.stack([(phi_x * F[:, [j]]).T @ phi_x for j in range(F.shape[1])])
    my = np.stack([(phi_y * G[:, [j]]).T @ phi_y for j in range(G.shape[1])])
    return A, B, lap, mx, my


def fmap_energy(C, A, B, lap, mx, my, w_descr, w_lap, w_dcomm):
    """The functional-map energy and its gradient with respect to C (A = Phi_X^T F, B = Phi_Y^T G,
    lap: normalised eigenvalue differences, mx/my: descriptor multiplication operators)."""
    r = C @ A - B
    comm = np.matmul(C, mx) - np.matmul(my, C)  # (p, K_Y, K_X)
    e = 0.5 * w_descr * (r ** 2).sum() + 0.5 * w_lap * (lap * C ** 2).sum() + 0.5 * w_dcomm * (comm ** 2).sum()
    g = w_descr * r @ A.T + w_lap * lap * C
    g = g + w_dcomm * (np.matmul(comm, mx.transpose(0, 2, 1)).sum(0) - np.matmul(my.transpose(0, 2, 1), comm).sum(0))
    return float(e), g


def solve_functional_map(phi_x, phi_y, lam_x, lam_y, F, G, w_descr: float = 1.0, w_lap: float = 1e-3,
                         w_dcomm: float = 1e-1, maxiter: int = 2000, tol: float = 1e-10) -> np.ndarray:
    """C (K_Y x K_X) minimising  w_descr/2 ||C A - B||^2 + w_lap/2 sum C_ij^2 (lx_j - ly_i)^2 / sum(..)
    + w_dcomm/2 sum_p ||C Mx_p - My_p C||^2.

    The energy is a convex quadratic in C, so its minimiser solves H(C) = w_descr B A^T with H the
    (symmetric positive semi-definite) Hessian; conjugate gradients on that system reach the same
    optimum as the paper's L-BFGS in far fewer, cheaper steps (the gradient is ``fmap_energy``'s)."""
    import scipy.sparse.linalg as sla

    A, B, lap, mx, my = _energy_terms(phi_x, phi_y, lam_x, lam_y, F, G, w_lap)
    ky, kx = phi_y.shape[1], phi_x.shape[1]
    zero_b = np.zeros_like(B)

    def hess(c):  # gradient of the energy with B = 0 is linear in C: H(C)
        return fmap_energy(c.reshape(ky, kx), A, zero_b, lap, mx, my, w_descr, w_lap, w_dcomm)[1].ravel()

    op = sla.LinearOperator((ky * kx, ky * kx), matvec=hess, dtype=np.float64)
    rhs = (w_descr * B @ A.T).ravel()
    c0 = np.zeros((ky, kx))
    c0[0, 0] = 1.0  # the near-constant first eigenvectors correspond
    c, _info = sla.cg(op, rhs, x0=c0.ravel(), rtol=tol, maxiter=maxiter)
    return c.reshape(ky, kx)


BLOCK_ENTRIES = 2 ** 24  # distances held at once by nearest_rows (64 MiB in float32)


def nearest_rows(queries, points, chunk: int | None = None, fast: bool = False) -> np.ndarray:
    """Index of the nearest row of ``points`` (Euclidean) for every row of ``queries``: a blocked
    brute-force search, which beats a kd-tree in the 30-50 dimensions of spectral embeddings.
    Blocks of ``chunk`` queries (default: 2,048, fewer when ``points`` is so long that a block
    would pass 2^24 distances, so memory stays linear in n). ``fast`` with faiss installed: faiss's
    exact search (the same brute force with the argmin fused in: 1.7x faster, no n x chunk block)."""
    points = np.ascontiguousarray(points, dtype=np.float32)  # ranks only: single precision halves the time
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    faiss = _faiss() if fast else None
    if faiss is not None:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index = faiss.IndexFlatL2(points.shape[1])
            index.add(points)
            return index.search(queries, 1)[1][:, 0].astype(np.int64)
        finally:
            faiss.omp_set_num_threads(threads)
    if chunk is None:
        chunk = int(min(2048, max(16, BLOCK_ENTRIES // max(len(points), 1))))
    sq = (points ** 2).sum(1)
    out = np.empty(len(queries), dtype=np.int64)
    for i in range(0, len(queries), chunk):
        q = queries[i: i + chunk]
        out[i: i + chunk] = np.argmin(sq[None, :] - 2.0 * q @ points.T, axis=1)
    return out


def point_map(C, phi_x, phi_y, fast: bool = False) -> np.ndarray:
    """For every row y of Y, the row of X whose mapped spectral embedding Phi_X C^T is nearest to
    Phi_Y[y]. ``p2p[y] = x`` (the official FM_T reads the pairs the other way round)."""
    ky, kx = C.shape
    return nearest_rows(phi_y[:, :ky], phi_x[:, :kx] @ C.T, fast=fast)


def zoomout(C, phi_x, phi_y, k_start: int | None = None, k_end: int | None = None,
            n_sample: int | None = None, seed: int = 0, fast: bool = False):
    """ZoomOut (Melzi et al. 2019): from the top-left k_start block, alternate point map and
    C = lstsq(Phi_Y[:, :k+1], Phi_X[p2p, :k+1]), growing k by one up to k_end.

    ``n_sample``: when Y has more rows, the intermediate steps use that many random rows of Y only
    (the paper's accelerated ZoomOut: lstsq on the sample's rows, each step m n K instead of n^2 K);
    the final point map is computed for every row. ``fast``: point maps by :func:`nearest_rows`'s
    faiss search where it is installed."""
    k_end = min(k_end or min(phi_x.shape[1], phi_y.shape[1]), phi_x.shape[1], phi_y.shape[1])
    k = max(2, min(k_start or k_end - 10, C.shape[0], C.shape[1], k_end))
    C = C[:k, :k]
    if n_sample is not None and int(n_sample) < len(phi_y):
        return _sampled_zoomout(C, phi_x, phi_y, k, k_end, int(n_sample), seed, fast)
    while True:
        p2p = point_map(C, phi_x, phi_y, fast)
        if k >= k_end:
            return C, p2p
        k += 1
        # lstsq(Phi_Y[:, :k], Phi_X[p2p, :k]); Phi_Y's columns are orthonormal, so it is a product
        C = phi_y[:, :k].T @ phi_x[p2p, :k]


def _sampled_zoomout(C, phi_x, phi_y, k: int, k_end: int, n_sample: int, seed: int, fast: bool = False):
    rows = np.sort(np.random.default_rng(seed).choice(len(phi_y), size=max(n_sample, k_end), replace=False))
    basis = phi_y[rows]  # its columns are no longer orthonormal: a least-squares solve, not a product
    while k < k_end:
        p2p = point_map(C, phi_x, basis, fast)
        k += 1
        C = np.linalg.lstsq(basis[:, :k], phi_x[p2p, :k], rcond=None)[0]
    return C, point_map(C, phi_x, phi_y, fast)


def offdiag_similarity(C) -> float:
    """1 - ||offdiag(C^T C)||_F / ||C^T C||_F: 1 when C is a signed permutation/rotation within
    eigenspaces. C^T C, not C: near-degenerate eigenvectors rotate, C itself reads ~0.75 for identical spaces."""
    M = np.asarray(C).T @ np.asarray(C)
    total = float(np.linalg.norm(M))
    if total == 0:
        return float("nan")
    off = M - np.diag(np.diag(M))
    return 1.0 - float(np.linalg.norm(off)) / total


def permutation_null(phi_x, phi_y, n_perm: int = 200, seed: int = 0) -> np.ndarray:
    """offdiag_similarity(Phi_Y[p]^T Phi_X) for ``n_perm`` row permutations p of Y, drawn as
    ``np.random.default_rng(seed).permutation`` draws them (n K^2 per permutation)."""
    if int(n_perm) < 1:
        raise UserInputError("A calibration needs at least one permutation (n_perm >= 1).")
    rng = np.random.default_rng(seed)
    n = len(phi_y)
    return np.array([offdiag_similarity(phi_y[rng.permutation(n)].T @ phi_x) for _ in range(int(n_perm))])


class LatentFunctionalMap:
    """Latent functional map between two spaces (scikit-learn style).

    Parameters
    ----------
    n_neighbors : kNN graph size (None: min(300, n/10), at least 10)
    n_eigs : K, eigenvectors per space
    descriptors : any of "geodesic" (needs anchors), "labels" (needs labels), "hks" (unsupervised)
    w_descr, w_lap, w_dcomm : weights of the descriptor, Laplacian-commutativity and
        descriptor-commutativity terms
    refine : ZoomOut refinement of C
    metric : "cosine" (angular around the centroid, the paper's choice) or "euclidean"
    scalable_from : above this many samples (in X or Y) the fit takes the scalable path: with faiss
        installed (requirements-fast.txt) the kNN search is approximate (:func:`approximate_neighbors`)
        and point maps use faiss's exact search; the eigen-solve runs in float32
        (:func:`laplacian_spectrum`); ZoomOut's intermediate steps use ``zoomout_sample`` rows of Y
        (the final point map still covers every row). None: always the reference algorithm (what
        the benchmark compares with). At 20,000 points the similarities differ by 4e-3 and 2.0%
        against 2.4% of rows match themselves from 10 anchors (benchmarks/fmaps_scaling.py)
    zoomout_sample : rows of Y for the scalable path's intermediate ZoomOut steps

    Fitted attributes: ``C_`` (K_Y x K_X, the map estimated from the descriptors), ``C_true_``
    (Phi_Y^T Phi_X when rows are aligned, else None), ``eigenvalues_x_``, ``eigenvalues_y_``,
    ``eigenvectors_x_``, ``eigenvectors_y_``, ``p2p_`` (for each row of Y its row of X),
    ``warnings_`` (sentences for the user), ``timings_`` (seconds per step).
    """

    def __init__(self, n_neighbors: int | None = None, n_eigs: int = 50, descriptors=("geodesic",),
                 w_descr: float = 1.0, w_lap: float = 1e-3, w_dcomm: float = 1e-1, refine: bool = True,
                 metric: str = "cosine", n_hks: int = 10, seed: int = 0,
                 scalable_from: int | None = SCALABLE_FROM, zoomout_sample: int = ZOOMOUT_SAMPLE):
        self.n_neighbors = n_neighbors
        self.n_eigs = n_eigs
        self.descriptors = descriptors
        self.w_descr = w_descr
        self.w_lap = w_lap
        self.w_dcomm = w_dcomm
        self.refine = refine
        self.metric = metric
        self.n_hks = n_hks
        self.seed = seed
        self.scalable_from = scalable_from
        self.zoomout_sample = zoomout_sample

    # -- fitting
    def _check(self, x, y, anchors, labels, rows_aligned):
        x, y = as_matrix(x, "X", min_rows=4), as_matrix(y, "Y", min_rows=4)
        if rows_aligned:
            check_aligned(x, y)
        descriptors = tuple(self.descriptors or ())
        bad = [d for d in descriptors if d not in DESCRIPTORS]
        if bad:
            raise UserInputError(f"Unknown descriptor {bad[0]!r}; use {', '.join(DESCRIPTORS)}.")
        if anchors is not None:
            anchors = np.asarray(anchors, dtype=np.int64)
            if anchors.ndim == 1:
                if not rows_aligned:
                    raise UserInputError("Give anchors as (m, 2) index pairs (row of X, row of Y), or say "
                                         "rows_aligned=True to use the same row indices in both.")
                anchors = np.stack([anchors, anchors], 1)
            if anchors.ndim != 2 or anchors.shape[1] != 2:
                raise UserInputError("Anchors are an (m, 2) array of index pairs (row of X, row of Y).")
            if len(anchors) and (anchors.min() < 0 or anchors[:, 0].max() >= len(x) or anchors[:, 1].max() >= len(y)):
                raise UserInputError("An anchor index is outside the rows of X or Y.")
        lx = ly = None
        if labels is not None:
            if isinstance(labels, tuple) and len(labels) == 2:
                lx, ly = np.asarray(labels[0]), np.asarray(labels[1])
            else:
                lx = ly = np.asarray(labels)
            if len(lx) != len(x) or len(ly) != len(y):
                raise UserInputError("Labels must have one entry per row of X and of Y.")
        return x, y, anchors, lx, ly, descriptors

    @small_blas
    def fit(self, X, Y, anchors=None, labels=None, rows_aligned: bool = False, progress=None):
        """Fit the map from X to Y. ``anchors``: (m, 2) index pairs known to correspond (or m row
        indices when ``rows_aligned``); ``labels``: one array for both (rows aligned) or a pair."""
        from sklearn.neighbors import NearestNeighbors  # noqa: F401  (imported before the clock starts)

        x, y, anchors, lx, ly, descriptors = self._check(X, Y, anchors, labels, rows_aligned)
        say = progress or (lambda f, m: None)
        self.warnings_, self.timings_ = [], {}
        t0 = time.perf_counter()
        self.scalable_ = self.scalable_from is not None and max(len(x), len(y)) > int(self.scalable_from)
        say(0.05, "kNN graphs…")
        fast = self.scalable_
        self.graph_x_, self.dist_x_ = knn_graph(x, self.n_neighbors, self.metric, approximate=fast)
        self.graph_y_, self.dist_y_ = knn_graph(y, self.n_neighbors, self.metric, approximate=fast)
        self.timings_["graph"] = time.perf_counter() - t0
        say(0.3, "Laplacian eigenvectors…")
        k = int(min(self.n_eigs, len(x) - 2, len(y) - 2))
        sx = laplacian_spectrum(self.graph_x_, k, self.seed, single=fast)
        sy = laplacian_spectrum(self.graph_y_, k, self.seed, single=fast)
        self.timings_["eigen"] = sx.seconds + sy.seconds
        self.eigenvalues_x_, self.eigenvectors_x_ = sx.eigenvalues, sx.eigenvectors
        self.eigenvalues_y_, self.eigenvectors_y_ = sy.eigenvalues, sy.eigenvectors
        self.components_ = (sx.n_components, sy.n_components)
        self.converged_ = (sx.converged, sy.converged)
        for name, s in (("X", sx), ("Y", sy)):
            if s.n_components > 1:
                self.warnings_.append(
                    f"The kNN graph of {name} falls into {s.n_components} disconnected pieces, so its first "
                    f"{s.n_components} eigenvalues are 0 and the map cannot relate the pieces to each other. "
                    "Use more neighbours.")
            if not s.converged:
                self.warnings_.append(f"The eigen-solver did not converge for {name}; only {len(s.eigenvalues)} "
                                      "eigenvectors are usable. Use fewer eigenvectors or more neighbours.")
        kx, ky = len(self.eigenvalues_x_), len(self.eigenvalues_y_)
        k = min(kx, ky)
        self.eigenvalues_x_, self.eigenvectors_x_ = self.eigenvalues_x_[:k], self.eigenvectors_x_[:, :k]
        self.eigenvalues_y_, self.eigenvectors_y_ = self.eigenvalues_y_[:k], self.eigenvectors_y_[:, :k]
        phi_x, phi_y = self.eigenvectors_x_, self.eigenvectors_y_
        self.rows_aligned_ = bool(rows_aligned)
        self.C_true_ = phi_y.T @ phi_x if rows_aligned else None

        say(0.5, "descriptors…")
        t1 = time.perf_counter()
        F, G, used = self._descriptors(anchors, lx, ly, descriptors)
        self.descriptors_used_ = used
        self.timings_["descriptors"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        if F is None:
            if not rows_aligned:
                raise UserInputError("No descriptor could be computed: give anchors (for 'geodesic'), labels "
                                     "(for 'labels') or add 'hks'.")
            self.C_ = self.C_true_.copy()
            self.p2p_ = point_map(self.C_, phi_x, phi_y, fast)
            self.estimated_ = False
        else:
            say(0.6, "solving for the functional map…")
            C = solve_functional_map(phi_x, phi_y, self.eigenvalues_x_, self.eigenvalues_y_, F, G,
                                     self.w_descr, self.w_lap, self.w_dcomm)
            self.timings_["solve"] = time.perf_counter() - t2
            if self.refine:
                say(0.85, "ZoomOut refinement…")
                C, p2p = zoomout(C, phi_x, phi_y, k_start=max(2, k - 10), k_end=k,
                                 n_sample=self.zoomout_sample if fast else None, seed=self.seed, fast=fast)
            else:
                p2p = point_map(C, phi_x, phi_y, fast)
            self.C_, self.p2p_, self.estimated_ = C, p2p, True
        self.timings_.setdefault("solve", 0.0)
        self.timings_["zoomout"] = time.perf_counter() - t2 - self.timings_["solve"]  # with the point map
        self.timings_["total"] = time.perf_counter() - t0
        self.anchors_ = anchors
        say(1.0, "functional map done")
        return self

    def _descriptors(self, anchors, lx, ly, descriptors):
        fs, gs, used = [], [], []
        if "geodesic" in descriptors and anchors is not None and len(anchors):
            fs.append(geodesic_descriptors(self.dist_x_, anchors[:, 0]))
            gs.append(geodesic_descriptors(self.dist_y_, anchors[:, 1]))
            used.append("geodesic")
        if "labels" in descriptors and lx is not None:
            classes = np.union1d(np.unique(lx), np.unique(ly))
            fs.append(label_descriptors(lx, classes))
            gs.append(label_descriptors(ly, classes))
            used.append("labels")
        if "hks" in descriptors:
            times = hks_times(np.concatenate([self.eigenvalues_x_, self.eigenvalues_y_]), self.n_hks)
            fs.append(heat_kernel_signature(self.eigenvalues_x_, self.eigenvectors_x_, times))
            gs.append(heat_kernel_signature(self.eigenvalues_y_, self.eigenvectors_y_, times))
            used.append("hks")
        if not fs:
            return None, None, used
        return _unit_columns(np.hstack(fs)), _unit_columns(np.hstack(gs)), used

    # -- reading the map
    def _fitted(self):
        if not hasattr(self, "C_"):
            raise UserInputError("Fit the functional map first (LatentFunctionalMap(...).fit(X, Y)).")

    def similarity(self) -> float:
        """1 - ||offdiag(C^T C)|| / ||C^T C||; with aligned rows the ground-truth C = Phi_Y^T Phi_X is used."""
        self._fitted()
        return offdiag_similarity(self.C_true_ if self.C_true_ is not None else self.C_)

    def calibrated(self, n_perm: int = 200, seed: int = 0):
        """The similarity against its permutation null at the same n and K: the ground-truth map of X
        and row-permuted Y, Phi_Y[p]^T Phi_X (the kNN graph of permuted rows is the permuted graph, so
        its eigenvectors are Phi_Y's rows permuted; C^T C ignores their signs and rotations within an
        eigenspace). Needs rows aligned. Returns an :class:`analysis.similarity.Calibration`."""
        from .similarity import calibration_from_null

        self._fitted()
        if self.C_true_ is None:
            raise UserInputError("The permutation null needs rows aligned (row i of X and of Y the same sample): "
                                 "fit with rows_aligned=True.")
        null = permutation_null(self.eigenvectors_x_, self.eigenvectors_y_, n_perm, seed)
        return calibration_from_null("lfm", self.similarity(), null, len(self.eigenvectors_x_), seed, 1.0)

    def correspondence(self) -> np.ndarray:
        """For each row of Y, its matched row of X (from the estimated map)."""
        self._fitted()
        return self.p2p_

    def diagnostics(self) -> dict:
        """Orthogonality deviation ||C^T C - I|| / sqrt(K), Laplacian commutativity error
        ||C Lx - Ly C|| / ||C||, graph connectivity, solver convergence; with aligned rows also how
        the estimated map compares with the truth."""
        self._fitted()
        C = self.C_
        k = C.shape[1]
        lam_x, lam_y = self.eigenvalues_x_[: C.shape[1]], self.eigenvalues_y_[: C.shape[0]]
        nc = float(np.linalg.norm(C)) or 1.0
        out = {
            "similarity": self.similarity(),
            "similarity_estimated": offdiag_similarity(C),
            "orthogonality_deviation": float(np.linalg.norm(C.T @ C - np.eye(k)) / np.sqrt(k)),
            "laplacian_commutativity": float(np.linalg.norm(C * lam_x[None, :] - lam_y[:, None] * C) / nc),
            "components_x": int(self.components_[0]),
            "components_y": int(self.components_[1]),
            "connected": bool(self.components_[0] == 1 and self.components_[1] == 1),
            "converged": bool(all(self.converged_)),
            "n_eigs": int(k),
            "descriptors": ", ".join(self.descriptors_used_) or "none (ground truth)",
        }
        if self.C_true_ is not None:
            n = len(self.p2p_)
            out["exact_matches"] = float(np.mean(self.p2p_ == np.arange(n)))
            ct = self.C_true_[: C.shape[0], : C.shape[1]]
            out["map_error"] = float(np.linalg.norm(C - ct) / (np.linalg.norm(ct) or 1.0))
            # the score above ignores magnitude: for unrelated rows C^T C ~ diag(1, K/n, ...), nearly
            # diagonal but far from I, so the score creeps up as n/K grows; this deviation does not
            kt = self.C_true_.shape[1]
            out["truth_orthogonality_deviation"] = float(
                np.linalg.norm(self.C_true_.T @ self.C_true_ - np.eye(kt)) / np.sqrt(kt))
        return out


# --------------------------------------------------------------------------- convenience and sweeps
def match_quality(p2p, labels=None) -> dict:
    """With aligned rows: fraction of matches that are the same sample, and of the same class."""
    p2p = np.asarray(p2p)
    n = len(p2p)
    out = {"same_sample": float(np.mean(p2p == np.arange(n))), "chance_sample": 1.0 / n}
    if labels is not None:
        labels = np.asarray(labels)
        out["same_class"] = float(np.mean(labels[p2p] == labels))
        _, counts = np.unique(labels, return_counts=True)
        out["chance_class"] = float(((counts / n) ** 2).sum())
    return out


def perturb_class(x, labels, cls, alpha: float, seed: int = 0) -> np.ndarray:
    """A copy of ``x`` with the rows of class ``cls`` moved by ``alpha`` times the data's RMS spread
    along one random unit direction (the LFM paper's robustness experiment)."""
    x = np.array(as_matrix(x, "layer"), dtype=np.float64)
    labels = np.asarray(labels)
    u = np.random.default_rng(seed).standard_normal(x.shape[1])
    u /= np.linalg.norm(u) or 1.0
    spread = float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))
    x[labels == cls] += alpha * spread * u
    return x


def robustness_curve(x, labels, cls, alphas, n_neighbors=None, n_eigs: int = 50, seed: int = 0,
                     metric: str = "cosine", progress=None) -> dict:
    """LFM similarity (ground-truth map, rows aligned) and linear CKA between ``x`` and a copy with
    one class moved along a direction, for each ``alpha``."""
    from .similarity import cka

    lfm, ck = [], []
    for i, a in enumerate(alphas):
        if progress:
            progress(i / len(alphas), f"perturbation {a:g} ({i + 1}/{len(alphas)})")
        y = perturb_class(x, labels, cls, a, seed)
        m = LatentFunctionalMap(n_neighbors=n_neighbors, n_eigs=n_eigs, descriptors=(), metric=metric, seed=seed)
        lfm.append(m.fit(x, y, rows_aligned=True).similarity())
        ck.append(cka(x, y, "linear"))
    if progress:
        progress(1.0, "robustness done")
    return {"alpha": np.asarray(alphas, dtype=float), "lfm": np.asarray(lfm), "cka": np.asarray(ck)}


def calibrated_similarity(x, y, n_perm: int = 200, seed: int = 0, store=None, use_cache: bool = True, **params):
    """The LFM similarity of X and Y (rows aligned: the ground-truth map) beside its permutation null
    at the same n and K, with the calibrated score and p-value (an
    :class:`analysis.similarity.Calibration`). ``params`` are :class:`LatentFunctionalMap`'s;
    descriptors play no part. Cached in the result store by the arrays, parameters and ``seed``."""
    from .similarity import calibration_from_null

    x, y = as_matrix(x, "X", min_rows=4), as_matrix(y, "Y", min_rows=4)
    check_aligned(x, y)
    params = {**params, "descriptors": ()}

    def compute():
        m = LatentFunctionalMap(**params).fit(x, y, rows_aligned=True)
        return {"value": np.asarray(m.similarity()),
                "null": permutation_null(m.eigenvectors_x_, m.eigenvectors_y_, n_perm, seed)}

    if use_cache:
        from .store import default_store

        parts = {"x": np.asarray(x, dtype=np.float32), "y": np.asarray(y, dtype=np.float32),
                 "params": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(params.items())},
                 "n_perm": int(n_perm), "seed": int(seed)}
        hit = (store or default_store()).cached("lfm-calibration", parts, compute)
    else:
        hit = compute()
    return calibration_from_null("lfm", float(hit["value"]), hit["null"], len(x), seed, 1.0)


def fit_arrays(x, y, anchors=None, labels=None, rows_aligned: bool = True, n_embed: int = 4, progress=None,
               **params) -> dict:
    """Fit a map and return what a view needs as plain arrays (storable): C, the ground-truth C,
    both spectra, the first ``n_embed`` eigenvectors of each space, the correspondence, the
    diagnostics (``diag_*``), the warnings and the timings."""
    m = LatentFunctionalMap(**params).fit(x, y, anchors=anchors, labels=labels, rows_aligned=rows_aligned,
                                          progress=progress)
    out = {"C": m.C_, "lam_x": m.eigenvalues_x_, "lam_y": m.eigenvalues_y_,
           "phi_x": m.eigenvectors_x_[:, :n_embed], "phi_y": m.eigenvectors_y_[:, :n_embed], "p2p": m.p2p_,
           "warnings": np.asarray(m.warnings_, dtype=str), "seconds": m.timings_["total"],
           "eigen_seconds": m.timings_["eigen"]}
    if m.C_true_ is not None:
        out["C_true"] = m.C_true_
    out.update({f"diag_{k}": np.asarray(v) for k, v in m.diagnostics().items()})
    return out
