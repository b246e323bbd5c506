"""Similarity page: a layer-by-layer similarity heatmap between model A and model B, the two
self-similarity maps, a drill-down on any cell, and several measures side by side."""
import numpy as np
import pandas as pd
import streamlit as st

from analysis import activations, figures, projection
from analysis import similarity as sim
from analysis.safe_text import md
from pages._shell import Progress, pair_or_stop, selection, show_figure, user_errors

AUTO_RUN_S = 4.0  # runs estimated faster than this start at once; longer ones wait for the button
STATS_AUTO_S = 6.0  # drill-down statistics expected to take longer wait for the user to ask
MEASURES = list(sim.MEASURES)
POOLINGS = list(activations.POOLINGS)


def label(name: str) -> str:
    return sim.MEASURES[name].label


@st.cache_data(show_spinner=False, max_entries=64)
def cached_acts(ref: str, data_key: tuple, layers: tuple, pooling: str, _model, _ds):
    return dict(activations.extract(_model, _ds, list(layers), pooling))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_cell_stats(key: tuple, measure: str, params: tuple, _x, _y):
    return sim.cell_statistics(_x, _y, measure, n_boot=200, n_perm=200, **dict(params))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_stability(key: tuple, measure: str, params: tuple, _x, _y):
    return sim.stability_curve(_x, _y, measure, **dict(params))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_stats_cost(key: tuple, measure: str, params: tuple, _x, _y):
    """Timing two evaluations is itself work: once per cell, not on every rerun of the page."""
    return sim.statistics_seconds(_x, _y, measure, **dict(params))


def measure_params(measure: str) -> dict:
    """Widgets for the measure's own parameters (bound to the URL)."""
    m = sim.MEASURES[measure]
    params = {}
    if "threshold" in m.params:
        params["threshold"] = st.select_slider("RBF width (× median distance)", [0.2, 0.4, 0.8, 1.0, 2.0],
                                               value=1.0, key="threshold", bind="query-params")
    if "k" in m.params:
        params["k"] = st.number_input("Neighbours k", 1, 100, 10, key="k", bind="query-params")
    if "variance" in m.params:
        params["variance"] = st.select_slider("Variance kept", [0.9, 0.95, 0.99, 0.999], value=0.99,
                                              key="variance", bind="query-params")
    if "rdm" in m.params:
        params["rdm"] = st.selectbox("RDM", ["correlation", "euclidean"], key="rdm", bind="query-params")
    return params


sel = selection()
st.title("Similarity")
ds, model_a, model_b, data_key = pair_or_stop(sel)

# ------------------------------------------------------------------ controls
c1, c2, c3, c4 = st.columns([2, 1.2, 1.2, 2])
with c1:
    # Plain names as options: a bound selectbox puts the option's displayed text in the URL.
    measure = st.selectbox("Measure", MEASURES, key="measure", bind="query-params",
                           help="\n\n".join(f"**{m.label}**: {m.description}" for m in sim.MEASURES.values()))
with c2:
    pooling = st.selectbox("Pooling", POOLINGS, key="pooling", bind="query-params",
                           help="How token or spatial axes are reduced: mean (valid tokens / positions), "
                                "first token, or flatten (spatial layers only).")
with c3:
    cka_family = sim.MEASURES[measure].family == "cka" and measure != "rbf_cka"
    batch = st.number_input("Minibatch size", 0, 100_000, 0, step=64, key="batch", bind="query-params",
                            disabled=not cka_family,
                            help="0 computes on all samples at once. A size uses the minibatch CKA estimator "
                                 "(Nguyen et al. 2021): unbiased HSIC per batch, averaged; memory stays bounded.")
with c4:
    params = measure_params(measure)
batch_size = int(batch) if (cka_family and batch) else None

with st.expander("Layers", expanded=False):
    la, lb = st.columns(2)
    layers_a = la.multiselect("Layers of A", model_a.layers, default=model_a.layers, key="layers_a",
                              bind="query-params")
    layers_b = lb.multiselect("Layers of B", model_b.layers, default=model_b.layers, key="layers_b",
                              bind="query-params")
if not layers_a or not layers_b:
    st.warning("Select at least one layer of each model.")
    st.stop()

m = sim.MEASURES[measure]
inv = ", ".join(k for k, v in m.invariances.items() if v) or "none"
st.caption(f"**{m.label}** — {m.description} Range {m.value_range[0]:g} to {m.value_range[1]:g}, "
           f"{'symmetric' if m.symmetric else 'asymmetric'}; invariant to: {inv}.")

# ------------------------------------------------------------------ estimate, then run
dims_a = activations.pooled_dims(model_a, ds, layers_a, pooling)
dims_b = activations.pooled_dims(model_b, ds, layers_b, pooling)
try:  # refused before anything runs when the machine does not have the memory (estimate + way around)
    for dx, dy in ((dims_a, dims_b), (dims_a, dims_a), (dims_b, dims_b)):
        sim.check_memory(len(ds), dx, dy, measure, batch_size)
except sim.UserInputError as exc:
    st.error(md(exc))
    st.stop()
seconds = (sim.estimate_seconds(len(ds), dims_a, dims_b, measure, batch_size)
           + sim.estimate_seconds(len(ds), dims_a, dims_a, measure, batch_size)
           + sim.estimate_seconds(len(ds), dims_b, dims_b, measure, batch_size))
plan = (f"{m.label} between {len(layers_a)} layers of A and {len(layers_b)} layers of B on {len(ds)} samples"
        f"{f' in minibatches of {batch_size}' if batch_size else ''}, plus A–A and B–B self-similarity")
run_key = (sel.model_a, sel.model_b, data_key, measure, tuple(sorted(params.items())), tuple(layers_a),
           tuple(layers_b), pooling, batch_size)
ready = st.session_state.get("_sim_done") == run_key
if not ready and seconds > AUTO_RUN_S:
    st.info(f"Will compute {plan}: about {seconds:.0f} s (plus running the models if their activations "
            "are not stored yet).")
    ready = st.button("Compute", type="primary")
else:
    st.caption(f"Computing {plan} (about {seconds:.1f} s).")
    ready = True
if not ready:
    st.stop()

bar = Progress("Computing…")
results = {}
with user_errors():
    for name, (ma, mb, lx, ly) in {"AB": (model_a, model_b, layers_a, layers_b),
                                   "AA": (model_a, model_a, layers_a, layers_a),
                                   "BB": (model_b, model_b, layers_b, layers_b)}.items():
        results[name] = sim.layer_similarity(ma, mb, ds, measure, lx, ly, pooling, batch_size, progress=bar, **params)
bar.done()
if len(results) < 3:
    st.stop()
st.session_state["_sim_done"] = run_key
ab = results["AB"]
for note in dict.fromkeys(ab.attrs.get("warnings", []) + results["AA"].attrs.get("warnings", [])
                          + results["BB"].attrs.get("warnings", [])):
    st.warning(note)

# ------------------------------------------------------------------ heatmaps
lo, hi = m.value_range
if st.toggle("Stretch colours to the values shown", key="stretch", bind="query-params",
             help=f"Off: the colour scale spans the measure's whole range ({lo:g} to {hi:g}), comparable "
                  "across pages and papers. On: it spans the values in these three maps."):
    finite = np.concatenate([r.to_numpy().ravel() for r in results.values()])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max()) if finite.max() > finite.min() else float(finite.min()) + 1e-6
best = sim.best_matches(ab)
fig = figures.similarity_heatmap(ab, f"{m.label}: A ({sel.model_a}) vs B ({sel.model_b})", lo, hi, best=best,
                                 colorbar_title=m.label)
event = show_figure(fig, "heatmap_ab", on_select="rerun", selection_mode="points")
st.caption("Open circles: the best-matching layer of B for each layer of A. Click a cell to drill down.")
dl1, dl2 = st.columns([1, 3])
dl1.download_button("Download matrix (CSV)", ab.to_csv().encode(), file_name=f"{measure}_A_vs_B.csv",
                    mime="text/csv")
matches = pd.DataFrame(best, columns=["layer of A", "best layer of B", m.label])
dl2.dataframe(matches, hide_index=True, width="stretch", height=35 * (len(matches) + 1) + 3)

s1, s2 = st.columns(2)
with s1:
    show_figure(figures.similarity_heatmap(results["AA"], f"A–A ({sel.model_a})", lo, hi,
                                           x_title="model A layer", colorbar_title=m.label), "heatmap_aa")
with s2:
    show_figure(figures.similarity_heatmap(results["BB"], f"B–B ({sel.model_b})", lo, hi,
                                           y_title="model B layer", colorbar_title=m.label), "heatmap_bb")

# ------------------------------------------------------------------ drill-down
st.divider()
st.subheader("Drill-down")
points = (event or {}).get("selection", {}).get("points", []) if event else []
if points:
    click = (str(points[0].get("y")), str(points[0].get("x")))
    if click != st.session_state.get("_last_click") and click[0] in layers_a and click[1] in layers_b:
        st.session_state["_last_click"] = click
        st.session_state["cell_a"], st.session_state["cell_b"] = click
if st.session_state.get("cell_a") not in layers_a:
    st.session_state["cell_a"] = best[0][0] if best else layers_a[0]
if st.session_state.get("cell_b") not in layers_b:
    st.session_state["cell_b"] = best[0][1] if best else layers_b[0]
d1, d2 = st.columns(2)
cell_a = d1.selectbox("Layer of A", layers_a, key="cell_a", bind="query-params")
cell_b = d2.selectbox("Layer of B", layers_b, key="cell_b", bind="query-params")

with user_errors():
    xa = cached_acts(sel.model_a, data_key, (cell_a,), pooling, model_a, ds)[cell_a]
    xb = cached_acts(sel.model_b, data_key, (cell_b,), pooling, model_b, ds)[cell_b]
    value = float(ab.loc[cell_a, cell_b])
    stat_key = (sel.model_a, sel.model_b, data_key, cell_a, cell_b, pooling)
    pkey = tuple(sorted(params.items()))
    if np.isnan(value):
        st.warning("This cell is undefined (a constant layer): no statistics to show.")
        st.stop()
    # 200 bootstrap + 200 permutation evaluations + ~40 for the stability curve: run them at once
    # when that is quick, otherwise on request with the expected time.
    cost = cached_stats_cost(stat_key, measure, pkey, xa, xb)
    want_stats = st.toggle(f"Bootstrap CI, permutation test and stability (about {cost:.0f} s)",
                           value=cost <= STATS_AUTO_S, key=f"stats_{measure}")
    k1, k2, k3, k4 = st.columns(4)
    k1.metric(m.label, f"{value:.4f}")
    stats = None
    if want_stats:
        with st.spinner("Bootstrap interval and permutation test (200 resamples each)…"):
            stats = cached_cell_stats(stat_key, measure, pkey, xa, xb)
        k2.metric("95% bootstrap CI", f"[{stats.ci_low:.3f}, {stats.ci_high:.3f}]",
                  help="Percentile interval over 200 resamples of the samples (rows resampled jointly).")
        k3.metric("Permutation p-value", f"{stats.p_value:.3g}",
                  help=f"Rows of B shuffled {stats.n_perm} times: (1 + #null ≥ observed) / (1 + {stats.n_perm}). "
                       f"The smallest reachable value is {1 / (1 + stats.n_perm):.3g}.")
        k4.metric("Null mean (shuffled)", f"{stats.null_mean:.4f}",
                  help="What the measure reads when the pairing between samples is destroyed.")
    if m.needs_n_greater_than_p and len(ds) <= max(xa.shape[1], xb.shape[1]):
        st.warning(f"n = {len(ds)} samples <= dimensions ({xa.shape[1]}, {xb.shape[1]}): {m.label} reads ~1 "
                   "for any pair of representations here.")

    ca, ra = projection.pca(xa)
    cb, rb = projection.pca(xb)
    hover = [ds.hover_text(i) for i in range(len(ds))]
    show_figure(figures.paired_scatter(ca, cb, ds.labels, hover,
                                       f"A · {cell_a} (PCA, {100 * ra[:2].sum():.0f}% of variance)",
                                       f"B · {cell_b} (PCA, {100 * rb[:2].sum():.0f}% of variance)",
                                       ds.label_names), "drill_scatter")
    g1, g2 = st.columns(2)
    with g1:
        st.markdown("**Estimator stability**: the value on random subsets of growing size")
        if stats is None:
            st.caption("Turn on the statistics above to draw this curve.")
        else:
            curve = cached_stability(stat_key, measure, pkey, xa, xb)
            show_figure(figures.stability_figure(curve, m.label, value, (stats.ci_low, stats.ci_high)),
                        "drill_stability")
    with g2:
        st.markdown("**Per class**: the value on each class's samples alone")
        if ds.labels is None:
            st.caption("This dataset has no labels.")
        else:
            table = sim.per_class_similarity(xa, xb, ds.labels, measure, **params)
            if ds.label_names:
                table["class"] = [ds.label_names[int(c)] for c in table["class"]]
            show_figure(figures.per_class_figure(table, m.label, value), "drill_classes")

# ------------------------------------------------------------------ compare measures
st.divider()
st.subheader("Compare measures")
chosen = st.multiselect("Measures", MEASURES, default=["linear_cka", "debiased_linear_cka", "procrustes", "svcca"],
                        format_func=label, key="compare")
if chosen and st.toggle("Show the comparison", key="compare_on",
                        help="Computes A vs B under each chosen measure (cached in the result store)."):
    bar = Progress("Computing the comparison…")
    cols = st.columns(min(len(chosen), 3))
    for i, name in enumerate(chosen):
        with cols[i % len(cols)], user_errors(label(name)):
            mi = sim.MEASURES[name]
            df = sim.layer_similarity(model_a, model_b, ds, name, layers_a, layers_b, pooling, progress=bar)
            show_figure(figures.similarity_heatmap(df, mi.label, *mi.value_range, best=sim.best_matches(df),
                                                   colorbar_title=""), f"compare_{name}")
    bar.done()
