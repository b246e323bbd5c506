"""Models page: both models side by side — summary, layer table, score on the chosen data,
and sample inputs with each model's prediction (or reconstruction)."""
import numpy as np
import streamlit as st

from analysis import evaluate as evaluate_mod
from analysis import figures
from analysis import models as models_mod
from analysis.errors import UserInputError
from analysis.safe_text import md, md_code
from pages._shell import Progress, load_dataset, load_model, selection, show_table, user_errors

N_SAMPLES_SHOWN = 12
METRIC_NAMES = {"accuracy": "Accuracy", "mse": "Recon. MSE", "knn_accuracy": "k-NN probe"}


@st.cache_data(show_spinner=False, max_entries=64)
def cached_evaluation(ref: str, data_key: tuple, _model, _ds):
    return evaluate_mod.evaluate(_model, _ds)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_layer_table(ref: str, data_key: tuple, _model, _ds):
    return models_mod.layer_table(_model, _ds)


def compact(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


sel = selection()
st.title("Models")
ds = None
with user_errors("Dataset"):
    ds = load_dataset(sel.dataset, sel.n, sel.seed, sel.split)
if ds is None:
    st.stop()
st.caption(md(ds.describe()))
data_key = (sel.dataset, sel.n, sel.seed, sel.split, ds.sha256)

loaded: dict[str, tuple] = {}
cols = st.columns(2, gap="large")
for slot, ref, col in (("A", sel.model_a, cols[0]), ("B", sel.model_b, cols[1])):
    with col:
        st.subheader(f"Model {slot}")
        st.markdown(md_code(ref))
        try:
            with st.spinner(f"Loading {md(ref)}…"):
                model = load_model(ref)
            model.check_data(ds)
        except UserInputError as exc:
            st.error(md(exc))
            continue
        bar = Progress(f"Running {md(ref)} on {len(ds)} samples…")
        with user_errors(f"Model {slot}"):
            ev = cached_evaluation(ref, data_key, model, ds)
            table = cached_layer_table(ref, data_key, model, ds)
            bar.done()
            loaded[slot] = (model, ev)
            m2, m3 = st.columns(2)
            m2.metric("Parameters", compact(model.num_parameters()), help=f"{model.num_parameters():,} parameters")
            label = METRIC_NAMES[ev.metric]
            if ev.value is None:
                m3.metric(label, "n/a", help=ev.explanation)
            elif ev.metric == "mse":
                m3.metric(label, f"{ev.value:.4f}", help=ev.explanation)
            else:
                m3.metric(label, f"{100 * ev.value:.1f}%", help=ev.explanation)
            st.markdown(f"**{model.kind.capitalize()}** · {md(model.architecture)}")
            facts = [f"sha256 `{model.sha256[:12]}`"]
            for k, name in (("seed", "seed"), ("epochs", "epochs"), ("train_samples", "training samples")):
                if model.info.get(k) is not None:
                    facts.append(f"{name} {md(model.info[k])}")
            if model.info.get("note"):
                facts.append(md(model.info["note"]))
            st.caption(" · ".join(facts))
            if getattr(model, "scripted", False):
                st.info("TorchScript modules cannot take forward hooks, so only the model's output is "
                        "available as a layer. For per-layer analyses upload safetensors weights of a zoo "
                        "architecture or an embeddings file.")
            # A static table: a handful of rows, and it draws faster than the interactive grid.
            show_table(table.assign(parameters=table["parameters"].map("{:,}".format)).set_index("layer"),
                       f"layer_table_{slot}", f"Layers of {ref}", static=True)

if not loaded:
    st.stop()

st.divider()
st.subheader("Samples")
rng = np.random.default_rng(sel.seed)
show = np.sort(rng.choice(len(ds), size=min(N_SAMPLES_SHOWN, len(ds)), replace=False))


def pred_name(ev, i):
    if ev.predictions is None:
        return "–"
    code = int(ev.predictions[i])
    return ds.label_names[code] if ds.label_names and code < len(ds.label_names) else str(code)


if ds.kind == "image":
    # Plain images, not a Plotly figure: the page loads faster and the gallery needs no interaction.
    captions = []
    for i in show:
        parts = [f"label {ds.label_of(i)}" if ds.labels is not None else f"row {int(ds.indices[i])}"]
        for slot, (model, ev) in loaded.items():
            if ev.predictions is not None:
                mark = "" if ds.labels is None else (" ✓" if int(ev.predictions[i]) == int(ds.labels[i]) else " ✗")
                parts.append(f"{slot}: {pred_name(ev, i)}{mark}")
        captions.append(md(" · ".join(parts)))
    st.caption("Inputs (label, and each classifier's prediction: ✓ correct, ✗ wrong)")
    st.image([figures.pixel_tile(ds.render(i)["image"]) for i in show], caption=captions, width=88)
    for slot, (model, ev) in loaded.items():
        if ev.reconstructions is not None:
            errs = [f"error {ev.per_row_error[i]:.3f}" for i in show]
            st.caption(f"Model {slot} reconstructions (per-pixel squared error)")
            st.image([figures.pixel_tile(ev.reconstructions[i].reshape(ds.image_shape)) for i in show],
                     caption=errs, width=88)
else:
    import pandas as pd

    table = {"row": [int(ds.indices[i]) for i in show]}
    table["sample"] = [ds.hover_text(i) if ds.kind == "text" else np.array2string(
        np.asarray(ds.inputs[i]), precision=2, threshold=8) for i in show]
    if ds.labels is not None:
        table["label"] = [ds.label_of(i) for i in show]
    for slot, (model, ev) in loaded.items():
        if ev.predictions is not None:
            table[f"{slot} prediction"] = [pred_name(ev, i) for i in show]
    show_table(pd.DataFrame(table), "samples_table", "Samples and predictions")
    if any(ev.metric == "knn_accuracy" for _, ev in loaded.values()):
        st.caption("Text encoders have no classifier head: their prediction is the majority label of the "
                   "5 nearest other sentences in the last layer (cosine), a probe of how the layer groups topics.")

both = [ev for _, ev in loaded.values() if ev.predictions is not None]
if len(both) == 2:
    agree = float(np.mean(both[0].predictions == both[1].predictions))
    st.metric("A and B predict the same label", f"{100 * agree:.1f}% of samples")
