"""Plotly figures for the Attributions page (no Streamlit here): relevance maps with a diverging
colour scale centred on 0, token highlighting, conservation, agreement, faithfulness, unit relevance."""
from __future__ import annotations

import numpy as np

from .figures import FONT, _finish

DIVERGING = "RdBu_r"  # red: evidence for the target, blue: against it, white: 0
METHOD_COLOURS = {"LRP": "#d62728", "gradient x input": "#1f77b4", "random": "#7f7f7f"}
MODEL_COLOURS = {"A": "#4c78a8", "B": "#f58518"}


def _symmetric(r: np.ndarray) -> float:
    m = float(np.nanmax(np.abs(r))) if np.size(r) else 0.0
    return m if m > 0 else 1.0


def relevance_grid(images, relevances, titles: list[str], image_shape=(8, 8), heading: str = "", per_row: int = 3):
    """Each sample's input above its relevance map (diverging scale centred on 0, one scale per map,
    the input's outline drawn over it), ``per_row`` samples per row. ``images``, ``relevances``: (k, pixels).

    Every tile is its own trace placed on one shared pair of axes (x0/y0 offsets), which draws and
    builds much faster than a grid of subplots."""
    import plotly.graph_objects as go

    h, w = image_shape
    k = len(images)
    cols = max(1, min(per_row, k))
    gap, band = 1.5, 2 * h + 4  # columns apart; one sample: input, 1 row, relevance, 3 rows for the title
    fig = go.Figure()
    notes = []
    for j in range(k):
        x0 = (j % cols) * (w + gap)
        y_in = (j // cols) * band + 2.5
        y_rel = y_in + h + 0.5
        img = np.asarray(images[j], dtype=float).reshape(image_shape)
        rel = np.asarray(relevances[j], dtype=float).reshape(image_shape)
        m = _symmetric(rel)
        place = dict(x0=x0, dx=1, dy=1)
        fig.add_trace(go.Heatmap(z=img, y0=y_in, colorscale="Greys", zmin=0, zmax=1, showscale=False, name="input",
                                 hovertemplate="pixel %{z:.2f}<extra></extra>", **place))
        fig.add_trace(go.Heatmap(z=rel, y0=y_rel, colorscale=DIVERGING, zmid=0, zmin=-m, zmax=m, showscale=j == 0,
                                 colorbar=dict(title="relevance", thickness=10, len=0.6, tickvals=[-m, 0, m],
                                               ticktext=["−max", "0", "+max"]),
                                 customdata=img, name="relevance",
                                 hovertemplate="relevance %{z:.4f}<br>pixel %{customdata:.2f}<extra></extra>", **place))
        fig.add_trace(go.Contour(z=img, y0=y_rel, showscale=False, contours=dict(start=0.5, end=0.5, coloring="none"),
                                 line=dict(color="rgba(40,40,40,0.6)", width=1), hoverinfo="skip",
                                 name="input outline", **place))
        notes.append(dict(x=x0 + (w - 1) / 2, y=y_in - 1.2, text=titles[j], showarrow=False, xanchor="center",
                          font=dict(size=12)))
    groups = -(-k // cols)
    fig.update_layout(annotations=notes, height=40 + 250 * groups, font=FONT, plot_bgcolor="white", showlegend=False,
                      margin=dict(l=10, r=10, t=40 if heading else 10, b=10),
                      title=dict(text=heading, x=0.01, font=dict(size=13)))
    fig.update_xaxes(visible=False, range=[-0.6, cols * (w + gap) - gap - 0.4], constrain="domain")
    fig.update_yaxes(visible=False, range=[groups * band - 1, 0], scaleanchor="x", constrain="domain")
    return _finish(fig)


def token_pairs(atts: dict, row_titles: dict, heading: str = ""):
    """Each sentence's tokens coloured by A's relevance, and by B's on the row below (see
    :func:`token_heatmap`). ``atts``: {"A": Attribution, "B": Attribution} of the same sentences."""
    tokens, rel, mask, titles = [], [], [], []
    names = list(atts)
    for i in range(len(atts[names[0]].tokens)):
        for name in names:
            a = atts[name]
            tokens.append(a.tokens[i])
            rel.append(a.input_relevance[i])
            mask.append(a.mask[i])
            titles.append(row_titles[name][i])
    return token_heatmap(tokens, rel, mask, titles, heading, group=len(names))


def token_heatmap(tokens: list[list[str]], relevance, mask, row_titles: list[str], heading: str = "",
                  group: int = 1):
    """Sentences as rows of tokens coloured by relevance (diverging, centred on 0, one scale per row);
    ``group`` rows in a row belong together (a wider gap after each group)."""
    import plotly.graph_objects as go

    n = len(tokens)
    width = max(int(np.asarray(mask[i]).sum()) for i in range(n)) if n else 1
    z = np.full((n, width), np.nan)
    text = [[""] * width for _ in range(n)]
    for i in range(n):
        keep = np.nonzero(np.asarray(mask[i]).astype(bool))[0]
        r = np.asarray(relevance[i], dtype=float)[keep]
        z[i, : len(keep)] = r / _symmetric(r)
        for j, t in enumerate(keep):
            text[i][j] = tokens[i][t]
    raw = [[f"{text[i][j]}: {relevance[i][np.nonzero(mask[i])[0][j]]:.4f}" if text[i][j] else ""
            for j in range(width)] for i in range(n)]
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", textfont=dict(size=12), customdata=raw,
                               colorscale=DIVERGING, zmid=0, zmin=-1, zmax=1, xgap=2, ygap=3,
                               colorbar=dict(title="relevance<br>(÷ row max)", thickness=10),
                               hovertemplate="%{customdata}<extra></extra>", name="tokens"))
    for k in range(group, n, group):  # a rule between groups (sentences)
        fig.add_hline(y=k - 0.5, line_color="#999", line_width=1)
    fig.update_layout(height=110 + 40 * n, font=FONT, margin=dict(l=10, r=10, t=50, b=10), plot_bgcolor="white",
                      title=dict(text=heading, x=0.01, font=dict(size=14)))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=list(range(n)), ticktext=row_titles, autorange="reversed", showgrid=False)
    return _finish(fig)


def conservation_figure(points: dict, title: str = "Sum of relevance against the explained output"):
    """Scatter of sum(R) (y) against the explained output f (x) per sample, one trace per model, with
    the line sum(R) = f that a conservative rule on a bias-free model lies on."""
    import plotly.graph_objects as go

    fig = go.Figure()
    lo, hi = np.inf, -np.inf
    for name, (f, s) in points.items():
        f, s = np.asarray(f, float), np.asarray(s, float)
        lo, hi = min(lo, f.min(), s.min()), max(hi, f.max(), s.max())
        fig.add_trace(go.Scattergl(x=f, y=s, mode="markers", name=name, opacity=0.7,
                                   marker=dict(size=5, color=MODEL_COLOURS.get(name[:1])),
                                   hovertemplate="f %{x:.3f}<br>ΣR %{y:.3f}<extra>" + name + "</extra>"))
    if np.isfinite(lo):
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="ΣR = f",
                                 line=dict(color="#555", dash="dot"), hoverinfo="skip"))
    fig.update_layout(height=380, font=FONT, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                      title=dict(text=title, x=0.01, font=dict(size=14)),
                      legend=dict(x=0.01, y=0.99, xanchor="left", yanchor="top", bgcolor="rgba(255,255,255,0.8)"),
                      xaxis=dict(title="explained output f(x)", gridcolor="#eee"),
                      yaxis=dict(title="sum of relevance", gridcolor="#eee"))
    return _finish(fig)


def agreement_histogram(per_sample: np.ndarray, shown: dict | None = None):
    """Rank correlation of A's and B's relevance maps per sample; ``shown``: {label: value} marked."""
    import plotly.graph_objects as go

    v = np.asarray(per_sample, float)
    v = v[np.isfinite(v)]
    fig = go.Figure(go.Histogram(x=v, xbins=dict(start=-1, end=1.0001, size=0.05), marker_color="#4c78a8",
                                 name="samples", hovertemplate="ρ %{x}<br>%{y} samples<extra></extra>"))
    if len(v):
        fig.add_vline(x=float(v.mean()), line_dash="dot", line_color="#333",
                      annotation_text=f"mean {v.mean():.3f}", annotation_position="top left")
    for label, value in (shown or {}).items():
        if np.isfinite(value):
            fig.add_vline(x=float(value), line_color="#d62728", line_width=1, opacity=0.6)
    fig.update_layout(height=300, font=FONT, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                      title=dict(text="Agreement of A's and B's maps (Spearman ρ per sample)", x=0.01,
                                 font=dict(size=14)),
                      xaxis=dict(title="rank correlation", range=[-1, 1], gridcolor="#eee"),
                      yaxis=dict(title="samples", gridcolor="#eee"), bargap=0.05, showlegend=False)
    return _finish(fig)


def faithfulness_figure(results: dict, y_title: str = "explained output", x_title: str = "fraction of features removed"):
    """Removal curves (most relevant first) per method, one panel per model; AOPC in the legend."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(results)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=False, horizontal_spacing=0.08,
                        subplot_titles=[f"Model {n}" for n in names])
    for j, name in enumerate(names):
        res = results[name]
        for method, curve in res.curves.items():
            label = "LRP" if method == "lrp" else method
            fig.add_trace(go.Scatter(x=res.fractions, y=curve, mode="lines+markers", name=f"{name}: {label} "
                                     f"(AOPC {res.aopc[method]:.3f})", legendgroup=name,
                                     line=dict(color=METHOD_COLOURS.get(label, "#333"),
                                               dash="solid" if j == 0 else "dash"), marker=dict(size=4),
                                     hovertemplate="%{x:.2f} removed<br>%{y:.3f}<extra>" + label + "</extra>"),
                          row=1, col=j + 1)
        fig.update_xaxes(title=x_title, gridcolor="#eee", range=[0, 1], row=1, col=j + 1)
        fig.update_yaxes(title=y_title if j == 0 else None, gridcolor="#eee", row=1, col=j + 1)
    fig.update_layout(height=430, font=FONT, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                      legend=dict(orientation="h", y=-0.3, yanchor="top", x=0))
    return _finish(fig)


def unit_relevance_figure(units: dict, titles: dict, top: int = 40):
    """Mean relevance per unit of a hidden layer for each model (bars; the ``top`` units by |R|)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(units)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[titles[n] for n in names],
                        horizontal_spacing=0.08)
    for j, name in enumerate(names):
        u = np.asarray(units[name], float)
        order = np.argsort(-np.abs(u))[:top]
        fig.add_trace(go.Bar(x=[str(i) for i in order], y=u[order], name=name, showlegend=False,
                             marker_color=np.where(u[order] >= 0, "#d62728", "#1f77b4").tolist(),
                             hovertemplate="unit %{x}<br>relevance %{y:.4f}<extra></extra>"), row=1, col=j + 1)
        fig.update_xaxes(title=f"unit (top {len(order)} of {len(u)} by |relevance|)", type="category",
                         tickfont=dict(size=9), row=1, col=j + 1)
        fig.update_yaxes(title="mean relevance" if j == 0 else None, gridcolor="#eee", row=1, col=j + 1)
    fig.update_layout(height=340, font=FONT, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white")
    return _finish(fig)
