"""Figures of the Similarity view, from its Result (no numerics here): the page, the CLI and the
report draw the same figures."""
from __future__ import annotations

import numpy as np

from . import paired_scatter, per_class_figure, similarity_heatmap, stability_figure


def _measure(name: str):
    from ..similarity import MEASURES

    return MEASURES[name]


def colour_range(result, measure: str, stretch: bool) -> tuple[float, float]:
    """The colour scale of the three maps: the measure's whole range, or (``stretch``) the values
    shown, so near-identical models do not all read as one colour."""
    lo, hi = _measure(measure).value_range
    if not stretch or result.matrices is None:
        return lo, hi
    m = result.matrices
    values = np.concatenate([df.to_numpy(dtype=float).ravel() for df in (m.ab, m.aa, m.bb)])
    values = values[np.isfinite(values)]
    if not values.size:
        return lo, hi
    vlo, vhi = float(values.min()), float(values.max())
    return vlo, (vhi if vhi > vlo else vlo + 1e-6)


def heatmap_ab(result, p) -> object:
    m, info = result.matrices, _measure(p["measure"])
    if p.get("values") == "calibrated" and result.calibration is not None:
        return calibrated_heatmap(result, p)
    lo, hi = colour_range(result, p["measure"], p["stretch"])
    return similarity_heatmap(m.ab, f"{info.label}: A ({p['a']}) vs B ({p['b']})", lo, hi, best=m.best,
                              colorbar_title=info.label)


def calibrated_heatmap(result, p) -> object:
    """A vs B coloured by the calibrated score (0 = chance at this n and width, 1 = the maximum); the
    raw value, the null and the p-value are in each cell's hover."""
    c, info = result.calibration, _measure(p["measure"])
    score = c.score
    lo, hi = (0.0, 1.0) if not p["stretch"] else _finite_range(score, 0.0, 1.0)
    fig = similarity_heatmap(score, f"Calibrated {info.label}: A ({p['a']}) vs B ({p['b']}), "
                                    f"0 = chance, 1 = maximum", lo, hi, best=result.matrices.best,
                             colorbar_title="calibrated")
    hover = [f"A: {a}<br>B: {b}<br>calibrated: {score.loc[a, b]:.3f}<br>{info.label}: {c.value.loc[a, b]:.4f}"
             f"<br>null: {c.null_mean.loc[a, b]:.4f} ± {c.null_std.loc[a, b]:.4f}<br>p = {c.p_value.loc[a, b]:.3g}"
             for a in score.index for b in score.columns]
    fig.data[1].text = hover  # the invisible per-cell markers carry the hover
    return fig


def _finite_range(df, lo: float, hi: float) -> tuple[float, float]:
    values = df.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return lo, hi
    vlo, vhi = float(values.min()), float(values.max())
    return vlo, (vhi if vhi > vlo else vlo + 1e-6)


def self_maps(result, p) -> tuple[object, object]:
    m, info = result.matrices, _measure(p["measure"])
    lo, hi = colour_range(result, p["measure"], p["stretch"])
    aa = similarity_heatmap(m.aa, f"{info.label}: A–A ({p['a']})", lo, hi, x_title="model A layer",
                            colorbar_title=info.label)
    bb = similarity_heatmap(m.bb, f"{info.label}: B–B ({p['b']})", lo, hi, y_title="model B layer",
                            colorbar_title=info.label)
    return aa, bb


def drill_scatter(result, ds) -> object:
    d = result.drill
    rows = np.arange(len(ds)) if d.rows is None else np.asarray(d.rows)
    hover = [ds.hover_text(int(i)) for i in rows]
    labels = None if ds.labels is None else np.asarray(ds.labels)[rows]
    return paired_scatter(d.coords_a, d.coords_b, labels, hover,
                          f"A · {d.cell_a} (PCA, {100 * d.explained_a[:2].sum():.0f}% of variance)",
                          f"B · {d.cell_b} (PCA, {100 * d.explained_b[:2].sum():.0f}% of variance)", ds.label_names)


def stability(result, p) -> object:
    s = result.statistics
    return stability_figure(s.stability, _measure(p["measure"]).label, s.value, (s.ci_low, s.ci_high))


def per_class(result, p) -> object:
    return per_class_figure(result.drill.per_class, _measure(p["measure"]).label, result.drill.value)


def compare_map(df, name: str, p) -> object:
    """A vs B under one of the compared measures, titled with both models (a pinned map says what it
    shows), on the same colour rule as the main maps (the values shown, or the measure's range)."""
    from ..similarity import best_matches

    info = _measure(name)
    lo, hi = _finite_range(df, *info.value_range) if p.get("stretch", True) else info.value_range
    return similarity_heatmap(df, f"{info.label}<br>A ({p['a']}) vs B ({p['b']})", lo, hi, best=best_matches(df),
                              colorbar_title="")


def all_figures(result, spec, ctx) -> dict:
    """Every figure the result supports, by name (the CLI and the report)."""
    p, out, ds = spec.params, {}, ctx.ds
    if result.matrices is not None:
        out["heatmap_AB"] = heatmap_ab(result, p)
        out["heatmap_AA"], out["heatmap_BB"] = self_maps(result, p)
    if result.drill is not None:
        out["drill_scatter"] = drill_scatter(result, ds)
        if len(result.drill.per_class):
            out["drill_classes"] = per_class(result, p)
    if result.statistics is not None:
        out["drill_stability"] = stability(result, p)
    if result.calibration is not None:
        out["heatmap_AB_calibrated"] = calibrated_heatmap(result, p)
    from ..views.similarity import compared

    for name, df in compared(result).items():
        out[f"compare_{name}"] = compare_map(df, name, spec.params)
    return out


def all_tables(result) -> dict:
    out = {}
    if result.matrices is not None:
        out.update(similarity_AB=result.matrices.ab, similarity_AA=result.matrices.aa,
                   similarity_BB=result.matrices.bb)
    if result.drill is not None and len(result.drill.per_class):
        out["per_class"] = result.drill.per_class
    if result.statistics is not None:
        out["stability"] = result.statistics.stability
    if result.calibration is not None:
        c = result.calibration
        out.update(calibrated_AB=c.score, null_mean_AB=c.null_mean, null_std_AB=c.null_std, p_value_AB=c.p_value)
    return out
