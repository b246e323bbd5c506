"""Figures of the Projections view, from its Result (no numerics here): the page, the CLI and the
report draw the same scatter plots."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import projection_scatter

METHOD_NAMES = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE", "precomputed": "uploaded"}


def hover_texts(ds, rows=None) -> list[str]:
    """One text per point: every row of the data, or the ``rows`` the views draw (streamed)."""
    return [ds.hover_text(int(i)) for i in (range(len(ds)) if rows is None else rows)]


def view_a(result, p, ds, colours, selected=(), hover=None) -> object:
    e = result.projection_a
    title = f"A · {p['a']} · {e.layer}" + (f" ({METHOD_NAMES[e.method]})" if e.method != "precomputed" else "")
    return projection_scatter(e.coords, colours.values, colours.kind, hover or hover_texts(ds, e.rows), title,
                              e.axis_titles, colours.names, selected)


def view_b(result, p, ds, colours, selected=(), hover=None) -> object:
    e, al = result.projection_b, result.alignment
    axes = [f"A's axis {i + 1}" for i in range(al.coords_b.shape[1])]  # B is rotated into A's frame
    return projection_scatter(al.coords_b, colours.values, colours.kind, hover or hover_texts(ds, e.rows),
                              f"B · {p['b']} · {e.layer} (aligned to A)", axes, colours.names, selected)


def walk_view(walk, layer: str, p, ds, hover=None) -> object:
    m = METHOD_NAMES[p["method"]]
    labels = ds.labels if ds.labels is None or walk.rows is None else np.asarray(ds.labels)[walk.rows]
    return projection_scatter(walk.coords[layer], labels, "category", hover or hover_texts(ds, walk.rows),
                              f"{walk.side} · {walk.ref} · {layer} (aligned to the previous layer)",
                              [f"{m} axis {i} (aligned)" for i in (1, 2, 3)], ds.label_names, [])


def all_figures(result, spec, ctx) -> dict:
    """Every figure the result supports, by name (the CLI and the report), coloured as the spec asks."""
    from ..views.projections import colouring, rows_of

    p, ds, out = spec.params, ctx.ds, {}
    hover = hover_texts(ds, rows_of(result))
    colours = colouring(result, ds, p["colour"])
    if result.projection_a is not None:
        out["view_a"] = view_a(result, p, ds, colours, hover=hover)
    if result.alignment is not None:
        out["view_b"] = view_b(result, p, ds, colours, hover=hover)
    for walk in (result.walk_a, result.walk_b):
        if walk is not None:
            shown = p["path_layer"] if p["path_layer"] in walk.coords else walk.layers[-1]
            out["path_view"] = walk_view(walk, shown, p, ds, hover)
    return out


def all_tables(result) -> dict:
    if result.alignment is None:
        return {}
    a, b = result.projection_a.coords, result.alignment.coords_b
    cols = {f"a{i + 1}": a[:, i] for i in range(a.shape[1])}
    cols.update({f"b{i + 1}": b[:, i] for i in range(b.shape[1])})
    if result.agreement is not None:
        cols["knn_agreement"] = result.agreement.per_sample
    return {"coordinates": pd.DataFrame({"row": result.alignment.rows, **cols})}
