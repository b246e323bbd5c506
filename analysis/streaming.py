"""Analyses that read the on-disk activation cache chunk by chunk: memory does not grow with n.

:func:`analysis.activations.extract_chunked` writes each layer to a cache
(:class:`~analysis.activations.cache.ActivationCache`); these functions read it back:

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
    if total <= limit:
        rows = np.arange(total)
        note = f"{what} used all {total:,} samples."
    else:
        rows = np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))
        note = (f"{what} holds every sample in memory, so it used {limit:,} of the {total:,} samples "
                f"(drawn at random, seed {seed}).")
    return Subsample(rows, {k: c.take(rows) for k, c in caches.items()}, len(rows), total, note)


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
