"""Functional maps page: widgets -> spec -> the view's sections (as jobs) -> figures. No numerics here."""
import streamlit as st

from analysis.errors import UserInputError
from analysis.figures import functional_maps as figs
from analysis.views import functional_maps as fm
from pages._jobs import run_sections
from analysis.safe_text import md
from pages._shell import halt, prepare, show_error, show_figure, show_table
from pages._share import current_spec
from pages._widgets import widget

view, ctx = prepare("functional-maps")
P = {p.key: p for p in view.params}
ds = ctx.ds
try:
    fm.check_samples(ctx)
except UserInputError as exc:  # one message for the page, not one per section
    show_error(str(exc))
    halt()
st.caption("A latent functional map relates the two layers through the spectra of their kNN graphs: C maps "
           "smooth functions on A's samples to smooth functions on B's. If both layers organise the samples "
           "the same way, C is diagonal-like and the similarity reads 1. Anchors (samples whose pairing is "
           "taken as known) let it match every sample and translate A's layer into B's.")

# ------------------------------------------------------------------ controls
c1, c2, c3, c4, c5 = st.columns([1.4, 1.4, 0.9, 1.2, 1.6])
widget(P["fm_layer_a"], ctx.model_a.layers, container=c1, default=fm.default_layer(ctx.model_a))
widget(P["fm_layer_b"], ctx.model_b.layers, container=c2, default=fm.default_layer(ctx.model_b))
widget(P["fm_anchors"], container=c3)
widget(P["fm_select"], container=c4)
widget(P["fm_descr"], container=c5, disabled=bool(st.session_state.get("fm_truth")))
with st.expander("Graph and map settings"):
    g1, g2, g3, g4, g5 = st.columns(5)
    widget(P["fm_k"], container=g1)
    widget(P["fm_eigs"], container=g2)
    widget(P["fm_metric"], container=g3)
    widget(P["fm_refine"], container=g4)
    widget(P["fm_truth"], container=g5)
spec = current_spec()
p = spec.params
if st.session_state.get("fm_descr") == [] and not p["fm_truth"]:
    st.caption(f"No descriptor chosen: the map uses the default ({', '.join(p['fm_descr'])}). For the map without "
               "descriptors, turn on *Ground-truth map* under Graph and map settings.")

# ------------------------------------------------------------------ the map: similarity, diagnostics, C
st.subheader("Similarity and the map")
if p["fm_truth"]:
    st.info("Ground-truth map: C below is Φ_Bᵀ Φ_A (both layers saw the same inputs), with no descriptor, and the "
            "matches are read from it.")
fit, ready = run_sections(view, spec, ["fit"], what="the functional map (kNN graphs, spectra, C)")
if ready:
    f = fit.fit
    for w in f.warnings:
        st.warning(md(w))
    q, d = f.quality, f.diagnostics
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("LFM similarity", f"{d['similarity']:.3f}",
              help="1 − ‖offdiag(CᵀC)‖ / ‖CᵀC‖ of the ground-truth map C = Φ_Bᵀ Φ_A (rows are the same inputs). "
                   "1: the two kNN graphs have the same spectral structure.")
    m2.metric("Same sample", f"{q['same_sample']:.3f}",
              help=f"Fraction of B's samples matched to the very same sample of A (chance {q['chance_sample']:.4f}).")
    if "same_class" in q:
        m3.metric("Same class", f"{q['same_class']:.3f}",
                  help=f"Fraction of matches with the same label (chance {q['chance_class']:.3f})."
                       + (" The 'labels' descriptor gave the map the labels themselves." if "labels" in p["fm_descr"]
                          else ""))
    m4.metric("Map fitted in", f"{f.seconds:.2f} s",
              help=f"Eigen-solver: {f.eigen_seconds:.2f} s. Kept in the result store.")
    show_figure(figs.c_map(fit, p), "fm_c", width="content")
    show_table(figs.diagnostics_table(fit).set_index("diagnostic"), "fm_diag",
               f"Functional map diagnostics: A {p['a']} · {f.layer_a} → B {p['b']} · {f.layer_b}", static=True)
    show_figure(figs.spectra(fit, p), "fm_spectra")
    st.subheader("Spectral embeddings")
    st.caption("Eigenvectors 1 and 2 of each layer's graph Laplacian (eigenvector 0 is nearly constant). Signs and "
               "near-degenerate pairs may differ between the two: C is what relates them.")
    show_figure(figs.embeddings(fit, p, ds), "fm_embed")

# ------------------------------------------------------------------ stitching
st.subheader("Zero-shot stitching")
if ds.labels is None:
    st.info("Stitching is scored by accuracy and needs labels; this dataset has none.")
else:
    counts = fm.sweep_counts(fm.STITCH_COUNTS, len(ds))
    stitched, ready = run_sections(view, spec, ["stitching"], label="Compute stitching",
                                   what=f"stitching for {len(counts)} anchor counts")
    if ready:
        show_figure(figs.stitching(stitched, p), "fm_stitch")
        for caption in figs.stitching_captions(stitched):
            st.caption(caption)

# ------------------------------------------------------------------ retrieval
st.subheader("Retrieval versus anchors")
st.caption("For each sample of A, rank B's samples by cosine similarity after translation; MRR 1 = every sample "
           "finds itself. LFM + ortho: the map fitted from the anchors matches every sample, and Procrustes is "
           "fitted on all matches. Ortho: Procrustes on the anchors alone. Relative: cosine to the anchors in each "
           "space (Moschella et al.). Queries exclude the anchors; the 'labels' descriptor is left out here.")
retr, ready = run_sections(view, spec, ["retrieval"], label="Compute retrieval",
                           what=f"retrieval for {len(fm.sweep_counts(fm.RETRIEVAL_COUNTS, len(ds)))} anchor budgets "
                                "(one functional map each)")
if ready:
    show_figure(figs.retrieval(retr, p), "fm_retrieval")
    show_table(figs.retrieval_table(retr).round(3), "fm_retrieval_table",
               f"Retrieval MRR: A {p['a']} · {retr.retrieval.layer_a} → B {p['b']} · {retr.retrieval.layer_b}")

# ------------------------------------------------------------------ robustness
st.subheader("Robustness: move one class")
st.caption("A's layer against a copy of itself in which one class is moved along a random direction by a multiple "
           "of the layer's spread (the LFM paper's experiment). The LFM similarity reads the kNN graph, which "
           "barely changes while the class stays in one piece; linear CKA reads the global geometry.")
if ds.labels is None:
    st.info("The robustness panel moves one class and needs labels; this dataset has none.")
else:
    classes = ds.label_names or [str(c) for c in sorted({int(v) for v in ds.labels})]
    widget(P["fm_class"], classes, container=st.columns([1, 3])[0], default=classes[0])
    spec = current_spec()
    rob, ready = run_sections(view, spec, ["robustness"], label="Compute robustness",
                              what=f"the robustness sweep ({len(fm.ROBUST_ALPHAS)} shifts, a graph and spectrum each)")
    if ready:
        show_figure(figs.robustness(rob, spec.params), "fm_robust")
