"""Analyses that read the on-disk activation cache chunk by chunk: memory does not grow with n.

:func:`analysis.activations.extract_chunked` writes each layer to a cache
(:class:`~analysis.activations.cache.ActivationCache`); these functions read it back:

- :func:`linear_cka`: linear CKA (and debiased linear CKA) of every pair of layers, exact: column
  means in a first pass, centred cross-products accumulated in float64 in a second, so it equals
  the in-memory value (up to rounding) whatever n is;
- :func:`minibatch_cka`: the minibatch CKA estimator (Nguyen, Raghu & Kornblith 2021) over aligned
  row batches of two sets of caches, the same batches as :func:`analysis.similarity.batch_slices`,
  so it equals the in-memory minibatch estimator;
- :func:`incremental_pca`: PCA fitted chunk by chunk (the exact covariance, accumulated, up to 4,096
  features; scikit-learn's IncrementalPCA beyond), then every row projected chunk by chunk; signs
  fixed as :func:`analysis.projection.pca`;
- :func:`subsample`: a seeded subset of rows of several aligned caches, for methods that need every
  row in memory at once (UMAP, t-SNE, latent functional maps); it says how many it used;
- :func:`project`: PCA over every row, or UMAP / t-SNE over a subsample (the note says which);
- :func:`shuffled_batches`: rows in shuffled minibatches, a few chunks in memory at a time, for
  training on more activations than memory holds (SAEs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from .errors import UserInputError

IN_MEMORY_LIMIT = 20_000  # rows UMAP / t-SNE / LFM take at once by default


# --------------------------------------------------------------------------- aligned windows
class _Window:
    """Rows [start, stop) of several pooled caches, read a window of rows at a time."""

    def __init__(self, caches: Mapping, rows: int):
        self.caches, self.rows = caches, rows
        self.start = self.stop = 0
        self.data: dict = {}

    def get(self, sl: slice) -> dict:
        if sl.start < self.start or sl.stop > self.stop:
            self.start, self.stop = sl.start, max(sl.stop, min(sl.start + self.rows, self.n))
            self.data = {k: c.rows(self.start, self.stop) for k, c in self.caches.items()}
        return {k: v[sl.start - self.start: sl.stop - self.start] for k, v in self.data.items()}

    @property
    def n(self) -> int:
        return next(iter(self.caches.values())).record.samples


def _pooled(caches: Mapping, which: str) -> int:
    if not caches:
        raise UserInputError(f"No layers of model {which}.")
    sizes = set()
    for layer, c in caches.items():
        if c.record.tokens:
            raise UserInputError(f"Model {which}, layer {layer!r}: token rows (pooling 'tokens') do not align "
                                 "across models; pool per sample (mean, first, last) to compare.")
        c._require_complete()
        sizes.add(c.record.samples)
    if len(sizes) != 1:
        raise UserInputError(f"Model {which}: layers hold different numbers of rows {sorted(sizes)}.")
    return sizes.pop()


def minibatch_cka(caches_a: Mapping, caches_b: Mapping, batch_size: int = 256, device=None,
                  progress: Callable[[float, str], None] | None = None):
    """Minibatch CKA of every layer of A with every layer of B, read from their caches (DataFrame)."""
    from .similarity.minibatch import MinibatchCKA, batch_slices

    n = _pooled(caches_a, "A")
    if _pooled(caches_b, "B") != n:
        raise UserInputError("Models A and B were extracted on different numbers of rows; rows must align.")
    acc = MinibatchCKA(list(caches_a), list(caches_b), device)
    slices = batch_slices(n, batch_size)
    window = max(c.record.chunk_rows for c in [*caches_a.values(), *caches_b.values()])
    wa, wb = _Window(caches_a, window), _Window(caches_b, window)
    for i, sl in enumerate(slices):
        acc.update(wa.get(sl), wb.get(sl))
        if progress:
            progress((i + 1) / len(slices), f"minibatch {i + 1}/{len(slices)} from the activation cache")
    return acc.result()


# --------------------------------------------------------------------------- exact linear CKA
# Z^T Z of a window (one BLAS product, n x D^2 multiply-adds): measured 2.5e10 /s on a 2-core machine
# (100,000 rows of 1,556 features in 9 s); the estimate takes a little less
GEMM_FLOPS_PER_SECOND = 1.5e10
EXACT_CKA_BYTES = 2 << 30  # the accumulated cross-products of every layer (float64) above this: no exact path


def exact_cka_bytes(dims: list[int], window: int = 8192) -> float:
    """Peak memory of :func:`linear_cka`: the (D x D) cross-products of all D features of every
    layer, and one window of centred rows (float64) with its float32 read."""
    total = float(sum(dims))
    return 8.0 * total * total + 12.0 * window * total


def _windows(caches: Mapping, n: int):
    """Row windows [start, stop) as large as the largest chunk: each cache reads only the chunks a
    window spans, and every cache sees the same rows."""
    step = max(c.record.chunk_rows for c in caches.values())
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def linear_cka(caches_a: Mapping, caches_b: Mapping, debiased: bool = False,
               progress: Callable[[float, str], None] | None = None):
    """(A x B, A x A, B x B) DataFrames of linear CKA (Kornblith et al. 2019) over every row of the
    caches, read twice chunk by chunk; ``debiased`` uses the unbiased HSIC_1 (Song et al. 2012).

    Pass one takes each feature's mean over all n rows (float64). Pass two centres every window on
    those means *before* forming products, and accumulates Z^T Z of the centred features of all
    layers side by side (float64), plus, for the debiased estimator, each row's squared norm per
    layer. CKA needs nothing else: ||X_c^T Y_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) and, for
    HSIC_1 in feature form, ||X_c^T Y_c||^2, sum_i |x_i|^2 |y_i|^2 and sum_i |x_i|^2. A constant offset
    never enters a product, so it changes no value (no large terms cancel)."""
    import pandas as pd

    n = _pooled(caches_a, "A")
    if _pooled(caches_b, "B") != n:
        raise UserInputError("Models A and B were extracted on different numbers of rows; rows must align.")
    if debiased and n < 4:
        raise UserInputError(f"Debiased CKA needs at least 4 samples (got {n}).")
    layers = [("A", k, c) for k, c in caches_a.items()] + [("B", k, c) for k, c in caches_b.items()]
    dims = [c.shape[1] for _, _, c in layers]
    if exact_cka_bytes(dims) > EXACT_CKA_BYTES:
        raise UserInputError(f"Exact streamed CKA over {sum(dims):,} features would hold "
                             f"{exact_cka_bytes(dims) / 2**30:.1f} GB of cross-products; choose fewer or narrower "
                             "layers, or a minibatch size (the minibatch estimator).")
    edges = np.concatenate([[0], np.cumsum(dims)])
    windows = _windows({i: c for i, (_, _, c) in enumerate(layers)}, n)
    steps = 2 * len(windows)
    mean = np.zeros(int(edges[-1]))
    for w, (s, e) in enumerate(windows):
        for i, (_, _, c) in enumerate(layers):
            mean[edges[i]:edges[i + 1]] += c.rows(s, e).astype(np.float64).sum(0)
        if progress:
            progress((w + 1) / steps, f"column means: rows {e:,} of {n:,}")
    mean /= n
    zz = np.zeros((len(mean), len(mean)))
    rr, r_sum = np.zeros((len(layers), len(layers))), np.zeros(len(layers))
    for w, (s, e) in enumerate(windows):
        z = np.empty((e - s, len(mean)))
        for i, (_, _, c) in enumerate(layers):
            z[:, edges[i]:edges[i + 1]] = c.rows(s, e)
        z -= mean  # centred before any product
        zz += z.T @ z
        if debiased:
            r = np.stack([(z[:, edges[i]:edges[i + 1]] ** 2).sum(1) for i in range(len(layers))], 1)
            rr += r.T @ r
            r_sum += r.sum(0)
        if progress:
            progress((len(windows) + w + 1) / steps, f"centred cross-products: rows {e:,} of {n:,}")
    blocks = [[float((zz[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] ** 2).sum()) for j in range(len(layers))]
              for i in range(len(layers))]
    hsic = np.array(blocks)
    if debiased:  # n(n-3) HSIC_1 in feature form; centred columns sum to 0, so K~1 = -|x_i|^2
        hsic = hsic - rr + np.outer(r_sum, r_sum) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rr
        self_terms = np.diag(hsic).copy()
        self_terms[self_terms <= 1e-9 * r_sum ** 2] = 0.0  # a rounding residue of an exact 0, as in memory
    else:
        self_terms = np.diag(hsic).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt(np.outer(self_terms, self_terms))
        values = np.where(denom > 0, hsic / np.where(denom > 0, denom, 1), np.nan)
    la = len(caches_a)

    def frame(block, rows, cols):
        df = pd.DataFrame(block, index=list(rows), columns=list(cols))
        df.index.name, df.columns.name = "model A layer", "model B layer"
        return df

    return (frame(values[:la, la:], caches_a, caches_b), frame(values[:la, :la], caches_a, caches_a),
            frame(values[la:, la:], caches_b, caches_b))


# --------------------------------------------------------------------------- PCA
@dataclass
class StreamedPCA:
    coords: np.ndarray  # (n, k)
    explained: np.ndarray  # fraction of the total variance per component
    components: np.ndarray  # (k, d)
    mean: np.ndarray  # (d,)


EXACT_WIDTH = 4096  # up to this width the covariance (d x d float64, 128 MB) is kept: exact PCA


def incremental_pca(cache, k: int = 2, progress: Callable[[float, str], None] | None = None) -> StreamedPCA:
    """Top-``k`` principal components of every row of ``cache``, fitted and applied chunk by chunk.

    Up to :data:`EXACT_WIDTH` features the covariance is accumulated exactly (float64, each chunk
    centred on its own mean and merged with Chan et al.'s update, so no large terms cancel) and
    diagonalised once: the same components as PCA of the whole array. Wider layers use
    scikit-learn's IncrementalPCA (Ross et al. 2008) keeping 4k + 10 components between chunks, an
    approximation of the top k. Each component's largest-magnitude loading is positive."""
    rows, d = cache.shape
    k_fit = min(k, d, rows)
    chunks = cache.record.chunks
    if d <= EXACT_WIDTH:
        mean, components, ratio = _exact_components(cache, k_fit, progress)
    else:
        mean, components, ratio = _incremental_components(cache, k_fit, progress)
    signs = np.sign(components[np.arange(k_fit), np.argmax(np.abs(components), axis=1)])
    signs[signs == 0] = 1
    components = components * signs[:, None]
    coords = np.zeros((rows, k))
    offset = 0
    for i, (_, x) in enumerate(cache.iter_chunks()):  # chunks come in row order
        coords[offset: offset + len(x), :k_fit] = (x.astype(np.float64) - mean) @ components.T
        offset += len(x)
        if progress:
            progress(0.5 + 0.5 * (i + 1) / chunks, f"PCA: chunk {i + 1}/{chunks} projected")
    explained = np.zeros(k)
    explained[:k_fit] = ratio
    return StreamedPCA(coords, explained, components, mean)


def _exact_components(cache, k: int, progress):
    d = cache.shape[1]
    n, mean, m2 = 0, np.zeros(d), np.zeros((d, d))
    for i, (_, x) in enumerate(cache.iter_chunks()):
        x = x.astype(np.float64)
        nb, mb = len(x), x.mean(0)
        xc = x - mb
        delta = mb - mean
        m2 += xc.T @ xc + np.outer(delta, delta) * (n * nb / max(n + nb, 1))
        mean += delta * nb / max(n + nb, 1)
        n += nb
        if progress:
            progress(0.5 * (i + 1) / cache.record.chunks, f"PCA: chunk {i + 1}/{cache.record.chunks} read")
    values, vectors = np.linalg.eigh(m2)
    order = np.argsort(values)[::-1][:k]
    total = float(np.clip(values, 0, None).sum())
    ratio = np.clip(values[order], 0, None) / total if total > 0 else np.zeros(k)
    return mean, vectors[:, order].T, ratio


def _incremental_components(cache, k: int, progress):
    from sklearn.decomposition import IncrementalPCA

    rows, d = cache.shape
    keep = min(d, rows, 4 * k + 10)
    ipca = IncrementalPCA(n_components=keep)
    carry = None  # a chunk smaller than ``keep`` rows (the last one) is fitted with the one before it
    chunks = cache.record.chunks
    for i, (_, x) in enumerate(cache.iter_chunks()):
        x = x.astype(np.float64) if carry is None else np.concatenate([carry, x.astype(np.float64)])
        if len(x) < keep and i < chunks - 1:
            carry = x
            continue
        carry = None
        ipca.partial_fit(x)
        if progress:
            progress(0.5 * (i + 1) / chunks, f"PCA: chunk {i + 1}/{chunks} fitted")
    return ipca.mean_, ipca.components_[:k], ipca.explained_variance_ratio_[:k]


# --------------------------------------------------------------------------- subsamples
@dataclass
class Subsample:
    rows: np.ndarray  # which rows of the caches, sorted
    arrays: dict  # layer -> (used x d) float32
    used: int
    total: int
    note: str


def subsample(caches: Mapping, limit: int = IN_MEMORY_LIMIT, seed: int = 0, what: str = "this method") -> Subsample:
    """At most ``limit`` rows of every cache in ``caches`` (the same rows of each), drawn with ``seed``."""
    totals = {c.shape[0] for c in caches.values()}
    if len(totals) != 1:
        raise UserInputError(f"The layers hold different numbers of rows {sorted(totals)}; they must align.")
    total = totals.pop()
    rows = subsample_rows(total, limit, seed)
    if total <= limit:
        note = f"{what} used all {total:,} samples."
    else:
        note = (f"{what} holds every sample in memory, so it used {limit:,} of the {total:,} samples "
                f"(drawn at random, seed {seed}).")
    return Subsample(rows, {k: c.take(rows) for k, c in caches.items()}, len(rows), total, note)


def subsample_rows(total: int, limit: int, seed: int = 0) -> np.ndarray:
    """The rows :func:`subsample` takes: all of them up to ``limit``, else ``limit`` drawn with ``seed``, sorted."""
    if total <= limit:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))


def project(cache, method: str = "pca", n_components: int = 2, seed: int = 0, limit: int = IN_MEMORY_LIMIT,
            progress=None, **params):
    """(Projection, rows, note): PCA of every row (incremental), or UMAP / t-SNE of a subsample of
    at most ``limit`` rows; ``rows`` says which rows the coordinates belong to."""
    from . import projection

    if method == "pca":
        p = incremental_pca(cache, n_components, progress)
        rows = np.arange(cache.shape[0])
        return projection.Projection(p.coords, "pca", {}, p.explained), rows, \
            f"PCA fitted incrementally on all {len(rows):,} samples."
    sub = subsample({"x": cache}, limit, seed, method.upper() if method == "umap" else "t-SNE")
    return projection.project(sub.arrays["x"], method, n_components, seed, progress=progress, **params), sub.rows, \
        sub.note


# --------------------------------------------------------------------------- neighbourhoods
def knn_agreement(x_a: np.ndarray, x_b: np.ndarray, k: int = 10) -> np.ndarray:
    """Per sample: the fraction of its k nearest neighbours (cosine, self excluded) that the two
    representations share, as :func:`analysis.projection.knn_agreement`, but with the neighbour
    search in row blocks (scikit-learn's brute-force search, ``working_memory``): memory grows with
    n, not n^2. Rows are scaled to unit length, so Euclidean order is cosine order."""
    from sklearn.neighbors import NearestNeighbors

    def neighbours(x):
        x = np.asarray(x, dtype=np.float64)
        if np.all(x == x[:1]):
            return None  # every sample identical: neighbours are arbitrary
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        unit = x / np.where(norms > 0, norms, 1)
        return np.sort(NearestNeighbors(n_neighbors=k, algorithm="brute").fit(unit).kneighbors(
            return_distance=False), axis=1)

    if len(x_a) != len(x_b):
        raise UserInputError("The two layers have different numbers of samples.")
    if not 1 <= k < len(x_a):
        raise UserInputError(f"The neighbourhood agreement needs 1 <= k < n (k={k}, n={len(x_a)}).")
    na, nb = neighbours(x_a), neighbours(x_b)
    if na is None or nb is None:
        return np.full(len(x_a), np.nan)
    return (na[:, :, None] == nb[:, None, :]).sum((1, 2)) / k


# --------------------------------------------------------------------------- training batches
def shuffled_batches(cache, batch_size: int, seed: int = 0, buffer_chunks: int = 4,
                     epochs: int | None = 1) -> Iterator[np.ndarray]:
    """float32 minibatches of the cache's rows, shuffled: chunks in a random order, ``buffer_chunks``
    of them mixed at a time (memory: that many chunks), ``epochs`` passes (None: without end).
    Every row comes once per epoch; the last batch of an epoch may be smaller."""
    rng = np.random.default_rng(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = rng.permutation(cache.record.chunks)
        for g in range(0, len(order), buffer_chunks):
            rows = np.concatenate([cache.chunk(int(i)) for i in order[g: g + buffer_chunks]])
            rows = rows[rng.permutation(len(rows))]
            for s in range(0, len(rows), batch_size):
                yield rows[s: s + batch_size]
        epoch += 1
