"""Low-dimensional views of a layer: PCA, UMAP, t-SNE; two models' views aligned point by point.

``project(x, method, n_components, seed, **params)`` returns a :class:`Projection`, cached in the
result store by the content hash of ``x`` and the parameters (umap-learn is imported only when
UMAP is asked for: its import takes seconds). ``align(p_a, p_b)`` rotates B's coordinates onto A's
(orthogonal Procrustes with an isotropic scale), and ``knn_agreement`` says, per sample, how many
of its nearest neighbours the two layers share in their original spaces.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .errors import UserInputError
from .validation import as_matrix

METHODS = ("pca", "umap", "tsne")
DEFAULTS = {"pca": {}, "umap": {"n_neighbors": 15, "min_dist": 0.1}, "tsne": {"perplexity": 30.0}}
CACHE_VERSION = 1


@dataclass
class Projection:
    coords: np.ndarray  # (n, n_components)
    method: str
    params: dict = field(default_factory=dict)
    explained: np.ndarray | None = None  # PCA: fraction of variance per component
    cached: bool = False

    def axis_titles(self) -> list[str]:
        name = {"pca": "PC", "umap": "UMAP ", "tsne": "t-SNE ", "precomputed": "dim "}[self.method]
        titles = [f"{name}{i + 1}" for i in range(self.coords.shape[1])]
        if self.explained is not None:
            titles = [f"{t} ({100 * e:.0f}%)" for t, e in zip(titles, self.explained)]
        return titles


def pca(x, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal components of the centred rows and the fraction of variance each explains.
    Signs are fixed so each component's largest-magnitude loading is positive (stable across runs)."""
    x = as_matrix(x, "layer")
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k_avail = min(k, vt.shape[0])
    signs = np.sign(vt[np.arange(k_avail), np.argmax(np.abs(vt[:k_avail]), axis=1)])
    signs[signs == 0] = 1
    coords = u[:, :k_avail] * s[:k_avail] * signs
    total = float((s ** 2).sum())
    ratio = (s[:k_avail] ** 2) / total if total > 0 else np.zeros(k_avail)
    if coords.shape[1] < k:  # fewer dimensions than asked for: pad so a 2-D / 3-D plot still draws
        coords = np.hstack([coords, np.zeros((len(coords), k - coords.shape[1]))])
        ratio = np.concatenate([ratio, np.zeros(k - len(ratio))])
    return coords, ratio


def _safe_scale(x: np.ndarray, method: str) -> np.ndarray:
    """t-SNE's Barnes-Hut tree (scikit-learn) crashes the whole process (segmentation fault) on a
    constant layer, and when squared distances under- or overflow (spread below ~1e-20 or above
    ~1e100). Refuse the first; bring the second to a spread near 1 by an exact power of two (the
    embedding does not depend on the scale). Ordinary data is left untouched."""
    centred = x - x.mean(0)
    spread = float(np.abs(centred).max()) if centred.size else 0.0
    if spread == 0.0:
        name = {"tsne": "t-SNE", "umap": "UMAP"}.get(method, method)
        raise UserInputError(f"Every sample of this layer has the same values: {name} cannot place "
                             "them. Pick another layer (or PCA, which shows them as one point).")
    if 1e-6 <= spread <= 1e6:
        return x
    return centred * 2.0 ** -np.round(np.log2(spread))


def _check(method: str, n_components: int, n: int, params: dict) -> dict:
    if method not in METHODS:
        raise UserInputError(f"Unknown projection {method!r}; use one of {', '.join(METHODS)}.")
    if n_components not in (2, 3):
        raise UserInputError(f"Projections have 2 or 3 components (got {n_components}).")
    unknown = set(params) - set(DEFAULTS[method])
    if unknown:
        raise UserInputError(f"{method} has no parameter {sorted(unknown)[0]!r}; "
                             f"it takes {', '.join(DEFAULTS[method]) or 'none'}.")
    merged = {**DEFAULTS[method], **params}
    if method == "umap":
        merged["n_neighbors"] = int(merged["n_neighbors"])
        if not 2 <= merged["n_neighbors"] < n:
            raise UserInputError(f"UMAP needs 2 <= neighbours < samples ({merged['n_neighbors']} with {n} samples).")
        if not 0.0 <= float(merged["min_dist"]) <= 1.0:
            raise UserInputError("UMAP's min_dist lies between 0 and 1.")
    if method == "tsne" and not 1.0 <= float(merged["perplexity"]) < n:
        raise UserInputError(f"t-SNE needs 1 <= perplexity < samples ({merged['perplexity']} with {n} samples).")
    if n < 4 and method != "pca":
        raise UserInputError(f"{method} needs at least 4 samples (got {n}).")
    return merged


def project(x, method: str = "pca", n_components: int = 2, seed: int = 0, store=None, use_cache: bool = True,
            progress=None, **params) -> Projection:
    """Project the rows of ``x`` to 2 or 3 dimensions. Cached by (content of x, method, parameters, seed)."""
    from .store import default_store, make_key

    x = as_matrix(x, "layer")
    params = _check(method, n_components, x.shape[0], params)
    store = store or default_store()
    digest = hashlib.sha256(np.ascontiguousarray(x.astype(np.float32)).tobytes()).hexdigest()
    key = make_key("projection", x=digest, shape=x.shape, method=method, k=n_components, seed=seed,
                   params=params, v=CACHE_VERSION)
    if use_cache:
        hit = store.get(key)
        if hit is not None:
            return Projection(hit["coords"], method, params, hit.get("explained"), cached=True)
    if progress:
        progress(0.05, f"{method.upper()} on {x.shape[0]} samples x {x.shape[1]} dimensions…")
    explained = None
    if method != "pca":
        x = _safe_scale(x, method)
    if method == "pca":
        coords, explained = pca(x, n_components)
    elif method == "umap":
        from .numba_cache import import_umap  # slow import (and compiling, once per store): only here

        reducer = import_umap().UMAP(n_components=n_components, n_neighbors=params["n_neighbors"],
                                     min_dist=float(params["min_dist"]), random_state=seed, n_jobs=1)
        coords = reducer.fit_transform(x)
    else:
        from sklearn.manifold import TSNE

        coords = TSNE(n_components=n_components, perplexity=float(params["perplexity"]), init="pca",
                      random_state=seed).fit_transform(x)
    coords = np.asarray(coords, dtype=np.float64)
    arrays = {"coords": coords} if explained is None else {"coords": coords, "explained": explained}
    if use_cache:
        store.put(key, arrays, {"method": method, "params": params}, kind="projection")
    if progress:
        progress(1.0, "projection done")
    return Projection(coords, method, params, explained)


def from_coordinates(data: bytes, filename: str, n_rows: int) -> Projection:
    """A precomputed projection uploaded as .npy/.npz/.csv/.parquet: (n_rows x 2 or 3) coordinates."""
    from . import tabular

    tabular.check_size(data, filename)
    suffix = tabular.suffix_of(filename)
    if suffix == ".npy":
        raw = tabular.load_npy(data, filename)
    elif suffix == ".npz":
        arrays = tabular.load_npz(data, filename)
        raw = arrays.get("coords", next(iter(arrays.values())))
    elif suffix in (".csv", ".parquet"):
        raw = tabular.load_frame(data, filename).select_dtypes("number").to_numpy()
    else:
        raise UserInputError(f"{filename}: unsupported file type {suffix or '(none)'}; upload .npy, .npz, .csv "
                             "or .parquet coordinates.")
    coords = tabular.numeric_matrix(raw, f"{filename} (coordinates)").astype(np.float64)
    if coords.shape[0] != n_rows:
        raise UserInputError(f"{filename} has {coords.shape[0]} rows but the dataset has {n_rows}: one row of "
                             "coordinates per sample, in the dataset's order.")
    if coords.shape[1] not in (2, 3):
        raise UserInputError(f"{filename} has {coords.shape[1]} columns; coordinates have 2 or 3.")
    return Projection(coords, "precomputed", {"file": filename})


@dataclass
class Alignment:
    aligned: np.ndarray  # B's coordinates mapped onto A's frame
    rotation: np.ndarray  # orthogonal (k x k), reflections allowed
    scale: float
    shift: np.ndarray
    residual: float  # RMS distance between aligned B and A, relative to A's RMS spread


def align(p_a, p_b, scale: bool = True) -> Alignment:
    """Orthogonal Procrustes: the rotation/reflection (and isotropic scale) taking B's centred
    coordinates closest to A's, so the two views can be compared point by point."""
    a = as_matrix(getattr(p_a, "coords", p_a), "projection A")
    b = as_matrix(getattr(p_b, "coords", p_b), "projection B")
    if a.shape != b.shape:
        raise UserInputError(f"Projections differ in shape {a.shape} vs {b.shape}: same samples, same dimensions.")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ac, bc = a - mu_a, b - mu_b
    u, s, vt = np.linalg.svd(bc.T @ ac)
    r = u @ vt
    norm_b = float((bc ** 2).sum())
    c = float(s.sum() / norm_b) if (scale and norm_b > 0) else 1.0
    aligned = c * bc @ r + mu_a
    spread = float(np.sqrt((ac ** 2).sum(1).mean())) or 1.0
    residual = float(np.sqrt(((aligned - a) ** 2).sum(1).mean())) / spread
    return Alignment(aligned, r, c, mu_a - c * mu_b @ r, residual)


def _check_knn_memory(n: int) -> None:
    """The neighbour search holds an n x n similarity matrix and two temporaries of that size."""
    from .resources import USABLE_FRACTION, available_bytes, check_fits

    fit = int((USABLE_FRACTION * available_bytes() / 24) ** 0.5)
    check_fits(24.0 * n * n, f"Neighbourhood agreement on {n:,} samples",
               f"Use fewer samples (about {fit:,} fit) or colour by another property.")


def knn_agreement(x_a, x_b, k: int = 10) -> np.ndarray:
    """Per sample: the fraction of its k nearest neighbours (cosine, self excluded) that the two
    representations share. 1 for identical spaces; about k/(n-1) when rows are unrelated."""
    from .similarity import _knn

    xa, xb = as_matrix(x_a, "layer A"), as_matrix(x_b, "layer B")
    if xa.shape[0] != xb.shape[0]:
        raise UserInputError("The two layers have different numbers of samples.")
    _check_knn_memory(xa.shape[0])
    na, nb = _knn(xa, k), _knn(xb, k)
    if na is None or nb is None:
        return np.full(xa.shape[0], np.nan)
    return (na[:, :, None] == nb[:, None, :]).sum((1, 2)) / k


def layer_path(acts: dict, method: str = "pca", n_components: int = 2, seed: int = 0, progress=None,
               **params) -> dict[str, np.ndarray]:
    """Projections of successive layers, each aligned to the previous one, so stepping through the
    layers shows the data move rather than the axes flip."""
    out: dict[str, np.ndarray] = {}
    previous = None
    names = list(acts)
    for i, name in enumerate(names):
        coords = project(acts[name], method, n_components, seed, **params).coords
        if previous is not None:
            coords = align(previous, coords).aligned
        out[name] = coords
        previous = coords
        if progress:
            progress((i + 1) / len(names), f"{method.upper()} of {name}")
    return out


# ------------------------------------------------------------------ cost model (measured on a 2-core machine)
UMAP_EXACT_MAX_N = 4096  # umap-learn computes exact neighbours below this many samples, NN-descent above
FLOPS_PER_SECOND = 2e10


def estimate_seconds(n: int, d: int, method: str, n_components: int = 2, **params) -> float:
    """Wall time of :func:`project` on an unloaded machine once the method's code is imported
    (constants fitted to single-threaded runs on a 2-core machine, n = 250 to 10,000)."""
    if method == "pca":
        return 0.01 + 4 * n * d * min(n, d) / FLOPS_PER_SECOND
    if method == "umap":
        k = int(params.get("n_neighbors", 15))
        if n < UMAP_EXACT_MAX_N:  # all pairwise distances, then 500 epochs of the layout
            neighbours = 2 * n * n * d / FLOPS_PER_SECOND + 8.7e-7 * n * n
            layout = 7.7e-4 * n
        else:  # NN-descent; 200 epochs above 10,000 samples
            neighbours = 1.2e-3 * n * (k / 15)
            layout = 7.7e-4 * n * (0.4 if n > 10_000 else 1.0)
        return 0.1 + neighbours + layout * (k / 15) ** 0.5
    perplexity = float(params.get("perplexity", 30.0))  # Barnes-Hut t-SNE, 1,000 iterations
    barnes_hut = (2.5e-3 * n + 8e-7 * n * n) * (perplexity / 30) ** 0.5
    return 0.2 + barnes_hut * (1.1 if n_components == 3 else 1.0)


def start_seconds(method: str, n: int = 0) -> float:
    """Importing the method's code in a new process; for UMAP also compiling it (about 30 s for
    the exact fit, as much again for NN-descent's) when the store's numba cache does not hold it
    yet: once per store, see :mod:`analysis.numba_cache`."""
    if method == "umap":
        from .numba_cache import umap_compiled

        seconds = 2.0 if umap_compiled() else 32.0
        if n >= UMAP_EXACT_MAX_N and not umap_compiled(nn_descent=True):
            seconds += 30.0
        return seconds
    return 0.5 if method == "tsne" else 0.0


def estimate_bytes(n: int, d: int, method: str, n_components: int = 2) -> int:
    """Peak memory of :func:`project`: the data and, for exact UMAP, its n x n distances."""
    base = 8 * n * d * 3
    if method == "umap" and n < UMAP_EXACT_MAX_N:
        return int(base + 8 * n * n * 2)
    return int(base + 8 * n * 200)


def knn_agreement_bytes(n: int) -> int:
    """The neighbour search of :func:`knn_agreement` holds an n x n similarity matrix and two
    temporaries of that size."""
    return int(24 * n * n)


def knn_agreement_seconds(n: int, d_a: int, d_b: int) -> float:
    return 0.01 + 2 * n * n * (d_a + d_b) / FLOPS_PER_SECOND + 1e-7 * n * n  # similarities, then partitions
