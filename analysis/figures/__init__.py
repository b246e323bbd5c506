"""Plotly figures built from analysis results (no Streamlit here): pages and reports share them."""
from __future__ import annotations

import numpy as np

FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
DOWNLOAD_CONFIG = {"toImageButtonOptions": {"format": "svg", "scale": 2}, "displaylogo": False}


def _finish(fig):
    """House style shared by every figure. Axes get automargin explicitly: Streamlit draws with
    theme=None, where tick labels were otherwise clipped by tight margins."""
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


TOOLBAR_PX = 30  # the band at the top of a chart where Plotly draws its toolbar (27 px measured)
LEGEND_ROW_PX = 24  # one row of a horizontal legend


def clear_toolbar(fig):
    """Keep the top band of a figure, where Plotly draws its toolbar on hover, free of text: the
    title (and subtitle) hang below the band, a horizontal legend above the plot sits under the
    title, and the top margin grows to hold them and the subplot titles. Figures that already place
    their title below the band keep it. Returns the figure (changed in place)."""
    lay = fig.layout
    height = lay.height or 450  # Plotly's default, which Streamlit keeps
    below = TOOLBAR_PX + 4
    title = lay.title
    text = (title.text or "") if title is not None else ""
    needed = below
    if text:
        size = (title.font.size if title.font and title.font.size else None) or (lay.font.size if lay.font and
                                                                             lay.font.size else 13) * 1.3
        needed += (text.count("<br>") + 1) * size * 1.35
        sub = getattr(title, "subtitle", None)
        if sub is not None and sub.text:
            needed += (sub.text.count("<br>") + 1) * 17
        placed_below = title.yref == "container" and title.y is not None and title.y <= 1 - below / height + 1e-9
        if not placed_below:
            fig.update_layout(title=dict(yref="container", y=1 - below / height, yanchor="top"))
        needed += 6
    legend = lay.legend
    if legend is not None and legend.orientation == "h" and (legend.y is None or legend.y >= 1) and \
            lay.showlegend is not False:
        fig.update_layout(legend=dict(y=1.0, yanchor="bottom", yref="paper"))
        needed += LEGEND_ROW_PX
    if any(getattr(a, "yref", None) == "paper" and (a.y or 0) >= 1 for a in lay.annotations or ()):
        needed += 22  # subplot titles sit above their plots
    top = lay.margin.t if lay.margin is not None and lay.margin.t is not None else 100
    if top < needed:
        grow = int(round(needed)) - top
        # the figure grows by what the margin takes, so the plot keeps its size (heatmaps were squashed)
        fig.update_layout(margin=dict(t=top + grow), **({"height": lay.height + grow} if lay.height else {}))
        if text and fig.layout.title.yref == "container" and lay.height:
            fig.update_layout(title=dict(y=min(fig.layout.title.y, 1 - below / fig.layout.height)))
    return fig


def plain_title(fig, fallback: str = "") -> str:
    """A figure's title as plain text for a pinned item's caption: Plotly's line breaks become " · "
    and its markup and entities are undone (the report escapes the caption itself)."""
    import html
    import re

    text = getattr(getattr(fig.layout, "title", None), "text", None) or ""
    text = re.sub(r"<[^>]*>", "", re.sub(r"<br\s*/?>", " · ", text, flags=re.I))
    return html.unescape(text).strip() or fallback


def pixel_tile(image: np.ndarray, size: int = 64, invert: bool = True) -> np.ndarray:
    """An image in [0, 1] as a uint8 tile upscaled by nearest neighbour (crisp pixels), ink dark."""
    img = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    if invert:
        img = 1 - img
    factor = max(1, size // max(img.shape))
    return (np.kron(img, np.ones((factor, factor))) * 255).astype(np.uint8)


def similarity_heatmap(df, title: str = "", zmin: float = 0.0, zmax: float = 1.0, best=None, ci=None,
                       x_title: str = "model B layer", y_title: str = "model A layer", colorbar_title: str = ""):
    """Layer-by-layer similarity. Every cell also carries an invisible marker, because Streamlit's
    selection events ignore heatmap traces: clicking a cell selects its marker (x = B layer,
    y = A layer). ``best``: (A layer, B layer, value) triples drawn as open circles. ``ci``: a dict
    (A layer, B layer) -> (low, high) shown in the hover."""
    import plotly.graph_objects as go

    z = df.to_numpy(dtype=float)
    xs, ys = [str(c) for c in df.columns], [str(i) for i in df.index]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, zmin=zmin, zmax=zmax, colorscale="Viridis",
                               colorbar=dict(title=colorbar_title, thickness=14), hoverinfo="skip",
                               xgap=1, ygap=1))
    cx, cy, text = [], [], []
    for i, a in enumerate(ys):
        for j, b in enumerate(xs):
            cx.append(b)
            cy.append(a)
            v = z[i, j]
            line = f"A: {a}<br>B: {b}<br>value: {'NaN' if np.isnan(v) else f'{v:.4f}'}"
            if ci and (a, b) in ci:
                lo, hi = ci[(a, b)]
                line += f"<br>95% CI: [{lo:.3f}, {hi:.3f}]"
            text.append(line)
    fig.add_trace(go.Scatter(x=cx, y=cy, mode="markers", text=text, hovertemplate="%{text}<extra></extra>",
                             marker=dict(symbol="square", size=_cell_marker_size(len(xs), len(ys)),
                                         color="rgba(0,0,0,0)"),
                             selected=dict(marker=dict(color="rgba(255,255,255,0.35)")),
                             unselected=dict(marker=dict(opacity=1)), showlegend=False, name="cells"))
    if best:
        fig.add_trace(go.Scatter(x=[b for _, b, _ in best], y=[a for a, _, _ in best], mode="markers",
                                 marker=dict(symbol="circle-open", size=14, color="white", line=dict(width=2.5)),
                                 name="best match in B", hoverinfo="skip", showlegend=True))
    n_rows = len(ys)
    fig.update_layout(title=dict(text=title, x=0.01), font=FONT, plot_bgcolor="white",
                      height=max(320, min(900, 120 + 34 * n_rows)), margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
                      clickmode="event+select", dragmode=False)
    fig.update_xaxes(title=x_title, tickangle=-40, type="category", tickfont=dict(size=11))
    fig.update_yaxes(title=y_title, autorange="reversed", type="category", tickfont=dict(size=11))
    return _finish(fig)


def _cell_marker_size(n_cols: int, n_rows: int) -> int:
    return int(max(8, min(40, 520 / max(n_cols, n_rows, 1))))


def paired_scatter(coords_a, coords_b, labels, hover: list[str], title_a: str, title_b: str,
                   label_names=None):
    """Two 2-D projections side by side, coloured by label, hover showing the sample."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[title_a, title_b], horizontal_spacing=0.08)
    palette = qualitative.D3 + qualitative.Set2
    groups = [(None, np.arange(len(hover)))] if labels is None else \
        [(c, np.nonzero(labels == c)[0]) for c in np.unique(labels)]
    for k, (c, idx) in enumerate(groups):
        name = "samples" if c is None else (label_names[int(c)] if label_names else str(c))
        for col, coords in ((1, coords_a), (2, coords_b)):
            fig.add_trace(go.Scattergl(x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=name,
                                       legendgroup=name, showlegend=col == 1,
                                       marker=dict(size=5, color=palette[k % len(palette)], opacity=0.8),
                                       text=[hover[i] for i in idx], hovertemplate="%{text}<extra></extra>"),
                          row=1, col=col)
    fig.update_layout(height=430, font=FONT, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                      legend=dict(title="label", itemsizing="constant"))
    fig.update_xaxes(showgrid=True, gridcolor="#eee", zeroline=False)
    fig.update_yaxes(showgrid=True, gridcolor="#eee", zeroline=False)
    return _finish(fig)


def stability_figure(curve, measure_label: str, full_value: float, ci=None):
    """The measure on random subsets of growing size (mean ± sd), with the full-data value and CI."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=curve["n"], y=curve["mean"], mode="lines+markers", name="subset mean",
                               error_y=dict(type="data", array=curve["std"], visible=True),
                               hovertemplate="n=%{x}<br>%{y:.4f}<extra></extra>"))
    fig.add_hline(y=full_value, line_dash="dot", annotation_text="all samples", line_color="#555")
    if ci is not None:
        fig.add_hrect(y0=ci[0], y1=ci[1], fillcolor="#4c78a8", opacity=0.12, line_width=0,
                      annotation_text="95% bootstrap CI", annotation_position="bottom right")
    fig.update_layout(height=330, font=FONT, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      xaxis=dict(title="samples", type="log", gridcolor="#eee", tickvals=list(curve["n"])),
                      yaxis=dict(title=measure_label, gridcolor="#eee"), showlegend=False)
    return _finish(fig)


def per_class_figure(table, measure_label: str, overall: float):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=[str(c) for c in table["class"]], y=table["value"], marker_color="#4c78a8",
                           customdata=table["n"], hovertemplate="class %{x}<br>%{y:.4f} (n=%{customdata})<extra></extra>"))
    fig.add_hline(y=overall, line_dash="dot", annotation_text="all classes", line_color="#555")
    fig.update_layout(height=330, font=FONT, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      xaxis=dict(title="class", type="category"), yaxis=dict(title=measure_label, gridcolor="#eee"))
    return _finish(fig)


def projection_scatter(coords, values, kind: str, hover: list[str], title: str, axis_titles: list[str],
                       names=None, selected=()):
    """A 2-D or 3-D scatter of a projection. ``values``: class codes (kind "category", one trace and
    legend entry per class) or numbers ("continuous", one trace with a colour bar). Every point
    carries its sample index in customdata, so a selection maps back to samples; ``selected``
    samples are highlighted (the rest faded) in every trace."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    coords = np.asarray(coords)
    three_d = coords.shape[1] == 3
    n = len(coords)
    selected = set(int(i) for i in selected)
    palette = qualitative.D3 + qualitative.Set2
    if values is None:
        groups = [("samples", np.arange(n), None)]
    elif kind == "continuous":
        groups = [("value", np.arange(n), np.asarray(values, dtype=float))]
    else:
        codes = np.asarray(values)
        groups = [((names[int(c)] if names and int(c) < len(names) else str(c)), np.nonzero(codes == c)[0], None)
                  for c in np.unique(codes)]
    fig = go.Figure()
    for k, (name, idx, cont) in enumerate(groups):
        marker = dict(size=3 if three_d else 6, opacity=0.85)
        if cont is not None:
            marker.update(color=cont[idx], colorscale="Viridis", cmin=0, cmax=1, showscale=True,
                          colorbar=dict(title="agreement", thickness=12))
        else:
            marker.update(color=palette[k % len(palette)])
        # customdata as plain ints: numpy arrays travel as typed arrays and come back from a
        # Streamlit selection as dicts instead of numbers
        common = dict(mode="markers", name=str(name), marker=marker, customdata=[int(i) for i in idx],
                      text=[hover[i] for i in idx], hovertemplate="%{text}<extra></extra>",
                      showlegend=cont is None and values is not None)
        if three_d:
            fig.add_trace(go.Scatter3d(x=coords[idx, 0], y=coords[idx, 1], z=coords[idx, 2], **common))
        else:
            trace = go.Scattergl(x=coords[idx, 0], y=coords[idx, 1], **common)
            if selected:
                trace.selectedpoints = [j for j, i in enumerate(idx) if int(i) in selected]
                trace.unselected = dict(marker=dict(opacity=0.12))
                trace.selected = dict(marker=dict(size=9))
            fig.add_trace(trace)
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), height=480, font=FONT,
                      margin=dict(l=10, r=10, t=50, b=10), plot_bgcolor="white",
                      legend=dict(itemsizing="constant"), dragmode="lasso" if not three_d else "orbit")
    if three_d:
        fig.update_scenes(xaxis_title=axis_titles[0], yaxis_title=axis_titles[1], zaxis_title=axis_titles[2])
        return fig
    fig.update_xaxes(title=axis_titles[0], gridcolor="#eee", zeroline=False)
    fig.update_yaxes(title=axis_titles[1], gridcolor="#eee", zeroline=False)
    return _finish(fig)
