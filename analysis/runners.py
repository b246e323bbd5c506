"""Headless runs of a page's analysis from its AnalysisSpec: the CLI's engine.

A runner computes what its page shows, with the page's own library calls and parameters, so the
results land under the same store keys: a view computed by the CLI opens instantly in the
dashboard, and the numbers agree. Each returns a :class:`PageResult` of named figures, tables and
headline numbers, which the CLI writes to files and, on request, to an HTML report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import UserInputError
from .spec import AnalysisSpec

Progress = Callable[[float, str], None]


@dataclass
class PageResult:
    spec: AnalysisSpec
    figures: dict = field(default_factory=dict)  # name -> plotly Figure
    tables: dict = field(default_factory=dict)  # name -> pandas DataFrame
    numbers: dict = field(default_factory=dict)  # name -> float / str (summary.json)
    provenance: dict = field(default_factory=dict)


def _inputs(spec: AnalysisSpec):
    from . import data, models

    p = spec.params
    ds = data.load(p["data"], n=p["n"], seed=p["seed"], split=p["split"])
    model_a, model_b = models.load(p["a"]), models.load(p["b"])
    model_a.check_data(ds)
    model_b.check_data(ds)
    prov = {"model_a": {"ref": p["a"], "sha256": model_a.sha256}, "model_b": {"ref": p["b"], "sha256": model_b.sha256},
            "data": {"name": p["data"], "rows": len(ds), "sha256": ds.sha256}}
    return ds, model_a, model_b, prov


def _layers(model, wanted, what: str) -> list[str]:
    if not wanted:
        return list(model.layers)
    missing = [w for w in wanted if w not in model.layers]
    if missing:
        raise UserInputError(f"{what}: no layer {missing[0]!r}; layers are {', '.join(model.layers)}.")
    return list(wanted)


def run_projections(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    import pandas as pd

    from . import figures
    from . import projection as proj
    from .activations import extract

    ds, model_a, model_b, prov = _inputs(spec)
    p = spec.params
    layer_a = p.get("proj_a") or model_a.layers[-1]
    layer_b = p.get("proj_b") or model_b.layers[-1]
    _layers(model_a, [layer_a], "proj_a")
    _layers(model_b, [layer_b], "proj_b")
    params = ({"n_neighbors": p["umap_k"], "min_dist": p["umap_d"]} if p["method"] == "umap"
              else {"perplexity": p["perplexity"]} if p["method"] == "tsne" else {})
    xa = extract(model_a, ds, [layer_a], device=device)[layer_a]
    xb = extract(model_b, ds, [layer_b], device=device)[layer_b]
    pa = proj.project(xa, p["method"], p["dims"], p["seed"], progress=progress, **params)
    pb = proj.project(xb, p["method"], p["dims"], p["seed"], **params)
    al = proj.align(pa, pb)
    agreement = proj.knn_agreement(xa, xb, k=min(10, len(ds) - 1))
    hover = [ds.hover_text(i) for i in range(len(ds))]
    out = PageResult(spec, provenance=prov)
    out.figures["view_a"] = figures.projection_scatter(pa.coords, ds.labels, "category", hover,
                                                       f"A · {p['a']} · {layer_a}", pa.axis_titles(), ds.label_names)
    out.figures["view_b"] = figures.projection_scatter(al.aligned, ds.labels, "category", hover,
                                                       f"B · {p['b']} · {layer_b} (aligned to A)",
                                                       [f"A's axis {i + 1}" for i in range(pa.coords.shape[1])],
                                                       ds.label_names)
    cols = {f"a{i + 1}": pa.coords[:, i] for i in range(pa.coords.shape[1])}
    cols.update({f"b{i + 1}": al.aligned[:, i] for i in range(al.aligned.shape[1])})
    out.tables["coordinates"] = pd.DataFrame({"row": ds.indices, **cols, "knn_agreement": agreement})
    out.numbers["mean k-NN agreement"] = float(agreement.mean())
    # "Through the layers" (model A, as the page opens): every layer, each aligned to the previous
    path = proj.layer_path(extract(model_a, ds, list(model_a.layers), device=device), p["method"], p["dims"],
                           p["seed"], **params)
    last = model_a.layers[-1]
    m = p["method"].upper()
    out.figures["path_view"] = figures.projection_scatter(path[last], ds.labels, "category", hover,
                                                          f"A · {p['a']} · {last} (aligned to the previous layer)",
                                                          [f"{m} 1", f"{m} 2", f"{m} 3"], ds.label_names, [])
    return out


def _layer(model, wanted, default: str, what: str) -> str:
    return _layers(model, [wanted or default], what)[0]


def run_functional_maps(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    """The Functional maps page's map (similarity, diagnostics, C, spectra, embeddings) and its
    stitching curve, under the page's store keys."""
    import pandas as pd

    from . import fmaps, stitching
    from . import fmaps_figures as ff
    from . import translation as tr
    from .activations import extract

    ds, model_a, model_b, prov = _inputs(spec)
    p = spec.params
    layer_a = _layer(model_a, p.get("fm_layer_a"), fmaps.default_layer(model_a), "fm_layer_a")
    layer_b = _layer(model_b, p.get("fm_layer_b"), fmaps.default_layer(model_b), "fm_layer_b")
    n = len(ds)
    if n < 20:
        raise UserInputError(f"Functional maps need at least 20 samples (got {n}).")
    xa = extract(model_a, ds, [layer_a], device=device)[layer_a]
    xb = extract(model_b, ds, [layer_b], device=device)[layer_b]
    n_anchors = min(int(p["fm_anchors"]), n // 2)
    anchors = tr.select_anchors(xa, n_anchors, p["fm_select"], ds.labels, p["seed"])
    params = {"n_neighbors": p["fm_k"] or None, "n_eigs": p["fm_eigs"], "descriptors": tuple(p["fm_descr"]),
              "metric": p["fm_metric"], "refine": bool(p["fm_refine"]), "seed": p["seed"]}
    keybase = {"a": model_a.sha256, "b": model_b.sha256, "data": ds.sha256, "la": layer_a, "lb": layer_b}
    half = None if progress is None else (lambda f, m: progress(0.5 * f, m))
    fit = fmaps.cached("fmap_view", lambda: fmaps.fit_arrays(xa, xb, anchors, ds.labels, True, progress=half,
                                                              **params),
                       anchors=anchors.tolist(), selection=p["fm_select"], **keybase, **params)
    out = PageResult(spec, provenance=prov)
    quality = fmaps.match_quality(fit["p2p"], ds.labels)
    out.numbers = {"LFM similarity": float(fit["diag_similarity"]), "same sample": quality["same_sample"],
                   **({"same class": quality["same_class"]} if "same_class" in quality else {}),
                   "orthogonality deviation": float(fit["diag_orthogonality_deviation"]),
                   "Laplacian commutativity": float(fit["diag_laplacian_commutativity"]),
                   "graph pieces (A, B)": f"{int(fit['diag_components_x'])}, {int(fit['diag_components_y'])}"}
    hover = [ds.hover_text(i) for i in range(n)]
    out.figures["fm_c"] = ff.c_heatmap(fit["C"], f"Estimated C ({n_anchors} anchors, {p['fm_select']})")
    out.figures["fm_spectra"] = ff.spectra(fit["lam_x"], fit["lam_y"])
    out.figures["fm_embed"] = ff.spectral_embeddings(fit["phi_x"], fit["phi_y"], ds.labels, hover, ds.label_names,
                                                     f"A · {layer_a}", f"B · {layer_b}")
    if ds.labels is not None:  # the page's stitching sweep, same counts, same store key
        counts = [c for c in stitching.STITCH_COUNTS if c <= n // 2]
        methods = list(tr.METHODS)
        key = dict(keybase, counts=counts, selection=p["fm_select"], seed=p["seed"])
        rest = None if progress is None else (lambda f, m: progress(0.5 + 0.5 * f, m))
        curve = fmaps.cached("fmap_stitch", lambda: stitching.stitch_models(
            model_a, model_b, ds, layer_a, layer_b, counts, methods, p["fm_select"], p["seed"], progress=rest), **key)
        out.figures["fm_stitch"] = ff.stitching_figure(curve, methods)
        table = {"anchors": np.asarray(curve["anchors"]).astype(int)}
        table.update({m: np.asarray(curve[m]) for m in methods if m in curve})
        out.tables["stitching"] = pd.DataFrame(table)
        for bound in ("upper", "lower"):
            if bound in curve:
                out.numbers[f"stitching {bound} bound"] = float(np.asarray(curve[bound]).ravel()[0])
    # the retrieval sweep and the robustness panel, as the page computes them
    counts = [c for c in tr.RETRIEVAL_COUNTS if c <= n // 2]
    lfm_params = dict(params, descriptors=tuple(d for d in p["fm_descr"] if d != "labels") or ("geodesic",))
    rc = fmaps.cached("fmap_retrieval", lambda: dict(
        tr.retrieval_curve(xa, xb, counts, p["fm_select"], ds.labels, p["seed"], lfm_params),
        chance=np.mean(1.0 / np.arange(1, n + 1))), **dict(keybase, counts=counts, selection=p["fm_select"], **params))
    out.figures["fm_retrieval"] = ff.retrieval_figure(rc)
    out.tables["retrieval"] = pd.DataFrame({"anchors": rc["anchors"].astype(int), "LFM + ortho": rc["lfm+ortho"],
                                            "ortho (anchors only)": rc["ortho"], "relative": rc["relative"]})
    if ds.labels is not None:
        classes = [str(c) for c in (ds.label_names or sorted({int(v) for v in ds.labels}))]
        cls_name = p.get("fm_class") or classes[0]
        if cls_name not in classes:
            raise UserInputError(f"fm_class: no class {cls_name!r}; classes are {', '.join(classes)}.")
        cls = classes.index(cls_name)
        rob_key = dict(keybase, cls=cls, alphas=list(fmaps.ROBUST_ALPHAS), k=params["n_neighbors"], eigs=p["fm_eigs"],
                       metric=p["fm_metric"], seed=p["seed"])
        rob = fmaps.cached("fmap_robust", lambda: fmaps.robustness_curve(
            xa, ds.labels, cls, fmaps.ROBUST_ALPHAS, params["n_neighbors"], p["fm_eigs"], p["seed"], p["fm_metric"]),
            **rob_key)
        out.figures["fm_robust"] = ff.robustness_figure(rob, cls_name)
    return out


def run_attributions(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    from .lrp import run_page

    return run_page(spec, progress=progress, device=device)


RUNNERS: dict[str, Callable[..., PageResult]] = {
    "projections": run_projections,
    "functional-maps": run_functional_maps,
    "attributions": run_attributions,
}


def run(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    if spec.page not in RUNNERS:
        raise UserInputError(f"No headless run for the {spec.page!r} page; runs exist for {', '.join(RUNNERS)}.")
    return RUNNERS[spec.page](spec, progress=progress, device=device)
