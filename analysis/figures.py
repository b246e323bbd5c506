"""Plotly figures built from analysis results (no Streamlit here): pages and reports share them."""
from __future__ import annotations

import numpy as np

FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
DOWNLOAD_CONFIG = {"toImageButtonOptions": {"format": "svg", "scale": 2}, "displaylogo": False}


def image_grid(rows: list[tuple[str, list[np.ndarray]]], titles: list[str], height_per_row: int = 120):
    """A grid of grey images: one row per (row label, images), one column per sample title.

    Each image is its own heatmap with the y axis reversed and square pixels, values in [0, 1].
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_rows, n_cols = len(rows), len(titles)
    fig = make_subplots(rows=n_rows, cols=n_cols, horizontal_spacing=0.01, vertical_spacing=0.08,
                        subplot_titles=[t if r == 0 else "" for r in range(n_rows) for t in titles])
    for r, (label, images) in enumerate(rows, start=1):
        for c, img in enumerate(images, start=1):
            fig.add_trace(go.Heatmap(z=np.asarray(img), zmin=0, zmax=1, colorscale="gray_r", showscale=False,
                                     hovertemplate=f"{label}<br>x=%{{x}} y=%{{y}} value=%{{z:.2f}}<extra></extra>"),
                          row=r, col=c)
        fig.update_yaxes(title_text=label, row=r, col=1, title_font=dict(size=11))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, ticks="")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, ticks="", autorange="reversed")
    for i in range(1, n_rows * n_cols + 1):
        fig.update_yaxes(scaleanchor=f"x{i if i > 1 else ''}", row=(i - 1) // n_cols + 1, col=(i - 1) % n_cols + 1)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=40 + height_per_row * n_rows, margin=dict(l=70, r=10, t=40, b=10), font=FONT,
                      plot_bgcolor="white")
    return fig
