"""Figures and tables of the Vector field view, from its Result (no numerics here: the streamlines
come from :mod:`analysis.vector_field.streamlines`): the field with training latents, attractors, trajectories
and basins; convergence curves; memorization against its null; regime panels; OOD histograms;
data-free probing; image tiles for the galleries. The page, the CLI and the report draw the same.

Every figure is titled with what it shows and which autoencoder. Titles sit below the band where
Plotly draws its toolbar (top right), and legends below the plot, so the toolbar covers neither.
"""
from __future__ import annotations

import numpy as np

from . import FONT, _finish, pixel_tile

ATTRACTOR = dict(symbol="star", size=15, color="white", line=dict(color="black", width=1.5))
UNSTABLE = dict(symbol="x", size=13, color="red", line=dict(color="black", width=1))
SET_COLOURS = {"in": "#4c78a8", "noise": "#e45756", "inverted": "#f58518", "pixel-shuffled": "#54a24b"}
IN_NAME = "held-out (in distribution)"
TOOLBAR_PX = 36  # the band at the top of a figure where Plotly's toolbar appears
LINE_PX = 20  # one line of a title


def _palette():
    from plotly.colors import qualitative

    return qualitative.D3 + qualitative.Set2


def _titled(fig, title: str, height: int, below: int = 0):
    """Title (lines split by <br>) under the toolbar band, at the left; ``below``: room for subplot
    titles between it and the plots."""
    lines = title.count("<br>") + 1
    # Plotly anchors a title of several lines by its first line: lower it by the lines above the last
    first = TOOLBAR_PX + 0.8 * LINE_PX * (lines - 1)
    top = int(first + LINE_PX + 12 + below)
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", xref="container", y=1 - first / height,
                                 yanchor="top", yref="container", font=dict(size=14)),
                      height=height, margin=dict(l=10, r=10, t=top, b=10), font=FONT, plot_bgcolor="white")
    return fig


def _where(result) -> str:
    plane, k = result.field.plane, result.dynamics.latent_dim
    if not plane.is_pca:
        return "the 2-D latent space itself"
    return (f"the PCA plane of the training latents ({k}-D latent; {100 * plane.explained.sum():.0f}% of their "
            "variance); field and points projected")


# ------------------------------------------------------------------ the field
def field_figure(result, background: str = "speed"):
    """The latent field on the plane: speed ||V|| (or the basin map) as background, streamlines,
    training latents by class, attractors (stars; red crosses: spectral radius >= 1), and the chosen
    samples' trajectories (lines from a circle at the start)."""
    import plotly.graph_objects as go

    d, fv = result.dynamics, result.field
    grid, fig = fv.grid, go.Figure()
    if background == "basins":
        fig.add_trace(_basin_map(grid))
    else:
        fig.add_trace(go.Heatmap(x=grid.u, y=grid.v, z=grid.speed, colorscale="Greys", opacity=0.55,
                                 colorbar=dict(title=dict(text="speed ||V||", side="top"), orientation="h",
                                               thickness=10, len=0.4, x=1.0, xanchor="right", y=-0.13,
                                               yanchor="top"),
                                 name="speed", hovertemplate="speed %{z:.3g}<extra></extra>"))
    lines = fv.lines
    fig.add_trace(go.Scatter(x=lines.x, y=lines.y, mode="lines", line=dict(color="rgba(40,40,90,0.55)", width=1),
                             name="streamlines of V", hoverinfo="skip", connectgaps=False))
    ang = np.degrees(np.arctan2(lines.dir_u, lines.dir_v))
    ok = np.isfinite(ang)
    fig.add_trace(go.Scatter(x=lines.seeds_x[ok], y=lines.seeds_y[ok], mode="markers", showlegend=False,
                             hoverinfo="skip", marker=dict(symbol="arrow", size=8, angle=ang[ok],
                                                           color="rgba(40,40,90,0.7)")))
    _training_latents(fig, fv.train_uv, d)
    for name, path in zip(result.paths.names if result.paths else [], result.paths.paths if result.paths else []):
        path = np.asarray(path)
        fig.add_trace(go.Scatter(x=path[:, 0], y=path[:, 1], mode="lines+markers", name=f"trajectory {name}",
                                 legendgroup="traj", line=dict(color="black", width=2),
                                 marker=dict(size=[9] + [3] * (len(path) - 1), color="black",
                                             symbol=["circle-open"] + ["circle"] * (len(path) - 1)),
                                 hovertemplate=f"{name}<br>step %{{pointNumber}}<extra></extra>"))
    _attractors(fig, fv.attractors_uv, d.dyn.unstable)
    axes = fv.plane.axis_titles()
    _titled(fig, f"Latent vector field of {d.model}<br>{_where(result)}", 640)
    fig.update_layout(legend=dict(itemsizing="constant", groupclick="toggleitem"))
    fig.update_xaxes(title=axes[0], range=[grid.u[0], grid.u[-1]], showgrid=False, zeroline=False)
    fig.update_yaxes(title=axes[1], range=[grid.v[0], grid.v[-1]], showgrid=False, zeroline=False)
    return _finish(fig)


def _basin_map(grid):
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    basin = grid.basin.astype(float)
    basin[basin < 0] = np.nan
    n_b = int(np.nanmax(basin)) + 1 if np.isfinite(basin).any() else 1
    pal = qualitative.Pastel1 + qualitative.Pastel2  # not the class colours of the points on top
    scale = [[i / max(n_b - 1, 1), pal[i % len(pal)]] for i in range(n_b)] if n_b > 1 else [[0, pal[0]], [1, pal[0]]]
    return go.Heatmap(x=grid.u, y=grid.v, z=basin, colorscale=scale, zmin=0, zmax=max(n_b - 1, 1), opacity=0.45,
                      showscale=False, name="basin", hovertemplate="basin of attractor %{z}<extra></extra>")


def _training_latents(fig, train_uv, d) -> None:
    import plotly.graph_objects as go

    pal, uv, labels = _palette(), np.asarray(train_uv), d.labels
    if labels is None:
        groups = [("training latents", np.arange(len(uv)))]
    else:
        groups = [((d.label_names[int(c)] if d.label_names else str(c)), np.nonzero(labels == c)[0])
                  for c in np.unique(labels)]
    for k, (name, idx) in enumerate(groups):
        fig.add_trace(go.Scattergl(x=uv[idx, 0], y=uv[idx, 1], mode="markers", name=str(name),
                                   legendgroup="classes", legendgrouptitle_text="training latents" if k == 0 else None,
                                   marker=dict(size=4, color=pal[k % len(pal)], opacity=0.7),
                                   text=[d.hover[i] for i in idx], hovertemplate="%{text}<extra></extra>"))


def _attractors(fig, attractors_uv, unstable) -> None:
    import plotly.graph_objects as go

    a = np.asarray(attractors_uv)
    if not len(a):
        return
    bad = np.zeros(len(a), bool)
    bad[list(unstable)] = True
    ids = np.arange(len(a))
    fig.add_trace(go.Scatter(x=a[~bad, 0], y=a[~bad, 1], mode="markers", name="attractors", marker=ATTRACTOR,
                             customdata=ids[~bad], hovertemplate="attractor %{customdata}<extra></extra>"))
    if bad.any():
        fig.add_trace(go.Scatter(x=a[bad, 0], y=a[bad, 1], mode="markers", name="fixed point, radius ≥ 1",
                                 marker=UNSTABLE, customdata=ids[bad],
                                 hovertemplate="unstable fixed point %{customdata}<extra></extra>"))


def trajectory_table(result):
    import pandas as pd

    p = result.paths
    return pd.DataFrame({"sample": list(p.names), "steps": np.asarray(p.steps).tolist(),
                         "converged": np.asarray(p.converged).tolist()})


# ------------------------------------------------------------------ convergence
def convergence_figure(result, max_lines: int = 40):
    """Residual ||z_t - z_{t-1}||^2 against the step (log scale): a few single trajectories, the median
    and the 10-90% band over the trajectories still moving, the tolerance as a line."""
    import warnings

    import plotly.graph_objects as go

    d = result.dynamics
    tol = float(d.dyn.params.get("tol", 0.0)) if d.dyn.params else 0.0
    r = np.asarray(d.dyn.residuals, dtype=float)
    steps = np.arange(1, len(r) + 1)
    fig = go.Figure()
    for k in range(min(max_lines, r.shape[1])):
        fig.add_trace(go.Scatter(x=steps, y=r[:, k], mode="lines", line=dict(color="rgba(76,120,168,0.25)", width=1),
                                 showlegend=k == 0, name="single trajectories", legendgroup="single",
                                 hoverinfo="skip"))
    moving = np.isfinite(r).sum(1)
    keep = moving > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q10, q50, q90 = (np.nanquantile(r[keep], q, axis=1) for q in (0.1, 0.5, 0.9))
    xs = steps[keep]
    fig.add_trace(go.Scatter(x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([q90, q10[::-1]]), fill="toself",
                             fillcolor="rgba(228,87,86,0.15)", line=dict(width=0), name="10–90% of those still moving",
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs, y=q50, mode="lines", line=dict(color="#e45756", width=2.5),
                             name="median of those still moving", customdata=moving[keep],
                             hovertemplate="step %{x}<br>median %{y:.2e}<br>%{customdata} still moving<extra></extra>"))
    fig.add_trace(go.Scatter(x=steps, y=moving, mode="lines", line=dict(color="#333", width=1.5, shape="hv"),
                             name="starts still moving (right axis)", yaxis="y2",
                             hovertemplate="step %{x}: %{y} still moving<extra></extra>"))
    if tol > 0:
        fig.add_hline(y=tol, line_dash="dot", line_color="#333", annotation_text=f"tolerance {tol:g}",
                      annotation_position="bottom right")
    _titled(fig, f"Convergence of the training starts' trajectories · {d.model}", 420)
    fig.update_layout(xaxis=dict(title="step t", gridcolor="#eee"),
                      yaxis=dict(title="residual ||zₜ − zₜ₋₁||²", type="log", gridcolor="#eee", exponentformat="power"),
                      yaxis2=dict(title="starts still moving", overlaying="y", side="right", rangemode="tozero",
                                  showgrid=False, tickmode="auto", nticks=5, tickformat="d"),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    return _finish(fig)


# ------------------------------------------------------------------ attractors
def memorization_figure(result):
    """Each decoded attractor's similarity to its most similar training image, beside the null (each
    held-out image's similarity to its most similar training image)."""
    import plotly.graph_objects as go

    d = result.dynamics
    fig = go.Figure()
    fig.add_trace(go.Box(y=d.dyn.null_similarity, name="null: held-out images", marker_color="#999",
                         boxpoints="outliers", boxmean=True, hovertemplate="%{y:.4f}<extra></extra>"))
    fig.add_trace(go.Box(y=d.dyn.similarity, name="decoded attractors", marker_color="#e45756", boxpoints="all",
                         jitter=0.4, pointpos=0, hovertemplate="%{y:.4f}<extra></extra>"))
    _titled(fig, f"Memorization against its null<br>{d.model}", 400)
    fig.update_layout(showlegend=False, yaxis=dict(title="cosine to the most similar training image", gridcolor="#eee"))
    return _finish(fig)


def tile(vector, shape) -> np.ndarray:
    """A row (image or vector) as a crisp uint8 tile; vectors that are not images become a strip."""
    img = np.asarray(vector, dtype=float)
    if shape is None or int(np.prod(shape)) != img.size:
        side = int(np.sqrt(img.size))
        shape = (side, img.size // side) if side * (img.size // side) == img.size else (1, img.size)
    return pixel_tile(img.reshape(shape))


def pair_tile(a, b, shape) -> np.ndarray:
    """A decoded attractor and a training image side by side, with a white gap."""
    ta, tb = tile(a, shape), tile(b, shape)
    gap = np.full((ta.shape[0], max(4, ta.shape[1] // 8)), 255, dtype=np.uint8)
    return np.hstack([ta, gap, tb])


def attractor_gallery(result, limit: int = 16) -> list[tuple[np.ndarray, str]]:
    """(tile, caption) of the attractors with the largest basins: each decoded attractor beside its
    most similar training image."""
    d = result.dynamics
    dyn = d.dyn
    out = []
    for i in np.argsort(-dyn.attractor_sizes, kind="stable")[:limit]:
        r = int(dyn.nearest[i])
        out.append((pair_tile(dyn.decoded[i], d.nearest_images[i], d.image_shape),
                    f"#{i} ({dyn.attractor_sizes[i]} starts) · cos {dyn.similarity[i]:.3f} to train {d.hover[r]}"))
    return out


def attractor_table(result):
    import pandas as pd

    d = result.dynamics
    dyn = d.dyn
    return pd.DataFrame({"attractor": np.arange(len(dyn.attractors)), "starts in basin": dyn.attractor_sizes,
                         "spectral radius": dyn.spectral_radius,
                         "attractor (radius < 1)": dyn.spectral_radius < 1,
                         "cosine to nearest training image": dyn.similarity,
                         "nearest training image": [d.hover[int(r)] for r in dyn.nearest]})


# ------------------------------------------------------------------ regimes
REGIME_ROWS = {"memorization": "memorization coefficient", "memorization_sd": "memorization sd",
               "null": "null (held-out)", "null_sd": "null sd", "attractors (train starts)": "attractors from training starts",
               "attractors (test starts)": "attractors from held-out starts",
               "attractors (noise starts)": "attractors from noise starts", "dictionary rank": "dictionary rank (90%)",
               "unstable": "unstable fixed points", "converged": "converged (training starts)"}


def _regime_title(regime) -> str:
    models = list(regime.table["model"])
    if regime.axis == "bottleneck":
        return f"Regimes across bottleneck sizes · {', '.join(models)}"
    return f"Regimes across training · {models[-1]} at epochs {', '.join(map(str, regime.table[regime.axis]))}"


def regime_figure(regime):
    """Memorization (with its null), attractor counts by start kind, dictionary rank and the Chamfer
    similarity to the last model, across models (bottleneck sizes or training epochs)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df, x, ref_col = regime.table, regime.axis, regime.reference_column
    titles = ["memorization coefficient", "distinct attractors", "dictionary rank (90%)",
              ref_col.replace("Chamfer similarity", "Chamfer sim.")]
    fig = make_subplots(rows=1, cols=4, subplot_titles=titles, horizontal_spacing=0.07)
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
    fig.add_trace(go.Scatter(x=xs, y=df[ref_col], mode="lines+markers", name="Chamfer", line=dict(color="#b279a2"),
                             showlegend=False), row=1, col=4)
    fig.update_xaxes(title=x, type="category", gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee")
    _titled(fig, _regime_title(regime), 440, below=LINE_PX)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.3, x=0))
    return _finish(fig)


def regime_table(regime):
    """The regime as the page shows it: a row per measure, a column per model (narrow enough to fit),
    numbers rounded for reading."""
    import pandas as pd

    df = regime.table.set_index(regime.axis)
    rows = {**REGIME_ROWS, regime.reference_column: regime.reference_column}
    out = pd.DataFrame({label: [_fmt(df.loc[label, c]) for c in rows] for label in df.index}, index=list(rows.values()))
    out.index.name = f"{regime.axis} →"
    out.loc["model"] = [str(df.loc[label, "model"]) for label in df.index]
    return out


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


# ------------------------------------------------------------------ OOD
def ood_figure(result):
    """Histograms of the trajectory score and the reconstruction error, per set, side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    d, res = result.dynamics, result.ood.result
    fig = make_subplots(rows=1, cols=2, subplot_titles=["trajectory score (mean distance to training attractors)",
                                                        "reconstruction error (MSE)"], horizontal_spacing=0.08)
    pal = _palette()
    for k, (name, s) in enumerate(res.scores.items()):
        colour = SET_COLOURS.get(name, pal[(k + 4) % len(pal)])
        label = IN_NAME if name == "in" else name
        for col, score in ((1, "trajectory"), (2, "reconstruction")):
            values = np.asarray(s[score], dtype=float)
            if score == "reconstruction":  # log-spaced bins: the sets differ by orders of magnitude
                values = np.log10(np.maximum(values, 1e-12))
            fig.add_trace(go.Histogram(x=values, name=label, legendgroup=label, showlegend=col == 1,
                                       marker_color=colour, opacity=0.55, nbinsx=40, histnorm="probability"),
                          row=1, col=col)
    _titled(fig, f"Out-of-distribution scores of {d.model} ({result.ood.n_in} held-out inputs per set)", 440,
            below=LINE_PX)
    fig.update_layout(barmode="overlay", legend=dict(orientation="h", yanchor="top", y=-0.28, x=0))
    fig.update_xaxes(row=1, col=2, title="log₁₀ MSE per sample")
    fig.update_xaxes(title="trajectory score", row=1, col=1)
    fig.update_yaxes(title="fraction of set", gridcolor="#eee")
    return _finish(fig)


def ood_wide_table(result):
    """AUROC and FPR95 per OOD set, one column per score and measure."""
    table = result.ood.result.table.pivot(index="OOD set", columns="score", values=["AUROC", "FPR95"])
    table.columns = [f"{m} · {s}" for m, s in table.columns]
    return table.reset_index()


# ------------------------------------------------------------------ probing
def probe_figure(result):
    """Relative reconstruction error of held-out data from the noise attractors (OMP) and from a
    random orthonormal basis of the same size."""
    import plotly.graph_objects as go

    d, probe = result.dynamics, result.probing.probe
    fig = go.Figure()
    fig.add_trace(go.Box(y=probe.attractor_error, name=f"noise attractors ({probe.atoms})", marker_color="#e45756",
                         boxmean=True))
    fig.add_trace(go.Box(y=probe.random_error, name=f"random basis ({probe.random_atoms})", marker_color="#999",
                         boxmean=True))
    _titled(fig, f"Data-free probing: error of held-out images<br>rebuilt from {d.model}'s noise attractors", 400)
    fig.update_layout(showlegend=False, yaxis=dict(title=f"relative error, {probe.n_nonzero} atoms per image",
                                                   gridcolor="#eee", rangemode="tozero"))
    return _finish(fig)


def noise_gallery(result) -> tuple[list[np.ndarray], list[str]]:
    d = result.dynamics
    shown = [int(i) for i in result.probing.shown]
    return [tile(d.dyn.noise_decoded[i], d.image_shape) for i in shown], [f"#{i}" for i in shown]


# ------------------------------------------------------------------ the CLI and the report
def all_figures(result, spec, ctx=None) -> dict:
    """Every figure the result supports, by name."""
    out = {}
    if result.dynamics is not None and result.field is not None:
        out["vf_field_fig"] = field_figure(result, spec.params["vf_bg"])
    if result.dynamics is not None:
        out["vf_convergence_fig"] = convergence_figure(result)
        out["vf_memorization_fig"] = memorization_figure(result)
    if result.ood is not None and result.ood.result is not None:
        out["vf_ood_fig"] = ood_figure(result)
    if result.probing is not None and result.probing.probe is not None:
        out["vf_probe_fig"] = probe_figure(result)
    for regime in (result.regimes_bottleneck, result.regimes_epochs):
        if regime is not None:
            out[f"vf_regime_{regime.axis}_fig"] = regime_figure(regime)
    return out


def all_tables(result) -> dict:
    import pandas as pd

    out = {}
    if result.ood is not None and result.ood.result is not None:
        out["ood"] = result.ood.result.table
    if result.dynamics is not None:
        out["attractors"] = attractor_table(result)
    if result.paths is not None and len(result.paths.names):
        out["trajectories"] = trajectory_table(result)
    if result.probing is not None and result.probing.probe is not None:
        probe = result.probing.probe
        out["probing"] = pd.DataFrame({"attractor_error": probe.attractor_error, "random_error": probe.random_error})
    for regime in (result.regimes_bottleneck, result.regimes_epochs):
        if regime is not None:
            out[f"regimes_{regime.axis}"] = regime.table
    return out
