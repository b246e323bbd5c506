"""Figures and tables of the Attributions view, from its Result (no numerics here): relevance maps
on a diverging colour scale centred on 0, token relevance, conservation, agreement, faithfulness
and relevance per hidden unit. The page, the CLI and the report draw the same figures.

Every title says what the figure shows, for which models, under which rule and target, so a pinned
figure (whose caption is its title) still says it on a slide; how to read the figure is its
subtitle. Titles are short lines (a half-width figure has room for about 50 characters), plain text
and <br> only (user text is made inert for Plotly, which leaves no other markup). They sit below the
band where Plotly draws its toolbar (top right), and legends inside the plot or below it, so the
toolbar covers neither."""
from __future__ import annotations

import numpy as np

from . import FONT, _finish

DIVERGING = "RdBu_r"  # red: evidence for the target, blue: against it, white: 0
METHOD_COLOURS = {"LRP": "#d62728", "gradient x input": "#1f77b4", "random": "#7f7f7f"}
MODEL_COLOURS = {"A": "#4c78a8", "B": "#f58518"}
TOOLBAR_PX = 30  # the band at the top of a figure where Plotly's toolbar appears (27 px measured)
TITLE_RISE_PX = 13  # a title's text reaches this far above its anchor (measured in Chromium)
LINE_PX = 20  # one line of a title
SUBTITLE_PX = 17  # one line of a subtitle
LINE_CHARS = 80  # characters of tokens on one line of a token map before it wraps


def _titled(fig, title: str, height: int, below: int = 0, bottom: int = 10, subtitle: str = ""):
    """Title (lines split by <br>) and a smaller grey subtitle under the toolbar band, at the left;
    ``below``: room for subplot titles between them and the plots."""
    lines = title.count("<br>") + 1
    sub_lines = subtitle.count("<br>") + 1 if subtitle else 0
    anchor = TOOLBAR_PX + TITLE_RISE_PX + 4
    top = anchor + LINE_PX * lines + SUBTITLE_PX * sub_lines + below
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", xref="container", y=1 - anchor / height,
                                 yanchor="top", yref="container", font=dict(size=14),
                                 subtitle=dict(text=subtitle, font=dict(size=12, color="#555"))),
                      height=height, margin=dict(l=10, r=10, t=top, b=bottom), font=FONT, plot_bgcolor="white")
    return fig


def _symmetric(r: np.ndarray) -> float:
    m = float(np.nanmax(np.abs(r))) if np.size(r) else 0.0
    return m if m > 0 else 1.0


def _rule(p) -> str:
    from ..views.attributions import rule_label

    return rule_label(p)


def _target(p) -> str:
    from ..views.attributions import target_label

    return target_label(p)


def _pair(p) -> str:
    return f"A {p['a']} · B {p['b']}"


def _context(p) -> str:
    """The models, then the rule and target: two short title lines."""
    return f"{_pair(p)}<br>{_rule(p)} · {_target(p)}"


# ------------------------------------------------------------------ images
def relevance_grid(images, relevances, titles: list[str], image_shape=(8, 8), heading: str = "", per_row: int = 3,
                   subtitle: str = ""):
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
    _titled(fig, heading, 60 + 250 * groups, subtitle=subtitle)
    fig.update_layout(annotations=notes, showlegend=False)
    fig.update_xaxes(visible=False, range=[-0.6, cols * (w + gap) - gap - 0.4], constrain="domain")
    fig.update_yaxes(visible=False, range=[groups * band - 1, 0], scaleanchor="x", constrain="domain")
    return _finish(fig)


def maps_figure(result, p, slot: str):
    """One model's relevance maps of the shown samples, titled with the model, rule and target."""
    maps = result.maps
    mm = maps.a if slot == "A" else maps.b
    titles = [f"{n} → class {int(c)}" for n, c in zip(maps.names, mm.target)]
    return relevance_grid(maps.inputs, mm.relevance, titles, maps.image_shape,
                          f"Model {slot} · {mm.ref}<br>{_rule(p)} · {_target(p)}",
                          subtitle="each input above its relevance (red: for the class, blue: against)")


def conservation_figure(points: dict, title: str = "Sum of relevance against the explained output",
                        subtitle: str = ""):
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
    _titled(fig, title, 420, subtitle=subtitle)
    fig.update_layout(legend=dict(x=0.01, y=0.99, xanchor="left", yanchor="top", bgcolor="rgba(255,255,255,0.8)"),
                      xaxis=dict(title="explained output f(x)", gridcolor="#eee"),
                      yaxis=dict(title="sum of relevance", gridcolor="#eee"))
    return _finish(fig)


def conservation(result, p):
    d = result.dataset
    points = {f"A · {p['a']}": (d.output_a, d.sum_a), f"B · {p['b']}": (d.output_b, d.sum_b)}
    return conservation_figure(points, "Sum of relevance against the explained output<br>" + _context(p),
                               "on the line: all of the output reached the inputs")


def agreement_histogram(per_sample: np.ndarray, shown: dict | None = None,
                        title: str = "Agreement of A's and B's maps (Spearman ρ per sample)", subtitle: str = ""):
    """Rank correlation of A's and B's relevance maps per sample; ``shown``: {label: value} marked."""
    import plotly.graph_objects as go

    v = np.asarray(per_sample, float)
    v = v[np.isfinite(v)]
    fig = go.Figure(go.Histogram(x=v, xbins=dict(start=-1, end=1.0001, size=0.05), marker_color="#4c78a8",
                                 name="samples", hovertemplate="ρ %{x}<br>%{y} samples<extra></extra>"))
    if len(v):
        fig.add_vline(x=float(v.mean()), line_dash="dot", line_color="#333",
                      annotation_text=f"mean {v.mean():.3f}", annotation_position="top left")
    for value in (shown or {}).values():
        if np.isfinite(value):
            fig.add_vline(x=float(value), line_color="#d62728", line_width=1, opacity=0.6)
    _titled(fig, title, 420, subtitle=subtitle)
    fig.update_layout(xaxis=dict(title="rank correlation", range=[-1, 1], gridcolor="#eee"),
                      yaxis=dict(title="samples", gridcolor="#eee"), bargap=0.05, showlegend=False)
    return _finish(fig)


def agreement(result, p):
    shown = dict(zip(result.maps.names, result.maps.agreement)) if result.maps is not None else None
    return agreement_histogram(result.dataset.agreement, shown, "Agreement of A's and B's maps<br>" + _context(p),
                               "Spearman ρ of the two maps per sample; red lines: the samples shown above")


def faithfulness_figure(results: dict, identical: dict | None = None, y_title: str = "explained output",
                        x_title: str = "fraction of features removed", title: str = "Faithfulness: pixel flipping",
                        subtitle: str = ""):
    """Removal curves (most relevant first) per method, one panel per model, AOPC in the legend. LRP
    is drawn wide and pale under gradient x input's dashed line, so coinciding curves (``identical``:
    model -> True) both stay visible, and the legend says they coincide."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    identical = identical or {}
    names = list(results)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=False, horizontal_spacing=0.08,
                        subplot_titles=[f"Model {n}" for n in names])
    styles = {"LRP": dict(width=6, dash="solid"), "gradient x input": dict(width=2, dash="dash"),
              "random": dict(width=2, dash="dot")}
    for j, name in enumerate(names):
        res = results[name]
        for method in sorted(res.curves, key=lambda m: ("lrp", "gradient x input", "random").index(m)
                             if m in ("lrp", "gradient x input", "random") else 3):
            label = "LRP" if method == "lrp" else method
            same = " — the same curve as LRP" if method == "gradient x input" and identical.get(name) else ""
            fig.add_trace(go.Scatter(x=res.fractions, y=res.curves[method], mode="lines+markers",
                                     name=f"{name}: {label} (AOPC {res.aopc[method]:.3f}){same}", legendgroup=name,
                                     opacity=0.55 if label == "LRP" else 1.0,
                                     line=dict(color=METHOD_COLOURS.get(label, "#333"), **styles.get(label, {})),
                                     marker=dict(size=7 if label == "LRP" else 4),
                                     hovertemplate="%{x:.2f} removed<br>%{y:.3f}<extra>" + label + "</extra>"),
                          row=1, col=j + 1)
        fig.update_xaxes(title=x_title, gridcolor="#eee", range=[0, 1], row=1, col=j + 1)
        fig.update_yaxes(title=y_title if j == 0 else None, gridcolor="#eee", row=1, col=j + 1)
    _titled(fig, title, 470, below=10, bottom=10, subtitle=subtitle)
    fig.update_layout(legend=dict(orientation="h", y=-0.28, yanchor="top", x=0))
    return _finish(fig)


def pixel_flipping(result, p):
    f = result.faithfulness
    return faithfulness_figure({"A": f.a, "B": f.b}, f.identical,
                               title=f"Faithfulness: pixel flipping on the first {f.n} samples<br>"
                                     f"{_pair(p)} · {_rule(p)} · {_target(p)}",
                               subtitle="the explained output as the most relevant pixels are set to 0")


def unit_relevance_figure(units: dict, titles: dict, top: int = 40, title: str = "Relevance at a hidden layer",
                          subtitle: str = ""):
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
    return _finish(_titled(fig, title, 400, below=10, subtitle=subtitle))


def units(result, p):
    part = result.maps if result.maps is not None else result.text_maps
    shown = {"A": part.a, "B": part.b}
    return unit_relevance_figure({s: m.units for s, m in shown.items()},
                                 {s: f"{s} · {m.ref} · {m.layer}" for s, m in shown.items()},
                                 title="Relevance at a hidden layer<br>"
                                       + " · ".join(f"{s} {m.ref} {m.layer}" for s, m in shown.items())
                                       + f"<br>{_rule(p)}",
                                 subtitle="mean relevance per unit over the inputs shown above")


# ------------------------------------------------------------------ text
def token_map(rows: list[tuple[list[str], np.ndarray]], row_titles: list[str], heading: str = "", group: int = 1,
              line_chars: int = LINE_CHARS, subtitle: str = ""):
    """Sentences as rows of tokens coloured by relevance (diverging, centred on 0, one scale per row).
    Each token is a box as wide as its text, so no token is cut; a long sentence wraps onto further
    lines. ``rows``: (tokens, relevance) of the real tokens of each row; ``group`` rows in a row belong
    together (a rule after each group)."""
    import plotly.graph_objects as go

    xs, widths, ys, texts, colours, hover, ticks = [], [], [], [], [], [], []
    line = 0
    for i, (tokens, rel) in enumerate(rows):
        rel = np.asarray(rel, dtype=float)
        scale = _symmetric(rel)
        ticks.append(line)
        pos = 0.0
        for tok, r in zip(tokens, rel):
            width = len(tok) + 1.6
            if pos > 0 and pos + width > line_chars:  # wrap: continue on the next line
                line, pos = line + 1, 0.0
            xs.append(pos)
            widths.append(width)
            ys.append(line)
            texts.append(tok)
            colours.append(r / scale)
            hover.append(f"{row_titles[i]}<br>{tok}: {r:.4f}")
            pos += width
        line += 1
        if (i + 1) % group == 0 and i + 1 < len(rows):
            line += 0.4  # a gap after each group (sentence)
    fig = go.Figure(go.Bar(x=widths, y=ys, base=xs, orientation="h", width=0.82, text=texts, name="tokens",
                           textposition="inside", insidetextanchor="middle", textangle=0, constraintext="none",
                           textfont=dict(size=12), customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                           marker=dict(color=colours, colorscale=DIVERGING, cmid=0, cmin=-1, cmax=1,
                                       line=dict(color="white", width=1),
                                       colorbar=dict(title="relevance<br>(÷ row max)", thickness=10))))
    n_lines = line
    _titled(fig, heading, int(130 + 30 * max(n_lines, 1)), subtitle=subtitle)
    fig.update_layout(uniformtext=dict(minsize=10, mode="show"), bargap=0, showlegend=False)
    fig.update_xaxes(visible=False, range=[0, line_chars])
    fig.update_yaxes(tickvals=ticks, ticktext=row_titles, autorange="reversed", showgrid=False, zeroline=False,
                     range=None)
    return _finish(fig)


def token_pairs(result, p):
    """Each sentence's tokens coloured by A's relevance, and by B's on the line below."""
    t = result.text_maps
    rows, titles = [], []
    for i in range(len(t.a.tokens)):
        for mm in (t.a, t.b):
            keep = np.asarray(mm.mask[i]).astype(bool)
            rows.append(([tok for tok, k in zip(mm.tokens[i], keep) if k], np.asarray(mm.relevance[i])[keep]))
            titles.append(mm.row_titles[i])
    if t.mode == "similarity":
        target, what = "cosine similarity of the two sentences", \
            "what in each sentence makes the two alike (red: raises the cosine similarity, blue: lowers it)"
    else:
        target = f"topic: {p['at_topic']}"
        what = ("tokens coloured by relevance for the topic score (red: for, blue: against)"
                + ("; each sentence's top topic under each model's probe" if p["at_topic"] == "predicted" else ""))
    return token_map(rows, titles, f"Token relevance · {_pair(p)}<br>{_rule(p)} · {target}", group=2, subtitle=what)


def text_agreement(result, p):
    return agreement_histogram(result.text_dataset, None,
                               f"Agreement of A's and B's token maps<br>{_pair(p)}<br>{_rule(p)} · predicted topics",
                               "Spearman ρ of the two models' token relevance, per sentence of the dataset")


def token_removal(result, p):
    f = result.text_faithfulness
    return faithfulness_figure({"A": f.a, "B": f.b}, None, "probe score", "fraction of tokens removed",
                               f"Faithfulness: token removal<br>{_pair(p)} · {_rule(p)} · topic: {p['at_topic']}",
                               "the probe's score as the most relevant tokens are removed")


# ------------------------------------------------------------------ captions (what a figure shows, in words)
MAPS_CAPTION = ("Each map has its own colour scale (±its largest |relevance|). ΣR / f is 1 when every layer passes on "
                "all the relevance it receives (biases left out of the rules, and no unit driven by its bias alone); "
                "with biases in the rules they keep a share (see the sentence under the rule).")


def pixel_flipping_caption(result) -> str:
    f = result.faithfulness
    text = (f"The first {f.n} samples: pixels are set to 0 in order of relevance (most relevant first) and the "
            "explained score is recorded. AOPC is the mean drop over the steps: the larger, the better the ordering "
            "finds what the model uses; a random order is the baseline. Setting pixels to 0 is the change gradient × "
            "input approximates to first order, so it tends to lead this test; LRP's rules trade some of that for "
            "maps less driven by the gradient's noise (compare the agreement of A's and B's maps under each rule).")
    if any(f.identical.values()):
        text += (" Here LRP's curve is gradient × input's (drawn wide and pale under the dashed line): on a ReLU "
                 "network the epsilon rule with epsilon → 0 is gradient × input, and these models get it on every "
                 "layer. The gamma, z+ and alpha-beta rules order the pixels differently.")
    return text


def token_caption(result) -> str:
    """What the token relevance sums to: the score minus what biases take (never a probe in similarity mode)."""
    absorbed = "the probe's intercept, the normalisation layers' biases" if result.text_maps.mode == "topic" \
        else "the normalisation layers' biases"
    return (f"Each row has its own colour scale (±its largest |relevance|). The relevance sums to the explained score "
            f"minus what biases take ({absorbed}, and with biases in the rules the linear layers'), so ΣR and f differ.")


# ------------------------------------------------------------------ tables
def conservation_table(mm, names) -> dict:
    return {"sample": list(names), "explained output f": np.round(mm.output, 4),
            "sum of relevance": np.round(mm.relevance_sum, 4), "ΣR / f": np.round(mm.conservation, 4)}


def text_conservation_table(t, mm) -> dict:
    if t.mode == "similarity":  # both sentences together explain one number
        return {"sample": ["the pair"], "explained output f": np.round(mm.output, 4),
                "sum of relevance": np.round(mm.conservation * mm.output, 4), "ΣR / f": np.round(mm.conservation, 4)}
    return conservation_table(mm, [f"sentence {i + 1}" for i in range(len(t.texts))])


def aopc_table(result) -> dict:
    f = result.faithfulness
    methods = ("lrp", "gradient x input", "random")
    return {"method": ["LRP", "gradient x input", "random"],
            **{f"AOPC {s}": [round(r.aopc[m], 4) for m in methods] for s, r in (("A", f.a), ("B", f.b))}}


def all_figures(result, spec, ctx) -> dict:
    """Every figure the result supports, by name (the CLI and the report)."""
    p, out = spec.params, {}
    if result.maps is not None:
        out["at_maps_A"], out["at_maps_B"] = maps_figure(result, p, "A"), maps_figure(result, p, "B")
        out["at_units"] = units(result, p)
    if result.dataset is not None:
        out["at_agree"] = agreement(result, p)
        out["at_conservation"] = conservation(result, p)
    if result.faithfulness is not None:
        out["at_faith"] = pixel_flipping(result, p)
    if result.text_maps is not None:
        out["at_tokens"] = token_pairs(result, p)
        out["at_units"] = units(result, p)
        if result.text_dataset is not None:
            out["at_text_agree"] = text_agreement(result, p)
        if result.text_faithfulness is not None:
            out["at_text_faith"] = token_removal(result, p)
    return out


def all_tables(result) -> dict:
    import pandas as pd

    out = {}
    if result.maps is not None:
        m = result.maps
        for slot, mm in (("A", m.a), ("B", m.b)):
            out[f"conservation {slot}"] = pd.DataFrame(conservation_table(mm, m.names))
        out["agreement of the shown samples"] = pd.DataFrame({"sample": m.names, "spearman": m.agreement})
    if result.dataset is not None:
        out["agreement per sample"] = pd.DataFrame({"row": result.dataset.rows, "spearman": result.dataset.agreement})
    if result.faithfulness is not None:
        out["aopc"] = pd.DataFrame(aopc_table(result))
    if result.text_maps is not None:
        t = result.text_maps
        for slot, mm in (("A", t.a), ("B", t.b)):
            out[f"conservation {slot}"] = pd.DataFrame(text_conservation_table(t, mm))
    return out
