"""Headless runs of a page's analysis from its AnalysisSpec: the CLI's engine.

A runner computes what its page shows, with the page's own library calls and parameters, so the
results land under the same store keys: a view computed by the CLI opens instantly in the
dashboard, and the numbers agree. Each returns a :class:`PageResult` of named figures, tables and
headline numbers, which the CLI writes to files and, on request, to an HTML report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


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


def run_attributions(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    from .lrp import run_page

    return run_page(spec, progress=progress, device=device)


RUNNERS: dict[str, Callable[..., PageResult]] = {
    "projections": run_projections,
    "attributions": run_attributions,
}


def run(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    if spec.page not in RUNNERS:
        raise UserInputError(f"No headless run for the {spec.page!r} page; runs exist for {', '.join(RUNNERS)}.")
    return RUNNERS[spec.page](spec, progress=progress, device=device)
