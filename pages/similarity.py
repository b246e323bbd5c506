"""Similarity page: widgets -> spec -> the view's sections (as jobs) -> figures. No numerics here."""
import pandas as pd
import streamlit as st

from analysis import similarity as sim
from analysis.figures import similarity as figs
from pages._jobs import run_sections
from analysis.safe_text import md
from pages._shell import halt, prepare, show_figure
from pages._share import current_spec
from pages._widgets import widget

STATS_AUTO_S = 6.0  # statistics expected to take longer wait for the user to turn them on

view, ctx = prepare("similarity")
P = {p.key: p for p in view.params}

# ------------------------------------------------------------------ controls
c1, c2, c3, c4 = st.columns([2, 1.2, 1.2, 2])
with c1:
    measure = widget(P["measure"], help="\n\n".join(f"**{m.label}**: {m.description}" for m in sim.MEASURES.values()))
m = sim.MEASURES[measure]
with c2:
    widget(P["pooling"])
with c3:
    widget(P["batch"], disabled=not (m.family == "cka" and m.name != "rbf_cka"))
with c4:
    for key in ("threshold", "k", "variance", "rdm"):
        if key in m.params:
            widget(P[key], kind="select_slider" if key in ("threshold", "variance") else None)
with st.expander("Layers", expanded=False):
    la, lb = st.columns(2)
    widget(P["layers_a"], ctx.model_a.layers, container=la)
    widget(P["layers_b"], ctx.model_b.layers, container=lb)
spec = current_spec()
inv = ", ".join(k for k, v in m.invariances.items() if v) or "none"
st.caption(f"**{m.label}**: {m.description} Range {m.value_range[0]:g} to {m.value_range[1]:g}, "
           f"{'symmetric' if m.symmetric else 'asymmetric'}; invariant to: {inv}.")

# ------------------------------------------------------------------ the three maps
result, ready = run_sections(view, spec, ["matrices"], what="the layer-by-layer maps of A vs B, A–A and B–B")
if not ready:
    halt()
for note in result.matrices.warnings:
    st.warning(md(note))
if result.matrices.note:  # the streamed path: which estimator, how many rows
    st.info(md(result.matrices.note), icon=":material/database:")
v1, v2 = st.columns([1, 2])
widget(P["values"], container=v1, kind="radio")
widget(P["stretch"], container=v2, help=f"On: the colours span the values shown, so near-identical models still "
                                        f"show their differences. Off: they span the measure's whole range "
                                        f"({m.value_range[0]:g} to {m.value_range[1]:g}), comparable across views.")
spec = current_spec()
if spec.params["values"] == "calibrated":
    cal, got = run_sections(view, spec, ["calibration"], what="the permutation null of every cell (100 permutations)")
    if got:
        result.calibration = cal.calibration
event = show_figure(figs.heatmap_ab(result, spec.params), "heatmap_ab", on_select="rerun", selection_mode="points")
st.caption("Open circles: the best-matching layer of B for each layer of A. Click a cell to drill down. "
           + md(view.module.pooling_note(result.matrices, spec.params["pooling"])))
dl1, dl2 = st.columns([1, 3])
dl1.download_button("Download matrix (CSV)", result.matrices.ab.to_csv().encode(),
                    file_name=f"{measure}_A_vs_B.csv", mime="text/csv")
dl2.dataframe(pd.DataFrame(result.matrices.best, columns=["layer of A", "best layer of B", m.label]),
              hide_index=True, width="stretch", height=35 * (len(result.matrices.best) + 1) + 3)
aa, bb = figs.self_maps(result, spec.params)
s1, s2 = st.columns(2)
with s1:
    show_figure(aa, "heatmap_aa")
with s2:
    show_figure(bb, "heatmap_bb")

# ------------------------------------------------------------------ drill-down
st.divider()
st.subheader("Drill-down")
points = (event or {}).get("selection", {}).get("points", []) if event else []
layers_a, layers_b = list(result.matrices.ab.index), list(result.matrices.ab.columns)
if points:  # a click selects the cell's invisible marker: x = B layer, y = A layer
    click = (str(points[0].get("y")), str(points[0].get("x")))
    if click != st.session_state.get("_last_click") and click[0] in layers_a and click[1] in layers_b:
        st.session_state["_last_click"] = click
        st.session_state["cell_a"], st.session_state["cell_b"] = click
best = result.matrices.best
d1, d2 = st.columns(2)
widget(P["cell_a"], layers_a, container=d1, default=best[0][0] if best else layers_a[0])
widget(P["cell_b"], layers_b, container=d2, default=best[0][1] if best else layers_b[0])
spec = current_spec()
drill, ready = run_sections(view, spec, ["drill"], what="the drill-down")
if ready:
    d = drill.drill
    if d.value != d.value:  # NaN
        st.warning("This cell is undefined (a constant layer): no statistics to show.")
    else:
        seconds = max(d.stats_seconds, 1.0)
        on = f"on {d.stats_rows:,} of the {len(ctx.ds):,} samples, " if d.stats_rows else ""
        widget(P["stats"], label=f"Bootstrap CI, permutation test and stability ({on}about {seconds:.0f} s)",
               default=seconds <= STATS_AUTO_S)
        k1, k2, k3, k4 = st.columns(4)
        k1.metric(m.label, f"{d.value:.4f}")
        stats, got = run_sections(view, current_spec(), ["statistics"], auto_s=float("inf"),
                                  what="200 bootstrap resamples, 200 permutations and the stability curve")
        if got and stats.statistics is not None:
            s = stats.statistics
            k2.metric("95% bootstrap CI", f"[{s.ci_low:.3f}, {s.ci_high:.3f}]",
                      help="Percentile interval over 200 resamples of the samples (rows resampled jointly).")
            k3.metric("Permutation p-value", f"{s.p_value:.3g}",
                      help=f"Rows of B shuffled {s.n_perm} times: (1 + #null ≥ observed) / (1 + {s.n_perm}). "
                           f"The smallest reachable value is {1 / (1 + s.n_perm):.3g}.")
            k4.metric("Null (shuffled rows)", f"{s.null_mean:.4f} ± {s.null_std:.4f}",
                      help="What the measure reads when the pairing between samples is destroyed, at this n "
                           f"and width (mean ± sd of {s.n_perm} permutations). Calibrated score: "
                           f"{s.calibrated:.3f} (0 = chance, 1 = the maximum).")
        n, (pa, pb) = len(ctx.ds), d.dims
        if m.needs_n_greater_than_p and n <= max(pa, pb):
            st.warning(f"n = {n} samples <= dimensions ({pa}, {pb}): {m.label} reads ~1 for any pair of "
                       "representations here.")
        show_figure(figs.drill_scatter(drill, ctx.ds), "drill_scatter")
        if d.note:
            st.caption(md(d.note))
        if got and stats.statistics is not None and stats.statistics.note:
            st.caption(md(stats.statistics.note))
        g1, g2 = st.columns(2)
        with g1:
            st.markdown("**Estimator stability**: the value on random subsets of growing size")
            if got and stats.statistics is not None:
                show_figure(figs.stability(stats, spec.params), "drill_stability")
            else:
                st.caption("Turn on the statistics above to draw this curve.")
        with g2:
            st.markdown("**Per class**: the value on each class's samples alone")
            if len(d.per_class):
                show_figure(figs.per_class(drill, spec.params), "drill_classes")
            else:
                st.caption("This dataset has no labels.")

# ------------------------------------------------------------------ compare measures
st.divider()
st.subheader("Compare measures")
widget(P["compare"])
widget(P["compare_on"], help="Computes A vs B under each chosen measure (cached in the result store).")
spec = current_spec()
if spec.params["compare_on"] and spec.params["compare"]:
    comp, ready = run_sections(view, spec, ["compare"], auto_s=float("inf"))  # the toggle was the go-ahead
    if ready:
        maps = view.module.compared(comp)
        for name, note in view.module.compare_notes(comp).items():
            st.caption(md(f"{sim.MEASURES[name].label}: {note}"))
        cols = st.columns(min(len(maps), 2), gap="large")  # two per row: layer names stay readable
        for i, (name, df) in enumerate(maps.items()):
            with cols[i % len(cols)]:
                show_figure(figs.compare_map(df, name, spec.params), f"compare_{name}")
