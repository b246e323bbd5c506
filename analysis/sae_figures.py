"""Plotly figures (and one HTML snippet) for the SAE features page; no Streamlit here."""
from __future__ import annotations

import html

import numpy as np

from .figures import FONT, _finish
from .sae import KIND_NAMES

KIND_COLOURS = {"topk": "#4c78a8", "batchtopk": "#f58518", "relu": "#54a24b", "jumprelu": "#e45756"}


def _layout(fig, height: int = 300, title: str = "", **kw):
    kw.setdefault("margin", dict(l=10, r=10, t=40 if title else 20, b=10))
    fig.update_layout(height=height, font=FONT,
                      plot_bgcolor="white", title=dict(text=title, x=0.01, font=dict(size=14)), **kw)
    fig.update_xaxes(gridcolor="#eee", zeroline=False)
    fig.update_yaxes(gridcolor="#eee", zeroline=False)
    return _finish(fig)


def training_curve(history: dict, title: str = ""):
    """Loss, L0 and explained variance (of the logged training batches) against the step."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=["loss", "L0 (active latents)", "explained variance"],
                        horizontal_spacing=0.08)
    steps = list(history.get("step", []))
    for col, (name, colour) in enumerate((("loss", "#4c78a8"), ("l0", "#f58518"), ("fve", "#54a24b")), start=1):
        fig.add_trace(go.Scatter(x=steps, y=list(history.get(name, [])), mode="lines+markers", name=name,
                                 line=dict(color=colour), marker=dict(size=4), showlegend=False,
                                 hovertemplate="step %{x}<br>%{y:.4g}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    if title:
        fig.add_annotation(text=title, x=0, y=1.32, xref="paper", yref="paper", showarrow=False, xanchor="left",
                           font=dict(size=14))
    return _layout(fig, 280, "", margin=dict(l=10, r=10, t=75, b=10))


def frontier(rows: list[dict], current_key: str | None = None):
    """Trained SAEs of one layer: L0 (log) against the fraction of variance explained, per kind;
    the SAE on show is ringed. ``rows``: metadata dicts from :func:`analysis.sae.trained_list`."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind, name in KIND_NAMES.items():
        mine = [r for r in rows if r["params"]["kind"] == kind and "metrics" in r.get("train_info", {})]
        if not mine:
            continue
        text = [_describe(r) for r in mine]
        fig.add_trace(go.Scatter(x=[r["train_info"]["metrics"]["l0"] for r in mine],
                                 y=[r["train_info"]["metrics"]["fve"] for r in mine], mode="markers", name=name,
                                 marker=dict(size=10, color=KIND_COLOURS[kind]), text=text,
                                 hovertemplate="%{text}<br>L0 %{x:.1f} · explained variance %{y:.3f}<extra></extra>"))
    cur = [r for r in rows if r["key"] == current_key and "metrics" in r.get("train_info", {})]
    if cur:
        m = cur[0]["train_info"]["metrics"]
        fig.add_trace(go.Scatter(x=[m["l0"]], y=[m["fve"]], mode="markers", name="on show", hoverinfo="skip",
                                 marker=dict(size=18, symbol="circle-open", color="black", line=dict(width=2))))
    fig.update_xaxes(title="L0 (mean active latents)", type="log")
    fves = [r["train_info"]["metrics"]["fve"] for r in rows if "metrics" in r.get("train_info", {})]
    fig.update_yaxes(title="fraction of variance explained", range=[min([0.0] + fves) - 0.02, 1.02])
    return _layout(fig, 320, "Sparsity vs reconstruction (every SAE trained on this layer)",
                   legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1))


def _describe(row: dict) -> str:
    p = row["params"]
    sparsity = f"k={p['k']}" if "k" in p else f"l1={p['l1']}"
    return (f"{KIND_NAMES[p['kind']]} · {p['expansion']}x · {sparsity} · {p['steps']} steps · lr {p['lr']:g} · "
            f"batch {p['batch_size']} · seed {p['seed']}")


def density_histogram(metrics):
    """log10 feature density of the live latents, with the dead and dense counts in the title."""
    import plotly.graph_objects as go

    edges, counts = np.asarray(metrics.density_edges), np.asarray(metrics.density_counts)
    centres = (edges[:-1] + edges[1:]) / 2
    m = len(metrics.density)
    dead = int(round(metrics.dead_fraction * m))
    dense = int(round(metrics.dense_fraction * m))
    fig = go.Figure(go.Bar(x=centres, y=counts, width=np.diff(edges), marker_color="#4c78a8",
                           hovertemplate="density 10^%{x:.2f}<br>%{y} features<extra></extra>"))
    fig.add_vline(x=-1, line_dash="dot", line_color="#e45756", annotation_text="dense (10%)")
    fig.update_xaxes(title="log10 feature density (fraction of inputs where active)")
    fig.update_yaxes(title="features")
    return _layout(fig, 280, f"Feature density · {dead} dead · {dense} dense of {m}")


def activation_histogram(values, title: str = "Non-zero activations"):
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=np.asarray(values, dtype=float), nbinsx=30, marker_color="#4c78a8",
                                 hovertemplate="activation %{x}<br>%{y} inputs<extra></extra>"))
    fig.update_xaxes(title="activation")
    fig.update_yaxes(title="inputs")
    return _layout(fig, 260, title)


def class_bars(values, names, title: str, signed: bool = False):
    """One bar per class: mean activation (or a signed logit effect, red/blue)."""
    import plotly.graph_objects as go

    values = np.asarray(values, dtype=float)
    colours = np.where(values >= 0, "#4c78a8", "#e45756") if signed else "#4c78a8"
    fig = go.Figure(go.Bar(x=[str(n) for n in names], y=values, marker_color=colours,
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    fig.update_xaxes(title="class", type="category")
    if signed:
        fig.add_hline(y=0, line_color="#999")
    return _layout(fig, 260, title)


def decoder_map_figure(coords, density, selected: int | None = None, top_class=None, method: str = "UMAP"):
    """Decoder directions in 2-D, coloured by log10 density; each point carries its feature index
    (customdata), so a click selects the feature. Dead features are grey crosses."""
    import plotly.graph_objects as go

    coords = np.asarray(coords)
    density = np.asarray(density, dtype=float)
    idx = np.arange(len(coords))
    live, dead = idx[density > 0], idx[density == 0]
    label = (lambda i: f"feature {i}" + (f" · top class {top_class[i]}" if top_class is not None else ""))
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=coords[live, 0], y=coords[live, 1], mode="markers", name="features",
                               customdata=[int(i) for i in live],
                               text=[f"{label(i)} · density {density[i]:.3g}" for i in live],
                               hovertemplate="%{text}<extra></extra>",
                               marker=dict(size=6, color=np.log10(density[live]), colorscale="Viridis",
                                           colorbar=dict(title="log10 density", thickness=12), opacity=0.85)))
    if len(dead):
        fig.add_trace(go.Scattergl(x=coords[dead, 0], y=coords[dead, 1], mode="markers", name="dead",
                                   customdata=[int(i) for i in dead], text=[f"feature {i} · dead" for i in dead],
                                   hovertemplate="%{text}<extra></extra>",
                                   marker=dict(size=5, color="#bbb", symbol="x")))
    if selected is not None and 0 <= selected < len(coords):
        fig.add_trace(go.Scatter(x=[coords[selected, 0]], y=[coords[selected, 1]], mode="markers", name="selected",
                                 hoverinfo="skip", marker=dict(size=16, symbol="circle-open", color="#e45756",
                                                              line=dict(width=3))))
    fig.update_xaxes(title=f"{method} 1", showticklabels=False)
    fig.update_yaxes(title=f"{method} 2", showticklabels=False)
    return _layout(fig, 440, f"Decoder directions ({method}) · click a point to open its feature",
                   clickmode="event+select", margin=dict(l=10, r=10, t=70, b=10),
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0))


def active_features_bar(features, values, top_class=None):
    """The latents active on one input, strongest first; bars carry their feature index."""
    import plotly.graph_objects as go

    features, values = np.asarray(features)[:40], np.asarray(values, dtype=float)[:40]
    labels = [f"#{int(f)}" for f in features]
    text = [f"feature {int(f)}" + (f" · top class {top_class[int(f)]}" if top_class is not None else "")
            for f in features]
    fig = go.Figure(go.Bar(x=labels, y=values, marker_color="#f58518", customdata=[int(f) for f in features],
                           text=text, hovertemplate="%{text}<br>activation %{y:.4g}<extra></extra>",
                           textposition="none"))
    fig.update_xaxes(title="feature", type="category")
    fig.update_yaxes(title="activation")
    return _layout(fig, 280, f"{len(features)} strongest active features on this input")


def match_quality(correlation, best_a, threshold: float):
    """Distribution of match quality: assigned pairs' correlation, shared (>= threshold) vs
    model-specific, and each A feature's best correlation with any B feature."""
    import plotly.graph_objects as go

    corr = np.asarray(correlation, dtype=float)
    bins = dict(start=-0.2, end=1.0001, size=0.05)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=corr[corr >= threshold], xbins=bins, name=f"shared (r ≥ {threshold:g})",
                               marker_color="#54a24b", opacity=0.85))
    fig.add_trace(go.Histogram(x=corr[corr < threshold], xbins=bins, name="model-specific", marker_color="#e45756",
                               opacity=0.85))
    fig.add_trace(go.Histogram(x=np.asarray(best_a, dtype=float), xbins=bins, name="best r of each A feature (no assignment)",
                               marker_color="rgba(0,0,0,0)", marker_line=dict(color="#333", width=1.2)))
    fig.add_vline(x=threshold, line_dash="dot", line_color="#333")
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="activation correlation of the matched pair")
    fig.update_yaxes(title="pairs")
    return _layout(fig, 360, f"Match quality · {int((corr >= threshold).sum())} shared, "
                             f"{int((corr < threshold).sum())} model-specific pairs",
                   legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0))


def highlight_tokens_html(tokens, values, vmax: float | None = None) -> str:
    """A sentence as HTML with each token's background shaded by its activation (WordPiece
    continuations '##x' joined to the previous token)."""
    values = np.asarray(values, dtype=float)
    top = float(vmax if vmax else (values.max() if len(values) and values.max() > 0 else 1.0))
    parts = []
    for tok, v in zip(tokens, values):
        alpha = 0.0 if v <= 0 else min(1.0, v / top)
        join = tok.startswith("##")
        text = html.escape(tok[2:] if join else tok)
        title = f"{v:.3g}"
        span = (f'<span title="{title}" style="background: rgba(245,133,24,{alpha:.2f}); border-radius: 3px; '
                f'padding: 0 1px">{text}</span>')
        parts.append(span if join or not parts else " " + span)
    return "".join(parts)
