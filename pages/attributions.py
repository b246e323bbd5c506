"""Attributions page: LRP relevance of model A and model B side by side, for digits classifiers
(pixel maps) and text encoders (token relevance for a topic probe or a sentence similarity), with
conservation, agreement between the two maps, faithfulness curves and relevance per hidden unit."""
import numpy as np
import streamlit as st

from analysis import lrp
from analysis import lrp_figures as lf
from analysis.errors import UserInputError
from analysis.safe_text import md, md_code
from pages._shell import Progress, pair_or_stop, selection, show_figure, show_table, user_errors

CHOICES = list(lrp.RULES) + list(lrp.COMPOSITES)
EPSILONS = list(lrp.PAGE_EPSILONS)
GAMMAS = list(lrp.PAGE_GAMMAS)
GALLERY = 24
FAITH_N = 100


@st.cache_data(show_spinner=False, max_entries=64)
def cached_attribution(ref: str, rows_key: str, target, rule: str, eps: float, gamma: float, layer,
                       _model, _inputs, _labels):
    return lrp.attribute(_model, _inputs, target, rule=rule, epsilon=eps, gamma=gamma, layer=layer, labels=_labels)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_text_attribution(ref: str, texts: tuple, target: str, rule: str, eps: float, gamma: float, layer,
                            data_key: tuple, second: str, _model, _ds):
    if target == "similarity":
        return lrp.explain_similarity(_model, texts[0], second, rule=rule, epsilon=eps, gamma=gamma, layer=layer)
    probe = lrp.fit_topic_probe(_model, _ds)
    return lrp.attribute(_model, list(texts), probe.target(target), rule=rule, epsilon=eps, gamma=gamma,
                         layer=layer)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_probe(ref: str, data_key: tuple, _model, _ds):
    return lrp.fit_topic_probe(_model, _ds)


def rule_controls():
    c1, c2, c3 = st.columns([2, 1, 1])
    rule = c1.selectbox("Rule or composite", CHOICES, key="at_rule", bind="query-params",
                        help="\n".join(f"- **{k}**: {v}" for k, v in lrp.DESCRIPTIONS.items()))
    eps = c2.selectbox("epsilon", EPSILONS, index=1, key="at_eps", bind="query-params",
                       help="Stabiliser of the epsilon rule (LRP-0 as it goes to 0); larger values keep only "
                            "the strongest contributions.")
    gamma = c3.selectbox("gamma", GAMMAS, index=2, key="at_gamma", bind="query-params",
                         help="Used by the gamma rule and the epsilon-gamma-box composite (convolutions).",
                         disabled=rule not in ("gamma", "epsilon-gamma-box"))
    st.caption(lrp.DESCRIPTIONS[rule])
    return rule, float(eps), float(gamma)


def conservation_rows(att, names):
    return {"sample": names, "explained output f": np.round(att.output, 4),
            "sum of relevance": np.round(att.relevance_sum, 4), "ΣR / f": np.round(att.conservation, 4)}


# ====================================================================== images (classifiers)
def image_view(sel, ds, models, data_key, rule, eps, gamma):
    for slot, m in models.items():
        if m.kind != "classifier":
            st.error(f"Model {slot} ({md(m.ref)}) is a {m.kind}. LRP on images explains a class score: pick two "
                     "classifiers (zoo:mlp-*, zoo:cnn-*), or the 'text' dataset with hf:minilm models.")
            st.stop()
    c1, c2, c3 = st.columns([1.2, 1, 3])
    target = c1.selectbox("Target", list(lrp.TARGETS), key="at_target", bind="query-params",
                          help="predicted: each model's own top class; true: the label; class: any class")
    n_classes = len(ds.label_names) if ds.label_names else 10
    cls = c2.number_input("Class", 0, n_classes - 1, 0, key="at_class", bind="query-params",
                          disabled=target != "class")
    gallery = list(range(min(GALLERY, len(ds))))
    picked = c3.multiselect("Samples (positions in the gallery below)", gallery, default=gallery[:6],
                            key="at_samples", bind="query-params", max_selections=12)
    with st.expander("Gallery", expanded=True):
        from analysis import figures

        st.image([figures.pixel_tile(ds.render(i)["image"]) for i in gallery],
                 caption=[md(f"#{i} · {ds.label_of(i)}") for i in gallery], width=56)
        up = st.file_uploader("Or upload an image (it is turned grey, resized to 8x8 and scaled to [0, 1])",
                              type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key="at_upload", max_upload_size=5)
    rows = [int(i) for i in picked]
    x = np.asarray(ds.inputs, dtype=np.float32)[rows] if rows else np.zeros((0, ds.n_features), np.float32)
    labels = None if ds.labels is None else ds.labels[rows]
    names = [f"#{i}" for i in rows]
    if up is not None:
        with user_errors("Upload"):
            x = np.concatenate([x, lrp.image_from_upload(up.getvalue(), up.name, ds.image_shape)])
            names.append("upload")
            if labels is not None:
                labels = np.concatenate([labels, [-1]])
    if not len(x):
        st.info("Pick at least one sample in the gallery (or upload an image).")
        st.stop()
    if target == "true" and up is not None:
        st.caption("The uploaded image has no label: its 'true' target is each model's prediction.")
    tgt = int(cls) if target == "class" else target
    rows_key = ",".join(names) + (f"|{up.file_id}" if up is not None else "")

    maps_area, dataset_area, hidden_area = st.container(), st.container(), st.container()
    with hidden_area:
        layers = layer_pickers(models)
    atts = {}
    with maps_area:
        cols = st.columns(2, gap="large")
        for (slot, m), col in zip(models.items(), cols):
            with col:
                st.subheader(f"Model {slot}")
                st.caption(f"{md_code(m.ref)} · {md(m.architecture)}")
                try:
                    att = cached_attribution(m.ref, rows_key, tgt, rule, eps, gamma, layers[slot], m, x, labels)
                except UserInputError as exc:
                    st.error(md(exc))
                    continue
                atts[slot] = att
                titles = [f"{n} → class {int(c)}" for n, c in zip(names, att.target)]
                fig = lf.relevance_grid(x, att.input_relevance, titles, ds.image_shape or (8, 8),
                                        "input, and its relevance below (red: for the class, blue: against)")
                show_figure(fig, key=f"at_maps_{slot}")
                show_table(conservation_rows(att, names), key=f"at_cons_{slot}")
                for note in att.notes:
                    st.caption(note)
        if len(atts) < 2:
            st.stop()
        st.caption("Each map has its own colour scale (±its largest |relevance|). The sum of relevance equals "
                   "the explained output for conservative rules on bias-free layers; biases absorb the rest.")

    with dataset_area:
        # ------------------------------------------------------------------ dataset level
        st.divider()
        st.subheader("Over the dataset")
        bar = Progress("Relevance of every sample for A and B…")
        target_key = str(int(cls)) if target == "class" else target
        try:
            full = {slot: lrp.dataset_relevance(m, ds, target_key, rule, eps, gamma,
                                                progress=lambda f, msg, k=k: bar(0.5 * (k + f), msg))
                    for k, (slot, m) in enumerate(models.items())}
        except UserInputError as exc:
            st.error(md(exc))
            st.stop()
        bar.done()
        summary = lrp.pair_summary(full["A"], full["B"])
        per_sample = summary["agreement"]
        shown = lrp.rank_agreement(atts["A"].input_relevance, atts["B"].input_relevance)
        m1, m2, m3 = st.columns(3)
        m1.metric("Rank agreement of A and B (dataset mean)", f"{np.nanmean(per_sample):.3f}",
                  help=f"Spearman correlation between A's and B's relevance maps of each of the {len(ds)} samples, "
                       "averaged. 1: the same pixel ranking; 0: unrelated.")
        m2.metric("Shown samples (mean)", f"{np.nanmean(shown):.3f}" if np.isfinite(shown).any() else "n/a")
        m3.metric("Median ΣR / f (A · B)", f"{summary['conservation'][0]:.3f} · {summary['conservation'][1]:.3f}",
                  help="Sum of relevance over the explained output, median over the samples.")
        c1, c2 = st.columns(2)
        with c1:
            show_figure(lf.agreement_histogram(per_sample, dict(zip(names, shown))), key="at_agree")
        with c2:
            pts = {f"{s} · {models[s].ref}": (full[s]["output"], summary["sums"][k]) for k, s in enumerate(full)}
            show_figure(lf.conservation_figure(pts), key="at_conservation")
        show_table({"sample": names, "Spearman ρ (A vs B)": np.round(shown, 3)}, key="at_agree_table")

        st.subheader("Faithfulness: pixel flipping")
        st.caption(f"The first {min(FAITH_N, len(ds))} samples: pixels are set to 0 in order of relevance (most "
                   "relevant first) and the explained score is recorded. AOPC is the mean drop over the steps: the "
                   "larger, the better the ordering finds what the model uses. A random order is the baseline.")
        bar = Progress("Pixel flipping…")
        faith = {}
        for k, (slot, m) in enumerate(models.items()):
            bar(k / 2, f"Pixel flipping for {slot}…")
            faith[slot] = lrp.dataset_faithfulness(m, ds, target_key, rule, eps, gamma, n=FAITH_N)
        bar.done()
        show_figure(lf.faithfulness_figure(faith), key="at_faith")
        if rule == "epsilon":
            st.caption("With epsilon → 0 on a ReLU network LRP is gradient x input, so their curves coincide; "
                       "the composites and z+ order the pixels differently.")
        show_table({"method": ["LRP", "gradient x input", "random"],
                    **{f"AOPC {s}": [round(faith[s].aopc[k], 4) for k in ("lrp", "gradient x input", "random")]
                       for s in faith}}, key="at_aopc")

    # ------------------------------------------------------------------ hidden layer
    with hidden_area:
        unit_view(atts, layers)


def layer_pickers(models) -> dict:
    """The hidden-layer section's header and pickers, in a container drawn at the bottom of the page;
    called before the attributions so one backward pass gives the input and the layer relevance."""
    st.divider()
    st.subheader("Relevance at a hidden layer")
    st.caption("The same backward pass, read at a layer's output: the mean relevance of each unit over the "
               "shown samples (channels of a convolution summed over positions, token outputs over tokens).")
    cols = st.columns(2)
    layers = {}
    for (slot, m), col in zip(models.items(), cols):
        options = m.layers[:-1] or m.layers
        layers[slot] = col.selectbox(f"Layer of {slot}", options, index=len(options) - 1,
                                     key=f"at_layer_{slot.lower()}", bind="query-params")
    return layers


def unit_view(atts, layers):
    units = {s: lrp.unit_relevance(a.layer_relevance, a.mask).mean(0) for s, a in atts.items()
             if a.layer_relevance is not None}
    if units:
        show_figure(lf.unit_relevance_figure(units, {s: f"{s} · {layers[s]}" for s in units}), key="at_units")


# ====================================================================== text encoders
def text_view(sel, ds, models, data_key, rule, eps, gamma):
    c1, c2 = st.columns([1, 2])
    mode = c1.selectbox("Explain", ["topic", "similarity"], key="at_text_target", bind="query-params",
                        help="topic: a linear probe's topic score, fitted on each model's sentence embeddings of "
                             "this dataset. similarity: the cosine similarity of two sentences' embeddings.")
    topics = ["predicted"] + list(ds.label_names or [])
    topic = c2.selectbox("Topic", topics, key="at_topic", bind="query-params", disabled=mode != "topic",
                         help="predicted: each sentence's top topic under the probe")
    gallery = list(range(min(GALLERY, len(ds))))
    picked = st.multiselect("Sentences (row positions)", gallery, default=gallery[:4], key="at_sentences",
                            bind="query-params", max_selections=8,
                            help="; ".join(f"{i}: {md(ds.inputs[i][:40])}" for i in gallery[:8]))
    typed = st.text_input("Or type a sentence", key="at_text", bind="query-params", max_chars=300)
    second = st.text_input("Second sentence (similarity)", value=str(ds.inputs[gallery[-1]]) if gallery else "",
                           key="at_second", bind="query-params", disabled=mode != "similarity", max_chars=300)
    texts = [str(ds.inputs[int(i)]) for i in picked] + ([typed] if typed.strip() else [])
    if mode == "similarity":
        texts = texts[-1:] if typed.strip() else texts[:1]
        if not second.strip():
            st.info("Type the second sentence to compare with.")
            st.stop()
    if not texts:
        st.info("Pick a sentence or type one.")
        st.stop()
    target = "similarity" if mode == "similarity" else topic
    maps_area, rest_area, hidden_area = st.container(), st.container(), st.container()
    with hidden_area:
        layers = layer_pickers(models)
    with maps_area:
        atts, probes = text_maps(models, texts, mode, target, second, rule, eps, gamma, layers, data_key, ds)
    with rest_area:
        text_comparison(models, atts, probes, texts, mode, data_key, ds, (rule, eps, gamma))
    with hidden_area:
        unit_view(atts, layers)


def text_maps(models, texts, mode, target, second, rule, eps, gamma, layers, data_key, ds):
    bar = Progress("Fitting the topic probes and explaining…")
    atts, probes, titles = {}, {}, {}
    cols = st.columns(2, gap="large")
    for k, ((slot, m), col) in enumerate(zip(models.items(), cols)):
        with col:
            st.subheader(f"Model {slot}")
            st.caption(f"{md_code(m.ref)} · {md(m.architecture)}")
            try:
                if mode == "topic":
                    probes[slot] = probe = cached_probe(m.ref, data_key, m, ds)
                    st.caption(f"Topic probe: logistic regression on the mean-pooled last layer, training "
                               f"accuracy {100 * probe.accuracy:.0f}%")
                att = cached_text_attribution(m.ref, tuple(texts), target, rule, eps, gamma, layers[slot],
                                              data_key, second, m, ds)
            except UserInputError as exc:
                st.error(md(exc))
                continue
            finally:
                bar((k + 1) / 2, "Explaining…")
            atts[slot] = att
            if mode == "similarity":
                titles[slot] = [f"sentence 1 · {slot}", f"sentence 2 · {slot}"]
                st.metric("Cosine similarity of the two sentences", f"{att.output[0]:.3f}")
                cons = {"sample": ["the pair"], "explained output f": np.round(att.output, 4),
                        "sum of relevance": np.round(att.conservation * att.output, 4),
                        "ΣR / f": np.round(att.conservation, 4)}
            else:
                titles[slot] = [f"{i + 1} · {slot}: {probe.topics[int(c)]}" for i, c in enumerate(att.target)]
                cons = conservation_rows(att, [f"sentence {i + 1}" for i in range(len(texts))])
            show_table(cons, key=f"at_cons_{slot}")
            for note in att.notes:
                st.caption(note)
    bar.done()
    if len(atts) < 2:
        st.stop()
    heading = ("what in each sentence makes the two alike (red: raises the cosine similarity, blue: lowers it)"
               if mode == "similarity" else "tokens coloured by relevance for the topic score (red: for, blue: against)")
    show_figure(lf.token_pairs(atts, titles, heading), key="at_tokens")
    st.caption("Each row has its own colour scale (±its largest |relevance|). Biases (and the probe's intercept) "
               "take part of the score, so ΣR and f differ; with every bias removed the token relevance sums "
               "to the score exactly (see the tests).")
    return atts, probes


def text_comparison(models, atts, probes, texts, mode, data_key, ds, rule_args):
    a, b = atts["A"], atts["B"]
    if a.input_relevance.shape == b.input_relevance.shape and a.tokens == b.tokens:
        rho = lrp.rank_agreement(a.input_relevance, b.input_relevance, a.mask)
        st.metric("Rank agreement of A's and B's token relevance (mean over the sentences)",
                  f"{np.nanmean(rho):.3f}" if np.isfinite(rho).any() else "n/a",
                  help="Spearman correlation of the two models' token relevance, per sentence, averaged.")
    else:
        st.info("The two models split the sentences into different tokens: their maps cannot be ranked "
                "against each other.")
    if mode == "topic" and st.toggle("Agreement over the whole dataset", key="at_text_dataset",
                                     bind="query-params",
                                     help=f"Explains all {len(ds)} sentences with both models (cached afterwards)."):
        bar = Progress("Explaining every sentence…")
        with user_errors():
            full = [lrp.text_dataset_relevance(m, ds, "predicted", *rule_args,
                                               progress=lambda f, msg, k=k: bar(0.5 * (k + f), msg))
                    for k, m in enumerate(models.values())]
            rho = lrp.text_agreement(*full)
            bar.done()
            st.metric(f"Rank agreement over the {len(ds)} sentences (mean)", f"{np.nanmean(rho):.3f}",
                      help="Each sentence explained for its predicted topic under each model's own probe.")
            show_figure(lf.agreement_histogram(rho), key="at_text_agree")
    if mode == "topic" and st.toggle("Faithfulness: remove tokens, most relevant first", key="at_text_faith",
                                     bind="query-params", help="Runs each model once per removal step."):
        bar = Progress("Token removal…")
        faith = {}
        for k, (slot, m) in enumerate(models.items()):
            bar(k / 2, f"Token removal for {slot}…")
            with user_errors(f"Model {slot}"):
                t = probes[slot].target(atts[slot].target)
                gxi = lrp.gradient_x_input(m, texts, t)
                faith[slot] = lrp.text_faithfulness(m, texts, {"lrp": atts[slot].input_relevance,
                                                               "gradient x input": gxi.input_relevance}, t, steps=6)
        bar.done()
        if faith:
            show_figure(lf.faithfulness_figure(faith, "probe score", "fraction of tokens removed"), key="at_faith")


# ====================================================================== page
sel = selection()
st.title("Attributions")
ds, model_a, model_b, data_key = pair_or_stop(sel)
rule, eps, gamma = rule_controls()
models = {"A": model_a, "B": model_b}
try:
    for m in models.values():
        lrp.check_model(m)
except UserInputError as exc:
    st.error(md(exc))
    st.stop()
if ds.kind == "text":
    text_view(sel, ds, models, data_key, rule, eps, gamma)
elif ds.kind == "image":
    image_view(sel, ds, models, data_key, rule, eps, gamma)
else:
    st.error(f"Dataset '{md(ds.name)}' holds {ds.kind} rows; the Attributions page explains digits classifiers "
             "(the 'digits' dataset) and text encoders (the 'text' dataset).")
