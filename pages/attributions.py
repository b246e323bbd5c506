"""Attributions page: widgets -> spec -> the view's sections (as jobs) -> figures. No numerics here."""
import numpy as np
import streamlit as st

from analysis.errors import UserInputError
from analysis.safe_text import md
from analysis.figures import attributions as figs
from analysis.views import attributions as V
from pages._jobs import run_sections
from pages._share import current_spec
from pages._shell import halt, prepare, show_error, show_figure, show_table
from pages._widgets import apply_fixes, widget

view, ctx = prepare("attributions")
P = {p.key: p for p in view.params}
ds = ctx.ds
try:
    V.check_models(ctx)
except UserInputError as exc:
    show_error(str(exc))
    halt()

# ------------------------------------------------------------------ the rules
c1, c2, c3, c4 = st.columns([2, 1, 1, 2], vertical_alignment="bottom")
widget(P["at_rule"], container=c1, help=V.rule_help())
widget(P["at_eps"], container=c2, kind="selectbox")
rs = V.rule_set(current_spec().params)
widget(P["at_gamma"], container=c3, kind="selectbox", disabled="gamma" not in (rs.first, rs.conv, rs.dense))
widget(P["at_bias"], container=c4, help=V.bias_help())
st.caption(md(V.rule_set(current_spec().params).description))  # the rules and the bias convention, in words


def model_header(slot, mm):
    st.subheader(f"Model {slot}")
    st.caption(f"{md(mm.ref)} · {md(mm.architecture)}")
    for note in mm.notes:  # e.g. why epsilon-gamma-box is epsilon on an MLP
        st.info(md(note), icon=":material/info:")


def hidden_layer_pickers():
    """Drawn (in a container at the bottom) before the maps: one backward pass gives both."""
    st.divider()
    st.subheader("Relevance at a hidden layer")
    st.caption("The same backward pass, read at a layer's output: the mean relevance of each unit over the shown "
               "inputs (channels of a convolution summed over positions, token outputs over tokens).")
    cols = st.columns(2)
    for side, model, col in (("a", ctx.model_a, cols[0]), ("b", ctx.model_b, cols[1])):
        widget(P[f"at_layer_{side}"], model.layers[:-1] or model.layers, container=col, default=V.default_layer(model))


def units(result):
    show_figure(figs.units(result, current_spec().params), "at_units")


# ====================================================================== images (classifiers)
def picture_upload():
    up = st.file_uploader("Or upload a picture (it is turned grey, resized to the dataset's images and scaled "
                          "to [0, 1])", type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key="_at_upload_file",
                          max_upload_size=5)
    if up is not None and st.session_state.get("_at_upload_done") != up.file_id:
        try:
            pid = V.keep_picture(up.getvalue(), up.name, ds)
        except UserInputError as exc:
            show_error(str(exc))
            return
        st.session_state["_at_upload_done"] = up.file_id
        st.session_state["at_upload"] = st.query_params["at_upload"] = pid
    if current_spec().params["at_upload"] and st.button("Leave out the uploaded picture", key="_at_upload_remove",
                                                        type="tertiary"):
        apply_fixes({"at_upload": None})


def image_view():
    c1, c2, c3 = st.columns([1.2, 1, 3])
    target = widget(P["at_target"], container=c1)
    widget(P["at_class"], container=c2, disabled=target != "class")
    rows = V.gallery(ds)
    widget(P["at_samples"], [str(i) for i in rows], container=c3)
    with st.expander("Gallery", expanded=True):
        from analysis import figures

        st.image([figures.pixel_tile(ds.render(i)["image"]) for i in rows],
                 caption=[f"#{i} · {ds.label_of(i)}" for i in rows], width=56)
        picture_upload()
    maps_area, dataset_area, hidden_area = st.container(), st.container(), st.container()
    with hidden_area:
        hidden_layer_pickers()
    spec = current_spec()
    p = spec.params
    with maps_area:
        result, ready = run_sections(view, spec, ["maps"], what="the relevance maps of the chosen samples")
        if not ready:
            halt()
        for col, (slot, mm) in zip(st.columns(2, gap="large"), (("A", result.maps.a), ("B", result.maps.b))):
            with col:
                model_header(slot, mm)
                show_figure(figs.maps_figure(result, p, slot), f"at_maps_{slot}")
                show_table(figs.conservation_table(mm, result.maps.names), f"at_cons_{slot}")
        if result.maps.upload_unlabelled:
            st.caption("The uploaded picture has no label: its 'true' target is each model's prediction.")
        st.caption(figs.MAPS_CAPTION)
    with dataset_area:
        dataset_level(spec)
    with hidden_area:
        units(result)


def dataset_level(spec):
    p = spec.params
    st.divider()
    st.subheader("Over the dataset")
    result, ready = run_sections(view, spec, ["maps", "dataset"],
                                 what=f"both models' relevance of all {len(ds)} samples")
    if ready:
        d, shown = result.dataset, result.maps.agreement
        m1, m2, m3 = st.columns(3)
        m1.metric("Rank agreement of A and B (dataset mean)", f"{np.nanmean(d.agreement):.3f}",
                  help=f"Spearman correlation between A's and B's relevance maps of each of the {len(ds)} samples, "
                       "averaged. 1: the same pixel ranking; 0: unrelated.")
        m2.metric("Shown samples (mean)", f"{np.nanmean(shown):.3f}" if np.isfinite(shown).any() else "n/a")
        m3.metric("Median ΣR / f (A · B)", f"{d.conservation_a:.3f} · {d.conservation_b:.3f}",
                  help="Sum of relevance over the explained output, median over the samples.")
        g1, g2 = st.columns(2)
        with g1:
            show_figure(figs.agreement(result, p), "at_agree")
        with g2:
            show_figure(figs.conservation(result, p), "at_conservation")
        show_table({"sample": result.maps.names, "Spearman ρ (A vs B)": np.round(shown, 3)}, "at_agree_table")
    st.subheader("Faithfulness: pixel flipping")
    result, ready = run_sections(view, spec, ["maps", "faithfulness"], what="pixel flipping for A and B")
    if ready:
        st.caption(figs.pixel_flipping_caption(result))
        show_figure(figs.pixel_flipping(result, p), "at_faith")
        show_table(figs.aopc_table(result), "at_aopc")


# ====================================================================== text encoders
def text_view():
    c1, c2 = st.columns([1, 2])
    mode = widget(P["at_text_target"], container=c1)
    widget(P["at_topic"], ["predicted"] + list(ds.label_names or []), container=c2, disabled=mode != "topic",
           help="predicted: each sentence's top topic under the probe")
    rows = V.gallery(ds)
    widget(P["at_sentences"], [str(i) for i in rows], help="; ".join(f"{i}: {ds.inputs[i][:40]}" for i in rows[:8]))
    widget(P["at_text"])
    widget(P["at_second"], default=V.default_second(ds), disabled=mode != "similarity")
    maps_area, rest_area, hidden_area = st.container(), st.container(), st.container()
    with hidden_area:
        hidden_layer_pickers()
    spec = current_spec()
    with maps_area:
        result, ready = run_sections(view, spec, ["text_maps"], what="the token relevance of the chosen sentences")
        if not ready:
            halt()
        t = result.text_maps
        for col, (slot, mm) in zip(st.columns(2, gap="large"), (("A", t.a), ("B", t.b))):
            with col:
                model_header(slot, mm)
                if mm.probe_accuracy is not None:
                    st.caption(f"Topic probe: logistic regression on the mean-pooled last layer, training accuracy "
                               f"{100 * mm.probe_accuracy:.0f}%")
                else:
                    st.metric("Cosine similarity of the two sentences", f"{mm.output[0]:.3f}")
                show_table(figs.text_conservation_table(t, mm), f"at_cons_{slot}")
        show_figure(figs.token_pairs(result, spec.params), "at_tokens")
        st.caption(figs.token_caption(result))
    with rest_area:
        text_comparison(result, spec)
    with hidden_area:
        units(result)


def text_comparison(result, spec):
    t = result.text_maps
    if t.agreement is not None:
        st.metric("Rank agreement of A's and B's token relevance (mean over the sentences)",
                  f"{np.nanmean(t.agreement):.3f}" if np.isfinite(t.agreement).any() else "n/a",
                  help="Spearman correlation of the two models' token relevance, per sentence, averaged.")
    else:
        st.info("The two models split the sentences into different tokens: their maps cannot be ranked against "
                "each other.")
    if t.mode != "topic":
        return
    if widget(P["at_text_dataset"], help=f"Explains all {len(ds)} sentences with both models (kept in the store)."):
        full, ready = run_sections(view, current_spec(), ["text_maps", "text_dataset"], auto_s=float("inf"))
        if ready:
            st.metric(f"Rank agreement over the {len(ds)} sentences (mean)", f"{np.nanmean(full.text_dataset):.3f}",
                      help="Each sentence explained for its predicted topic under each model's own probe.")
            show_figure(figs.text_agreement(full, current_spec().params), "at_text_agree")
    if widget(P["at_text_faith"], help="Runs each model once per removal step."):
        faith, ready = run_sections(view, current_spec(), ["text_maps", "text_faithfulness"], auto_s=float("inf"))
        if ready:
            show_figure(figs.token_removal(faith, current_spec().params), "at_text_faith")


# ====================================================================== page
if ds.kind == "text":
    text_view()
else:
    image_view()
