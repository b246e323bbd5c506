"""Figures of the Training dynamics view, from its Result (no numerics here): the layer ×
checkpoint map, one line per layer, and the seeds × seeds matrix."""
from __future__ import annotations

from . import FONT, _finish


def _measure(name: str):
    from ..similarity import MEASURES

    return MEASURES[name]


def _heatmap(values, zmin: float, zmax: float, hover: str, colorbar: str, text: bool = False):
    import plotly.graph_objects as go

    z = values.to_numpy(dtype=float)
    trace = dict(z=z, x=[str(c) for c in values.columns], y=[str(i) for i in values.index], zmin=zmin, zmax=zmax,
                 colorscale="Viridis", colorbar=dict(title=colorbar, thickness=14), xgap=1, ygap=1,
                 hovertemplate=hover + "<extra></extra>")
    if text:  # values written in the cells: a seeds matrix is small enough to read
        trace.update(texttemplate="%{z:.3f}")
    return go.Figure(go.Heatmap(**trace))


def _layout(fig, title: str, x_title: str, y_title: str, rows: int):
    fig.update_layout(title=dict(text=title, x=0.01), font=FONT, plot_bgcolor="white",
                      height=max(320, min(900, 120 + 34 * rows)), margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title=x_title, type="category", tickangle=-30, tickfont=dict(size=11))
    fig.update_yaxes(title=y_title, type="category", autorange="reversed", tickfont=dict(size=11))
    return _finish(fig)


def dynamics_heatmap(result, p) -> object:
    d, info = result.dynamics, _measure(result.dynamics.measure)
    fig = _heatmap(d.values, *info.value_range, "layer %{y}<br>%{x} vs final: %{z:.4f}", info.label)
    return _layout(fig, f"{info.label}: each checkpoint vs the final model ({p['final']})", "checkpoint", "layer",
                   len(d.values.index))


def dynamics_lines(result, p) -> object:
    import plotly.graph_objects as go

    from plotly.colors import sample_colorscale

    d, info = result.dynamics, _measure(result.dynamics.measure)
    x = [str(c) for c in d.values.columns]
    layers = list(d.values.index)
    # Colour by depth (first layer dark, last light): with many layers, a categorical palette repeats.
    colours = sample_colorscale("Viridis", [0.9 * i / max(len(layers) - 1, 1) for i in range(len(layers))])
    fig = go.Figure([go.Scatter(x=x, y=d.values.loc[layer].to_numpy(dtype=float), mode="lines+markers", name=str(layer),
                                line=dict(color=colour), marker=dict(color=colour),
                                hovertemplate=f"{layer}<br>%{{x}}: %{{y:.4f}}<extra></extra>")
                     for layer, colour in zip(layers, colours)])
    fig.update_layout(title=dict(text=f"{info.label} to the final model, one line per layer", x=0.01), font=FONT,
                      plot_bgcolor="white", height=420, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(title="layer", font=dict(size=11)))
    fig.update_xaxes(title="checkpoint", type="category", gridcolor="#eee")
    fig.update_yaxes(title=info.label, range=list(info.value_range), gridcolor="#eee")
    return _finish(fig)


def seeds_matrix(result, p) -> object:
    s, info = result.seeds, _measure(result.seeds.measure)
    fig = _heatmap(s.values, *info.value_range, "%{y}<br>%{x}<br>value: %{z:.4f}", info.label, text=True)
    return _layout(fig, f"{info.label} between seeds at {s.layer}", "seed", "seed", len(s.values.index))


def all_figures(result, spec, ctx) -> dict:
    """Every figure the result supports, by name (the CLI and the report)."""
    p, out = spec.params, {}
    if result.dynamics is not None:
        out["dynamics_heatmap"] = dynamics_heatmap(result, p)
        out["dynamics_lines"] = dynamics_lines(result, p)
    if result.seeds is not None:
        out["seeds_matrix"] = seeds_matrix(result, p)
    return out


def all_tables(result) -> dict:
    out = {}
    if result.dynamics is not None:
        out["dynamics"] = result.dynamics.values
    if result.seeds is not None:
        out["seeds"] = result.seeds.values
    return out
