"""Time and memory of the functional-maps analyses, before they run: a latent functional map fit
(:class:`analysis.fmaps.LatentFunctionalMap`), the zero-shot stitching sweep
(:func:`analysis.stitching.stitching_curve`), the retrieval sweep
(:func:`analysis.translation.retrieval_curve`) and the robustness sweep
(:func:`analysis.fmaps.robustness_curve`).

Each step's time is (operations) x (seconds per operation). The constants are CPU seconds measured
on a 2-core x86 server with one BLAS thread (the fits run under ``small_blas``), over n = 500 to
5,000 samples, k = 50 to 600 neighbours, K = 20 to 150 eigenvectors and 10 to 400 anchors; model
and measurements agreed within 1.5x (a fresh process adds about 2 s of imports to its first fit).
``SHARED`` turns CPU seconds into wall seconds on a machine whose cores other jobs share (measured
1x idle to 4x under a load of 17 on 2 cores). The job runner then corrects each kind of estimate
by the ratio it observes (analysis.jobs.estimates). Above ``analysis.fmaps.SCALABLE_FROM`` samples
the fit takes the scalable path: faiss's approximate kNN where it is installed, a float32
eigen-solve, ZoomOut's steps on a sample of rows and faiss point maps (the ``approximate``,
``single`` and ``fast`` variants below); benchmarks/fmaps_scaling.py prints the estimate beside
the measured times.
"""
from __future__ import annotations

from .jobs import Cost

SHARED = 2.0
STARTUP_S = 0.5  # a section's fixed cost: imports, reading models, data and activations
N_HKS = 10  # heat kernel signature times (LatentFunctionalMap's default)
ZOOMOUT_STEPS = 11  # ZoomOut grows the map from K - 10 to K


def default_neighbors(n: int) -> int:
    from .fmaps import default_neighbors as rule

    return rule(n)


def n_descriptors(n_anchors: int, n_classes: int, descriptors) -> int:
    """Columns of the descriptor matrices: one per anchor (geodesic), per class (labels), per
    heat-kernel time (hks)."""
    d = set(descriptors or ())
    return n_anchors * ("geodesic" in d) + n_classes * ("labels" in d) + N_HKS * ("hks" in d)


# ------------------------------------------------------------------ the steps (CPU seconds, bytes)
def knn_graph_seconds(n: int, d: int, k: int, approximate: bool = False) -> float:
    """Brute-force neighbours (n^2 d multiply-adds, n^2 partial sorts) and the sparse graph's
    assembly and symmetrisation (per edge); the n^2 constant refitted on 5,000 to 100,000 samples.
    ``approximate``: faiss's inverted-file search instead (k-means into sqrt(n) cells, then each
    query against the rows of NPROBE cells: both about n^1.5 d; measured 1.5 s at 20,000 and 12.7 s
    at 100,000 points, d = 128)."""
    if approximate:
        return 3.5e-9 * n ** 1.5 * d + 5e-7 * n * k
    return 1e-11 * n * n * d + 3.7e-9 * n * n + 8e-7 * n * k


def knn_graph_bytes(n: int, k: int, approximate: bool = False) -> int:
    """Distances and indices of the neighbours, the affinity and distance graphs and their
    transposes; scikit-learn computes distances in blocks of at most 1 GiB (faiss's inverted-file
    search holds no such block)."""
    return 100 * n * k + (0 if approximate else min(8 * n * n, 2 ** 30))


def spectrum_seconds(n: int, k: int, n_eigs: int, single: bool = False) -> float:
    """The K smallest Laplacian eigenpairs: a dense solver up to 400 samples, else Lanczos (ARPACK),
    whose cost grows with the edges and the basis; in float32 (``single``, the scalable path) 0.6x."""
    if n <= 400:
        return 2e-9 * n ** 3
    return (0.6 if single else 1.0) * 1.4e-8 * n * (k + n_eigs) * n_eigs


def spectrum_bytes(n: int, n_eigs: int) -> int:
    return 8 * n * n if n <= 400 else 16 * n * (2 * n_eigs + 1)


def geodesic_seconds(n: int, k: int, n_anchors: int) -> float:
    """Dijkstra from every anchor over a graph of about n k edges."""
    return 8e-9 * n_anchors * n * k


def solve_seconds(n: int, n_eigs: int, p: int) -> float:
    """The descriptor operators (p products of n x K by K x K per space) and the conjugate-gradient
    solve, whose every step multiplies p K x K matrices; its steps grow about as sqrt(K) (measured:
    1.2e-7 (p + 5) K^3 CPU seconds at K = 50, 2.0e-7 at K = 150)."""
    return 7e-11 * 2 * p * n * n_eigs ** 2 + 1.7e-8 * (p + 5) * n_eigs ** 3.5


def solve_bytes(n: int, n_eigs: int, p: int, n_anchors: int) -> int:
    """Geodesic distances (n x anchors, per space, with the copies exp and normalisation make) and
    the descriptor operators with the commutator's temporaries (p x K x K each)."""
    return 40 * n * n_anchors + 40 * p * n_eigs ** 2


def point_map_seconds(n: int, n_eigs: int, steps: int = 1, queries: int | None = None, fast: bool = False) -> float:
    """Nearest spectral embedding among the n samples for each of ``queries`` rows (default every
    sample; n queries K in single precision), per ZoomOut step; faiss's search (``fast``) 0.6x."""
    return (0.6 if fast else 1.0) * 4.5e-11 * steps * (n if queries is None else queries) * n * n_eigs


def zoomout_seconds(n: int, n_eigs: int, refine: bool) -> float:
    """ZoomOut's point maps: every step on every sample up to ``SCALABLE_FROM`` samples; above it the
    steps but the last on ``ZOOMOUT_SAMPLE`` rows (analysis.fmaps.zoomout's sampled steps)."""
    from .fmaps import SCALABLE_FROM, ZOOMOUT_SAMPLE

    if n <= SCALABLE_FROM:
        return point_map_seconds(n, n_eigs, ZOOMOUT_STEPS if refine else 1)
    fast = faiss_installed()
    if not refine:
        return point_map_seconds(n, n_eigs, fast=fast)
    return (point_map_seconds(n, n_eigs, fast=fast)
            + point_map_seconds(n, n_eigs, ZOOMOUT_STEPS - 1, min(n, ZOOMOUT_SAMPLE), fast=fast))


def faiss_installed() -> bool:
    from .fmaps import _faiss

    return _faiss() is not None


def point_map_bytes(n: int) -> int:
    """Query blocks against every sample, float32: 2,048 rows, or fewer so a block holds at most
    2^24 distances (analysis.fmaps.nearest_rows), with the product's and argmin's temporaries."""
    from .fmaps import BLOCK_ENTRIES

    return 3 * 4 * min(2048 * n, max(16 * n, BLOCK_ENTRIES))


# ------------------------------------------------------------------ the analyses
def fit_cost(n: int, d_a: int, d_b: int, k: int | None, n_eigs: int, n_anchors: int, n_classes: int,
             descriptors, refine: bool) -> Cost:
    """One LatentFunctionalMap fit with rows aligned (k None: the default rule)."""
    from .fmaps import SCALABLE_FROM

    k = k or default_neighbors(n)
    kk = min(n_eigs, n - 2)
    p = n_descriptors(n_anchors, n_classes, descriptors)
    geo = "geodesic" in set(descriptors or ()) and n_anchors > 0
    scalable = n > SCALABLE_FROM
    approximate = scalable and faiss_installed()
    seconds = (knn_graph_seconds(n, d_a, k, approximate) + knn_graph_seconds(n, d_b, k, approximate)
               + 2 * spectrum_seconds(n, k, kk, scalable)
               + (2 * geodesic_seconds(n, k, n_anchors) if geo else 0.0)
               + (solve_seconds(n, kk, p) if p else 0.0)
               + zoomout_seconds(n, kk, bool(refine and p)))
    memory = (2 * knn_graph_bytes(n, k, approximate) + 2 * spectrum_bytes(n, kk) + 8 * n * (d_a + d_b)
              + (solve_bytes(n, kk, p, n_anchors if geo else 0) if p else 0) + point_map_bytes(n))
    return Cost(STARTUP_S + SHARED * seconds, int(memory))


def retrieval_scores_seconds(n: int, d: int) -> float:
    """One MRR + neighbour-Jaccard evaluation: three n x n similarity matrices and their partial sorts."""
    return n * n * (4e-8 + 1.5e-10 * d)


def translator_seconds(m: int, d: int, n_rows: int) -> float:
    """The four translators on m anchors in the padded width d (two SVDs of d x d, three least
    squares of m x d) and their transforms of ``n_rows`` rows."""
    return 2 * 6e-10 * d ** 3 + 3 * 8e-10 * m * d * d + 4e-9 * n_rows * d * d


def retrieval_cost(n: int, d_a: int, d_b: int, k: int | None, n_eigs: int, counts, n_classes: int,
                   descriptors, refine: bool) -> Cost:
    """For every anchor count: a functional map fitted from those anchors, three retrieval
    evaluations (LFM + ortho, ortho, relative) and Procrustes on all matched pairs."""
    seconds, memory = 0.0, 0
    d = max(d_a, d_b)
    for m in counts:
        fit = fit_cost(n, d_a, d_b, k, n_eigs, m, n_classes, descriptors, refine)
        seconds += fit.seconds - STARTUP_S
        seconds += SHARED * (2 * retrieval_scores_seconds(n, d_b) + retrieval_scores_seconds(n, m)
                             + translator_seconds(n, d, n) / 2)
        memory = max(memory, fit.bytes)
    return Cost(STARTUP_S + seconds, int(max(memory, 24 * n * n + 16 * n * d)))


def stitching_cost(n: int, d_a: int, d_b: int, counts, probe: bool, n_classes: int, head_row_s: float) -> Cost:
    """Stitching sweep: per anchor count, the four translators and B's head on the evaluation half
    (``head_row_s``: seconds per row of B's forward pass), plus the two reference scores; a
    logistic-regression probe on B's layer when B has no usable head."""
    half, d = n // 2, max(d_a, d_b)
    calls = 2 + 4 * len(counts)
    seconds = sum(translator_seconds(m, d, half) for m in counts)
    seconds += calls * half * (5e-9 * d_b * max(n_classes, 2) if probe else head_row_s)
    if probe:  # lbfgs: about 200 passes over the fit half
        seconds += 6e-10 * 200 * half * d_b * max(n_classes, 2)
    return Cost(STARTUP_S + SHARED * seconds, int(8 * n * (d_a + 2 * d_b) + 8 * 6 * d * d))


def robustness_cost(n: int, d: int, k: int | None, n_eigs: int, n_shifts: int) -> Cost:
    """Per shift: a ground-truth functional map of the layer against its perturbed copy (two graphs,
    two spectra, one point map) and linear CKA."""
    from .fmaps import SCALABLE_FROM

    k = k or default_neighbors(n)
    kk = min(n_eigs, n - 2)
    scalable = n > SCALABLE_FROM
    approximate = scalable and faiss_installed()
    one = 2 * knn_graph_seconds(n, d, k, approximate) + 2 * spectrum_seconds(n, k, kk, scalable) \
        + point_map_seconds(n, kk, fast=approximate) + 4e-9 * n * d * d
    memory = 2 * knn_graph_bytes(n, k, approximate) + 2 * spectrum_bytes(n, kk) + 8 * 3 * n * d + point_map_bytes(n)
    return Cost(STARTUP_S + SHARED * n_shifts * one, int(memory))


FORWARD_ROW_S = {"text": 4e-3, "image": 4e-5, "vector": 4e-5}  # one sample through a zoo model or MiniLM
LOAD_S = {"text": 3.0}  # importing transformers and loading a text encoder in a fresh worker


def forward_seconds(rows: int, kind: str) -> float:
    """Loading a model and running it over ``rows`` samples to extract a layer."""
    return SHARED * (LOAD_S.get(kind, 0.0) + rows * FORWARD_ROW_S.get(kind, FORWARD_ROW_S["image"]))
