"""Projections page: one layer of A and one of B in 2-D or 3-D, aligned point by point, coloured
by label, prediction, correctness or neighbourhood agreement; a selection in one view is
highlighted in the other; a layer slider walks through one model's layers."""
import numpy as np
import streamlit as st

from analysis import activations, evaluate, figures, spec
from analysis import projection as proj
from analysis.errors import UserInputError
from analysis.safe_text import md
from pages._shell import Progress, pair_or_stop, selection, show_figure, show_table, user_errors

COLOUR_BY = list(spec.COLOUR_BY)  # declared with the page's other link parameters


@st.cache_data(show_spinner=False, max_entries=64)
def cached_acts(ref: str, data_key: tuple, layers: tuple, _model, _ds):
    return dict(activations.extract(_model, _ds, list(layers)))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_eval(ref: str, data_key: tuple, _model, _ds):
    return evaluate.evaluate(_model, _ds)


def method_params(method: str) -> dict:
    if method == "umap":
        c1, c2 = st.columns(2)
        return {"n_neighbors": c1.number_input("Neighbours", 2, 200, 15, key="umap_k", bind="query-params"),
                "min_dist": c2.number_input("Min distance", 0.0, 1.0, 0.1, step=0.05, key="umap_d",
                                            bind="query-params")}
    if method == "tsne":
        return {"perplexity": st.number_input("Perplexity", 2.0, 100.0, 30.0, step=5.0, key="perplexity",
                                              bind="query-params")}
    return {}


sel = selection()
st.title("Projections")
ds, model_a, model_b, data_key = pair_or_stop(sel)

c1, c2, c3, c4, c5 = st.columns([1.2, 0.8, 1.6, 1.6, 1.6])
method = c1.selectbox("Method", list(proj.METHODS), key="method", bind="query-params",
                      help="PCA is exact and instant. UMAP and t-SNE show neighbourhoods; their axes mean nothing. "
                           "UMAP's first run in a server compiles its code (about half a minute).")
dims = c2.selectbox("Dimensions", [2, 3], key="dims", bind="query-params")
layer_a = c3.selectbox("Layer of A", model_a.layers, index=len(model_a.layers) - 1, key="proj_a",
                       bind="query-params")
layer_b = c4.selectbox("Layer of B", model_b.layers, index=len(model_b.layers) - 1, key="proj_b",
                       bind="query-params")
colour = c5.selectbox("Colour by", COLOUR_BY, key="colour", bind="query-params")
with st.container():
    params = method_params(method)

with st.expander("Use precomputed coordinates for A"):
    st.caption(f"An .npy/.npz/.csv/.parquet file with one row of 2 or 3 coordinates per sample "
               f"({len(ds)} rows, in the dataset's order). It replaces A's computed projection.")
    coords_file = st.file_uploader("Coordinates", type=["npy", "npz", "csv", "parquet"], key="coords_upload")

bar = Progress(f"{method.upper()} of both layers…")
try:
    xa = cached_acts(sel.model_a, data_key, (layer_a,), model_a, ds)[layer_a]
    xb = cached_acts(sel.model_b, data_key, (layer_b,), model_b, ds)[layer_b]
    if coords_file is not None:
        pa = proj.from_coordinates(coords_file.getvalue(), coords_file.name, len(ds))
        if pa.coords.shape[1] != dims:
            st.warning(f"The uploaded coordinates have {pa.coords.shape[1]} dimensions; showing {pa.coords.shape[1]}-D.")
            dims = pa.coords.shape[1]
    else:
        pa = proj.project(xa, method, dims, sel.seed, progress=lambda f, m: bar(0.5 * f, m), **params)
    pb = proj.project(xb, method, dims, sel.seed, progress=lambda f, m: bar(0.5 + 0.5 * f, m), **params)
except UserInputError as exc:
    st.error(md(exc))
    st.stop()
bar.done()
al = proj.align(pa, pb)
agreement = proj.knn_agreement(xa, xb, k=min(10, len(ds) - 1))

# ------------------------------------------------------------------ colours
values, kind = None, "category"
ev_a = cached_eval(sel.model_a, data_key, model_a, ds) if colour in ("prediction of A", "A correct") else None
ev_b = cached_eval(sel.model_b, data_key, model_b, ds) if colour in ("prediction of B", "B correct") else None
names = ds.label_names
if colour == "label":
    values = None if ds.labels is None else ds.labels
elif colour in ("prediction of A", "prediction of B"):
    ev = ev_a if ev_a is not None else ev_b
    values = ev.predictions
    if values is None:
        st.info(f"{'A' if ev_a is not None else 'B'} makes no class predictions ({ev.explanation}); colouring by label.")
        values = ds.labels
elif colour in ("A correct", "B correct"):
    ev = ev_a if ev_a is not None else ev_b
    if ev.predictions is None or ds.labels is None:
        st.info("Correctness needs class predictions and labels; colouring by label.")
        values = ds.labels
    else:
        values, names = (ev.predictions == ds.labels).astype(int), ["wrong", "correct"]
else:
    values, kind, names = agreement, "continuous", None

# ------------------------------------------------------------------ the two views, linked selection
selected = st.session_state.get("_proj_selected", [])
hover = [ds.hover_text(i) for i in range(len(ds))]
titles = (f"A · {sel.model_a} · {layer_a}", f"B · {sel.model_b} · {layer_b} (aligned to A)")
v1, v2 = st.columns(2)
events = []
frame_b = [f"A's axis {i + 1}" for i in range(pa.coords.shape[1])]  # B is rotated into A's frame
for col, coords, title, key, axes in ((v1, pa.coords, titles[0], "view_a", pa.axis_titles()),
                                      (v2, al.aligned, titles[1], "view_b", frame_b)):
    with col:
        fig = figures.projection_scatter(coords, values, kind, hover, title, axes, names, selected)
        events.append(show_figure(fig, key, on_select="rerun", selection_mode=["points", "box", "lasso"]))
picked = None
for ev in events:
    pts = (ev or {}).get("selection", {}).get("points", []) if ev else []
    if pts:
        picked = sorted({int(p["customdata"]) for p in pts if isinstance(p.get("customdata"), (int, float))})
if picked is not None and picked != selected:
    st.session_state["_proj_selected"] = picked
    st.rerun()

m1, m2, m3 = st.columns(3)
m1.metric("Neighbourhood agreement (mean)", f"{np.nanmean(agreement):.3f}",
          help=f"Fraction of each sample's {min(10, len(ds) - 1)} nearest neighbours (cosine, original spaces) "
               f"shared by the two layers. Chance: {min(10, len(ds) - 1) / (len(ds) - 1):.3f}.")
m2.metric("Alignment residual", f"{al.residual:.3f}",
          help="RMS distance between A's points and B's aligned points, relative to A's spread "
               "(0: the views coincide after rotation and scaling).")
if pa.explained is not None:
    shown_b = 100 * pb.explained.sum() if pb.explained is not None else float("nan")
    m3.metric("Variance shown (A, B)", f"{100 * pa.explained.sum():.0f}% · {shown_b:.0f}%")

if selected:
    st.markdown(f"**{len(selected)} samples selected** (highlighted in both views)"
                + (f"; the first {min(24, len(selected))} are shown below" if len(selected) > 24 else ""))
    if st.button("Clear selection"):
        st.session_state["_proj_selected"] = []
        st.rerun()
    shown = selected[:24]
    if ds.kind == "image":
        st.image([figures.pixel_tile(ds.render(i)["image"]) for i in shown],
                 caption=[md(ds.hover_text(i)) for i in shown], width=72)
    else:
        show_table({"sample": [ds.hover_text(i) for i in shown],
                    "agreement": [float(agreement[i]) for i in shown]}, "selected_samples", "Selected samples")
else:
    st.caption("Select points (click, box or lasso) in either view to highlight the same samples in the other.")

# ------------------------------------------------------------------ through the layers of one model
st.divider()
st.subheader("Through the layers")
which = st.radio("Model", ["A", "B"], horizontal=True, key="path_model")
model, ref = (model_a, sel.model_a) if which == "A" else (model_b, sel.model_b)
step = st.select_slider("Layer", model.layers, value=model.layers[-1], key=f"path_layer_{which}")
bar = Progress(f"{method.upper()} of every layer of {which}…")
with user_errors():
    acts_all = cached_acts(ref, data_key, tuple(model.layers), model, ds)
    path = proj.layer_path(acts_all, method, dims, sel.seed, progress=bar, **params)
    bar.done()
    path_values = ds.labels if ds.labels is not None else None
    show_figure(figures.projection_scatter(path[step], path_values, "category", hover,
                                           f"{which} · {ref} · {step} (aligned to the previous layer)",
                                           [f"{method.upper()} 1", f"{method.upper()} 2", f"{method.upper()} 3"],
                                           ds.label_names, []), "path_view")
    st.caption("Each layer's projection is rotated onto the previous layer's, so moving the slider shows the "
               "samples move (classes separating with depth) rather than the axes flipping.")
