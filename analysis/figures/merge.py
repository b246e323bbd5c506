"""Figures and tables of the Merge & stitch view, from its Result (no numerics here): the page, the
CLI and the report draw the same ones."""
from __future__ import annotations

import numpy as np

from . import FONT, _finish

BEFORE, AFTER = "#d62728", "#1f77b4"
CLASS_COLOURS = {"A-only": "#1f77b4", "shared": "#2ca02c", "B-only": "#d62728", "in between": "#9e9e9e",
                 "dead": "#dddddd"}
CURVE_COLOURS = {"ortho": "#1f77b4", "linear": "#ff7f0e", "l-ortho": "#9467bd", "affine": "#8c564b",
                 "invariant": "#e377c2", "relative": "#2ca02c", "invariant space": "#17becf"}
CURVE_NAMES = {"invariant": "invariant (product of relative spaces)", "relative": "relative space (cosine)",
               "invariant space": "invariant relative space (cos, L2, L1, L∞)", "ortho": "ortho"}


def _layout(fig, height: int = 360, title: str = "", **kw):
    fig.update_layout(height=height, font=FONT, margin=dict(l=10, r=10, t=50 if title else 30, b=10),
                      plot_bgcolor="white", title=dict(text=title, x=0.01), **kw)
    fig.update_xaxes(gridcolor="#eee", zeroline=False)
    fig.update_yaxes(gridcolor="#eee", zeroline=False)
    return _finish(fig)


# ------------------------------------------------------------------ alignment and interpolation
def alignment_table(result):
    """One row per permutable layer: units, silent units, matched correlation before and after."""
    import pandas as pd

    a = result.alignment
    rows = []
    for name, size in zip(a.layers, a.sizes):
        silent = a.silent.get(name, [None, None])
        rows.append({"layer": name, "units": size, "units kept in place": round(a.fixed[name] * size),
                     "correlation before": a.before.get(name, np.nan), "correlation after": a.after.get(name, np.nan),
                     "silent units (A, B)": f"{silent[0]}, {silent[1]}" if silent[0] is not None else ""})
    return pd.DataFrame(rows)


def interpolation_figure(result, p) -> object:
    """Loss (and accuracy) along theta(alpha), B as it is and B aligned, with the endpoints' straight
    line and the barrier marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    it = result.interpolation
    classifier = it.raw.accuracy is not None
    fig = make_subplots(rows=1, cols=2 if classifier else 1, horizontal_spacing=0.1,
                        subplot_titles=[it.raw.metric] + (["accuracy"] if classifier else []))
    for curve, name, colour in ((it.raw, "B as it is", BEFORE), (it.aligned, f"B aligned ({p['mg_method']})", AFTER)):
        a = np.asarray(curve.alphas)
        fig.add_trace(go.Scatter(x=a, y=curve.loss, mode="lines+markers", name=f"{name}: barrier {curve.barrier:.3f}",
                                 line=dict(color=colour), legendgroup=name,
                                 hovertemplate="alpha %{x:.2f}<br>loss %{y:.4f}<extra>" + name + "</extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=[0, 1], y=[curve.loss[0], curve.loss[-1]], mode="lines", showlegend=False,
                                 line=dict(color=colour, dash="dot", width=1), hoverinfo="skip", legendgroup=name), 1, 1)
        at = int(np.argmin(np.abs(a - curve.barrier_alpha)))
        line = (1 - a[at]) * curve.loss[0] + a[at] * curve.loss[-1]
        fig.add_trace(go.Scatter(x=[a[at], a[at]], y=[line, curve.loss[at]], mode="lines", showlegend=False,
                                 line=dict(color=colour, width=4), legendgroup=name,
                                 hovertemplate=f"barrier {curve.barrier:.4f} at alpha {a[at]:.2f}<extra>{name}</extra>"),
                      1, 1)
        if classifier:
            fig.add_trace(go.Scatter(x=a, y=curve.accuracy, mode="lines+markers", showlegend=False,
                                     line=dict(color=colour), legendgroup=name,
                                     hovertemplate="alpha %{x:.2f}<br>accuracy %{y:.3f}<extra>" + name + "</extra>"),
                          1, 2)
    fig.add_vline(x=float(p["mg_alpha"]), line_dash="dash", line_color="#888")
    fig.update_xaxes(title="alpha (0 = A, 1 = B)", range=[-0.02, 1.02])
    if classifier:
        fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    return _layout(fig, 380, "Loss along (1 − alpha) A + alpha B",
                   legend=dict(orientation="h", y=-0.25, yanchor="top", x=0))


def interpolation_table(result):
    import pandas as pd

    it = result.interpolation
    out = pd.DataFrame({"alpha": it.raw.alphas, f"{it.raw.metric} (B as it is)": it.raw.loss,
                        f"{it.raw.metric} (B aligned)": it.aligned.loss})
    if it.raw.accuracy is not None:
        out["accuracy (B as it is)"], out["accuracy (B aligned)"] = it.raw.accuracy, it.aligned.accuracy
    return out


# ------------------------------------------------------------------ block swaps
def swap_heatmap(result) -> object:
    """B's task metric with its blocks i..j replaced by A's: rows i (first block swapped), columns j
    (last block swapped)."""
    import plotly.graph_objects as go

    s = result.swaps
    labels = [f"{k + 1}: {name}" for k, name in enumerate(s.blocks_b)]
    z = np.asarray(s.value, dtype=float)
    text = [[("" if np.isnan(v) else f"{v:.3f}") for v in row] for row in z]
    hover = [[(f"B's blocks {i + 1}..{j + 1} ← A's blocks {s.start_a[i] + 1}..{max(s.stop_a[j], s.start_a[i]) + 1}"
               f"<br>{s.metric} {z[i, j]:.4f}" if not np.isnan(z[i, j]) else "") for j in range(len(labels))]
             for i in range(len(labels))]
    scale = "Viridis" if s.higher_is_better else "Viridis_r"
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra></extra>", colorscale=scale,
                               colorbar=dict(title=s.metric, thickness=12), xgap=2, ygap=2))
    fig.update_xaxes(title="last block of B replaced (j)", type="category", tickangle=-30)
    fig.update_yaxes(title="first block of B replaced (i)", type="category", autorange="reversed")
    bridge = f"{s.method}, {s.anchors} anchors" if s.method else s.bridge
    return _layout(fig, max(320, 110 + 50 * len(labels)), f"B's blocks i..j from A ({bridge})")


def swap_positions(result) -> object:
    """The metric when one block of B at a time is replaced, and when B's blocks from i to the end are."""
    import plotly.graph_objects as go

    s = result.swaps
    n = len(s.blocks_b)
    x = [f"{k + 1}: {name}" for k, name in enumerate(s.blocks_b)]
    z = np.asarray(s.value, dtype=float)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[z[k, k] for k in range(n)], mode="lines+markers", name="block k alone",
                             line=dict(color="#1f77b4")))
    fig.add_trace(go.Scatter(x=x, y=[z[k, n - 1] for k in range(n)], mode="lines+markers",
                             name="blocks k to the last", line=dict(color="#ff7f0e")))
    fig.add_hline(y=s.own_b, line_dash="dash", line_color="#222", annotation_text=f"B alone {s.own_b:.3f}",
                  annotation_position="bottom right")
    if not np.isnan(s.own_a):
        fig.add_hline(y=s.own_a, line_dash="dot", line_color="#888", annotation_text=f"A alone {s.own_a:.3f}",
                      annotation_position="top right")
    fig.update_xaxes(title="swap position k (block of B)", type="category")
    fig.update_yaxes(title=s.metric)
    return _layout(fig, 340, f"{s.metric} over the swap positions",
                   legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0))


def swap_table(result):
    import pandas as pd

    s = result.swaps
    rows = [{"first block of B": i + 1, "last block of B": j + 1, "A's blocks": f"{s.start_a[i] + 1}..{max(s.stop_a[j], s.start_a[i]) + 1}",
             s.metric: s.value[i, j]} for i in range(len(s.blocks_b)) for j in range(i, len(s.blocks_b))]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ crosscoder
def ratio_histogram(result) -> object:
    """Relative decoder norms of the live latents, coloured by class: peaks at 0 (A-only), 1/2 (shared)
    and 1 (B-only)."""
    import plotly.graph_objects as go

    x = result.crosscoder
    ratio, classes = np.asarray(x.ratio), np.asarray(x.classes)
    fig = go.Figure()
    for cls in ("A-only", "in between", "shared", "B-only"):
        sel = ratio[classes == cls]
        fig.add_trace(go.Histogram(x=sel, xbins=dict(start=0, end=1.0001, size=0.025), name=f"{cls} ({len(sel)})",
                                   marker_color=CLASS_COLOURS[cls]))
    dead = int(np.sum(classes == "dead"))
    fig.update_layout(barmode="stack", bargap=0.05, showlegend=True)
    fig.update_xaxes(title="relative decoder norm  (0 = only A's decoder, 1/2 = equal, 1 = only B's)", range=[0, 1])
    fig.update_yaxes(title="latents")
    return _layout(fig, 340, f"Decoder-norm ratio of the {len(ratio) - dead} live latents"
                   + (f" ({dead} dead)" if dead else ""), legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0))


def crosscoder_training(result) -> object:
    """Explained variance of each model's activations on the training batches (and L0 for relu)."""
    import plotly.graph_objects as go

    x = result.crosscoder
    fve = np.asarray(x.history_fve).reshape(len(x.history_step), -1)
    fig = go.Figure()
    for s, (name, colour) in enumerate((("A", "#1f77b4"), ("B", "#d62728"))):
        fig.add_trace(go.Scatter(x=x.history_step, y=fve[:, s], name=f"explained variance, {name}",
                                 line=dict(color=colour)))
    if x.kind != "topk":
        fig.add_trace(go.Scatter(x=x.history_step, y=x.history_l0, name="L0", yaxis="y2", line=dict(color="#555")))
        fig.update_layout(yaxis2=dict(title="L0", overlaying="y", side="right", showgrid=False))
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="explained variance (batches)")
    return _layout(fig, 340, "Training", legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0))


def latent_table(result):
    """One row per latent: class, relative norm, density, decoder norms."""
    import pandas as pd

    x = result.crosscoder
    return pd.DataFrame({"latent": np.arange(len(x.ratio)), "class": x.classes, "relative norm": x.ratio,
                         "density": x.density,
                         "decoder norm A": np.linalg.norm(x.arrays["W_dec.0"], axis=1),
                         "decoder norm B": np.linalg.norm(x.arrays["W_dec.1"], axis=1)})


# ------------------------------------------------------------------ stitching and retrieval
def versus_anchors(curve: dict, keys, y_title: str, title: str, upper=None, lower=None) -> object:
    """Curves versus the number of anchors, with optional bounds (B's own, untranslated)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for k in keys:
        if k not in curve:
            continue
        name = CURVE_NAMES.get(k, k)
        fig.add_trace(go.Scatter(x=curve["anchors"], y=curve[k], mode="lines+markers", name=name,
                                 line=dict(color=CURVE_COLOURS.get(k), width=3 if "invariant" in k else 2),
                                 hovertemplate="%{x} anchors<br>%{y:.3f}<extra>" + name + "</extra>"))
    if upper is not None:
        fig.add_hline(y=float(upper), line_dash="dash", line_color="#222", annotation_text=f"B's own {float(upper):.3f}",
                      annotation_position="bottom right")
    if lower is not None:
        fig.add_hline(y=float(lower), line_dash="dot", line_color="#888",
                      annotation_text=f"A untranslated {float(lower):.3f}", annotation_position="top right")
    fig.update_xaxes(title="anchors", type="log", tickvals=list(curve["anchors"]))
    fig.update_yaxes(title=y_title, range=[0, 1.05])
    return _layout(fig, 380, title, legend=dict(orientation="h", y=-0.2, yanchor="top", x=0))


def stitching(result) -> object:
    from ..translation import METHODS

    c = result.curves
    return versus_anchors(c.stitching, METHODS, f"accuracy: A's {c.layer_a} → B after {c.layer_b}",
                          "Zero-shot stitching", c.stitching["upper"], c.stitching["lower"])


def retrieval(result) -> object:
    c = result.curves
    return versus_anchors(c.retrieval, ("relative", "invariant space", "ortho", "invariant"),
                          f"MRR: A's {c.layer_a} → B's {c.layer_b}", "Retrieval of each sample across A and B")


# ------------------------------------------------------------------ the CLI and the report
def all_figures(result, spec, ctx) -> dict:
    p, out = spec.params, {}
    if result.interpolation is not None:
        out["interpolation"] = interpolation_figure(result, p)
    if result.swaps is not None:
        out["swap_map"] = swap_heatmap(result)
        out["swap_positions"] = swap_positions(result)
    if result.crosscoder is not None:
        out["decoder_norm_ratio"] = ratio_histogram(result)
        out["crosscoder_training"] = crosscoder_training(result)
    if result.curves is not None:
        out["stitching"] = stitching(result)
        out["retrieval"] = retrieval(result)
    return out


def all_tables(result) -> dict:
    out = {}
    if result.alignment is not None:
        out["alignment"] = alignment_table(result)
    if result.interpolation is not None:
        out["interpolation"] = interpolation_table(result)
    if result.swaps is not None:
        out["block_swaps"] = swap_table(result)
    if result.crosscoder is not None:
        out["crosscoder_latents"] = latent_table(result)
    return out
