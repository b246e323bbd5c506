"""Projections page: widgets -> spec -> the view's sections (as jobs) -> figures. A selection in one
view highlights the same samples in the other (this session's state); no numerics here."""
import streamlit as st

from analysis import figures
from analysis.errors import UserInputError
from analysis.safe_text import md
from analysis.figures import projections as figs
from analysis.spec import AnalysisSpec
from analysis.views import projections as pv
from pages._jobs import run_sections
from pages._shell import halt, prepare, show_error, show_figure, show_table
from pages._share import current_spec
from pages._widgets import widget

PICKED_AUTO_S = 60.0  # what the user picked (a method, a colouring) starts at once when under a minute
SELECTED, SELECTED_FOR, UPLOADED = "_proj_selected", "_proj_selected_for", "_coords_file"

view, ctx = prepare("projections")
P = {p.key: p for p in view.params}
ds = ctx.ds
if st.session_state.get("coords") and st.query_params.get("coords") != st.session_state["coords"]:
    st.query_params["coords"] = st.session_state["coords"]  # the address bar carries the upload's id

# ------------------------------------------------------------------ controls
c1, c2, c3, c4, c5 = st.columns([1.2, 0.8, 1.6, 1.6, 1.6])
method = widget(P["method"], container=c1)
uploaded = bool(current_spec().params["coords"])
widget(P["dims"], container=c2, kind="selectbox", disabled=uploaded,
       help="The uploaded coordinates set the dimension." if uploaded else None)
widget(P["proj_a"], ctx.model_a.layers, container=c3, default=ctx.model_a.layers[-1], disabled=uploaded)
widget(P["proj_b"], ctx.model_b.layers, container=c4, default=ctx.model_b.layers[-1])
colour = widget(P["colour"], container=c5)
m1, m2, _ = st.columns([1, 1, 2])
for key, col in zip(pv.METHOD_PARAMS[method], (m1, m2)):
    widget(P[key], container=col)

with st.expander("Use precomputed coordinates for A", expanded=uploaded):
    st.caption(f"An .npy/.npz/.csv/.parquet file with one row of 2 or 3 coordinates per sample ({len(ds)} rows, "
               "in the dataset's order). It replaces A's computed projection; files are never unpickled.")
    file = st.file_uploader("Coordinates", type=["npy", "npz", "csv", "parquet"], key="coords_upload")
    if file is not None and st.session_state.get(UPLOADED) != file.file_id:
        try:
            upload_id = pv.store_coordinates(file.getvalue(), file.name, len(ds))
        except UserInputError as exc:
            show_error(str(exc))
        except Exception as exc:  # noqa: BLE001 - an untrusted file never takes the page down
            show_error(f"{file.name} could not be read ({type(exc).__name__}); nothing was stored.")
        else:
            st.session_state[UPLOADED] = file.file_id
            st.session_state["coords"] = st.query_params["coords"] = upload_id
            st.rerun()
    if uploaded and st.button("Use A's computed projection again"):
        st.session_state.pop("coords", None)
        st.query_params.pop("coords", None)
        st.rerun()

# ------------------------------------------------------------------ the two views
spec = current_spec()
result, ready = run_sections(view, spec, ["projection_a", "projection_b", "alignment"], auto_s=PICKED_AUTO_S,
                             what=f"the {figs.METHOD_NAMES[method]} projections of both layers")
if not ready:
    halt()
agreement, got = run_sections(view, spec, ["agreement"], what="the neighbourhood agreement of the two layers")
result.agreement = agreement.agreement if got else None
for side in pv.prediction_sides(colour):
    preds, got = run_sections(view, spec, [f"predictions_{side}"], auto_s=PICKED_AUTO_S,
                              what=f"the predictions of {side.upper()}")
    setattr(result, f"predictions_{side}", getattr(preds, f"predictions_{side}") if got else None)
colours = pv.colouring(result, ds, colour)
if colours.note:
    st.info(md(colours.note))

if st.session_state.get(SELECTED_FOR) != ds.sha256:  # other rows: an old selection means nothing
    st.session_state[SELECTED], st.session_state[SELECTED_FOR] = [], ds.sha256
selected = st.session_state[SELECTED]
rows = pv.rows_of(result)  # streamed: the drawn subsample; None: every row
hover = figs.hover_texts(ds, rows)
for note in dict.fromkeys(e.note for e in (result.projection_a, result.projection_b) if e.note):
    st.caption(md(note))
if result.agreement is not None and result.agreement.note:
    st.caption(md(result.agreement.note))
events = []
for col, draw, key in zip(st.columns(2), (figs.view_a, figs.view_b), ("view_a", "view_b")):
    with col:
        events.append(show_figure(draw(result, spec.params, ds, colours, selected, hover), key, on_select="rerun",
                                  selection_mode=["points", "box", "lasso"]))
picked = None
for event in events:
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if points:
        picked = sorted({int(p["customdata"]) for p in points if isinstance(p.get("customdata"), (int, float))})
if picked is not None and picked != selected:
    st.session_state[SELECTED] = picked
    st.rerun()

k1, k2, k3 = st.columns(3)
if result.agreement is not None:
    a = result.agreement
    k1.metric("Neighbourhood agreement (mean)", f"{a.per_sample.mean():.3f}",
              help=f"Fraction of each sample's {a.k} nearest neighbours (cosine, original spaces) shared by the two "
                   f"layers. Chance: {a.chance:.3f}.")
k2.metric("Alignment residual", f"{result.alignment.residual:.3f}",
          help="RMS distance between A's points and B's aligned points, relative to A's spread "
               "(0: the views coincide after rotation and scaling).")
ea, eb = result.projection_a.explained, result.projection_b.explained
if ea is not None and eb is not None:
    k3.metric("Variance shown (A, B)", f"{100 * ea.sum():.0f}% · {100 * eb.sum():.0f}%")

if selected:
    st.markdown(f"**{len(selected)} samples selected** (highlighted in both views)"
                + (f"; the first {min(24, len(selected))} are shown below" if len(selected) > 24 else ""))
    if st.button("Clear selection"):
        st.session_state[SELECTED] = []
        st.rerun()
    shown = selected[:24]
    if ds.kind == "image":
        st.image([figures.pixel_tile(ds.render(i if rows is None else int(rows[i]))["image"]) for i in shown],
                 caption=[md(hover[i]) for i in shown], width=72)  # captions read markdown
    else:
        table = {"sample": [hover[i] for i in shown]}
        if result.agreement is not None:
            table["agreement"] = [float(result.agreement.per_sample[i]) for i in shown]
        show_table(table, "selected_samples", "Selected samples")
else:
    st.caption("Select points (click, box or lasso) in either view to highlight the same samples in the other.")

# ------------------------------------------------------------------ through the layers of one model
st.divider()
st.subheader("Through the layers")
w1, w2 = st.columns([1, 3])
side = widget(P["path_model"], container=w1, kind="radio")
section = f"walk_{side.lower()}"
try:
    plan = view.plan(AnalysisSpec(view.page, {**current_spec().params, "walk": True}), [section])
    cost = plan.describe() if plan.task is not None else None  # None: stored already
except UserInputError as exc:
    cost = None
    show_error(str(exc))
widget(P["walk"], container=w2, label=f"Project every layer ({cost})" if cost else None)
spec = current_spec()
if spec.params["walk"]:
    walk, ready = run_sections(view, spec, [section], auto_s=float("inf"))  # the toggle was the go-ahead
    if ready:
        walk = getattr(walk, section)
        if st.session_state.get("path_layer") not in walk.layers:  # a layer of the other model
            st.session_state.pop("path_layer", None)
        shown = widget(P["path_layer"], walk.layers, kind="select_slider", default=walk.layers[-1])
        show_figure(figs.walk_view(walk, shown, spec.params, ds, hover), "path_view")
        st.caption("Each layer's projection is rotated onto the previous layer's, so moving the slider shows the "
                   "samples move (classes separating with depth) rather than the axes flipping.")
else:
    st.caption("Projects every layer of the chosen model with the method above, each rotated onto the previous "
               "one. Turn it on to compute it (it is stored: later visits open at once).")
