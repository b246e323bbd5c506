"""Plotly figures of the Functional maps page (no Streamlit here)."""
from __future__ import annotations

import numpy as np

from .figures import FONT, _finish, paired_scatter

PALETTE = {"lfm+ortho": "#d62728", "ortho": "#1f77b4", "relative": "#2ca02c", "linear": "#ff7f0e",
           "l-ortho": "#9467bd", "affine": "#8c564b"}
NAMES = {"lfm+ortho": "LFM + ortho (dense matches)", "ortho": "ortho on the anchors alone",
         "relative": "relative representations"}


def _layout(fig, height=360, **kw):
    fig.update_layout(height=height, font=FONT, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                      **kw)
    fig.update_xaxes(gridcolor="#eee", zeroline=False)
    fig.update_yaxes(gridcolor="#eee", zeroline=False)
    return _finish(fig)


def c_heatmap(C, title: str = "Functional map C"):
    """C (K_Y x K_X): rows are B's eigenvectors, columns A's. A diagonal band = matching spectra."""
    import plotly.graph_objects as go

    C = np.asarray(C)
    lim = float(np.abs(C).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=C, x=list(range(C.shape[1])), y=list(range(C.shape[0])), zmid=0, zmin=-lim,
                               zmax=lim, colorscale="RdBu_r", colorbar=dict(thickness=12),
                               hovertemplate="A eigvec %{x}<br>B eigvec %{y}<br>C = %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="eigenvector of B", scaleanchor="x")
    fig.update_xaxes(title="eigenvector of A")
    return _layout(fig, 420, title=dict(text=title, x=0.01))


def spectra(lam_x, lam_y):
    """Both Laplacian spectra (eigenvalues in [0, 2])."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for lam, name, colour in ((lam_x, "A", "#1f77b4"), (lam_y, "B", "#d62728")):
        fig.add_trace(go.Scatter(x=np.arange(len(lam)), y=lam, mode="lines+markers", name=name,
                                 marker=dict(size=4, color=colour), line=dict(color=colour)))
    fig.update_xaxes(title="index")
    fig.update_yaxes(title="Laplacian eigenvalue")
    return _layout(fig, 300, title=dict(text="Laplacian spectra", x=0.01))


def spectral_embeddings(phi_x, phi_y, labels, hover, label_names=None, title_a="A", title_b="B"):
    """Eigenvectors 1 and 2 (0 is near-constant) of each graph, side by side, coloured by label."""
    return paired_scatter(phi_x[:, 1:3], phi_y[:, 1:3], labels, hover, title_a, title_b, label_names)


def retrieval_figure(curve):
    """MRR of retrieving each sample's counterpart versus the number of anchors."""
    import plotly.graph_objects as go

    fig = go.Figure()
    x = curve["anchors"]
    for key in ("lfm+ortho", "ortho", "relative"):
        fig.add_trace(go.Scatter(x=x, y=curve[key], mode="lines+markers", name=NAMES[key],
                                 line=dict(color=PALETTE[key]),
                                 hovertemplate="%{x} anchors<br>MRR %{y:.3f}<extra>" + NAMES[key] + "</extra>"))
    if "chance" in curve:
        fig.add_hline(y=float(curve["chance"]), line_dash="dot", line_color="#888", annotation_text="chance")
    fig.update_xaxes(title="anchors", type="log", tickvals=list(curve["anchors"]))
    fig.update_yaxes(title="retrieval MRR", range=[0, 1.02])
    return _layout(fig, 380, legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))


def stitching_figure(curve, methods):
    """Stitched accuracy per translator versus anchors, with B's own accuracy (upper bound) and the
    untranslated stitch (lower bound)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for m in methods:
        fig.add_trace(go.Scatter(x=curve["anchors"], y=curve[m], mode="lines+markers", name=m,
                                 line=dict(color=PALETTE.get(m), dash="dash" if m == "affine" else "solid"),
                                 hovertemplate="%{x} anchors<br>accuracy %{y:.3f}<extra>" + m + "</extra>"))
    fig.add_hline(y=float(curve["upper"]), line_dash="dash", line_color="#222",
                  annotation_text=f"B's own encoder (no stitch) {float(curve['upper']):.3f}",
                  annotation_position="bottom right")
    fig.add_hline(y=float(curve["lower"]), line_dash="dot", line_color="#888",
                  annotation_text=f"A untranslated {float(curve['lower']):.3f}", annotation_position="top right")
    fig.update_xaxes(title="anchors", type="log", tickvals=list(curve["anchors"]))
    fig.update_yaxes(title="accuracy of the stitched model", range=[0, 1.05])
    return _layout(fig, 380, legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))


def robustness_figure(curve, cls_name: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curve["alpha"], y=curve["lfm"], mode="lines+markers", name="LFM similarity",
                             line=dict(color="#d62728")))
    fig.add_trace(go.Scatter(x=curve["alpha"], y=curve["cka"], mode="lines+markers", name="linear CKA",
                             line=dict(color="#1f77b4")))
    fig.update_xaxes(title=f"shift of class {cls_name} (x RMS spread of the layer)")
    fig.update_yaxes(title="similarity to the unperturbed layer", range=[0, 1.02])
    return _layout(fig, 360, legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
