"""Figures and captions of the Functional maps view, from its Result (no numerics here): the page,
the CLI and the report draw the same figures. Every title names what the figure shows, both
models and both layers, so a pinned figure still says it on a slide."""
from __future__ import annotations

import html

import numpy as np

from . import FONT, _finish, paired_scatter

PALETTE = {"lfm+ortho": "#d62728", "ortho": "#1f77b4", "relative": "#2ca02c", "linear": "#ff7f0e",
           "l-ortho": "#9467bd", "affine": "#8c564b"}
NAMES = {"lfm+ortho": "LFM + ortho (dense matches)", "ortho": "ortho on the anchors alone",
         "relative": "relative representations"}
WIDE = 680  # px: the C map's width (square cells next to the colour bar), room for a title naming both models
UPPER = "B's layer → B's head (no stitch)"
LOWER = "A's layer → B's head, untranslated"


def _t(text) -> str:
    """User-derived text (model, layer and class names) made inert for Plotly's HTML-like labels."""
    return html.escape(str(text), quote=False)


def side(p, which: str, layer_name: str) -> str:
    """'A zoo:mlp-s0 · net.relu3'."""
    return f"{which} {_t(p[which.lower()])} · {_t(layer_name)}"


def _layout(fig, title: str, subtitle: str = "", height: int = 380, legend_below: bool = True):
    """House layout: the title (and a subtitle) top left, clear of the toolbar at the top right;
    legends under the plot, where the toolbar never reaches."""
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15),
                                 subtitle=dict(text=subtitle, font=dict(size=12, color="#555"))),
                      height=height, font=FONT, plot_bgcolor="white",
                      margin=dict(l=10, r=10, t=92 if subtitle else 56, b=10))
    if legend_below:
        fig.update_layout(legend=dict(orientation="h", yref="container", y=0.0, yanchor="bottom", x=0.0,
                                      xanchor="left"),
                          margin=dict(b=80))
    fig.update_xaxes(gridcolor="#eee", zeroline=False)
    fig.update_yaxes(gridcolor="#eee", zeroline=False)
    return _finish(fig)


# ------------------------------------------------------------------ the map
def c_map(result, p):
    """C (K_B x K_A): rows are B's eigenvectors, columns A's. A diagonal band = matching spectra."""
    import plotly.graph_objects as go

    f = result.fit
    C = np.asarray(f.C)
    lim = float(np.abs(C).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=C, x=list(range(C.shape[1])), y=list(range(C.shape[0])), zmid=0, zmin=-lim,
                               zmax=lim, colorscale="RdBu_r", colorbar=dict(thickness=12, title="C", x=0.76, xanchor="left"),
                               hovertemplate="A eigvec %{x}<br>B eigvec %{y}<br>C = %{z:.3f}<extra></extra>"))
    # square cells: the plot shrinks to a square rather than the axes running past the matrix
    fig.update_yaxes(autorange="reversed", title="eigenvector of B's graph", scaleanchor="x", constrain="domain")
    fig.update_xaxes(title="eigenvector of A's graph", constrain="domain", constraintoward="left", domain=[0, 0.74])
    how = (f"estimated from {f.n_anchors} {_t(f.selection)} anchors ({_t(f.diagnostics['descriptors'])})"
           if f.estimated else "ground truth Φ_Bᵀ Φ_A (no descriptors)")
    fig = _layout(fig, f"Functional map C: {side(p, 'A', f.layer_a)} → {side(p, 'B', f.layer_b)}", how, 560,
                  legend_below=False)
    return fig.update_layout(width=WIDE)  # a square map and its colour bar, with room for the title


def spectra(result, p):
    """Both Laplacian spectra (eigenvalues in [0, 2])."""
    import plotly.graph_objects as go

    f = result.fit
    fig = go.Figure()
    for lam, which, name, colour in ((f.lam_a, "A", f.layer_a, "#1f77b4"), (f.lam_b, "B", f.layer_b, "#d62728")):
        fig.add_trace(go.Scatter(x=np.arange(len(lam)), y=lam, mode="lines+markers", name=side(p, which, name),
                                 marker=dict(size=4, color=colour), line=dict(color=colour)))
    fig.update_xaxes(title="eigenvalue index")
    fig.update_yaxes(title="Laplacian eigenvalue")
    return _layout(fig, f"Laplacian spectra: {side(p, 'A', f.layer_a)} and {side(p, 'B', f.layer_b)}",
                   "eigenvalues of each layer's kNN graph; similar curves = similar graph structure", 360)


def embeddings(result, p, ds):
    """Eigenvectors 1 and 2 (0 is near-constant) of each graph, side by side, coloured by label."""
    f = result.fit
    hover = [ds.hover_text(i) for i in range(len(ds))]
    fig = paired_scatter(f.phi_a[:, 1:3], f.phi_b[:, 1:3], ds.labels, hover, side(p, "A", f.layer_a),
                         side(p, "B", f.layer_b), ds.label_names)
    fig.update_xaxes(title="Laplacian eigenvector 1")
    fig.update_yaxes(title="Laplacian eigenvector 2")
    fig.update_layout(title=dict(text=f"Spectral embeddings: {side(p, 'A', f.layer_a)} and {side(p, 'B', f.layer_b)}",
                                 x=0.01, font=dict(size=15)),
                      margin=dict(t=80), height=470)
    fig.update_annotations(yshift=4)  # the subplot titles, clear of the figure title
    return fig


def diagnostics_table(result):
    import pandas as pd

    f = result.fit
    d = f.diagnostics
    rows = [("ground-truth C: ‖CᵀC − I‖ / √K (0 same graph, ~0.9 unrelated)", d.get("truth_orthogonality_deviation")),
            ("similarity of the estimated C", d["similarity_estimated"]),
            ("‖CᵀC − I‖ / √K of the estimated C (0 = orthogonal map)", d["orthogonality_deviation"]),
            ("Laplacian commutativity ‖CΛ_A − Λ_B C‖ / ‖C‖", d["laplacian_commutativity"]),
            ("estimated vs ground-truth C (relative error)", d.get("map_error")),
            ("graph pieces (A, B)", f"{d['components_x']}, {d['components_y']}"),
            ("eigen-solver converged", "yes" if d["converged"] else "no"),
            ("eigenvectors K", d["n_eigs"]),
            ("descriptors used", d["descriptors"])]
    return pd.DataFrame({"diagnostic": [r[0] for r in rows],
                         "value": [f"{v:.4f}" if isinstance(v, float) else str(v) for _, v in rows]})


# ------------------------------------------------------------------ stitching
def _head(s) -> str:
    return ("B's own network after its layer" if s.head == "model" else
            "a logistic-regression probe trained on B's layer (B has no classifier head there)")


def stitching(result, p):
    """Stitched accuracy per translator versus anchors, with the two reference scores as legend
    entries (never labels drawn on top of each other) and, where the sweep reaches it, the count
    of A's active units (where least squares is worst conditioned)."""
    import plotly.graph_objects as go

    s = result.stitching
    x = np.asarray(s.anchors)
    fig = go.Figure()
    for m, acc in s.accuracy.items():
        fig.add_trace(go.Scatter(x=x, y=acc, mode="lines+markers", name=m,
                                 line=dict(color=PALETTE.get(m), dash="dash" if m == "affine" else "solid"),
                                 hovertemplate="%{x} anchors<br>accuracy %{y:.3f}<extra>" + m + "</extra>"))
    for name, value, colour, dash in ((UPPER, s.upper, "#222", "dash"), (LOWER, s.lower, "#888", "dot")):
        fig.add_trace(go.Scatter(x=[x.min(), x.max()], y=[value, value], mode="lines", name=f"{name}: {value:.3f}",
                                 line=dict(color=colour, dash=dash, width=1.5),
                                 hovertemplate=f"{name}<br>accuracy {value:.3f}<extra></extra>"))
    if len(x) and x.min() <= s.active_a <= x.max():  # a trace, not a shape: shapes on log axes take log10 units
        fig.add_trace(go.Scatter(x=[s.active_a, s.active_a], y=[0, 1.05], mode="lines",
                                 name=f"anchors = A's active units ({s.active_a})",
                                 line=dict(color="#9467bd", dash="dot", width=1), hoverinfo="skip"))
    fig.update_xaxes(title="anchors", type="log", tickvals=list(x))
    fig.update_yaxes(title="accuracy on the held-out half", range=[0, 1.05])
    return _layout(fig, f"Zero-shot stitching: {side(p, 'A', s.layer_a)} → {side(p, 'B', s.layer_b)}",
                   f"A's layer → a translator fitted on the anchors → {_head(s)}", 460)


def stitching_captions(result) -> list[str]:
    """What the stitching chart's lines are, and why the translators behave as they do here
    (markdown, for the page and the report)."""
    s = result.stitching
    best_method = max(s.accuracy, key=lambda m: np.nanmax(s.accuracy[m]))
    best = float(np.nanmax(s.accuracy[best_method]))
    out = [f"Anchors (and the probe, if any) come from one half of the samples; accuracy is measured on the "
           f"other half. **{UPPER}** ({s.upper:.3f}): B's own layer read by the same head, i.e. how well B's "
           f"representation does. It is not a ceiling: the stitched model classifies *A's* representation, moved "
           f"into B's space, so it beats this line whenever A's layer separates the classes better than B's. "
           f"**{LOWER}** ({s.lower:.3f}): A's layer fed to the head as it is (zero-padded or cut to B's width), "
           "what stitching without a translator gives."]
    if best > s.upper + 0.05:
        out.append(f"Here the stitch reaches {best:.3f} ({best_method}) against {s.upper:.3f} for B's own layer: "
                   "A's layer carries the classes better than B's, and the translation hands that structure to B's "
                   "head.")
    out.append("'linear' and 'affine' coincide: both spaces are centred on their anchors first, so the bias is 0.")
    out.append(_least_squares_caption(s))
    return out


def _least_squares_caption(s) -> str:
    x, cond = np.asarray(s.anchors), np.asarray(s.condition, dtype=float)
    if not len(x):
        return ""
    if s.active_a > x.max():
        return (f"Every anchor count here is below the {s.active_a} active units of A's layer (of {s.width_a}), so "
                "'linear', 'affine' and 'l-ortho' fit the anchors exactly and only the least-norm choice decides the "
                "other directions; 'ortho' (Procrustes) is the safe choice with few anchors.")
    i = int(np.nanargmax(cond)) if np.isfinite(cond).any() else 0
    text = (f"Least squares ('linear', 'affine', and 'l-ortho' before it is orthogonalised) inverts the covariance "
            f"of A's anchors. With about as many anchors as A's layer has active units ({s.active_a} of "
            f"{s.width_a} vary over the samples), some directions are pinned down by almost nothing: the anchors' "
            f"condition number (largest over smallest spread of A's standardised anchors) climbs from "
            f"{_number(cond[0])} at {int(x[0])} anchors to {_number(cond[i])} at {int(x[i])}, the fit gives "
            "those directions large coefficients, and 'linear' dips there. ")
    lortho = s.accuracy.get("l-ortho")
    if lortho is not None and np.isfinite(lortho).any():
        j = int(np.nanargmin(lortho))
        text += (f"'l-ortho' replaces that fit by the nearest orthogonal map, which weighs every direction "
                 f"equally, badly determined ones included: it falls to {lortho[j]:.3f} at {int(x[j])} anchors and "
                 "needs many more anchors than units to recover. 'ortho' (Procrustes) never inverts the covariance "
                 "and does not dip.")
    return text


def _number(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


# ------------------------------------------------------------------ retrieval and robustness
def retrieval(result, p):
    """MRR of retrieving each sample's counterpart versus the number of anchors."""
    import plotly.graph_objects as go

    r = result.retrieval
    x = np.asarray(r.anchors)
    fig = go.Figure()
    for key, y in (("lfm+ortho", r.lfm_ortho), ("ortho", r.ortho), ("relative", r.relative)):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=NAMES[key], line=dict(color=PALETTE[key]),
                                 hovertemplate="%{x} anchors<br>MRR %{y:.3f}<extra>" + NAMES[key] + "</extra>"))
    if len(x):
        fig.add_trace(go.Scatter(x=[x.min(), x.max()], y=[r.chance, r.chance], mode="lines",
                                 name=f"chance: {r.chance:.3f}", line=dict(color="#888", dash="dot", width=1.5)))
    fig.update_xaxes(title="anchors", type="log", tickvals=list(x))
    fig.update_yaxes(title="retrieval MRR", range=[0, 1.02])
    return _layout(fig, f"Retrieval: {side(p, 'A', r.layer_a)} → {side(p, 'B', r.layer_b)}",
                   "mean reciprocal rank of each sample's own counterpart in B (1 = always ranked first)", 420)


def retrieval_table(result):
    import pandas as pd

    r = result.retrieval
    return pd.DataFrame({"anchors": np.asarray(r.anchors).astype(int), "LFM + ortho": r.lfm_ortho,
                         "ortho (anchors only)": r.ortho, "relative": r.relative, "LFM exact matches": r.lfm_matches})


def robustness(result, p):
    import plotly.graph_objects as go

    r = result.robustness
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=r.alpha, y=r.lfm, mode="lines+markers", name="LFM similarity",
                             line=dict(color="#d62728")))
    fig.add_trace(go.Scatter(x=r.alpha, y=r.cka, mode="lines+markers", name="linear CKA", line=dict(color="#1f77b4")))
    fig.update_xaxes(title=f"shift of class {_t(r.class_name)} (× RMS spread of the layer)")
    fig.update_yaxes(title="similarity to the unperturbed layer", range=[0, 1.02])
    return _layout(fig, f"Robustness: {side(p, 'A', r.layer_a)} against a copy with class {_t(r.class_name)} moved",
                   "one class shifted along a random direction; the other samples stay put", 400)


def stitching_table(result):
    import pandas as pd

    s = result.stitching
    table = {"anchors": np.asarray(s.anchors).astype(int)}
    table.update({m: np.asarray(v) for m, v in s.accuracy.items()})
    table["anchors' condition number"] = np.asarray(s.condition)
    return pd.DataFrame(table)


# ------------------------------------------------------------------ the CLI and the report
def all_figures(result, spec, ctx) -> dict:
    p, out = spec.params, {}
    if result.fit is not None:
        out["fm_c"] = c_map(result, p)
        out["fm_spectra"] = spectra(result, p)
        out["fm_embed"] = embeddings(result, p, ctx.ds)
    if result.stitching is not None:
        out["fm_stitch"] = stitching(result, p)
    if result.retrieval is not None:
        out["fm_retrieval"] = retrieval(result, p)
    if result.robustness is not None:
        out["fm_robust"] = robustness(result, p)
    return out


def all_tables(result) -> dict:
    import pandas as pd

    out = {}
    if result.fit is not None:
        out["diagnostics"] = diagnostics_table(result)
        out["spectra"] = pd.DataFrame({"A": result.fit.lam_a, "B": result.fit.lam_b})  # both have K values
    if result.stitching is not None:
        out["stitching"] = stitching_table(result)
    if result.retrieval is not None:
        out["retrieval"] = retrieval_table(result)
    if result.robustness is not None:
        r = result.robustness
        out["robustness"] = pd.DataFrame({"shift": r.alpha, "LFM similarity": r.lfm, "linear CKA": r.cka})
    return out
