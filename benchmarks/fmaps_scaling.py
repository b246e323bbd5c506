"""Latent functional map fit time and memory versus the number of points, against today's reference
algorithm (``scalable_from=None``: exact kNN, float64 eigen-solve, every ZoomOut step on every
sample) and a dense-matrix implementation (what the official notebooks do: a full n x n graph and
a dense eigensolver).

All fits use the same data (layer net.relu3 of zoo:mlp-s0 and zoo:mlp-s1 on the noisy digits set,
128 dimensions), the same kNN graph definition (k = min(300, n/10)), K = 50 eigenvectors, 10
geodesic anchors, the same solver. Above fmaps.SCALABLE_FROM samples the new fit searches
neighbours approximately (faiss, where installed), solves the eigenproblem in float32 and runs
ZoomOut's steps on a sample of rows; the dense version builds the n x n distance, affinity and
Laplacian matrices and calls scipy.linalg.eigh for the K smallest eigenpairs.

    python benchmarks/fmaps_scaling.py                 # n = 1000 5000 10000 20000, dense up to 5000
    python benchmarks/fmaps_scaling.py --n 100000 --reference-max 20000 --dense-max 0
    python benchmarks/fmaps_scaling.py --n 20000 --no-faiss   # the fallback without requirements-fast.txt

Prints, per n: the load average, the fit's seconds (wall and CPU) and its stages (kNN graphs,
eigen-solves, descriptors, functional-map solve, ZoomOut with the point map), peak traced memory,
the cost model's estimate and the matched fraction; the same for the reference, how far the two
similarities differ and how many rows both match alike; where the dense version ran, its seconds
and peak memory.
"""
from __future__ import annotations

import argparse
import functools
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
    """fn()'s result, tracemalloc peak (MiB) and CPU seconds of this process (on a shared machine
    they move less than wall seconds)."""
    tracemalloc.start()
    cpu = time.process_time()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak / 2**20, time.process_time() - cpu


def fit(xa, xb, anchors, n_eigs: int, scalable_from):
    lfm = fmaps.LatentFunctionalMap(n_eigs=n_eigs, scalable_from=scalable_from)
    (_, peak, cpu) = measure(lambda: lfm.fit(xa, xb, anchors=anchors, rows_aligned=True))
    exact = float(np.mean(lfm.p2p_ == np.arange(len(xa))))
    return lfm, peak, cpu, exact


STAGES = ("graph", "eigen", "descriptors", "solve", "zoomout")


def stages(t) -> str:
    return " ".join(f"{t.get(name, 0.0):>6.2f}" for name in STAGES)


def main(argv=None):
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 10000, 20000])
    ap.add_argument("--dense-max", type=int, default=5000, help="largest n for the dense version")
    ap.add_argument("--reference-max", type=int, default=20000, help="largest n for today's reference fit")
    ap.add_argument("--eigs", type=int, default=50)
    ap.add_argument("--no-faiss", action="store_true", help="fit as if faiss were not installed")
    args = ap.parse_args(argv)
    if args.no_faiss:
        fmaps._faiss = lambda: None
    from threadpoolctl import threadpool_limits

    from analysis import fmaps_cost

    print(f"faiss: {'installed' if fmaps._faiss() is not None else 'not installed (exact kNN, numpy point maps)'}")
    head = " ".join(f"{name[:6]:>6}" for name in STAGES)
    print(f"{'n':>6} {'k':>4} {'load':>5} | {'new s':>7} {'cpu s':>6} {head} {'MiB':>6} {'est s':>6} {'exact':>6} | "
          f"{'ref s':>7} {'cpu s':>6} {head} {'MiB':>6} {'exact':>6} {'|dsim|':>7} {'same':>6} {'ref/new':>7} "
          f"{'cpu':>5} | {'dense s':>8} {'MiB':>6} {'d/new':>6}", flush=True)
    for n in args.n:
        xa, xb = layers(n)
        k = fmaps.default_neighbors(n)
        anchors = select_anchors(xa, 10, "random", seed=0)
        fmaps.LatentFunctionalMap(n_eigs=5).fit(xa[:200], xb[:200], anchors=anchors[anchors < 200][:3],
                                                rows_aligned=True)  # warm the imports
        load = os.getloadavg()[0]
        new, peak, cpu, exact = fit(xa, xb, anchors, args.eigs, fmaps.SCALABLE_FROM)
        t = new.timings_
        est = fmaps_cost.fit_cost(n, xa.shape[1], xb.shape[1], None, args.eigs, 10, 0, ("geodesic",), True)
        line = (f"{n:>6} {k:>4} {load:>5.1f} | {t['total']:>7.2f} {cpu:>6.1f} {stages(t)} {peak:>6.0f} "
                f"{est.seconds:>6.1f} {exact:>6.3f} | ")
        if n <= args.reference_max:
            ref, rpeak, rcpu, rexact = fit(xa, xb, anchors, args.eigs, None)
            dsim = abs(ref.similarity() - new.similarity())
            same = float(np.mean(ref.p2p_ == new.p2p_))
            line += (f"{ref.timings_['total']:>7.2f} {rcpu:>6.1f} {stages(ref.timings_)} {rpeak:>6.0f} "
                     f"{rexact:>6.3f} {dsim:>7.1e} {same:>6.3f} {ref.timings_['total'] / t['total']:>6.1f}x "
                     f"{rcpu / cpu:>4.1f}x | ")
        else:
            line += f"{'skipped':>7} {'':>6} {'':>{7 * len(STAGES) - 1}} {'':>6} {'':>6} {'':>7} {'':>6} {'':>7} {'':>5} | "
        if n <= args.dense_max:
            with threadpool_limits(1, user_api="blas"):  # the same thread budget as the sparse fit
                ((t_dense, _, _), dpeak, _) = measure(functools.partial(dense_fit, xa, xb, anchors, k, args.eigs))
            line += f"{t_dense:>8.2f} {dpeak:>6.0f} {t_dense / t['total']:>5.1f}x"
        else:
            line += f"{'skipped':>8} {f'~{n * n * 8 * 4 / 2**20:.0f}':>6}"
        print(line, flush=True)
    print("new: this fit (above fmaps.SCALABLE_FROM samples: approximate kNN with faiss where installed, float32 "
          "eigen-solve, ZoomOut's steps on a sample of rows); ref: today's reference algorithm "
          "(scalable_from=None: exact kNN, float64 eigen-solve, every ZoomOut step on every row); dense: n x n "
          "matrices and a dense eigensolver.")
    print("load: 1-minute load average before the fit; s: wall seconds, cpu s: this process's CPU seconds (on a "
          "shared machine they move less than wall seconds); graph/eigen/descri/solve/zoomou: wall seconds of the "
          "kNN graphs, the eigen-solves, the descriptors (geodesics), the functional-map solve, and ZoomOut with the "
          "final point map; MiB: tracemalloc peak (numpy buffers included; dense 'skipped' shows what its four "
          "n x n float64 matrices alone would take); est s: analysis.fmaps_cost's estimate (wall on a shared "
          "machine); exact: fraction of samples matched to themselves from 10 anchors; |dsim|: difference of the LFM "
          "similarity between new and ref; same: fraction of rows new and ref match to the same row; ref/new: "
          "wall-time ratio, cpu: CPU-time ratio; d/new: dense over new wall time.")


if __name__ == "__main__":
    main()
