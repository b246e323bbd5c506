"""Plotly figures of latent vector fields (no Streamlit here): the field with streamlines, training
latents, attractors, trajectories and basins; convergence curves; memorization against its null;
regime panels; OOD histograms; data-free probing."""
from __future__ import annotations

import numpy as np

from .figures import FONT, _finish

ATTRACTOR = dict(symbol="star", size=15, color="white", line=dict(color="black", width=1.5))
UNSTABLE = dict(symbol="x", size=13, color="red", line=dict(color="black", width=1))
SET_COLOURS = {"in": "#4c78a8", "noise": "#e45756", "inverted": "#f58518", "pixel-shuffled": "#54a24b"}


def _palette():
    from plotly.colors import qualitative

    return qualitative.D3 + qualitative.Set2


def _bilinear(u, v, a, px, py):
    """Values of the grid array ``a`` (rows: v, columns: u) at points (px, py); NaN outside."""
    fx = (px - u[0]) / (u[-1] - u[0]) * (len(u) - 1)
    fy = (py - v[0]) / (v[-1] - v[0]) * (len(v) - 1)
    inside = (fx >= 0) & (fx <= len(u) - 1) & (fy >= 0) & (fy <= len(v) - 1)
    fx, fy = np.where(inside, fx, 0.0), np.where(inside, fy, 0.0)
    i = np.clip(np.floor(fx).astype(int), 0, len(u) - 2)
    j = np.clip(np.floor(fy).astype(int), 0, len(v) - 2)
    tx, ty = np.clip(fx - i, 0, 1), np.clip(fy - j, 0, 1)
    val = (a[j, i] * (1 - tx) * (1 - ty) + a[j, i + 1] * tx * (1 - ty) + a[j + 1, i] * (1 - tx) * ty
           + a[j + 1, i + 1] * tx * ty)
    return np.where(inside, val, np.nan)


def streamlines(u, v, vu, vv, seeds: int = 12, steps: int = 14):
    """Streamlines of the plane field, traced both ways from a ``seeds x seeds`` grid of seeds (RK2
    along the unit direction in box-normalised coordinates, so lines look right on any aspect ratio;
    a line stops where it leaves the grid). Returns (x, y) lists with None between lines, and the
    seeds with the field's box-normalised direction there (for arrowheads)."""
    su, sv = u[-1] - u[0], v[-1] - v[0]
    s = (np.arange(seeds) + 0.5) / seeds
    sx, sy = (a.ravel() for a in np.meshgrid(s, s))
    h = 0.9 / seeds / steps  # each half line is about 0.9 seed spacings long

    def direction(px, py):
        x, y = u[0] + px * su, v[0] + py * sv
        a, b = _bilinear(u, v, vu, x, y) / su, _bilinear(u, v, vv, x, y) / sv
        n = np.hypot(a, b)
        n = np.where(n > 1e-15, n, np.nan)
        return a / n, b / n

    halves = []
    for sign in (1.0, -1.0):
        px, py = sx.copy(), sy.copy()
        xs, ys = [px], [py]
        for _ in range(steps):
            dx, dy = direction(px, py)
            mx, my = direction(px + sign * 0.5 * h * dx, py + sign * 0.5 * h * dy)
            px, py = px + sign * h * mx, py + sign * h * my
            xs.append(px)
            ys.append(py)
        halves.append((np.array(xs), np.array(ys)))
    (fx, fy), (bx, by) = halves
    line_x, line_y = [], []
    for k in range(len(sx)):
        x = np.concatenate([bx[::-1, k], fx[1:, k]])
        y = np.concatenate([by[::-1, k], fy[1:, k]])
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.sum() < 2:
            continue
        line_x += (u[0] + x[ok] * su).tolist() + [None]
        line_y += (v[0] + y[ok] * sv).tolist() + [None]
    dx, dy = direction(sx, sy)
    return line_x, line_y, (u[0] + sx * su, v[0] + sy * sv, dx, dy)


def field_figure(plane, grid, train_uv, labels=None, label_names=None, attractors_uv=None, unstable=(),
                 trajectories=(), background: str = "speed", title: str = "", hover=None):
    """The latent field on the plane: speed ||V|| (or the basin map) as background, streamlines,
    training latents by class, attractors (stars; red crosses: spectral radius >= 1), and
    trajectories (lines from a circle at the start). ``trajectories``: list of (name, (T, 2) array)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if background == "basins":
        basin = grid.basin.astype(float)
        basin[basin < 0] = np.nan
        n_b = int(np.nanmax(basin)) + 1 if np.isfinite(basin).any() else 1
        from plotly.colors import qualitative

        pal = qualitative.Pastel1 + qualitative.Pastel2  # not the class colours of the points on top
        scale = [[i / max(n_b - 1, 1), pal[i % len(pal)]] for i in range(n_b)] if n_b > 1 else [[0, pal[0]], [1, pal[0]]]
        fig.add_trace(go.Heatmap(x=grid.u, y=grid.v, z=basin, colorscale=scale, zmin=0, zmax=max(n_b - 1, 1),
                                 opacity=0.45, showscale=False, name="basin",
                                 hovertemplate="basin of attractor %{z}<extra></extra>"))
    else:
        fig.add_trace(go.Heatmap(x=grid.u, y=grid.v, z=grid.speed, colorscale="Greys", opacity=0.55,
                                 colorbar=dict(title=dict(text="speed ||V||", side="top"), orientation="h", thickness=10,
                                               len=0.4, x=1.0, xanchor="right", y=-0.13, yanchor="top"),
                                 name="speed", hovertemplate="speed %{z:.3g}<extra></extra>"))
    lx, ly, (sx, sy, du, dv) = streamlines(grid.u, grid.v, grid.vu, grid.vv)
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", line=dict(color="rgba(40,40,90,0.55)", width=1),
                             name="streamlines of V", hoverinfo="skip"))
    ang = np.degrees(np.arctan2(du, dv))
    ok = np.isfinite(ang)
    fig.add_trace(go.Scatter(x=sx[ok], y=sy[ok], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(symbol="arrow", size=8, angle=ang[ok], color="rgba(40,40,90,0.7)")))
    pal = _palette()
    train_uv = np.asarray(train_uv)
    if labels is None:
        groups = [("training latents", np.arange(len(train_uv)))]
    else:
        groups = [((label_names[int(c)] if label_names else str(c)), np.nonzero(labels == c)[0]) for c in np.unique(labels)]
    for k, (name, idx) in enumerate(groups):
        fig.add_trace(go.Scattergl(x=train_uv[idx, 0], y=train_uv[idx, 1], mode="markers", name=str(name),
                                   legendgroup="classes", legendgrouptitle_text="training latents" if k == 0 else None,
                                   marker=dict(size=4, color=pal[k % len(pal)], opacity=0.7),
                                   text=None if hover is None else [hover[i] for i in idx],
                                   hovertemplate=("%{text}<extra></extra>" if hover is not None else None)))
    for k, (name, path) in enumerate(trajectories):
        path = np.asarray(path)
        fig.add_trace(go.Scatter(x=path[:, 0], y=path[:, 1], mode="lines+markers", name=f"trajectory {name}",
                                 legendgroup="traj", line=dict(color="black", width=2),
                                 marker=dict(size=[9] + [3] * (len(path) - 1), color="black",
                                             symbol=["circle-open"] + ["circle"] * (len(path) - 1)),
                                 hovertemplate=f"{name}<br>step %{{pointNumber}}<extra></extra>"))
    if attractors_uv is not None and len(attractors_uv):
        a = np.asarray(attractors_uv)
        bad = np.zeros(len(a), bool)
        bad[list(unstable)] = True
        ids = np.arange(len(a))
        fig.add_trace(go.Scatter(x=a[~bad, 0], y=a[~bad, 1], mode="markers", name="attractors", marker=ATTRACTOR,
                                 customdata=ids[~bad], hovertemplate="attractor %{customdata}<extra></extra>"))
        if bad.any():
            fig.add_trace(go.Scatter(x=a[bad, 0], y=a[bad, 1], mode="markers", name="fixed point, radius ≥ 1",
                                     marker=UNSTABLE, customdata=ids[bad],
                                     hovertemplate="unstable fixed point %{customdata}<extra></extra>"))
    axes = plane.axis_titles()
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), height=600, font=FONT,
                      margin=dict(l=10, r=10, t=60, b=10), plot_bgcolor="white",
                      legend=dict(itemsizing="constant", groupclick="toggleitem"))
    fig.update_xaxes(title=axes[0], range=[grid.u[0], grid.u[-1]], showgrid=False, zeroline=False)
    fig.update_yaxes(title=axes[1], range=[grid.v[0], grid.v[-1]], showgrid=False, zeroline=False)
    return _finish(fig)


def convergence_figure(residuals, tol: float, max_lines: int = 40):
    """Residual ||z_t - z_{t-1}||^2 against the step (log scale): a few single trajectories, the median
    and the 10-90% band over the trajectories still moving, the tolerance as a line."""
    import plotly.graph_objects as go

    r = np.asarray(residuals, dtype=float)
    steps = np.arange(1, len(r) + 1)
    fig = go.Figure()
    for k in range(min(max_lines, r.shape[1])):
        col = r[:, k]
        fig.add_trace(go.Scatter(x=steps, y=col, mode="lines", line=dict(color="rgba(76,120,168,0.25)", width=1),
                                 showlegend=k == 0, name="single trajectories", legendgroup="single",
                                 hoverinfo="skip"))
    with np.errstate(all="ignore"):
        moving = np.isfinite(r).sum(1)
        keep = moving > 0
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            q10, q50, q90 = (np.nanquantile(r[keep], q, axis=1) for q in (0.1, 0.5, 0.9))
    xs = steps[keep]
    fig.add_trace(go.Scatter(x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([q90, q10[::-1]]), fill="toself",
                             fillcolor="rgba(228,87,86,0.15)", line=dict(width=0), name="10–90% of those still moving",
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs, y=q50, mode="lines", line=dict(color="#e45756", width=2.5),
                             name="median of those still moving",
                             customdata=moving[keep],
                             hovertemplate="step %{x}<br>median %{y:.2e}<br>%{customdata} still moving<extra></extra>"))
    fig.add_trace(go.Scatter(x=steps, y=moving, mode="lines", line=dict(color="#333", width=1.5, shape="hv"),
                             name="starts still moving (right axis)", yaxis="y2",
                             hovertemplate="step %{x}: %{y} still moving<extra></extra>"))
    fig.add_hline(y=tol, line_dash="dot", line_color="#333", annotation_text=f"tolerance {tol:g}")
    fig.update_layout(height=380, font=FONT, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      xaxis=dict(title="step t", gridcolor="#eee"),
                      yaxis=dict(title="residual ||zₜ − zₜ₋₁||²", type="log", gridcolor="#eee", exponentformat="power"),
                      yaxis2=dict(title="starts still moving", overlaying="y", side="right", rangemode="tozero",
                                  showgrid=False, tickmode="auto", nticks=5, tickformat="d"),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    return _finish(fig)


def memorization_figure(similarity, null_similarity, coefficient: float, null_mean: float):
    """Each decoded attractor's similarity to its most similar training image, beside the null (each
    held-out image's similarity to its most similar training image)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Box(y=null_similarity, name="null: held-out images", marker_color="#999", boxpoints="outliers",
                         boxmean=True,
                         hovertemplate="%{y:.4f}<extra></extra>"))
    fig.add_trace(go.Box(y=similarity, name="decoded attractors", marker_color="#e45756", boxpoints="all",
                         jitter=0.4, pointpos=0, hovertemplate="%{y:.4f}<extra></extra>"))
    fig.update_layout(height=360, font=FONT, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      showlegend=False,
                      yaxis=dict(title="cosine to the most similar training image", gridcolor="#eee"))
    return _finish(fig)


def regime_figure(df, x: str, x_title: str, reference_col: str | None = None):
    """Memorization (with its null), attractor counts by start kind, and dictionary rank across
    models (bottleneck sizes or training epochs)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = 4 if reference_col else 3
    titles = ["memorization coefficient", "distinct attractors", "dictionary rank (90%)"]
    if reference_col:
        titles.append(reference_col.replace("Chamfer similarity", "Chamfer sim."))
    fig = make_subplots(rows=1, cols=cols, subplot_titles=titles, horizontal_spacing=0.07)
    xs = [str(v) for v in df[x]]
    fig.add_trace(go.Scatter(x=xs, y=df["memorization"], mode="lines+markers", name="attractors",
                             error_y=dict(type="data", array=df["memorization_sd"]), line=dict(color="#e45756")),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=xs, y=df["null"], mode="lines", name="null (held-out)",
                             line=dict(color="#777", dash="dot")), row=1, col=1)
    for name, colour in (("train", "#4c78a8"), ("test", "#54a24b"), ("noise", "#f58518")):
        fig.add_trace(go.Scatter(x=xs, y=df[f"attractors ({name} starts)"], mode="lines+markers",
                                 name=f"from {name} starts", line=dict(color=colour)), row=1, col=2)
    fig.add_trace(go.Scatter(x=xs, y=df["dictionary rank"], mode="lines+markers", name="rank",
                             line=dict(color="#72b7b2"), showlegend=False), row=1, col=3)
    if reference_col:
        fig.add_trace(go.Scatter(x=xs, y=df[reference_col], mode="lines+markers", name="Chamfer",
                                 line=dict(color="#b279a2"), showlegend=False), row=1, col=4)
    fig.update_xaxes(title=x_title, type="category", gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee")
    fig.update_layout(height=380, font=FONT, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                      legend=dict(orientation="h", yanchor="top", y=-0.32, x=0))
    return _finish(fig)


def ood_figure(scores: dict, in_name: str = "digits (held-out)"):
    """Histograms of the trajectory score and the reconstruction error, per set, side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["trajectory score (mean distance to training attractors)",
                                                        "reconstruction error (MSE)"],
                        horizontal_spacing=0.08)
    pal = _palette()
    for k, (name, s) in enumerate(scores.items()):
        colour = SET_COLOURS.get(name, pal[(k + 4) % len(pal)])
        label = in_name if name == "in" else name
        for col, score in ((1, "trajectory"), (2, "reconstruction")):
            values = np.asarray(s[score], dtype=float)
            if score == "reconstruction":  # log-spaced bins: the sets differ by orders of magnitude
                values = np.log10(np.maximum(values, 1e-12))
            fig.add_trace(go.Histogram(x=values, name=label, legendgroup=label, showlegend=col == 1,
                                       marker_color=colour, opacity=0.55, nbinsx=40, histnorm="probability"),
                          row=1, col=col)
    fig.update_layout(barmode="overlay", height=400, font=FONT, margin=dict(l=10, r=10, t=40, b=10),
                      plot_bgcolor="white", legend=dict(orientation="h", yanchor="top", y=-0.28, x=0))
    fig.update_xaxes(row=1, col=2, title="log₁₀ MSE per sample")
    fig.update_xaxes(title="trajectory score", row=1, col=1)
    fig.update_yaxes(title="fraction of set", gridcolor="#eee")
    return _finish(fig)


def probe_figure(probe):
    """Relative reconstruction error of real data from the noise attractors (OMP) and from a random
    orthonormal basis of the same size."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Box(y=probe.attractor_error, name=f"noise attractors ({probe.atoms})",
                         marker_color="#e45756", boxmean=True))
    fig.add_trace(go.Box(y=probe.random_error, name=f"random basis ({probe.random_atoms})",
                         marker_color="#999", boxmean=True))
    fig.update_layout(height=340, font=FONT, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      showlegend=False, yaxis=dict(title=f"relative error, {probe.n_nonzero} atoms per image",
                                                   gridcolor="#eee", rangemode="tozero"))
    return _finish(fig)
