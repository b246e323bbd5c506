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


def run_models(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    import pandas as pd

    from . import evaluate
    from .models import layer_table

    ds, model_a, model_b, prov = _inputs(spec)
    out = PageResult(spec, provenance=prov)
    for slot, model in (("A", model_a), ("B", model_b)):
        ev = evaluate.evaluate(model, ds, device=device)
        out.numbers[f"{slot} {ev.metric}"] = ev.value
        out.tables[f"layers_{slot}"] = layer_table(model, ds)
        if progress:
            progress(0.5 if slot == "A" else 1.0, f"evaluated {slot}")
    out.tables["scores"] = pd.DataFrame([{"model": k.split()[0], "metric": k.split()[1], "value": v}
                                         for k, v in out.numbers.items()])
    return out


def similarity_params(spec: AnalysisSpec) -> dict:
    """The measure's own parameters, as the Similarity page passes them."""
    from .similarity import MEASURES

    return {k: spec.params[k] for k in ("threshold", "k", "variance", "rdm") if k in MEASURES[spec.params["measure"]].params}


def run_similarity(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    from . import figures
    from . import similarity as sim

    ds, model_a, model_b, prov = _inputs(spec)
    p = spec.params
    layers_a = _layers(model_a, p.get("layers_a"), "layers_a")
    layers_b = _layers(model_b, p.get("layers_b"), "layers_b")
    m = sim.MEASURES[p["measure"]]
    params = similarity_params(spec)
    cka_family = m.family == "cka" and p["measure"] != "rbf_cka"
    batch = int(p["batch"]) if (cka_family and p["batch"]) else None  # as the page: None = all at once
    out = PageResult(spec, provenance=prov)
    parts = {"AB": (model_a, model_b, layers_a, layers_b), "AA": (model_a, model_a, layers_a, layers_a),
             "BB": (model_b, model_b, layers_b, layers_b)}
    for i, (name, (ma, mb, lx, ly)) in enumerate(parts.items()):
        sub = None if progress is None else (lambda f, msg, i=i: progress((i + f) / 3, f"{name}: {msg}"))
        df = sim.layer_similarity(ma, mb, ds, p["measure"], lx, ly, p["pooling"], batch, device=device,
                                  progress=sub, **params)
        out.tables[f"similarity_{name}"] = df
        title = {"AB": f"{m.label}: {p['a']} (A) vs {p['b']} (B)", "AA": f"A–A ({p['a']})",
                 "BB": f"B–B ({p['b']})"}[name]
        axes = {"AA": {"x_title": "model A layer"}, "BB": {"y_title": "model B layer"}}.get(name, {})  # as the page
        out.figures[f"heatmap_{name}"] = figures.similarity_heatmap(
            df, title, *m.value_range, best=sim.best_matches(df) if name == "AB" else None, colorbar_title=m.label,
            **axes)
    best = sim.best_matches(out.tables["similarity_AB"])
    out.numbers = {f"best match for A:{a}": f"B:{b} ({v:.4f})" for a, b, v in best}
    return out


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
    return out


RUNNERS: dict[str, Callable[..., PageResult]] = {
    "models": run_models,
    "similarity": run_similarity,
    "projections": run_projections,
}


def run(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    if spec.page not in RUNNERS:
        raise UserInputError(f"No headless run for the {spec.page!r} page; runs exist for {', '.join(RUNNERS)}.")
    return RUNNERS[spec.page](spec, progress=progress, device=device)


def report_items(result: PageResult) -> list[dict]:
    """The result as report items (see analysis.report), figures first."""
    import time

    import pandas as pd

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    base = {"page": result.spec.page, "spec": result.spec.to_json(), "provenance": result.provenance,
            "pinned": stamp, "notes": ""}
    items = []
    for name, fig in result.figures.items():
        title = (fig.layout.title.text if fig.layout.title else None) or name
        items.append({**base, "id": name, "kind": "figure", "title": title, "caption": title, "figure": fig.to_json()})
    for name, df in result.tables.items():
        keep_index = not isinstance(df.index, pd.RangeIndex)
        items.append({**base, "id": name, "kind": "table", "title": name, "caption": name,
                      "csv": df.to_csv(index=keep_index), "html": df.to_html(index=keep_index, border=0)})
    return items
