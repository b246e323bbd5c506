"""Latent functional map fit time and memory versus the number of points, against a dense-matrix
implementation (what the official notebooks do: a full n x n graph and a dense eigensolver).

Both fits use the same data (layer net.relu3 of zoo:mlp-s0 and zoo:mlp-s1 on the noisy digits set,
128 dimensions), the same kNN graph definition (k = min(300, n/10)), K = 50 eigenvectors, 10
geodesic anchors, the same solver and ZoomOut; only the graph and the eigen-problem differ: RepLens
keeps the graph sparse and runs ARPACK (eigsh) on it, the dense version builds the n x n distance,
affinity and Laplacian matrices and calls scipy.linalg.eigh for the K smallest eigenpairs.

    python benchmarks/fmaps_scaling.py                 # n = 1000 2000 5000 10000 20000, dense up to 5000
    python benchmarks/fmaps_scaling.py --n 1000 2000 --dense-max 2000

Prints, per n: the sparse fit's seconds, its eigen-solver share, its peak traced memory, and where
the dense version ran, its seconds, peak memory and the ratio dense / sparse.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import activations, data, fmaps, models  # noqa: E402
from analysis.translation import select_anchors  # noqa: E402


def layers(n: int):
    ds = data.load("digits_noisy", n=n, seed=0)
    xa = activations.extract(models.load("zoo:mlp-s0"), ds, ["net.relu3"], use_cache=False)["net.relu3"]
    xb = activations.extract(models.load("zoo:mlp-s1"), ds, ["net.relu3"], use_cache=False)["net.relu3"]
    return xa.astype(np.float64), xb.astype(np.float64)


def dense_graph_spectrum(x, k: int, n_eigs: int):
    """The same graph as fmaps.knn_graph, built densely, and the dense eigensolver."""
    import scipy.linalg

    x = x - x.mean(0)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sq = (x ** 2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))  # n x n
    np.fill_diagonal(d, np.inf)
    nn = np.argpartition(d, k - 1, axis=1)[:, :k]
    rows = np.arange(len(x))[:, None]
    dk = np.take_along_axis(d, nn, 1)
    scale = np.maximum(dk.max(1, keepdims=True), 1e-12)
    w = np.zeros_like(d)
    w[rows, nn] = np.exp(-4.0 * (dk / scale) ** 2)
    w = 0.5 * (w + w.T)
    dist = np.zeros_like(d)
    dist[rows, nn] = dk
    dist = np.maximum(dist, dist.T)
    deg = w.sum(1)
    inv = 1.0 / np.sqrt(deg)
    lap = np.eye(len(x)) - inv[:, None] * w * inv[None, :]
    t0 = time.perf_counter()
    lam, phi = scipy.linalg.eigh(lap, subset_by_index=[0, n_eigs - 1])
    return np.clip(lam, 0, 2), phi, dist, time.perf_counter() - t0


def dense_fit(x, y, anchors, k: int, n_eigs: int):
    from scipy.sparse import csr_matrix

    t0 = time.perf_counter()
    lx, px, dx, ex = dense_graph_spectrum(x, k, n_eigs)
    ly, py, dy, ey = dense_graph_spectrum(y, k, n_eigs)
    F = fmaps._unit_columns(fmaps.geodesic_descriptors(csr_matrix(dx), anchors))
    G = fmaps._unit_columns(fmaps.geodesic_descriptors(csr_matrix(dy), anchors))
    C = fmaps.solve_functional_map(px, py, lx, ly, F, G)
    C, p2p = fmaps.zoomout(C, px, py, n_eigs - 10, n_eigs)
    return time.perf_counter() - t0, (ex + ey), p2p


def measure(fn):
    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000])
    ap.add_argument("--dense-max", type=int, default=5000, help="largest n for the dense version")
    ap.add_argument("--eigs", type=int, default=50)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    print(f"{'n':>6} {'k':>4} | {'sparse s':>9} {'graph':>6} {'eigen':>6} {'solve':>6} {'eigen %':>8} {'peak MiB':>9} "
          f"{'exact':>6} | "
          f"{'dense s':>8} {'eigen %':>8} {'peak MiB':>9} | {'dense/sparse':>12}")
    for n in args.n:
        xa, xb = layers(n)
        k = fmaps.default_neighbors(n)
        anchors = select_anchors(xa, 10, "random", seed=0)
        lfm = fmaps.LatentFunctionalMap(n_eigs=args.eigs)
        fmaps.LatentFunctionalMap(n_eigs=5).fit(xa[:200], xb[:200], anchors=anchors[anchors < 200][:3],
                                                rows_aligned=True)  # warm the imports
        (_, peak) = measure(lambda: lfm.fit(xa, xb, anchors=anchors, rows_aligned=True))
        t_sparse = lfm.timings_["total"]
        share = lfm.timings_["eigen"] / t_sparse
        exact = float(np.mean(lfm.p2p_ == np.arange(n)))
        t = lfm.timings_
        line = (f"{n:>6} {k:>4} | {t_sparse:>9.2f} {t['graph']:>6.2f} {t['eigen']:>6.2f} {t['solve']:>6.2f} "
                 f"{100 * share:>7.0f}% {peak:>9.0f} {exact:>6.2f} | ")
        if n <= args.dense_max:
            with threadpool_limits(1, user_api="blas"):  # the same thread budget as the sparse fit
                ((t_dense, t_eig, _), dpeak) = measure(lambda: dense_fit(xa, xb, anchors, k, args.eigs))
            line += f"{t_dense:>8.2f} {100 * t_eig / t_dense:>7.0f}% {dpeak:>9.0f} | {t_dense / t_sparse:>11.1f}x"
        else:
            est = n * n * 8 * 4 / 2**20
            line += f"{'skipped':>8} {'':>8} {f'~{est:.0f}':>9} | {'':>12}"
        print(line, flush=True)
    print("graph/eigen/solve: seconds of the sparse fit's kNN graphs, eigsh, and solve + ZoomOut; exact: fraction "
          "of samples matched to themselves from 10 anchors.")
    print("peak MiB: tracemalloc peak of the fit (numpy buffers included); dense 'skipped' shows the memory "
          "its four n x n float64 matrices alone would take.")


if __name__ == "__main__":
    main()
