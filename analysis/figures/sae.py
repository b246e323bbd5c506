"""Figures (and one HTML snippet) of the SAE features view, from its Result; no numerics here. The
page, the CLI and the report draw the same figures.

Every figure's title says which model, layer and SAE it shows. Titles sit below the band at the top
of a figure where Plotly draws its toolbar, and legends sit between the title and the plot, so the
toolbar covers neither and a legend never meets an axis title.
"""
from __future__ import annotations

import html

import numpy as np

from . import FONT, _finish

KIND_COLOURS = {"topk": "#4c78a8", "batchtopk": "#f58518", "relu": "#54a24b", "jumprelu": "#e45756"}
# The band at the top of a figure where Plotly's toolbar appears (26 px in Streamlit), plus the ~10 px
# a title of several lines rises above its anchor.
TOOLBAR_PX = 48
LINE_PX = 20  # one line of a title
LEGEND_PX = 26  # one row of a horizontal legend
UNEXPLAINED_FLOOR = 1e-7  # an SAE that explains everything is drawn here on the log axis


def _text(value) -> str:
    """A name from a model or a file, inert in Plotly's HTML-like text."""
    return html.escape(str(value), quote=False)


def _kind_names() -> dict:
    from ..sae import KIND_NAMES

    return KIND_NAMES


def _layout(fig, height: int, title: str, legend: bool = False, below: int = 0, **kw):
    """House layout: the title at the left under the toolbar band; ``legend``: one horizontal row
    between the title and the plot; ``below``: room for subplot titles."""
    top = TOOLBAR_PX + LINE_PX * (title.count("<br>") + 1) + 10 + (LEGEND_PX if legend else 0) + below
    fig.update_layout(height=height, font=FONT, plot_bgcolor="white", margin=dict(l=10, r=10, t=top, b=10),
                      title=dict(text=title, x=0.01, xanchor="left", xref="container", y=1 - TOOLBAR_PX / height,
                                 yanchor="top", yref="container", font=dict(size=14)), **kw)
    if legend:
        fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0,
                                      font=dict(size=12)))
    fig.update_xaxes(gridcolor="#eee", zeroline=False)
    fig.update_yaxes(gridcolor="#eee", zeroline=False)
    return _finish(fig)


def where(training, sae: bool = False) -> str:
    """'A · net.relu2 of zoo:mlp-s0' for a Training record (``sae``: and which SAE, on a line of its
    own, so that a title fits a half-width chart)."""
    out = f"{training.side.upper()} · {_text(training.layer)} of {_text(training.model)}"
    return f"{out}<br>{_text(training.describe)}" if sae else out


# ------------------------------------------------------------------ training and metrics
def training_curve(training, title: str | None = None):
    """Loss, L0 and explained variance (of the logged training batches) against the step."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    history = training.history if hasattr(training, "history") else training
    fig = make_subplots(rows=1, cols=3, subplot_titles=["loss", "L0", "explained variance"],
                        horizontal_spacing=0.11)
    steps = [float(s) for s in history.get("step", [])]
    for col, (name, colour) in enumerate((("loss", "#4c78a8"), ("l0", "#f58518"), ("fve", "#54a24b")), start=1):
        fig.add_trace(go.Scatter(x=steps, y=[float(v) for v in history.get(name, [])], mode="lines+markers",
                                 name=name, line=dict(color=colour), marker=dict(size=4), showlegend=False,
                                 hovertemplate="step %{x}<br>%{y:.4g}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    if title is None:
        title = f"Training curve (logged batches)<br>{where(training, True)}"
    return _layout(fig, 320, title, below=14)


def density_histogram(metrics, title: str = ""):
    """log10 feature density of the live latents, with the dead and dense counts in the title."""
    import plotly.graph_objects as go

    s = metrics.summary if hasattr(metrics, "summary") else metrics
    edges, counts = np.asarray(s.density_edges), np.asarray(s.density_counts)
    centres = (edges[:-1] + edges[1:]) / 2
    m = len(s.density)
    dead, dense = int(round(s.dead_fraction * m)), int(round(s.dense_fraction * m))
    fig = go.Figure(go.Bar(x=centres, y=counts, width=np.diff(edges), marker_color="#4c78a8",
                           hovertemplate="density 10^%{x:.2f}<br>%{y} features<extra></extra>"))
    fig.add_vline(x=-1, line_dash="dot", line_color="#e45756", annotation_text="dense (10%)",
                  annotation_position="top left")
    fig.update_xaxes(title="log10 feature density (fraction of inputs where active)")
    fig.update_yaxes(title="features")
    tail = f"<br>{title}" if title else ""
    return _layout(fig, 320, f"Feature density: {dead:,} dead, {dense:,} dense of {m:,}{tail}")


def _sparsity(params: dict) -> str:
    return f"k={params['k']}" if "k" in params else f"l1={params['l1']:g}"


def _describe(params: dict) -> str:
    return (f"{_kind_names()[params['kind']]} · {params['expansion']}x · {_sparsity(params)} · {params['steps']} steps "
            f"· lr {params['lr']:g} · batch {params['batch_size']} · seed {params['seed']}")


def frontier(rows: list[dict], on_show: dict | None = None, title: str = ""):
    """Every SAE trained on the layer: L0 against the variance it leaves unexplained (1 − explained
    variance), both on log axes so that SAEs explaining 0.98 and 0.998 lie apart; SAEs that differ
    only in their sparsity are joined by a line (a sweep), and the SAE on show is ringed. ``rows``:
    {"params", "metrics"} of :func:`analysis.sae.trained_list`."""
    import plotly.graph_objects as go

    def y(row):
        return max(1.0 - float(row["metrics"]["fve"]), UNEXPLAINED_FLOOR)

    fig = go.Figure()
    for kind, name in _kind_names().items():
        mine = sorted((r for r in rows if r["params"]["kind"] == kind), key=lambda r: r["metrics"]["l0"])
        if not mine:
            continue
        groups: dict = {}
        for r in mine:
            groups.setdefault(tuple(sorted((k, v) for k, v in r["params"].items() if k not in ("k", "l1"))), []).append(r)
        for i, group in enumerate(groups.values()):
            fig.add_trace(go.Scatter(
                x=[r["metrics"]["l0"] for r in group], y=[y(r) for r in group],
                mode="lines+markers" if len(group) > 1 else "markers", name=name, legendgroup=kind,
                showlegend=i == 0, line=dict(color=KIND_COLOURS[kind], width=1.5),
                marker=dict(size=10, color=KIND_COLOURS[kind]), text=[_describe(r["params"]) for r in group],
                customdata=[r["metrics"]["fve"] for r in group],
                hovertemplate="%{text}<br>L0 %{x:.1f} · explained variance %{customdata:.4f}<extra></extra>"))
    shown = [r for r in rows if on_show and r["params"] == on_show]
    if shown:
        fig.add_trace(go.Scatter(x=[shown[0]["metrics"]["l0"]], y=[y(shown[0])], mode="markers", name="on show",
                                 hoverinfo="skip", marker=dict(size=18, symbol="circle-open", color="black",
                                                              line=dict(width=2))))
    # decades only: plotly's minor 2s and 5s crowd a plot this small
    fig.update_xaxes(title="L0 (mean active latents, log)", type="log", dtick=1)
    fig.update_yaxes(title="unexplained variance (1 − FVE, log)", type="log", dtick=1)
    tail = f"<br>{title}" if title else ""
    return _layout(fig, 360, f"Sparsity vs reconstruction of every SAE trained on this layer{tail}", legend=True)


# ------------------------------------------------------------------ the feature browser
def decoder_map_figure(coords, density, selected: int | None = None, top_class=None, method: str = "UMAP",
                       title: str = ""):
    """Decoder directions in 2-D, coloured by log10 density; each point carries its feature index
    (customdata), so a click selects the feature. Dead features are grey crosses."""
    import plotly.graph_objects as go

    coords, density = np.asarray(coords), np.asarray(density, dtype=float)
    idx = np.arange(len(coords))
    live, dead = idx[density > 0], idx[density == 0]
    label = (lambda i: f"feature {i}" + (f" · top class {_text(top_class[i])}" if top_class is not None else ""))
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=coords[live, 0], y=coords[live, 1], mode="markers", name="features",
                               customdata=[int(i) for i in live],
                               text=[f"{label(i)} · density {density[i]:.3g}" for i in live],
                               hovertemplate="%{text}<extra></extra>",
                               marker=dict(size=6, color=np.log10(density[live]), colorscale="Viridis",
                                           colorbar=dict(title=dict(text="log10 density", side="right"),
                                                         thickness=12), opacity=0.85)))
    if len(dead):
        fig.add_trace(go.Scattergl(x=coords[dead, 0], y=coords[dead, 1], mode="markers", name="dead",
                                   customdata=[int(i) for i in dead], text=[f"feature {i} · dead" for i in dead],
                                   hovertemplate="%{text}<extra></extra>",
                                   marker=dict(size=5, color="#bbb", symbol="x")))
    if selected is not None and 0 <= selected < len(coords):
        fig.add_trace(go.Scatter(x=[coords[selected, 0]], y=[coords[selected, 1]], mode="markers",
                                 name=f"feature {selected}", hoverinfo="skip",
                                 marker=dict(size=16, symbol="circle-open", color="#e45756", line=dict(width=3))))
    fig.update_xaxes(title=f"{method} 1", showticklabels=False)
    fig.update_yaxes(title=f"{method} 2", showticklabels=False)
    tail = f"<br>{title}" if title else ""
    return _layout(fig, 480, f"Decoder directions ({method}){tail}", legend=True, clickmode="event+select")


def activation_histogram(values, title: str = "Non-zero activations"):
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=np.asarray(values, dtype=float), nbinsx=30, marker_color="#4c78a8",
                                 hovertemplate="activation %{x}<br>%{y} inputs<extra></extra>"))
    fig.update_xaxes(title="activation")
    fig.update_yaxes(title="inputs")
    return _layout(fig, 300, title)


def class_bars(values, names, title: str, signed: bool = False, y_title: str = ""):
    """One bar per class: mean activation (or a signed logit effect, red/blue)."""
    import plotly.graph_objects as go

    values = np.asarray(values, dtype=float)
    colours = np.where(values >= 0, "#4c78a8", "#e45756") if signed else "#4c78a8"
    fig = go.Figure(go.Bar(x=[_text(n) for n in names], y=values, marker_color=colours,
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    fig.update_xaxes(title="class", type="category")
    fig.update_yaxes(title=y_title)
    if signed:
        fig.add_hline(y=0, line_color="#999")
    return _layout(fig, 300, title)


def active_features_bar(features, values, top_class=None, title: str = ""):
    """The latents active on one input, strongest first; bars carry their feature index."""
    import plotly.graph_objects as go

    features, values = np.asarray(features)[:40], np.asarray(values, dtype=float)[:40]
    text = [f"feature {int(f)}" + (f" · top class {_text(top_class[int(f)])}" if top_class is not None else "")
            for f in features]
    fig = go.Figure(go.Bar(x=[f"#{int(f)}" for f in features], y=values, marker_color="#f58518",
                           customdata=[int(f) for f in features], text=text, textposition="none",
                           hovertemplate="%{text}<br>activation %{y:.4g}<extra></extra>"))
    fig.update_xaxes(title="feature", type="category")
    fig.update_yaxes(title="activation")
    tail = f"<br>{title}" if title else ""
    return _layout(fig, 320, f"The {len(features)} strongest active features{tail}")


def match_quality(match, title: str = ""):
    """Distribution of match quality: assigned pairs' correlation, shared (>= threshold) vs
    model-specific, and each A feature's best correlation with any B feature."""
    import plotly.graph_objects as go

    corr, threshold = np.asarray(match.correlation, dtype=float), float(match.threshold)
    bins = dict(start=-0.2, end=1.0001, size=0.05)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=corr[corr >= threshold], xbins=bins, name=f"shared (r ≥ {threshold:g})",
                               marker_color="#54a24b", opacity=0.85))
    fig.add_trace(go.Histogram(x=corr[corr < threshold], xbins=bins, name="model-specific", marker_color="#e45756",
                               opacity=0.85))
    fig.add_trace(go.Histogram(x=np.asarray(match.best_a, dtype=float), xbins=bins, name="best r per A feature",
                               marker_color="rgba(0,0,0,0)", marker_line=dict(color="#333", width=1.2)))
    fig.add_vline(x=threshold, line_dash="dot", line_color="#333")
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="activation correlation of the matched pair")
    fig.update_yaxes(title="pairs")
    tail = f"<br>{title}" if title else ""
    return _layout(fig, 400, f"Match quality: {int((corr >= threshold).sum())} shared, "
                             f"{int((corr < threshold).sum())} model-specific pairs{tail}", legend=True)


def highlight_tokens_html(tokens, values, vmax: float | None = None) -> str:
    """A sentence as HTML with each token's background shaded by its activation (WordPiece
    continuations '##x' joined to the previous token). Tokens are escaped."""
    values = np.asarray(values, dtype=float)
    top = float(vmax if vmax else (values.max() if len(values) and values.max() > 0 else 1.0))
    parts = []
    for tok, v in zip(tokens, values):
        alpha = 0.0 if v <= 0 else min(1.0, v / top)
        join = tok.startswith("##")
        text = html.escape(tok[2:] if join else tok)
        span = (f'<span title="{v:.3g}" style="background: rgba(245,133,24,{alpha:.2f}); border-radius: 3px; '
                f'padding: 0 1px">{text}</span>')
        parts.append(span if join or not parts else " " + span)
    return "".join(parts)


# ------------------------------------------------------------------ from a Result
def _training(result, side: str):
    return result.of("train", side)


def curve(result, side: str):
    return training_curve(_training(result, side))


def density(result, side: str):
    t = _training(result, side)
    return density_histogram(result.of("metrics", side), where(t, True))


def frontier_of(result, side: str):
    t = _training(result, side)
    return frontier(result.of("frontier", side) or [], t.params or None, where(t))


def decoder_map(result, side: str, selected: int | None = None):
    t, f, m = _training(result, side), result.of("features", side), result.decoder_map(side)
    tops = f.top_classes()
    return decoder_map_figure(m.coords, f.density, selected, None if tops is None else _by_feature(f, tops),
                              m.method.upper(), where(t, True))


def _by_feature(features, values) -> list:
    """Per-latent values of the (density-sorted) feature table, in latent order."""
    out = [""] * len(features.density)
    for i, v in zip(features.table["feature"], values):
        out[int(i)] = v
    return out


def top_names(result, side: str) -> list | None:
    f = result.of("features", side)
    tops = f.top_classes()
    return None if tops is None else _by_feature(f, tops)


def feature_figures(result, side: str) -> dict:
    """The charts of the feature on show (none for a dead feature: it has nothing to draw)."""
    t, d = _training(result, side), result.of("feature", side)
    names = result.of("features", side).class_names
    if d.dead:
        return {}
    head, tail = f"Feature {d.index}", f"<br>{where(t)}"
    out = {"sae_hist": activation_histogram(d.activations, f"{head}: non-zero activations{tail}")}
    if d.class_mean is not None and names:
        out["sae_classes"] = class_bars(d.class_mean, names, f"{head}: mean activation per class{tail}",
                                        y_title="mean activation")
    if d.effect is not None and names:
        out["sae_logits"] = class_bars(d.effect, names, f"{head}: class-logit effect{tail}", signed=True,
                                       y_title="logit change")
    return out


def active(result, side: str):
    i = result.of("input", side)
    return active_features_bar(i.features, i.values, top_names(result, side),
                               f"on input {i.row} · {where(_training(result, side))}")


def matches(result):
    ta, tb = result.train_a, result.train_b
    return match_quality(result.match.match, f"{where(ta)} vs {where(tb)}")


def all_figures(result, spec, ctx) -> dict:
    """Every figure the result supports, by name (the CLI and the report)."""
    out = {}
    for side in ("a", "b"):
        tag = side.upper()
        if _training(result, side) is not None:
            out[f"sae_curve_{tag}"] = curve(result, side)
        if result.of("metrics", side) is not None:
            out[f"sae_density_{tag}"] = density(result, side)
        if result.of("frontier", side) is not None:
            out[f"sae_frontier_{tag}"] = frontier_of(result, side)
        if result.decoder_map(side) is not None:
            detail = result.of("feature", side)
            out[f"sae_map_{tag}"] = decoder_map(result, side, None if detail is None else detail.index)
        if result.of("feature", side) is not None:
            out.update({f"{k}_{tag}": fig for k, fig in feature_figures(result, side).items()})
        if result.of("input", side) is not None:
            out[f"sae_active_{tag}"] = active(result, side)
    if result.match is not None:
        out["sae_match_quality"] = matches(result)
    return out


def all_tables(result) -> dict:
    import pandas as pd

    out = {}
    for side in ("a", "b"):
        f = result.of("features", side)
        if f is not None:
            out[f"features_{side.upper()}"] = f.table.sort_values("feature").reset_index(drop=True)
    if result.match is not None:
        m = result.match.match
        out["matches"] = pd.DataFrame({"feature of A": m.a, "feature of B": m.b, "correlation": m.correlation,
                                       "shared": m.shared})
    return out
