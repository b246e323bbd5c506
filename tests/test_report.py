"""The presentation figure style: larger fonts and thicker lines for a projector, the data unchanged;
used by the presentation and, when asked, by the HTML report."""
import json
import re

import numpy as np

from analysis import report
from analysis.figures import similarity_heatmap


def _line_figure() -> dict:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0.1, 0.5, 0.9], mode="lines+markers", marker=dict(size=6)))
    fig.update_layout(title=dict(text="Stitching accuracy", font=dict(size=16)), font=dict(size=12),
                      xaxis_title="anchors", legend=dict(font=dict(size=11)))
    fig.add_annotation(text="B alone", x=1, y=0.5, font=dict(size=10))
    return json.loads(fig.to_json())


def test_presentation_style_enlarges_every_text_and_line_and_keeps_the_data():
    fig = _line_figure()
    big = report.presentation_style(fig)
    lay = big["layout"]
    assert lay["font"]["size"] == report.PRESENTATION_FONT
    assert lay["title"]["font"]["size"] > lay["font"]["size"]  # a title stays larger than the text
    assert lay["xaxis"]["tickfont"]["size"] >= 0.8 * report.PRESENTATION_FONT
    assert lay["legend"]["font"]["size"] >= 0.8 * report.PRESENTATION_FONT
    assert lay["annotations"][0]["font"]["size"] >= 0.8 * report.PRESENTATION_FONT
    assert big["data"][0]["line"]["width"] >= report.PRESENTATION_LINE
    assert big["data"][0]["marker"]["size"] == 9
    assert big["data"][0]["x"] == fig["data"][0]["x"] and big["data"][0]["y"] == fig["data"][0]["y"]
    assert fig["layout"]["font"]["size"] == 12  # the pinned figure itself is left as it was


def test_a_heatmap_keeps_its_values_and_gets_readable_ticks():
    import pandas as pd

    m = pd.DataFrame(np.array([[1.0, 0.5], [0.5, 1.0]]), index=["fc1", "fc2"], columns=["fc1", "fc2"])
    fig = json.loads(similarity_heatmap(m, "Linear CKA").to_json())
    big = report.presentation_style(fig)
    assert big["data"][0]["z"] == fig["data"][0]["z"]
    assert big["layout"]["yaxis"]["tickfont"]["size"] >= 0.8 * report.PRESENTATION_FONT


def _item(fig: dict) -> dict:
    return {"kind": "figure", "title": "t", "caption": "c", "figure": json.dumps(fig)}


def test_the_presentation_uses_the_style_and_the_report_only_when_asked():
    item = _item(_line_figure())
    sizes = lambda html: [int(float(v)) for v in re.findall(r'"font": ?\{[^}]*?"size": ?([0-9.]+)', html)]  # noqa: E731
    plain, slides, large = (report.build_html([item], **kw).split("Plotly.newPlot(")[-1]
                            for kw in ({}, {"presentation": True}, {"large": True}))
    assert sizes(plain) and max(sizes(plain)) < report.PRESENTATION_FONT
    assert min(sizes(slides)) >= 0.8 * report.PRESENTATION_FONT
    assert min(sizes(large)) >= 0.8 * report.PRESENTATION_FONT


def test_clear_toolbar_moves_text_out_of_the_toolbar_band_and_keeps_the_plot_size():
    import plotly.graph_objects as go

    from analysis.figures import TOOLBAR_PX, clear_toolbar

    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]))
    fig.update_layout(title="A title<br>on two lines", height=400, margin=dict(t=40, b=10),
                      legend=dict(orientation="h", y=1.02))
    plot_before = 400 - 40 - 10
    clear_toolbar(fig)
    lay = fig.layout
    assert lay.title.yref == "container" and (1 - lay.title.y) * lay.height >= TOOLBAR_PX  # below the band
    assert lay.legend.y == 1.0 and lay.legend.yanchor == "bottom"
    assert lay.height - lay.margin.t - lay.margin.b == plot_before  # the plot keeps its size
    again = lay.margin.t, lay.height
    clear_toolbar(fig)
    assert (fig.layout.margin.t, fig.layout.height) == again  # idempotent: pages and exports may both apply it
