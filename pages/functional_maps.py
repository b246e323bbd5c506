"""Functional maps page: latent functional maps between a layer of A and a layer of B, latent space
translation from a few anchors, and zero-shot stitching of A's encoder into B's head."""
import numpy as np
import streamlit as st

from analysis import activations, fmaps, stitching
from analysis import fmaps_figures as ff
from analysis import translation as tr
from analysis.errors import UserInputError
from analysis.safe_text import md, md_code
from pages._shell import Progress, pair_or_stop, selection, show_figure, show_table, user_errors

DESCRIPTOR_OPTIONS = list(fmaps.DESCRIPTORS)
RETRIEVAL_COUNTS = tr.RETRIEVAL_COUNTS
STITCH_COUNTS = stitching.STITCH_COUNTS
ROBUST_ALPHAS = fmaps.ROBUST_ALPHAS
AUTO_RUN_S = 4.0


@st.cache_data(show_spinner=False, max_entries=32)
def layer_acts(ref: str, data_key: tuple, layer: str, _model, _ds) -> np.ndarray:
    return activations.extract(_model, _ds, [layer])[layer]


def _default_layer(model) -> int:
    return model.layers.index(fmaps.default_layer(model))


def sweep(kind: str, key: dict, seconds: float, label: str, compute):
    """A sweep's stored result at once, a quick one computed at once, else a button that says how
    long it will take. ``compute(progress)`` runs it; the result lands in the store under ``key``."""
    if not (fmaps.is_cached(kind, **key) or seconds < AUTO_RUN_S
            or st.button(f"{label} (about {seconds:.0f} s)", key=f"fm_run_{kind}")):
        return None
    result, bar = None, Progress(f"{label}…")
    with user_errors():
        result = fmaps.cached(kind, lambda: compute(bar), **key)
    bar.done()
    return result


sel = selection()
st.title("Functional maps")
ds, model_a, model_b, data_key = pair_or_stop(sel)
st.caption("A latent functional map relates the two layers through the spectra of their kNN graphs: C maps "
           "smooth functions on A's samples to smooth functions on B's. If both layers organise the samples "
           "the same way, C is diagonal-like and the similarity reads 1. Anchors (samples whose pairing is "
           "taken as known) let it match every sample and translate A's layer into B's.")

# ------------------------------------------------------------------ controls
c1, c2, c3, c4, c5 = st.columns([1.4, 1.4, 0.9, 1.2, 1.6])
layer_a = c1.selectbox("Layer of A", model_a.layers, index=_default_layer(model_a), key="fm_layer_a",
                       bind="query-params")
layer_b = c2.selectbox("Layer of B", model_b.layers, index=_default_layer(model_b), key="fm_layer_b",
                       bind="query-params")
n_anchors = int(c3.number_input("Anchors", 2, 5000, 10, key="fm_anchors", bind="query-params",
                                help="Samples whose pairing between A and B is taken as known."))
selection_method = c4.selectbox("Anchor selection", list(tr.SELECTIONS), key="fm_select", bind="query-params",
                                help="random; farthest-point (spread over A's layer); k-means (the sample "
                                     "nearest each centroid of A's layer); class-balanced (round robin over labels).")
descriptors = c5.multiselect("Descriptors", DESCRIPTOR_OPTIONS, default=["geodesic"], key="fm_descr",
                             bind="query-params",
                             help="geodesic: graph distance to each anchor (median-normalised); labels: one "
                                  "indicator per class (uses the labels as known correspondences); hks: heat "
                                  "kernel signature, unsupervised and weak on its own.")
with st.expander("Graph and map settings"):
    g1, g2, g3, g4 = st.columns(4)
    k_nn = int(g1.number_input("Neighbours (0 = auto)", 0, 1000, 0, key="fm_k", bind="query-params",
                               help="kNN graph size; auto = min(300, n/10), at least 10."))
    n_eigs = int(g2.number_input("Eigenvectors K", 4, 200, 50, key="fm_eigs", bind="query-params"))
    metric = g3.selectbox("Graph distance", list(fmaps.METRICS), key="fm_metric", bind="query-params",
                          help="cosine: angles around the centroid (the paper's choice); euclidean.")
    refine = g4.toggle("ZoomOut refinement", True, key="fm_refine", bind="query-params")

n = len(ds)
if n < 20:
    st.error(f"Functional maps need at least 20 samples (the dataset has {n}); raise Samples in the sidebar.")
    st.stop()
if n_anchors > n // 2:
    st.warning(f"{n_anchors} anchors is more than half of the {n} samples; using {n // 2}.")
    n_anchors = n // 2
params = {"n_neighbors": k_nn or None, "n_eigs": n_eigs, "descriptors": tuple(descriptors), "metric": metric,
          "refine": bool(refine), "seed": sel.seed}
keybase = {"a": model_a.sha256, "b": model_b.sha256, "data": data_key[-1], "la": layer_a, "lb": layer_b}

bar = Progress("Activations…")
try:
    xa = layer_acts(sel.model_a, data_key, layer_a, model_a, ds)
    xb = layer_acts(sel.model_b, data_key, layer_b, model_b, ds)
    labels = ds.labels
    anchors = tr.select_anchors(xa, n_anchors, selection_method, labels, sel.seed)
    if not descriptors:
        st.info("No descriptor selected: C below is the ground-truth map Phi_B^T Phi_A (both layers saw the "
                "same inputs), and the correspondence is read from it.")
    if "labels" in descriptors and labels is None:
        st.warning("This dataset has no labels: the 'labels' descriptor is skipped.")
    fit = fmaps.cached("fmap_view", lambda: fmaps.fit_arrays(xa, xb, anchors, labels, True, progress=bar, **params),
                       anchors=anchors.tolist(), selection=selection_method, **keybase, **params)
except UserInputError as exc:
    bar.done()
    st.error(md(exc))
    st.stop()
bar.done()
for w in fit["warnings"]:
    st.warning(str(w))

# ------------------------------------------------------------------ similarity, diagnostics, C
st.subheader("Similarity and the map")
quality = fmaps.match_quality(fit["p2p"], labels)
m1, m2, m3, m4 = st.columns(4)
m1.metric("LFM similarity", f"{float(fit['diag_similarity']):.3f}",
          help="1 − ‖offdiag(CᵀC)‖ / ‖CᵀC‖ of the ground-truth map C = Φ_Bᵀ Φ_A (rows are the same inputs). "
               "1: the two kNN graphs have the same spectral structure.")
m2.metric("Same sample", f"{quality['same_sample']:.3f}",
          help=f"Fraction of B's samples matched to the very same sample of A (chance {quality['chance_sample']:.4f}).")
if "same_class" in quality:
    m3.metric("Same class", f"{quality['same_class']:.3f}",
              help=f"Fraction of matches with the same label (chance {quality['chance_class']:.3f})."
                   + (" The 'labels' descriptor gave the map the labels themselves." if "labels" in descriptors else ""))
m4.metric("Map fitted in", f"{float(fit['seconds']):.2f} s",
          help=f"Eigen-solver: {float(fit['eigen_seconds']):.2f} s. Cached in the result store.")
diag = {
    "ground-truth C: ‖CᵀC − I‖ / √K (0 same graph, ~0.9 unrelated)": float(
        fit.get("diag_truth_orthogonality_deviation", np.nan)),
    "similarity of the estimated C": float(fit["diag_similarity_estimated"]),
    "‖CᵀC − I‖ / √K (0 = orthogonal map)": float(fit["diag_orthogonality_deviation"]),
    "Laplacian commutativity ‖CΛ_A − Λ_B C‖ / ‖C‖": float(fit["diag_laplacian_commutativity"]),
    "estimated vs ground-truth C (relative error)": float(fit.get("diag_map_error", np.nan)),
    "graph pieces (A, B)": f"{int(fit['diag_components_x'])}, {int(fit['diag_components_y'])}",
    "eigen-solver converged": "yes" if bool(fit["diag_converged"]) else "no",
    "eigenvectors K": int(fit["diag_n_eigs"]),
    "descriptors used": str(fit["diag_descriptors"]),
}
v1, v2 = st.columns([1.1, 1])
with v1:
    show_figure(ff.c_heatmap(fit["C"], f"Estimated C ({n_anchors} anchors, {selection_method})"), "fm_c")
with v2:
    show_table({"diagnostic": list(diag), "value": [f"{v:.4f}" if isinstance(v, float) else str(v)
                                                     for v in diag.values()]}, "fm_diag")
    show_figure(ff.spectra(fit["lam_x"], fit["lam_y"]), "fm_spectra")

st.subheader("Spectral embeddings")
st.caption("Eigenvectors 1 and 2 of each layer's graph Laplacian (eigenvector 0 is nearly constant). Signs and "
           "near-degenerate pairs may differ between the two: C is what relates them.")
hover = [ds.hover_text(i) for i in range(n)]
show_figure(ff.spectral_embeddings(fit["phi_x"], fit["phi_y"], labels, hover, ds.label_names,
                                   f"A · {layer_a}", f"B · {layer_b}"), "fm_embed")

# ------------------------------------------------------------------ stitching
st.subheader("Zero-shot stitching")
methods = list(tr.METHODS)
stitch_counts = [c for c in STITCH_COUNTS if c <= n // 2]
stitch_key = dict(keybase, counts=stitch_counts, selection=selection_method, seed=sel.seed)
if labels is None:
    st.info("Stitching is scored by accuracy and needs labels; this dataset has none.")
else:
    curve = sweep("fmap_stitch", stitch_key, 0.0, "Stitching", lambda bar: stitching.stitch_models(
        model_a, model_b, ds, layer_a, layer_b, stitch_counts, methods, selection_method, sel.seed, progress=bar))
    if curve is not None:
        head = ("B's own network after this layer" if str(curve["head"]) == "model" else
                "a logistic-regression probe trained on B's layer (B has no classifier head at this layer)")
        st.caption(f"A's encoder up to {md_code(layer_a)} → a translator fitted on the anchors → {head}. Anchors come "
                   "from one half of the samples (and the probe, if any); accuracy is measured on the other half. "
                   "'linear' and 'affine' coincide here: both spaces are centred on their anchors first.")
        show_figure(ff.stitching_figure(curve, methods), "fm_stitch")
        if any(c <= xa.shape[1] for c in stitch_counts):
            st.caption(f"With anchors ≤ the width of A's layer ({xa.shape[1]}), 'linear' and 'affine' fits "
                       "reproduce the anchors exactly and generalise poorly (the dip near that count).")

# ------------------------------------------------------------------ retrieval sweep (button unless stored)
st.subheader("Retrieval versus anchors")
st.caption("For each sample of A, rank B's samples by cosine similarity after translation; MRR 1 = every sample "
           "finds itself. LFM + ortho: the map fitted from the anchors matches every sample, and Procrustes is "
           "fitted on all matches. Ortho: Procrustes on the anchors alone. Relative: cosine to the anchors in each "
           "space (Moschella et al.). Queries exclude the anchors.")
counts = [c for c in RETRIEVAL_COUNTS if c <= n // 2]
retr_key = dict(keybase, counts=counts, selection=selection_method, **params)
seconds = float(fit["seconds"]) * len(counts) * 1.3 + 0.2 * len(counts)
lfm_params = dict(params, descriptors=tuple(d for d in descriptors if d != "labels") or ("geodesic",))
rc = sweep("fmap_retrieval", retr_key, seconds, f"Compute retrieval for {len(counts)} anchor budgets",
           lambda bar: dict(tr.retrieval_curve(xa, xb, counts, selection_method, labels, sel.seed, lfm_params,
                                               progress=bar), chance=np.mean(1.0 / np.arange(1, n + 1))))
if rc is not None:
    show_figure(ff.retrieval_figure(rc), "fm_retrieval")
    show_table({"anchors": rc["anchors"].astype(int), "LFM + ortho": np.round(rc["lfm+ortho"], 3),
                "ortho (anchors only)": np.round(rc["ortho"], 3), "relative": np.round(rc["relative"], 3),
                "LFM exact matches": np.round(rc["lfm_matches"], 3)}, "fm_retrieval_table")

# ------------------------------------------------------------------ robustness
st.subheader("Robustness: move one class")
st.caption("A's layer against a copy of itself in which one class is moved along a random direction by a multiple "
           "of the layer's spread (the LFM paper's experiment). The LFM similarity reads the kNN graph, which "
           "barely changes while the class stays in one piece; linear CKA reads the global geometry.")
if labels is None:
    st.info("The robustness panel moves one class and needs labels; this dataset has none.")
else:
    classes = [str(c) for c in (ds.label_names or sorted({int(v) for v in labels}))]
    cls_name = st.columns([1, 3])[0].selectbox("Class to move", classes, key="fm_class", bind="query-params")
    cls = classes.index(cls_name)
    rob_key = dict(keybase, cls=cls, alphas=list(ROBUST_ALPHAS), k=params["n_neighbors"], eigs=n_eigs,
                   metric=metric, seed=sel.seed)
    rob_seconds = float(fit["eigen_seconds"]) * len(ROBUST_ALPHAS) * 1.5 + 0.3 * len(ROBUST_ALPHAS)
    rob = sweep("fmap_robust", rob_key, rob_seconds, f"Compute robustness for {len(ROBUST_ALPHAS)} shifts",
                lambda bar: fmaps.robustness_curve(xa, labels, cls, ROBUST_ALPHAS, params["n_neighbors"], n_eigs,
                                                   sel.seed, metric, progress=bar))
    if rob is not None:
        show_figure(ff.robustness_figure(rob, cls_name), "fm_robust")
