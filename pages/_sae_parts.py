"""Drawing blocks of the SAE features page (pages/sae.py): the metrics, one feature, one matched pair
and a gallery of inputs. They draw a view's result; no numerics here."""
from __future__ import annotations


import streamlit as st

from analysis.figures import pixel_tile
from analysis.figures import sae as figs
from analysis.safe_text import html as html_text, md
from pages._shell import show_figure, show_table


def pick(key: str, value: int) -> None:
    """Open ``value`` (a click on a table, a map or a bar): set before the widget exists, next run."""
    st.session_state[f"_set_{key}"] = int(value)
    st.rerun()


def take_pick(key: str) -> None:
    if (value := st.session_state.pop(f"_set_{key}", None)) is not None:
        st.session_state[key] = value


def metrics_block(train, metrics) -> None:
    """Where the SAE comes from, its metrics (two rows, wide enough for every number) and the
    downstream check."""
    source = {"files": f"opened from SAELens files ({md(train.name)})",
              "store": "from the result store (trained earlier)",
              "trained": f"trained in {train.seconds:.1f} s"}[train.source]
    speed = f" · {train.samples_per_second:,.0f} activations/s while training" if train.samples_per_second else ""
    if getattr(train, "streamed", False):  # results stored before the field existed lack it
        speed += " (streamed from the on-disk activation cache)"
    st.caption(f"{source}{speed} · metrics on the {train.n:,} inputs of the dataset, the inputs it was trained on")
    for warning in train.warnings:
        st.warning(md(warning), icon=":material/warning:")
    s = metrics.summary
    r1, r2 = st.columns(4), st.columns(4)
    r1[0].metric("L0", f"{s.l0:.1f}", help="Mean number of active latents per input.")
    r1[1].metric("Var. explained", f"{s.fve:.3f}",
                 help="1 - Σ||x - x̂||² / Σ||x - mean||², over the whole set (not averaged per batch).")
    r1[2].metric("MSE", f"{s.mse:.3g}", help=f"Mean squared error per dimension: {s.mse:.6g}.")
    r1[3].metric("Dead", f"{100 * s.dead_fraction:.1f}%", help="Latents never active on these inputs.")
    k = train.params.get("k")
    share = f" With k = {k} of {train.d_sae:,} latents active per input, the average latent is active on " \
            f"{100 * k / train.d_sae:.1f}% of inputs." if k else ""
    r2[0].metric("Dense", f"{100 * s.dense_fraction:.1f}%", help="Latents active on more than 10% of inputs." + share)
    r2[1].metric("Norm ratio", f"{s.norm_ratio:.3f}", help="Mean ||x̂|| / ||x||: below 1 means shrinkage.")
    r2[2].metric("Cosine", f"{s.cosine:.3f}", help="Mean cos(x, x̂).")
    r2[3].metric("Latents / inputs", f"{train.d_sae:,} / {train.n:,}",
                 help="With as many latents as inputs an SAE can give each input a latent of its own.")
    down = metrics.downstream
    if down is None:
        st.caption(f"Downstream check skipped: {md(metrics.downstream_skipped)}")
        return
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


def show_examples(ds, rows, values, tokens: dict, key: str, width: int = 64) -> None:
    """Inputs with their activation: digit images, sentences with the feature's tokens shaded, or
    a table of vectors. Every text from the data is shown inert."""
    if len(rows) == 0:
        st.caption("No inputs.")
        return
    captions = [" · ".join(x for x in ((f"{v:.3g}" if v is not None else ""), ds.label_of(int(r)) or "") if x)
                for r, v in zip(rows, values)]
    if ds.kind == "image":
        st.image([pixel_tile(ds.render(int(r))["image"]) for r in rows], caption=captions, width=width)
    elif tokens:
        for r, cap in zip(rows, captions):
            toks, vals = tokens[int(r)]
            st.markdown(f"<div style='margin-bottom:4px'><code>{html_text(cap)}</code> "
                        f"{figs.highlight_tokens_html(toks, vals)}</div>", unsafe_allow_html=True)
    elif ds.kind == "text":  # the sentence's own text names its label
        for r, v in zip(rows, values):
            st.markdown((f"`{v:.3g}` " if v is not None else "") + md(ds.hover_text(int(r))))
    else:
        show_table({"input": [ds.hover_text(int(r)) for r in rows],
                    "activation": [None if v is None else float(v) for v in values]}, key=key)


def feature_block(result, side: str, ds) -> None:
    """One feature: its header, charts (for a dead feature, why there are none), examples and nearest
    features (a click on one opens it)."""
    d = result.of("feature", side)
    if d.note:
        st.info(md(d.note))
    badge = " :red-badge[dead]" if d.dead else (" :orange-badge[dense]" if d.dense else "")
    st.markdown(f"### Feature {d.index}{badge}")
    if d.dead:
        st.info(f"Feature {d.index} is dead: it is active on none of the {len(ds):,} inputs, so "
                "it has no activations, class association or examples to show. Its decoder direction still "
                "exists; the features nearest to it are listed below.", icon=":material/block:")
    else:
        st.markdown(f"active on **{100 * d.density:.2f}%** of inputs · max activation **{d.peak:.3g}** · median "
                    f"when active {d.median:.3g}" + (f" · top class **{md(d.top_class)}**" if d.top_class else ""))
        charts = figs.feature_figures(result, side)
        for col, (key, fig) in zip(st.columns(3), charts.items()):
            with col:
                show_figure(fig, key)
        if "sae_logits" in charts:
            st.caption("Class-logit effect: the change of each class logit (centred across classes) when the "
                       "direction, at the feature's mean activation, is added to the layer and pushed through the "
                       "rest of the model.")
        st.markdown("**Top activating inputs**")
        show_examples(ds, d.top_rows, d.top_values, d.tokens, "sae_top")
        with st.expander("Inputs from each activation band", expanded=True):
            for lo, hi, rows, values, count in (band for band in d.bands if band[4]):
                st.caption(f"activation in ({lo:.3g}, {hi:.3g}] · {count} inputs")
                show_examples(ds, rows, values, d.tokens, f"sae_band_{lo:.4f}", width=60)
    st.markdown("**Nearest features** (decoder cosine): click a row to open it")
    ev = show_table(d.nearest, key=f"sae_near_{d.index}", on_select="rerun", selection_mode="single-row",
                    column_config={"cosine": st.column_config.NumberColumn(format="%.3f"),
                                   "density": st.column_config.NumberColumn(format="%.4f")})
    rows = ev.selection.rows if ev else []
    if rows:
        pick("sae_feature", int(d.nearest["feature"].iloc[rows[0]]))


def pair_block(pair, ds) -> None:
    """One matched pair: both features' top inputs side by side."""
    if pair.note:
        st.info(md(pair.note))
    st.markdown(f"**A feature {pair.feature_a}** ↔ **B feature {pair.feature_b}** · correlation "
                f"{pair.correlation:.3f} · " + ("shared" if pair.shared else "model-specific"))
    cols = st.columns(2)
    for col, tag, f, density, rows, values, tokens in (
            (cols[0], "A", pair.feature_a, pair.density_a, pair.rows_a, pair.values_a, pair.tokens_a),
            (cols[1], "B", pair.feature_b, pair.density_b, pair.rows_b, pair.values_b, pair.tokens_b)):
        with col:
            st.markdown(f"{tag} · feature {f} · density {100 * density:.2f}%")
            show_examples(ds, rows, values, tokens, f"sae_pair_{tag}", width=56)
