"""Functional maps view: a latent functional map between a layer of A and a layer of B (its
similarity, diagnostics, the map C, both spectra, spectral embeddings and how well it matches the
samples), zero-shot stitching of A's layer into B's head, retrieval versus the number of anchors,
and the robustness of the LFM similarity and linear CKA when one class moves.

Each of the four is a section with its own estimate: a long one waits for the user's go-ahead, one
over the server's ceiling is refused with the way around, and each is stored under exactly the
parameters it reads (moving another class recomputes the robustness sweep only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from ..jobs import Cost
from ..spec import Param
from .base import Section

PAGE, TITLE, VERSION = "functional-maps", "Functional maps", 1
MIN_SAMPLES = 20
STITCH_COUNTS = (3, 5, 10, 20, 50, 100, 200)  # anchor counts of the stitching sweep
RETRIEVAL_COUNTS = (3, 5, 10, 20, 50, 100)  # anchor budgets of the retrieval sweep
ROBUST_ALPHAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # class shifts, x the layer's RMS spread
N_EMBED = 3  # eigenvectors kept per space for the spectral embeddings (0 is near-constant)


def _selections():
    from ..translation import SELECTIONS

    return list(SELECTIONS)


def _descriptors():
    from ..fmaps import DESCRIPTORS

    return list(DESCRIPTORS)


def _metrics():
    from ..fmaps import METRICS

    return list(METRICS)


LAYER_HELP = "The layer compared: by default the penultimate one, or an autoencoder's bottleneck (its latent space)."
PARAMS = (
    Param("fm_layer_a", "str", domain="layer:a", label="Layer of A", help=LAYER_HELP),
    Param("fm_layer_b", "str", domain="layer:b", label="Layer of B", help=LAYER_HELP),
    Param("fm_anchors", "int", 10, lo=2, hi=5000, label="Anchors",
          help="Samples whose pairing between A and B is taken as known (at most half of the samples)."),
    Param("fm_select", "str", "random", choices=_selections, label="Anchor selection",
          help="random; farthest-point (spread over A's layer); k-means (the sample nearest each centroid of "
               "A's layer); class-balanced (round robin over labels)."),
    Param("fm_descr", "list", ["geodesic"], choices=_descriptors, label="Descriptors",
          help="geodesic: graph distance to each anchor (median-normalised); labels: one indicator per class "
               "(uses the labels as known correspondences); hks: heat kernel signature, unsupervised and weak "
               "on its own."),
    Param("fm_truth", "bool", False, label="Ground-truth map",
          help="Skip the descriptors: C is Φ_Bᵀ Φ_A, known because both layers saw the same inputs (what the "
               "descriptors should recover), and the matches are read from it."),
    Param("fm_k", "int", 0, lo=0, hi=1000, label="Neighbours (0 = auto)",
          help="Size of each kNN graph; auto = min(300, n/10), at least 10."),
    Param("fm_eigs", "int", 50, lo=4, hi=200, label="Eigenvectors K",
          help="Laplacian eigenvectors per graph (the size of C)."),
    Param("fm_metric", "str", "cosine", choices=_metrics, label="Graph distance",
          help="cosine: angles around the centroid (the paper's choice); euclidean."),
    Param("fm_refine", "bool", True, label="ZoomOut refinement",
          help="Refine C by ZoomOut (Melzi et al. 2019), growing it from K − 10 to K eigenvectors."),
    Param("fm_class", "str", domain="class:d", label="Class to move",
          help="The class moved in the robustness panel (by default the first class of the data)."),
)


# ------------------------------------------------------------------ the spec's derived choices
def default_layer(model) -> str:
    """The layer compared by default: the penultimate one, or an autoencoder's bottleneck (its
    latent space) when it has one."""
    if model.kind == "autoencoder":
        for name in model.layers:
            if name.endswith("bottleneck"):
                return name
    return model.layers[max(0, len(model.layers) - 2)]


def layer(ctx, side: str) -> str:
    model = ctx.model_a if side == "a" else ctx.model_b
    chosen = ctx.p[f"fm_layer_{side}"]
    if chosen is None:
        return default_layer(model)
    if chosen not in model.layers:
        raise UserInputError(f"fm_layer_{side}: {model.ref} has no layer {chosen!r}; layers are "
                             f"{', '.join(model.layers)}.")
    return chosen


def n_anchors(ctx) -> int:
    """The anchor budget, at most half of the samples (the other half keeps something to match)."""
    return min(int(ctx.p["fm_anchors"]), len(ctx.ds) // 2)


def sweep_counts(all_counts, n: int) -> list[int]:
    """The sweep's anchor counts that leave at least half of the samples out."""
    return [c for c in all_counts if c <= n // 2]


def map_params(p) -> dict:
    """LatentFunctionalMap's parameters from the spec."""
    return {"n_neighbors": p["fm_k"] or None, "n_eigs": int(p["fm_eigs"]), "descriptors": descriptors(p),
            "metric": p["fm_metric"], "refine": bool(p["fm_refine"]), "seed": int(p["seed"])}


def descriptors(p) -> tuple:
    """The map's descriptors: none for the ground-truth map."""
    return () if p["fm_truth"] else tuple(p["fm_descr"] or ())


def retrieval_descriptors(p) -> tuple:
    """The retrieval sweep fits maps from anchors alone: the labels descriptor would hand it the
    answer, so it is left out (geodesic when nothing else is chosen)."""
    return tuple(d for d in (p["fm_descr"] or ()) if d != "labels") or ("geodesic",)


def class_code(ds, name: str | None) -> tuple[int, str]:
    """The label code of a class name (default: the first class) and its name."""
    names = ds.label_names or [str(c) for c in sorted({int(v) for v in ds.labels})]
    name = names[0] if name is None else name
    if name not in names:
        raise UserInputError(f"fm_class: no class {name!r}; classes are {', '.join(map(str, names))}.")
    return (names.index(name) if ds.label_names else int(name)), name


def chance_mrr(n: int) -> float:
    """Mean reciprocal rank of a random ranking of n candidates: H_n / n."""
    return float(np.mean(1.0 / np.arange(1, n + 1)))


def check_samples(ctx) -> None:
    n = len(ctx.ds)
    if n < MIN_SAMPLES:
        raise UserInputError(f"Functional maps need at least {MIN_SAMPLES} samples (the dataset has {n}); "
                             "raise Samples in the sidebar.")


def fill(ctx) -> dict:
    """The values this view chooses where the spec leaves them open: A's and B's default layers
    and the first class (see View.context)."""
    p, out = ctx.p, {}
    for side, model in (("a", ctx.model_a), ("b", ctx.model_b)):
        if p[f"fm_layer_{side}"] is None:
            out[f"fm_layer_{side}"] = default_layer(model)
    if p["fm_class"] is None and ctx.ds.labels is not None:
        out["fm_class"] = class_code(ctx.ds, None)[1]
    return out


def resolve(ctx) -> dict:
    """Values that cannot work with these models and data: too many anchors, neighbours or
    unknown descriptors fall back, with a note."""
    p, n, changes = ctx.p, len(ctx.ds), {}
    if n >= MIN_SAMPLES and int(p["fm_anchors"]) > n // 2:
        ctx.notes.append(f"{p['fm_anchors']} anchors is more than half of the {n} samples: using {n // 2}.")
        changes["fm_anchors"] = n // 2
    if int(p["fm_k"]) >= n:
        ctx.notes.append(f"{p['fm_k']} neighbours is not below the {n} samples: using the automatic size.")
        changes["fm_k"] = 0
    known = _descriptors()
    bad = [d for d in (p["fm_descr"] or ()) if d not in known]
    if bad:
        ctx.notes.append(f"{bad[0]!r} is not a descriptor ({', '.join(known)}): left out.")
        changes["fm_descr"] = [d for d in p["fm_descr"] if d in known] or None
    return changes


# ------------------------------------------------------------------ results
@dataclass
class MapFit:
    layer_a: str
    layer_b: str
    n_anchors: int
    selection: str
    anchors: np.ndarray  # row indices
    C: np.ndarray  # K_B x K_A, estimated from the descriptors (the ground truth without any)
    estimated: bool
    lam_a: np.ndarray
    lam_b: np.ndarray
    phi_a: np.ndarray  # n x N_EMBED, the first eigenvectors
    phi_b: np.ndarray
    p2p: np.ndarray  # for each sample of B, its match in A
    diagnostics: dict
    quality: dict  # same_sample, chance_sample (+ same_class, chance_class with labels)
    warnings: list
    seconds: float
    eigen_seconds: float


@dataclass
class Stitching:
    layer_a: str
    layer_b: str
    anchors: np.ndarray  # counts
    accuracy: dict  # translator -> accuracy per count
    upper: float  # B's own layer through B's head
    lower: float  # A's layer through B's head, untranslated
    head: str  # "model" (B's network after the layer) or "probe"
    width_a: int
    width_b: int
    active_a: int  # units of A's layer that vary over the fitting half
    condition: np.ndarray  # condition number of A's standardised anchors, per count


@dataclass
class Retrieval:
    layer_a: str
    layer_b: str
    anchors: np.ndarray
    lfm_ortho: np.ndarray
    ortho: np.ndarray
    relative: np.ndarray
    lfm_matches: np.ndarray  # fraction of samples the map matches to themselves
    chance: float
    descriptors: list


@dataclass
class Robustness:
    layer_a: str
    class_name: str
    alpha: np.ndarray
    lfm: np.ndarray
    cka: np.ndarray


@dataclass
class Result:
    fit: MapFit | None = None
    stitching: Stitching | None = None
    retrieval: Retrieval | None = None
    robustness: Robustness | None = None


# ------------------------------------------------------------------ sections
def _acts(ctx, side: str, name: str, progress=None) -> np.ndarray:
    from ..activations import extract

    model = ctx.model_a if side == "a" else ctx.model_b
    return extract(model, ctx.ds, [name], "mean", ctx.device, progress=progress)[name]


def _ready(ctx) -> tuple[str, str]:
    check_samples(ctx)
    ctx.check_pair()
    return layer(ctx, "a"), layer(ctx, "b")


def _fit(ctx, progress) -> MapFit:
    from .. import fmaps
    from ..translation import select_anchors

    la, lb = _ready(ctx)
    p, labels = ctx.p, ctx.ds.labels
    xa = _acts(ctx, "a", la, lambda f, m: progress(0.05 * f, f"A: {m}"))
    xb = _acts(ctx, "b", lb, lambda f, m: progress(0.05 + 0.05 * f, f"B: {m}"))
    m = n_anchors(ctx)
    anchors = select_anchors(xa, m, p["fm_select"], labels, p["seed"])
    lfm = fmaps.LatentFunctionalMap(**map_params(p)).fit(
        xa, xb, anchors=anchors, labels=labels, rows_aligned=True, progress=lambda f, msg: progress(0.1 + 0.9 * f, msg))
    warnings = list(lfm.warnings_)
    if "labels" in descriptors(p) and labels is None:
        warnings.append("This dataset has no labels: the 'labels' descriptor is skipped.")
    return MapFit(la, lb, m, p["fm_select"], np.asarray(anchors), lfm.C_, bool(lfm.estimated_),
                  lfm.eigenvalues_x_, lfm.eigenvalues_y_, lfm.eigenvectors_x_[:, :N_EMBED],
                  lfm.eigenvectors_y_[:, :N_EMBED], lfm.p2p_, lfm.diagnostics(), fmaps.match_quality(lfm.p2p_, labels),
                  warnings, float(lfm.timings_["total"]), float(lfm.timings_["eigen"]))


def _anchor_conditioning(xa, labels, anchor_counts, selection: str, seed: int) -> tuple[int, np.ndarray]:
    """Units of A's layer that vary over the stitching's fitting half, and for each count the
    condition number of the anchors as the translators see them (centred, standardised): least
    squares divides by the smallest of these directions, so a large number means directions the
    anchors barely pin down get large coefficients."""
    from ..stitching import split_rows
    from ..translation import select_anchors

    x = np.asarray(xa, dtype=np.float64)
    fit_rows, _ = split_rows(len(x), seed)
    active = int((np.ptp(x[fit_rows], axis=0) > 0).sum())
    out = []
    for m in anchor_counts:
        a = x[fit_rows[select_anchors(x[fit_rows], m, selection, labels[fit_rows], seed)]]
        sd = a.std(0)
        s = np.linalg.svd((a - a.mean(0)) / np.where(sd < 10 * np.finfo(float).eps, 1.0, sd), compute_uv=False)
        kept = s[s > s[0] * max(a.shape) * np.finfo(float).eps] if s.size and s[0] > 0 else s[:0]
        out.append(float(kept[0] / kept[-1]) if kept.size else float("nan"))
    return active, np.asarray(out)


def _stitching(ctx, progress) -> Stitching:
    from ..stitching import stitch_models
    from ..translation import METHODS

    la, lb = _ready(ctx)
    p, ds = ctx.p, ctx.ds
    sweep = sweep_counts(STITCH_COUNTS, len(ds))
    curve = stitch_models(ctx.model_a, ctx.model_b, ds, la, lb, sweep, METHODS, p["fm_select"], p["seed"],
                          progress=lambda f, m: progress(0.95 * f, m))
    xa, xb = _acts(ctx, "a", la), _acts(ctx, "b", lb)
    done = [int(c) for c in curve["anchors"]]
    active, condition = _anchor_conditioning(xa, ds.labels, done, p["fm_select"], p["seed"])
    return Stitching(la, lb, np.asarray(curve["anchors"]), {m: np.asarray(curve[m]) for m in METHODS},
                     float(curve["upper"]), float(curve["lower"]), str(curve["head"]), int(xa.shape[1]),
                     int(xb.shape[1]), active, condition)


def _retrieval(ctx, progress) -> Retrieval:
    from ..translation import retrieval_curve

    la, lb = _ready(ctx)
    p, ds = ctx.p, ctx.ds
    xa, xb = _acts(ctx, "a", la), _acts(ctx, "b", lb)
    descriptors = retrieval_descriptors(p)
    rc = retrieval_curve(xa, xb, sweep_counts(RETRIEVAL_COUNTS, len(ds)), p["fm_select"], ds.labels, p["seed"],
                         dict(map_params(p), descriptors=descriptors), progress=progress)
    return Retrieval(la, lb, rc["anchors"], rc["lfm+ortho"], rc["ortho"], rc["relative"], rc["lfm_matches"],
                     chance_mrr(len(ds)), list(descriptors))


def _robustness(ctx, progress) -> Robustness:
    from ..fmaps import robustness_curve

    check_samples(ctx)
    ctx.model_a.check_data(ctx.ds)
    p, ds = ctx.p, ctx.ds
    code, name = class_code(ds, p["fm_class"])
    la = layer(ctx, "a")
    xa = _acts(ctx, "a", la)
    r = robustness_curve(xa, ds.labels, code, ROBUST_ALPHAS, p["fm_k"] or None, int(p["fm_eigs"]), p["seed"],
                         p["fm_metric"], progress=progress)
    return Robustness(la, name, r["alpha"], r["lfm"], r["cka"])


# ------------------------------------------------------------------ estimates
def _widths(ctx) -> tuple[int, int]:
    from ..activations import pooled_dims

    da = pooled_dims(ctx.model_a, ctx.ds, [layer(ctx, "a")], "mean")[0]
    db = pooled_dims(ctx.model_b, ctx.ds, [layer(ctx, "b")], "mean")[0]
    return da, db


def _extraction(ctx, sides: str = "ab") -> float:
    """Running the models over the data where the chosen layers' activations are not stored yet."""
    from .. import fmaps_cost
    from ..activations import is_cached

    todo = [s for s in sides if not is_cached(ctx.model_a if s == "a" else ctx.model_b, ctx.ds, layer(ctx, s))]
    return sum(fmaps_cost.forward_seconds(len(ctx.ds), ctx.ds.kind) for _ in todo)


def _n_classes(ds) -> int:
    return 0 if ds.labels is None else len(np.unique(ds.labels))


def _fit_cost(ctx) -> Cost:
    from .. import fmaps_cost

    _ready(ctx)
    p, n = ctx.p, len(ctx.ds)
    da, db = _widths(ctx)
    cost = fmaps_cost.fit_cost(n, da, db, p["fm_k"] or None, int(p["fm_eigs"]), n_anchors(ctx),
                               _n_classes(ctx.ds), descriptors(p), bool(p["fm_refine"]))
    return Cost(cost.seconds + _extraction(ctx), cost.bytes)


def _stitching_cost(ctx) -> Cost:
    from .. import fmaps_cost
    from ..stitching import model_head

    _ready(ctx)
    n = len(ctx.ds)
    da, db = _widths(ctx)
    probe = model_head(ctx.model_b, layer(ctx, "b"), ctx.ds, db) is None
    cost = fmaps_cost.stitching_cost(n, da, db, sweep_counts(STITCH_COUNTS, n), probe, _n_classes(ctx.ds),
                                     fmaps_cost.FORWARD_ROW_S.get(ctx.ds.kind, fmaps_cost.FORWARD_ROW_S["image"]))
    return Cost(cost.seconds + _extraction(ctx), cost.bytes)


def _retrieval_cost(ctx) -> Cost:
    from .. import fmaps_cost

    _ready(ctx)
    p, n = ctx.p, len(ctx.ds)
    da, db = _widths(ctx)
    cost = fmaps_cost.retrieval_cost(n, da, db, p["fm_k"] or None, int(p["fm_eigs"]), sweep_counts(RETRIEVAL_COUNTS, n),
                                     _n_classes(ctx.ds), retrieval_descriptors(p), bool(p["fm_refine"]))
    return Cost(cost.seconds + _extraction(ctx), cost.bytes)


def _robustness_cost(ctx) -> Cost:
    from .. import fmaps_cost

    check_samples(ctx)
    p = ctx.p
    da = _widths(ctx)[0]
    cost = fmaps_cost.robustness_cost(len(ctx.ds), da, p["fm_k"] or None, int(p["fm_eigs"]), len(ROBUST_ALPHAS))
    return Cost(cost.seconds + _extraction(ctx, "a"), cost.bytes)


def _labelled(ctx) -> bool:
    return ctx.ds.labels is not None


MAP_READS = ("fm_layer_a", "fm_layer_b", "fm_descr", "fm_k", "fm_eigs", "fm_metric", "fm_refine", "fm_select", "seed")
FEWER = "Use fewer samples, neighbours or eigenvectors"
SECTIONS = (
    Section("fit", _fit, MAP_READS + ("fm_anchors", "fm_truth"), "abd", _fit_cost, title="the functional map",
            ways_around=f"{FEWER}, or fewer anchors with the geodesic descriptor."),
    Section("stitching", _stitching, ("fm_layer_a", "fm_layer_b", "fm_select", "seed"), "abd", _stitching_cost,
            wanted=_labelled, title="the stitching sweep", ways_around="Use fewer samples."),
    Section("retrieval", _retrieval, MAP_READS, "abd", _retrieval_cost,
            title=f"the retrieval sweep ({len(RETRIEVAL_COUNTS)} anchor budgets)",
            ways_around=f"{FEWER}: the sweep fits one map per anchor budget and ranks every sample against "
                        "every other."),
    Section("robustness", _robustness, ("fm_layer_a", "fm_class", "fm_k", "fm_eigs", "fm_metric", "seed"), "ad",
            _robustness_cost, wanted=_labelled, title=f"the robustness sweep ({len(ROBUST_ALPHAS)} shifts)",
            ways_around=f"{FEWER}: the sweep builds two kNN graphs and their spectra per shift."),
)


def summary(result) -> dict:
    out = {}
    if result.fit is not None:
        f = result.fit
        out.update({"LFM similarity": float(f.diagnostics["similarity"]), "same sample": f.quality["same_sample"]})
        if "same_class" in f.quality:
            out["same class"] = f.quality["same_class"]
        out.update({"orthogonality deviation": float(f.diagnostics["orthogonality_deviation"]),
                    "Laplacian commutativity": float(f.diagnostics["laplacian_commutativity"]),
                    "graph pieces (A, B)": f"{f.diagnostics['components_x']}, {f.diagnostics['components_y']}"})
    if result.stitching is not None:
        s = result.stitching
        out["stitching: B's layer through B's head (no stitch)"] = s.upper
        out["stitching: A's layer untranslated into B's head"] = s.lower
        best = max(s.accuracy, key=lambda m: np.nanmax(s.accuracy[m]))
        out[f"stitching: best ({best})"] = float(np.nanmax(s.accuracy[best]))
    if result.retrieval is not None and len(result.retrieval.anchors):
        r = result.retrieval
        out[f"retrieval MRR, LFM + ortho at {int(r.anchors[-1])} anchors"] = float(r.lfm_ortho[-1])
        out["retrieval MRR by chance"] = r.chance
    if result.robustness is not None:
        r = result.robustness
        out[f"LFM similarity with class {r.class_name} moved by {r.alpha[-1]:g}"] = float(r.lfm[-1])
        out[f"linear CKA with class {r.class_name} moved by {r.alpha[-1]:g}"] = float(r.cka[-1])
    return out
