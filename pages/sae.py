"""SAE features page: train a sparse autoencoder on a layer of A or B, see its metrics, browse its
features (examples, class association, nearest features, decoder map), the features active on one
input, and match features of A's and B's SAEs."""
import streamlit as st

from analysis import activations
from analysis import sae as S
from analysis import sae_figures as sf
from analysis.errors import UserInputError
from analysis.safe_text import html, md, md_code
from analysis.figures import pixel_tile
from pages._shell import Progress, pair_or_stop, selection, show_figure, show_table, user_errors

AUTO_TRAIN_S = 8.0  # train without asking when the estimate is below this
D = S.PAGE_DEFAULTS


@st.cache_data(show_spinner=False, max_entries=64)
def cached_acts(ref: str, data_key: tuple, layer: str, _model, _ds):
    return activations.extract(_model, _ds, [layer])[layer]


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_stats(key: str, _sae, _acts, _labels, _names):
    return S.feature_stats(_sae, _acts, _labels, _names)


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_metrics(key: str, _sae, _acts):
    return S.evaluate(_sae, _acts)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_downstream(key: str, _sae, _model, layer: str, _ds):
    try:
        return S.downstream(_sae, _model, layer, _ds), None
    except UserInputError as exc:
        return None, str(exc)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_logit_effect(key: str, _sae, _model, layer: str, _ds, _scale):
    try:
        return S.logit_effect(_sae, _model, layer, _ds, scale=_scale)
    except UserInputError:
        return None


@st.cache_data(show_spinner=False, max_entries=32)
def cached_map(key: str, method: str, _sae):
    return S.decoder_map(_sae, method)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_zip(key: str, _sae, ref: str, layer: str) -> bytes:
    return S.saelens_zip(_sae, {"model_name": ref, "hook_name": layer})


@st.cache_resource(show_spinner=False, max_entries=16)
def cached_match(key_a: str, key_b: str, _sae_a, _acts_a, _sae_b, _acts_b, _codes_a, _codes_b):
    return S.match_features(_sae_a, _acts_a, _sae_b, _acts_b, codes_a=_codes_a, codes_b=_codes_b)


def hyper_parameters() -> dict:
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    kind = c1.selectbox("Kind", list(S.KINDS), key="sae_kind", bind="query-params",
                        help="topk: exactly k active latents per input (Gao et al. 2024). batchtopk: k on average "
                             "over a batch. relu: ReLU with a norm-weighted L1 penalty (Anthropic 2024). "
                             "jumprelu: a learned threshold per latent with an L0 penalty (Rajamanoharan et al. 2024).")
    params = {"kind": kind,
              "expansion": c2.selectbox("Expansion", S.PAGE_EXPANSIONS, index=S.PAGE_EXPANSIONS.index(D["expansion"]), key="sae_exp", bind="query-params",
                                        help="Latents = expansion x the layer's width.")}
    if kind in S.PENALTY_KINDS:
        params["l1"] = c3.number_input("Penalty", 0.0, 1000.0, S.DEFAULT_L1[kind], step=0.5, key=f"sae_l1_{kind}",
                                       bind="query-params",
                                       help="Sparsity coefficient (L1 for relu, L0 for jumprelu) on inputs scaled to "
                                            "E||x||² = width. Larger: fewer active latents, worse reconstruction.")
    else:
        params["k"] = c3.number_input("k", 1, 512, D["k"], key="sae_k", bind="query-params",
                                      help="Active latents per input (topk) or on average (batchtopk).")
    params["steps"] = c4.number_input("Steps", 50, 50000, D["steps"], step=100, key="sae_steps", bind="query-params")
    params["lr"] = c5.selectbox("Learning rate", S.PAGE_LRS, index=S.PAGE_LRS.index(D["lr"]), key="sae_lr", bind="query-params")
    params["batch_size"] = c6.selectbox("Batch", S.PAGE_BATCHES, index=S.PAGE_BATCHES.index(D["batch_size"]), key="sae_bs", bind="query-params")
    return params


def obtain(tag: str, ref: str, model, layer: str, params: dict, acts):
    """The SAE from the store, trained now (short runs), or after the user presses the button."""
    sae = S.trained_sae(model, ds, layer, only_cached=True, **params)
    if sae is not None:
        return sae
    est = S.estimate_seconds(len(acts), acts.shape[1], params["expansion"], params["steps"], params["batch_size"])
    what = (f"{tag}: a {S.KIND_NAMES[params['kind']]} SAE with {params['expansion'] * acts.shape[1]} latents on "
            f"{md_code(layer)} of {md_code(ref)} ({len(acts)} inputs x {acts.shape[1]} dims, {params['steps']} steps): "
            f"about {est:.0f} s.")
    if est > AUTO_TRAIN_S:
        note = st.empty()
        note.info("Will train " + what + " Press the button to start.")
        if not st.button(f"Train ({tag})", key=f"sae_train_{tag}", type="primary"):
            return None
        note.empty()
    bar = Progress("Training " + what)
    live = st.empty()
    state = {"n": 0}

    def on_log(history):
        state["n"] += 1
        if state["n"] % 4 == 0:
            with live.container():
                show_figure(sf.training_curve(history, f"{tag} · training (live)"), key=f"sae_live_{tag}_{state['n']}")

    sae = S.trained_sae(model, ds, layer, progress=bar, on_log=on_log, **params)
    bar.done()
    live.empty()
    return sae


def show_examples(rows, values, feature_index: int, key: str, sae=None, model=None, layer=None, width: int = 64):
    """Inputs with their activation: digit images, or sentences with the feature's tokens shaded."""
    if len(rows) == 0:
        st.caption("No inputs.")
        return
    captions = [f"{v:.3g} · {ds.label_of(int(r)) or ''}".strip(" ·") for r, v in zip(rows, values)]
    if ds.kind == "image":
        st.image([pixel_tile(ds.render(int(r))["image"]) for r in rows], caption=[md(c) for c in captions],
                 width=width)
    elif ds.kind == "text" and sae is not None and getattr(model, "input_kind", "") == "text":
        toks = S.token_activations(sae, model, layer, [ds.inputs[int(r)] for r in rows], feature_index)
        for (tokens, vals), cap in zip(toks, captions):
            st.markdown(f"<div style='margin-bottom:4px'><code>{html(cap)}</code> "
                        f"{sf.highlight_tokens_html(tokens, vals)}</div>", unsafe_allow_html=True)
    else:
        show_table({"input": [ds.hover_text(int(r)) for r in rows], "activation": [float(v) for v in values]}, key=key)


def pick_feature(value: int) -> None:
    st.session_state["_sae_set_feature"] = int(value)
    st.rerun()


def fresh(key: str, value):
    """A selection's value the first time it is seen: table and chart selections persist across
    reruns, so acting on every rerun would undo a pick made elsewhere (a click on the map)."""
    seen = st.session_state.get(f"_sae_seen_{key}")
    st.session_state[f"_sae_seen_{key}"] = value
    return value if value is not None and value != seen else None


def clamp(key: str, top: int) -> None:
    """Forget a kept index that no longer exists (a smaller SAE, fewer samples): the widget then
    shows its default instead of failing on a value above its maximum."""
    value = st.session_state.get(key)
    if isinstance(value, (int, float)) and value > top:
        del st.session_state[key]


def clicked_index(event) -> int | None:
    pts = (event or {}).get("selection", {}).get("points", []) if event else []
    for p in pts:
        if isinstance(p.get("customdata"), (int, float)):
            return int(p["customdata"])
    return None


# ================================================================== the page
sel = selection()
st.title("SAE features")
ds, model_a, model_b, data_key = pair_or_stop(sel)

c1, c2, c3 = st.columns([0.6, 1.7, 1.7])
which = c1.radio("Browse", ["A", "B"], horizontal=True, key="sae_model", bind="query-params")
layer_a = c2.selectbox("Layer of A", model_a.layers, index=len(model_a.layers) // 2, key="sae_layer_a",
                       bind="query-params")
layer_b = c3.selectbox("Layer of B", model_b.layers, index=len(model_b.layers) // 2, key="sae_layer_b",
                       bind="query-params")
params = hyper_parameters()
model, ref, layer = (model_a, sel.model_a, layer_a) if which == "A" else (model_b, sel.model_b, layer_b)

try:
    acts = cached_acts(ref, data_key, layer, model, ds)
    params_checked = S.normalise_params(**params)
except UserInputError as exc:
    st.error(md(exc))
    st.stop()
key = S.store_key(model.sha256, ds.sha256, layer, "mean", params_checked)
with st.expander("Open an SAE trained elsewhere (SAELens files) instead of training one"):
    st.caption(f"`cfg.json` + `sae_weights.safetensors` as SAELens saves them (standard, topk, jumprelu), or the zip "
               f"this page downloads. It must read {md_code(layer)} of {which} ({acts.shape[1]} dimensions).")
    files = st.file_uploader("SAE files", type=["json", "safetensors", "zip"], accept_multiple_files=True,
                             key="sae_upload")
sae = None
if files:
    try:
        sae, sha = S.from_saelens_upload({f.name: f.getvalue() for f in files}, acts.shape[1])
        key = f"upload-{sha}"
    except UserInputError as exc:
        st.error(md(f"Upload: {exc}"))
if sae is None:
    with user_errors("Training"):
        sae = obtain(which, ref, model, layer, params, acts)
if sae is None:
    st.stop()

# ------------------------------------------------------------------ metrics
metrics = cached_metrics(key, sae, acts)
source = ("opened from uploaded SAELens files" if "saelens_cfg" in sae.train_info else
          "from the result store" if sae.cached else f"trained in {sae.train_info.get('seconds', 0):.1f} s")
st.subheader(f"{which} · {md_code(layer)} · {sae.describe()}")
speed = sae.train_info.get("samples_per_second")
st.caption(f"{source}" + (f" · {speed:,.0f} activations/s while training" if speed else "")
           + f" · metrics on the {metrics.n} inputs of the dataset")
m = st.columns(7)
m[0].metric("L0", f"{metrics.l0:.1f}", help="Mean number of active latents per input.")
m[1].metric("Var. explained", f"{metrics.fve:.3f}",
            help="1 - Σ||x - x̂||² / Σ||x - mean||², over the whole set (not averaged per batch).")
m[2].metric("MSE", f"{metrics.mse:.3g}", help="Mean squared error per dimension.")
m[3].metric("Dead", f"{100 * metrics.dead_fraction:.1f}%", help="Latents never active on these inputs.")
m[4].metric("Dense", f"{100 * metrics.dense_fraction:.1f}%", help="Latents active on more than 10% of inputs.")
m[5].metric("Norm ratio", f"{metrics.norm_ratio:.3f}", help="Mean ||x̂|| / ||x||: below 1 means shrinkage.")
m[6].metric("Cosine", f"{metrics.cosine:.3f}", help="Mean cos(x, x̂).")
down, why = cached_downstream(key, sae, model, layer, ds)
if down is not None:
    d = st.columns(4)
    acc = (lambda a: "" if a is None else f" · accuracy {100 * a:.1f}%")
    d[0].metric(f"{down.metric}: clean", f"{down.clean:.4f}", help="The model as it is" + acc(down.accuracy_clean))
    d[1].metric("with the SAE spliced in", f"{down.spliced:.4f}",
                help="The layer's output replaced by the SAE's reconstruction" + acc(down.accuracy_spliced))
    d[2].metric("mean-ablated layer", f"{down.ablated:.4f}",
                help="The layer's output replaced by its mean over the data" + acc(down.accuracy_ablated))
    d[3].metric("Loss recovered", f"{down.score:.3f}",
                help="(L_ablated - L_SAE) / (L_ablated - L_clean): 1 = the SAE loses nothing the model needs, "
                     "0 = as bad as replacing the layer by its mean.")
    if down.accuracy_clean is not None:
        st.caption(f"Accuracy: clean {100 * down.accuracy_clean:.1f}% · SAE spliced in "
                   f"{100 * down.accuracy_spliced:.1f}% · mean-ablated {100 * down.accuracy_ablated:.1f}%")
else:
    st.caption(md(f"Downstream check skipped: {why}"))
g1, g2 = st.columns(2)
with g1:
    show_figure(sf.training_curve(sae.history, "Training curve (logged batches)"), key="sae_curve")
with g2:
    show_figure(sf.density_histogram(metrics), key="sae_density")
show_figure(sf.frontier(S.trained_list(model.sha256, ds.sha256, layer), key), key="sae_frontier")
missing = [p for p in S.sweep_params(params) if S.trained_sae(model, ds, layer, only_cached=True, **p) is None]
if missing:
    axis = ", ".join(str(p.get("k", p.get("l1"))) for p in missing)
    est = sum(S.estimate_seconds(len(acts), acts.shape[1], p["expansion"], p["steps"], p["batch_size"]) for p in missing)
    if st.button(f"Train {len(missing)} more for the frontier ({'k' if 'k' in missing[0] else 'penalty'} = {axis}) "
                 f"· about {est:.0f} s", key="sae_sweep"):
        bar = Progress("Training the sweep…")
        with user_errors("Training"):
            for i, p in enumerate(missing):
                S.trained_sae(model, ds, layer, progress=lambda f, msg, i=i: bar((i + f) / len(missing), msg), **p)
        bar.done()
        st.rerun()
st.download_button("Download in SAELens format (cfg.json + sae_weights.safetensors)",
                   cached_zip(key, sae, ref, layer), file_name="sae_saelens.zip",
                   mime="application/zip", key="sae_download")

# ------------------------------------------------------------------ feature browser
st.divider()
st.subheader("Feature browser")
stats = cached_stats(key, sae, acts, ds.labels, tuple(ds.label_names) if ds.label_names else None)
table = stats.table().sort_values("density", ascending=False, kind="stable").reset_index(drop=True)
table = table[[c for c in ("feature", "density", "max activation", "top class", "top class share", "status",
                           "mean activation") if c in table]]
pending = st.session_state.pop("_sae_set_feature", None)
if pending is not None:
    st.session_state["sae_feature"] = pending
clamp("sae_feature", sae.d_sae - 1)
clamp("sae_input", len(ds) - 1)
t1, t2 = st.columns([1.3, 1.2])
with t1:
    st.caption("Click a row to open a feature; click a column header to sort.")
    event = show_table(table, key="sae_table", on_select="rerun", selection_mode="single-row", height=420,
                       column_config={"density": st.column_config.NumberColumn(format="%.4f"),
                                      "max activation": st.column_config.NumberColumn(format="%.3f"),
                                      "mean activation": st.column_config.NumberColumn(format="%.3f"),
                                      "top class share": st.column_config.NumberColumn(format="%.2f")})
    rows = (event or {}).get("selection", {}).get("rows", []) if event else []
    if (new := fresh("table", int(table.loc[rows[0], "feature"]) if rows else None)) is not None:
        pick_feature(new)
with t2:
    method = st.selectbox("Decoder map", ["umap", "pca"], key="sae_map", bind="query-params",
                          help="UMAP of the unit decoder directions (a server's first UMAP compiles for ~30 s), or PCA.")
    feature = st.number_input("Feature", 0, sae.d_sae - 1, int(table.loc[0, "feature"]), key="sae_feature",
                              bind="query-params")
    with user_errors("Decoder map"):
        coords = cached_map(key, method, sae)
        top_names = table.set_index("feature")["top class"].to_dict() if "top class" in table else None
        ev = show_figure(sf.decoder_map_figure(coords, stats.density, feature, top_names, method.upper()),
                         key="sae_umap", on_select="rerun", selection_mode="points")
        if (new := fresh("map", clicked_index(ev))) is not None and new != feature:
            pick_feature(new)

# ------------------------------------------------------------------ one feature
density, peak = float(stats.density[feature]), float(stats.max_act[feature])
badge = " :red-badge[dead]" if density == 0 else (" :orange-badge[dense]" if density > S.DENSE_FRACTION else "")
top = stats.table().loc[feature]
st.markdown(f"### Feature {feature}{badge}\nactive on **{100 * density:.2f}%** of inputs · max activation "
            f"**{peak:.3g}** · median when active {float(stats.quantiles[feature, 0]):.3g}"
            + (f" · top class **{md(top['top class'])}**" if "top class" in top and density > 0 else ""))
examples = S.feature_examples(stats, feature)
f1, f2, f3 = st.columns(3)
with f1:
    show_figure(sf.activation_histogram(S.feature_column(stats, feature)[S.feature_column(stats, feature) > 0],
                                        "Non-zero activations"), key="sae_hist")
names = ds.label_names or (None if stats.class_mean is None else [str(c) for c in range(stats.class_mean.shape[1])])
with f2:
    if stats.class_mean is not None:
        show_figure(sf.class_bars(stats.class_mean[feature], names, "Mean activation per class"), key="sae_classes")
with f3:
    effect = cached_logit_effect(key, sae, model, layer, ds, stats.mean_act)
    if effect is not None:
        show_figure(sf.class_bars(effect[feature], names, "Class-logit effect of the decoder direction", signed=True),
                    key="sae_logits")
        st.caption("Change of each class logit (centred across classes) when the direction, at the feature's mean "
                   "activation, is added to the layer and pushed through the rest of the model.")
    else:
        st.caption("Class-logit effect: the model has no class logits.")
st.markdown("**Top activating inputs**")
show_examples(examples["top"][0], examples["top"][1], feature, "sae_top", sae, model, layer)
with st.expander("Inputs from each activation band", expanded=density > 0):
    for lo, hi, rws, vals, count in examples["bands"]:
        st.caption(f"activation in ({lo:.3g}, {hi:.3g}] · {count} inputs")
        show_examples(rws, vals, feature, f"sae_band_{lo:.4f}", sae, model, layer, width=48)
near, cos = S.nearest_features(sae, feature)
st.markdown("**Nearest features** (decoder cosine) — click a row to open it")
near_table = {"feature": [int(i) for i in near], "cosine": [float(c) for c in cos],
              "density": [float(stats.density[i]) for i in near]}
if stats.class_mean is not None:
    near_table["top class"] = [names[int(stats.class_mean[i].argmax())] if stats.density[i] > 0 else "" for i in near]
ev = show_table(near_table, key="sae_near", on_select="rerun", selection_mode="single-row")
picked = (ev or {}).get("selection", {}).get("rows", []) if ev else []
if (new := fresh("near", near_table["feature"][picked[0]] if picked else None)) is not None:
    pick_feature(new)

# ------------------------------------------------------------------ one input
st.divider()
st.subheader("Features active on one input")
i1, i2 = st.columns([1, 3])
row = i1.number_input("Input (row of the dataset)", 0, len(ds) - 1, 0, key="sae_input", bind="query-params")
with i1:
    shown = ds.render(row)
    if ds.kind == "image":
        st.image(pixel_tile(shown["image"]), caption=md(ds.hover_text(row)), width=128)
    else:
        st.markdown(md(ds.hover_text(row)))
with i2:
    idx, vals = S.active_features(stats, row)
    ev = show_figure(sf.active_features_bar(idx, vals, top_names), key="sae_active", on_select="rerun",
                     selection_mode="points")
    if (new := fresh("active", clicked_index(ev))) is not None and new != feature:
        pick_feature(new)
    st.caption(f"{len(idx)} active features; click a bar to open one above.")

# ------------------------------------------------------------------ across models
st.divider()
st.subheader("Across models: matched features of A and B")
if not st.toggle("Match A's and B's features", value=True, key="sae_match", bind="query-params",
                 help="Train (or load) the same kind of SAE on A's and B's chosen layers and pair their features by "
                      "activation correlation on the same inputs (Hungarian assignment)."):
    st.stop()
other_tag = "B" if which == "A" else "A"
o_model, o_ref, o_layer = (model_b, sel.model_b, layer_b) if which == "A" else (model_a, sel.model_a, layer_a)
o_acts = cached_acts(o_ref, data_key, o_layer, o_model, ds)
with user_errors("Training"):
    o_sae = obtain(other_tag, o_ref, o_model, o_layer, params, o_acts)
if o_sae is None:
    st.stop()
o_key = S.store_key(o_model.sha256, ds.sha256, o_layer, "mean", params_checked)
o_stats = cached_stats(o_key, o_sae, o_acts, ds.labels, tuple(ds.label_names) if ds.label_names else None)
sides = {which: (sae, acts, stats, key), other_tag: (o_sae, o_acts, o_stats, o_key)}
(sae_a, acts_a, stats_a, key_a), (sae_b, acts_b, stats_b, key_b) = sides["A"], sides["B"]
match = cached_match(key_a, key_b, sae_a, acts_a, sae_b, acts_b, stats_a.codes, stats_b.codes)
st.caption(f"A: {md_code(layer_a)} ({sae_a.d_sae} latents, {len(match.live_a)} live) · B: {md_code(layer_b)} ({sae_b.d_sae} latents, "
           f"{len(match.live_b)} live) · {len(match.a)} pairs; a pair is shared when its correlation ≥ "
           f"{match.threshold:g}.")
q1, q2 = st.columns([1.2, 1])
with q1:
    show_figure(sf.match_quality(match.correlation, match.best_a, match.threshold), key="sae_match_quality")
with q2:
    pairs = match.table()
    if stats_a.class_mean is not None:
        pairs["top class A"] = [names[int(stats_a.class_mean[i].argmax())] for i in match.a]
        pairs["top class B"] = [names[int(stats_b.class_mean[i].argmax())] for i in match.b]
    ev = show_table(pairs, key="sae_pairs", on_select="rerun", selection_mode="single-row", height=300,
                    column_config={"correlation": st.column_config.NumberColumn(format="%.3f")})
    chosen = (ev or {}).get("selection", {}).get("rows", []) if ev else []
    if (new := fresh("pairs", int(chosen[0]) if chosen else None)) is not None:
        st.session_state["_sae_set_pair"] = new
        st.rerun()
pending_pair = st.session_state.pop("_sae_set_pair", None)
if pending_pair is not None:
    st.session_state["sae_pair"] = pending_pair
clamp("sae_pair", len(match.a) - 1)
rank = st.number_input("Pair (rank by correlation, 0 = best)", 0, len(match.a) - 1, 0, key="sae_pair",
                       bind="query-params")
fa, fb, r = int(match.a[rank]), int(match.b[rank]), float(match.correlation[rank])
st.markdown(f"**A feature {fa}** ↔ **B feature {fb}** · correlation {r:.3f} · "
            + ("shared" if r >= match.threshold else "model-specific"))
s1, s2 = st.columns(2)
for col, tag, st_, f_, sae_x, mdl, lyr in ((s1, "A", stats_a, fa, sae_a, model_a, layer_a),
                                          (s2, "B", stats_b, fb, sae_b, model_b, layer_b)):
    with col:
        ex = S.feature_examples(st_, f_, n_top=8)
        st.markdown(f"{tag} · feature {f_} · density {100 * float(st_.density[f_]):.2f}%")
        show_examples(ex["top"][0], ex["top"][1], f_, f"sae_pair_{tag}", sae_x, mdl, lyr, width=56)
