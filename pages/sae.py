"""SAE features page: widgets -> spec -> the view's sections (as jobs) -> figures. No numerics here:
an SAE on a layer of A or B (trained, or opened from SAELens files), its metrics and frontier, the
feature browser, the features active on one input, and the matched features of A and B."""
from functools import partial

import streamlit as st

from analysis.errors import UserInputError
from analysis.figures import sae as figs
from analysis.sae import PENALTY_KINDS
from analysis.views import sae as V
from pages._jobs import run_sections
from pages._sae_parts import feature_block, metrics_block, pair_block, pick, show_examples, take_pick
from analysis.safe_text import md
from pages._shell import halt, prepare, show_error, show_figure, show_table
from pages._share import current_spec
from pages._widgets import widget

TRAIN_AUTO_S = 8.0  # trainings estimated longer than this wait for the button


def _live(spec, side):
    """The running training's curve, under its progress bar (the job writes it to the store)."""
    history = V.live_history(view, spec, side)
    if history and history.get("step"):
        st.plotly_chart(figs.training_curve(history, f"{side.upper()} · training (live)"), theme=None,
                        key=f"sae_live_{side}")


view, ctx = prepare("sae")
P = {p.key: p for p in view.params}
take_pick("sae_feature")
take_pick("sae_pair")

# ------------------------------------------------------------------ the SAE
c1, c2, c3 = st.columns([0.6, 1.7, 1.7])
side = widget(P["sae_model"], container=c1, kind="radio").lower()
for col, s in ((c2, "a"), (c3, "b")):
    layers = V.model(ctx, s).layers
    widget(P[f"sae_layer_{s}"], layers, container=col, default=layers[len(layers) // 2])
h = st.columns(6)
kind = widget(P["sae_kind"], container=h[0])
widget(P["sae_exp"], container=h[1], kind="selectbox")
widget(P[f"sae_l1_{kind}" if kind in PENALTY_KINDS else "sae_k"], container=h[2])
widget(P["sae_steps"], container=h[3])
widget(P["sae_lr"], container=h[4], kind="selectbox")
widget(P["sae_bs"], container=h[5], kind="selectbox")
file_key = f"sae_file_{side}"
with st.expander(f"Open an SAE trained elsewhere for {side.upper()} (SAELens files) instead of training one",
                 expanded=bool(st.query_params.get(file_key))):
    st.caption("`cfg.json` + `sae_weights.safetensors` as SAELens saves them (standard, topk, jumprelu), or the zip "
               "this page downloads. It must read the chosen layer's activations.")
    files = st.file_uploader("SAE files", type=["json", "safetensors", "zip"], accept_multiple_files=True,
                             key=f"sae_upload_{side}")
    if files and (sig := [f.file_id for f in files]) != st.session_state.get("_sae_opened"):
        try:
            st.query_params[file_key] = V.upload({f.name: f.getvalue() for f in files}, view.context(current_spec()),
                                                 side)
            st.session_state["_sae_opened"] = sig
        except UserInputError as exc:
            show_error(f"Upload: {exc}")
    if st.query_params.get(file_key) and st.button(f"Train an SAE for {side.upper()} instead", key="sae_unopen"):
        del st.query_params[file_key]
        st.rerun()
spec = current_spec()
here = view.context(spec)
result, ready = run_sections(view, spec, V.sections_of(side, "train", "metrics", "features", "frontier"),
                             label=f"Train ({side.upper()})", auto_s=TRAIN_AUTO_S,
                             what=V.describe_training(here, side) if not spec.params[file_key] else None,
                             live=partial(_live, spec, side))



if not ready:
    halt()
train, features = result.of("train", side), result.of("features", side)
st.subheader(f"{side.upper()} · {md(train.layer)} · {md(train.describe)}")
metrics_block(train, result.of("metrics", side))
g1, g2 = st.columns(2)
with g1:
    show_figure(figs.curve(result, side), "sae_curve")
with g2:
    show_figure(figs.density(result, side), "sae_density")
show_figure(figs.frontier_of(result, side), "sae_frontier")
st.caption("Each point is an SAE trained on this layer: further left is sparser, lower reconstructs better. "
           "SAEs that differ only in their sparsity are joined into a curve; the ring marks the one on show.")
if not spec.params[file_key]:
    if widget(P["sae_sweep"]):
        run_sections(view, current_spec(), [f"sweep_{side}"], label="Train the sweep",
                     what=f"the sparsity sweep of {side.upper()}'s SAE")
    st.download_button("Download in SAELens format (cfg.json + sae_weights.safetensors)",
                       lambda: V.saelens_files(view, spec, side), file_name="sae_saelens.zip",
                       mime="application/zip", key="sae_download")

# ------------------------------------------------------------------ feature browser
st.divider()
st.subheader("Feature browser")
table = features.table
t1, t2 = st.columns([1.3, 1.2])
with t2:
    widget(P["sae_map"], kind="radio")
    densest = int(table.loc[0, "feature"])
    feature = widget(P["sae_feature"], placeholder=f"empty: the densest, {densest}")
    feature = densest if feature is None else int(feature)
spec = current_spec()
with t1:
    st.caption("Click a row to open a feature; click a column header to sort.")
    at = table.index[table["feature"] == feature].tolist()
    event = show_table(table, key=f"sae_table_{side}_{feature}", on_select="rerun", selection_mode="single-row",
                       height=420, selection_default={"selection": {"rows": at}} if at else None,
                       column_config={c: st.column_config.NumberColumn(format=f) for c, f in (
                           ("density", "%.4f"), ("max activation", "%.3f"), ("mean activation", "%.3f"),
                           ("top class share", "%.2f"))})
    rows = event.selection.rows if event else []
    if rows and rows != at:
        pick("sae_feature", int(table.loc[rows[0], "feature"]))
with t2:
    maps, got = run_sections(view, spec, V.sections_of(side, "train", "features", spec.params["sae_map"]),
                             auto_s=60.0, what=f"the decoder map of {side.upper()}")
    if got:
        ev = show_figure(figs.decoder_map(maps, side, feature), f"sae_map_{side}", on_select="rerun",
                         selection_mode="points")
        st.caption("Click a point to open its feature.")
        clicked = [p.get("customdata") for p in (ev.selection.points if ev else [])]
        if clicked and isinstance(clicked[0], (int, float)) and int(clicked[0]) != feature:
            pick("sae_feature", int(clicked[0]))
detail, got = run_sections(view, spec, V.sections_of(side, "train", "features", "effect", "feature"),
                           what=f"feature {feature}")
if got:
    feature_block(detail, side, ctx.ds)

# ------------------------------------------------------------------ one input
st.divider()
st.subheader("Features active on one input")
i1, i2 = st.columns([1, 3])
with i1:
    row = widget(P["sae_input"])
    show_examples(ctx.ds, [row], [None], {}, "sae_input_shown", width=128)
one, got = run_sections(view, current_spec(), V.sections_of(side, "train", "features", "input"),
                        what="the features active on this input")
if got:
    with i2:
        ev = show_figure(figs.active(one, side), "sae_active", on_select="rerun", selection_mode="points")
        clicked = [p.get("customdata") for p in (ev.selection.points if ev else [])]
        if clicked and isinstance(clicked[0], (int, float)) and int(clicked[0]) != feature:
            pick("sae_feature", int(clicked[0]))
        st.caption(f"{len(one.of('input', side).features)} active features; click a bar to open one above.")

# ------------------------------------------------------------------ across models
st.divider()
st.subheader("Across models: matched features of A and B")
if not widget(P["sae_match"]):
    halt()
spec = current_spec()
other = "b" if side == "a" else "a"
both, ready = run_sections(view, spec, V.sections_of(other, "train", "features") + [f"train_{side}", "match"],
                           label=f"Train ({other.upper()}) and match", auto_s=TRAIN_AUTO_S,
                           what=V.describe_training(here, other) + " and the matching",
                           live=partial(_live, spec, other))
if not ready:
    halt()
m = both.match
ta, tb = both.train_a, both.train_b
st.caption(f"A: {md(ta.layer)} ({m.latents_a:,} latents, {len(m.match.live_a):,} live) · B: {md(tb.layer)} "
           f"({m.latents_b:,} latents, {len(m.match.live_b):,} live) · {len(m.match.a):,} pairs; a pair is shared "
           f"when its correlation ≥ {m.match.threshold:g}. Dead latents and those active on fewer than 3 inputs are "
           "not matched.")
q1, q2 = st.columns([1.2, 1])
with q1:
    show_figure(figs.matches(both), "sae_match_quality")
with q2:
    rank = widget(P["sae_pair"])
    event = show_table(m.table, key=f"sae_pairs_{rank}", on_select="rerun", selection_mode="single-row", height=300,
                       selection_default={"selection": {"rows": [rank]}} if rank < len(m.table) else None,
                       column_config={"correlation": st.column_config.NumberColumn(format="%.3f")})
    rows = event.selection.rows if event else []
    if rows and rows[0] != rank:
        pick("sae_pair", int(rows[0]))
pair, got = run_sections(view, current_spec(), ["pair"], what="the matched pair")
if got:
    pair_block(pair.pair, ctx.ds)
