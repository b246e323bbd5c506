"""Merge & stitch page: widgets -> spec -> the view's sections (as jobs) -> figures. No numerics here."""
from urllib.parse import urlencode

import numpy as np
import streamlit as st

from analysis import crosscoder
from analysis import figures as base_figures
from analysis.figures import merge as figs
from analysis.views.merge import default_feature
from pages._jobs import run_sections
from analysis.safe_text import md
from pages._shell import halt, prepare, show_figure, show_table
from pages._share import current_spec
from pages._widgets import widget

view, ctx = prepare("merge")
P = {p.key: p for p in view.params}
st.caption("Combine A and B instead of only comparing them: align B's units to A's and average the weights, "
           "swap blocks between them, learn one dictionary for both, and stitch them through invariant "
           "relative spaces.")
compat_result, ready = run_sections(view, current_spec(), ["compat"], what="what this pair allows")
if not ready:
    halt()
compat = compat_result.compat  # read with the bridge in the URL or session: it is current for this run


def refused(reason: str) -> bool:
    if reason:
        st.warning(md(reason), icon=":material/block:")
    return bool(reason)


# ------------------------------------------------------------------ 1. alignment, interpolation, merge
st.header("Permutation alignment and interpolation", divider="gray")
c1, c2, c3, c4 = st.columns([1.4, 1, 1.4, 1.2])
widget(P["mg_method"], container=c1, kind="radio")
widget(P["mg_steps"], container=c2)
widget(P["mg_alpha"], container=c3, kind="slider")
with c4:
    widget(P["mg_aligned"])
if not refused(compat.permute):
    spec = current_spec()
    res, ready = run_sections(view, spec, ["alignment"], what="the unit permutations of B that match A")
    if ready:
        a = res.alignment
        st.caption(f"B's units reordered to match A's by {a.method}"
                   + (f" ({a.sweeps} sweeps of coordinate descent)" if a.method == "weights" else "")
                   + f". B's outputs before and after: max difference {a.identical:.1e} (float64), the same model.")
        show_table(figs.alignment_table(res), "mg_alignment_table", "Alignment per layer", static=True)
        if not refused(compat.interpolate):
            res, ready = run_sections(view, spec, ["interpolation"], what="the loss along the straight line, "
                                      "with B as it is and aligned")
            if ready:
                it = res.interpolation
                m1, m2, m3 = st.columns([1, 1, 2])
                m1.metric("Barrier, B as it is", f"{it.raw.barrier:.3f}",
                          help="max over alpha of the loss minus the straight line between the endpoints' losses")
                m2.metric("Barrier, B aligned", f"{it.aligned.barrier:.3f}",
                          delta=f"{it.aligned.barrier - it.raw.barrier:+.3f}", delta_color="inverse")
                m3.caption(f"Loss: {it.raw.metric} on the {len(ctx.ds)} rows, at {len(it.raw.alphas)} values of alpha."
                           + (" BatchNorm statistics were recomputed on the data at every alpha."
                              if it.raw.renormalised else " The models have no BatchNorm statistics to recompute."))
                show_figure(figs.interpolation_figure(res, spec.params), "mg_interpolation")
            merged, ready = run_sections(view, spec, ["merge"], what="the merged model")
            if ready:
                m = merged.merge
                score = f"{m.metric} {m.loss:.4f}" + (f", accuracy {100 * m.accuracy:.1f}%" if m.accuracy is not None
                                                      else "")
                st.success(f"Merged model `{m.ref}` at alpha = {m.alpha:g} "
                           f"({'B aligned by ' + m.aligned if m.aligned else 'B not aligned'}): {score}. "
                           "It is a model reference like any other: every page opens it.")
                b1, b2 = st.columns([1, 3])
                if b1.button("Use it as model B", key="mg_use_merge", icon=":material/swap_horiz:"):
                    st.session_state["_set_b"] = m.ref
                    st.rerun()
                query = urlencode({"a": spec.params["a"], "b": m.ref, "data": spec.params["data"], "n": spec.params["n"]})
                b2.markdown(f"[Compare it with A on the Similarity page](similarity?{query})")

# ------------------------------------------------------------------ 2. block swaps
st.header("Block swaps", divider="gray")
st.caption("B with its blocks i..j replaced by A's blocks at the same relative depth, scored by B's task on "
           "the held-out half of the rows; the other half gives the anchors of the translators where the "
           "models meet.")
c1, c2, c3 = st.columns(3)
bridge = widget(P["mg_bridge"], container=c1)
widget(P["mg_translator"], container=c2, disabled=bridge != "translator")
widget(P["mg_anchors"], container=c3, disabled=bridge != "translator")
spec = current_spec()
if not refused(compat.swaps):
    res, ready = run_sections(view, spec, ["swaps"], what=f"every block swap of A into B ({bridge})")
    if ready:
        for note in res.swaps.notes:
            st.info(md(note))
        h1, h2 = st.columns([1.1, 1])
        with h1:
            show_figure(figs.swap_heatmap(res), "mg_swap_map")
        with h2:
            show_figure(figs.swap_positions(res), "mg_swap_positions")

# ------------------------------------------------------------------ 3. crosscoder
st.header("Crosscoder", divider="gray")
st.caption("One sparse code for both models' layers, a decoder for each. A latent whose decoder has the same "
           "norm in both is a feature both represent; one whose decoder shrank in one model is exclusive to the "
           "other.")
c1, c2, c3 = st.columns(3)
widget(P["mg_layer_a"], ctx.model_a.layers, container=c1, default=ctx.model_a.layers[-2] if len(ctx.model_a.layers) > 1
       else ctx.model_a.layers[-1])
widget(P["mg_layer_b"], ctx.model_b.layers, container=c2, default=ctx.model_b.layers[-2] if len(ctx.model_b.layers) > 1
       else ctx.model_b.layers[-1])
kind = widget(P["mg_xc_kind"], container=c3, kind="radio")
c1, c2, c3 = st.columns(3)
widget(P["mg_latents"], container=c1)
widget(P["mg_k"] if kind == "topk" else P["mg_l1"], container=c2)
widget(P["mg_xc_steps"], container=c3)
spec = current_spec()
if not refused(compat.crosscoder):
    res, ready = run_sections(view, spec, ["crosscoder"], what="the crosscoder's training")
    if ready:
        x = res.crosscoder
        classes = np.asarray(x.classes)
        m = st.columns(5)
        m[0].metric("Explained variance A", f"{x.fve[0]:.3f}")
        m[1].metric("Explained variance B", f"{x.fve[1]:.3f}")
        m[2].metric("L0", f"{x.l0:.1f}")
        m[3].metric("Shared latents", int(np.sum(classes == "shared")))
        m[4].metric("A-only / B-only", f"{int(np.sum(classes == 'A-only'))} / {int(np.sum(classes == 'B-only'))}")
        g1, g2 = st.columns([1.3, 1])
        with g1:
            show_figure(figs.ratio_histogram(res), "mg_ratio_hist")
        with g2:
            show_figure(figs.crosscoder_training(res), "mg_xc_training")
        trained = crosscoder.from_arrays(x.arrays, x.kind, x.k)
        st.download_button("Download the crosscoder (cfg.json + safetensors)", key="mg_xc_download",
                           data=crosscoder.to_zip(trained, model_names=[spec.params["a"], spec.params["b"]],
                                                  hook_names=[x.layer_a, x.layer_b]),
                           file_name="crosscoder.zip", mime="application/zip", icon=":material/download:")
        table = figs.latent_table(res)
        event = show_table(table.sort_values("density", ascending=False), "mg_latents_table", "Crosscoder latents",
                           on_select="rerun", selection_mode="single-row", height=260)
        picked = (event or {}).get("selection", {}).get("rows", []) if event else []
        if picked:
            latent = int(table.sort_values("density", ascending=False).iloc[picked[0]]["latent"])
            if st.session_state.get("_mg_picked") != latent:
                st.session_state["_mg_picked"] = latent
                st.session_state["mg_feature"] = latent
        widget(P["mg_feature"], default=default_feature(x), help="pick a row in the table or type its number")
        feat, ready = run_sections(view, current_spec(), ["feature"], what="the latent's examples")
        if ready:
            f = feat.feature
            st.markdown(f"**Latent {f.index}** · {f.cls} · relative decoder norm {f.ratio:.2f} · active on "
                        f"{100 * f.density:.1f}% of the inputs")
            cols = st.columns(2, gap="large")
            ds = ctx.ds
            for side, col, norm, share, pred in (("A", cols[0], f.norm_a, f.share_a, f.pred_a),
                                                 ("B", cols[1], f.norm_b, f.share_b, f.pred_b)):
                with col:
                    layer_name = x.layer_a if side == "A" else x.layer_b
                    st.markdown(f"**Model {side}** · {md(layer_name)} · decoder norm {norm:.3f}")
                    captions = []
                    for k, row in enumerate(f.rows):
                        text = f"act {f.values[k]:.1f} · share {share[k]:.2f}"
                        if pred is not None:
                            label = ds.label_of(int(row))
                            text += f" · pred {int(pred[k])}" + ("" if label is None else f", true {label}")
                        captions.append(text)
                    if ds.kind == "image" and len(f.rows):
                        st.image([base_figures.pixel_tile(ds.render(int(r))["image"]) for r in f.rows],
                                 caption=captions, width=96)
                    elif len(f.rows):
                        show_table({"sample": [ds.hover_text(int(r)) for r in f.rows], "activation": f.values,
                                    f"share of {side}": share}, f"mg_examples_{side}", f"Latent {f.index} in {side}")
                    else:
                        st.caption("This latent is never active on these inputs.")
            st.caption("share: the latent's part of the model's activation on that input, "
                       "activation × decoder norm / ‖x − b_dec‖ (in the crosscoder's scaled units).")

# ------------------------------------------------------------------ 4. invariant relative spaces
st.header("Stitching through invariant relative spaces", divider="gray")
st.caption("Zero-shot stitching of A's layer into the rest of B and retrieval of each sample across the two "
           "layers above, versus the number of anchors: the translators of the Functional maps page, and the "
           "product of relative projections under cosine, Euclidean, L1 and L∞ similarities, each normalised "
           "(Cannistraci et al. 2024), invariant to translations, coordinate permutations, sign flips and "
           "rescaling of either space.")
if not refused(compat.curves):
    widget(P["mg_curves"])
    spec = current_spec()
    if spec.params["mg_curves"]:
        res, ready = run_sections(view, spec, ["curves"], auto_s=float("inf"))  # the toggle was the go-ahead
        if ready:
            s1, s2 = st.columns(2)
            with s1:
                show_figure(figs.stitching(res), "mg_stitching")
            with s2:
                show_figure(figs.retrieval(res), "mg_retrieval")
