"""Models page: both models side by side (summary, layer table, score on the chosen data) and a
gallery of samples with each model's prediction or reconstruction. Widgets -> spec -> view."""
import numpy as np
import pandas as pd
import streamlit as st

from analysis import figures
from pages._jobs import run_sections
from analysis.safe_text import md
from pages._shell import prepare, show_table
from pages._share import current_spec

N_SAMPLES_SHOWN = 12
METRIC_NAMES = {"accuracy": "Accuracy", "mse": "Recon. MSE", "knn_accuracy": "k-NN probe"}


def compact(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def model_column(card) -> None:
    st.markdown(f"**{md(card.kind.capitalize())}** · {md(card.architecture)}")
    m2, m3 = st.columns(2)
    m2.metric("Parameters", compact(card.parameters), help=f"{card.parameters:,} parameters")
    label = METRIC_NAMES[card.metric]
    shown = "n/a" if card.value is None else (f"{card.value:.4f}" if card.metric == "mse" else f"{100 * card.value:.1f}%")
    m3.metric(label, shown, help=card.explanation)
    st.caption(" · ".join([f"sha256 {card.sha256[:12]}"] + [md(f) for f in card.facts]))
    if not card.hookable:
        st.info("TorchScript modules cannot take forward hooks, so only the model's output is available as a "
                "layer. For per-layer analyses upload safetensors weights of a zoo architecture or an embeddings file.")
    table = card.layers.assign(parameters=card.layers["parameters"].map("{:,}".format)).set_index("layer")
    show_table(table, f"layer_table_{card.ref}", f"Layers of {card.ref}", static=True)


view, ctx = prepare("models", pair=False)
ds = ctx.ds
st.caption(md(ds.describe(int(current_spec().params["n"]))))
spec = current_spec()
cards = {}
cols = st.columns(2, gap="large")
for slot, col in (("A", cols[0]), ("B", cols[1])):
    with col:
        st.subheader(f"Model {slot}")
        st.markdown(f"`{spec.params[slot.lower()].replace('`', '')}`")
        result, ready = run_sections(view, spec, [f"model_{slot.lower()}"], what=f"model {slot} on {len(ds)} samples")
        if ready:
            cards[slot] = getattr(result, f"model_{slot.lower()}")
            model_column(cards[slot])

if cards:
    st.divider()
    st.subheader("Samples")
    show = np.sort(np.random.default_rng(spec.params["seed"]).choice(len(ds), min(N_SAMPLES_SHOWN, len(ds)), replace=False))

    def pred_name(card, i):
        if card.predictions is None:
            return "–"
        code = int(card.predictions[i])
        return ds.label_names[code] if ds.label_names and code < len(ds.label_names) else str(code)

    if ds.kind == "image":
        # Plain images, not a Plotly figure: the page loads faster and the gallery needs no interaction.
        captions = []
        for i in show:
            parts = [f"label {ds.label_of(i)}" if ds.labels is not None else f"row {int(ds.indices[i])}"]
            for slot, card in cards.items():
                if card.predictions is not None:
                    mark = "" if ds.labels is None else (" ✓" if int(card.predictions[i]) == int(ds.labels[i]) else " ✗")
                    parts.append(f"{slot}: {pred_name(card, i)}{mark}")
            captions.append(" · ".join(parts))
        st.caption("Inputs (label, and each classifier's prediction: ✓ correct, ✗ wrong)")
        st.image([figures.pixel_tile(ds.render(i)["image"]) for i in show], caption=captions, width=88)
        for slot, card in cards.items():
            if card.reconstructions is not None:
                st.caption(f"Model {slot} reconstructions (per-pixel squared error)")
                st.image([figures.pixel_tile(card.reconstructions[i].reshape(ds.image_shape)) for i in show],
                         caption=[f"error {card.per_row_error[i]:.3f}" for i in show], width=88)
    else:
        table = {"row": [int(ds.indices[i]) for i in show]}
        table["sample"] = [ds.hover_text(i) if ds.kind == "text" else np.array2string(
            np.asarray(ds.inputs[i]), precision=2, threshold=8) for i in show]
        if ds.labels is not None:
            table["label"] = [ds.label_of(i) for i in show]
        for slot, card in cards.items():
            if card.predictions is not None:
                table[f"{slot} prediction"] = [pred_name(card, i) for i in show]
        show_table(pd.DataFrame(table), "samples_table", "Samples and predictions")
        if any(card.metric == "knn_accuracy" for card in cards.values()):
            st.caption("Text encoders have no classifier head: their prediction is the majority label of the "
                       "5 nearest other sentences in the last layer (cosine), a probe of how the layer groups topics.")
    both = [card for card in cards.values() if card.predictions is not None]
    if len(both) == 2:
        st.metric("A and B predict the same label", f"{100 * float(np.mean(both[0].predictions == both[1].predictions)):.1f}% of samples")
