"""Training dynamics page: each checkpoint of a training run against the final model, layer by
layer, and a seeds × seeds matrix. Widgets -> spec -> the view's sections (as jobs) -> figures."""
import streamlit as st

from analysis.errors import UserInputError
from analysis.similarity import MEASURES
from analysis.figures import sweep as figs
from pages._jobs import run_sections
from pages._share import base_url, current_spec
from analysis.safe_text import md
from pages._shell import halt, load_model, model_refs, prepare, show_error, show_figure, show_table
from pages._widgets import widget

view, ctx = prepare("training-dynamics", pair=False)
P = {p.key: p for p in view.params}
st.caption(f"{md(ctx.ds.describe())} (the sidebar's dataset; models A and B are not used here)")


def options(*keys: str) -> list[str]:
    """The models a picker offers, plus those the link names (an hf revision, another server's upload)."""
    spec = current_spec()
    named = [v for k in keys for v in ([spec.params[k]] if isinstance(spec.params[k], str) else spec.params[k] or [])]
    return list(dict.fromkeys(model_refs() + named))


def layers_of(ref: str) -> list[str]:
    try:
        return list(load_model(ref).layers)
    except UserInputError as exc:
        show_error(str(exc))
        halt()


# ------------------------------------------------------------------ checkpoints against the final model
st.subheader("Checkpoints against the final model")
c1, c2, c3 = st.columns([2, 1.2, 1.2])
with c1:
    widget(P["final"], options("final"))
with c2:
    widget(P["measure"])
with c3:
    widget(P["pooling"])
widget(P["checkpoints"], options("checkpoints"))
with st.expander("Layers", expanded=False):
    widget(P["layers"], layers_of(current_spec().params["final"]))
spec = current_spec()
result, ready = run_sections(view, spec, ["dynamics"], what="every checkpoint against the final model")
if ready:
    d = result.dynamics
    st.caption(f"Each cell: the {md(MEASURES[d.measure].label)} of a layer in a checkpoint and the same layer in "
               "the final model, on the same samples. Checkpoints are ordered by training step where it is known.")
    show_figure(figs.dynamics_heatmap(result, spec.params), "dynamics_heatmap")
    show_figure(figs.dynamics_lines(result, spec.params), "dynamics_lines")
    show_table(d.values, "dynamics_table", "Each checkpoint vs the final model", hide_index=False)
    with st.expander("Open a checkpoint against the final model on the Similarity page"):
        base = base_url()
        for cell, name in zip(view.module.dynamics_cells(view.context(spec)), d.values.columns):
            st.markdown(f"[{md(name)}: {md(cell.spec.params['a'])} vs {md(cell.spec.params['b'])}]"
                        f"({cell.spec.url(base)})")

# ------------------------------------------------------------------ seeds
st.divider()
st.subheader("Seeds")
widget(P["seeds"], options("seeds"))
first = (current_spec().params["seeds"] or [None])[0]
if first is None:
    st.info("Choose at least one seed model.")
    halt()
seed_layers = layers_of(first)
widget(P["seed_layer"], seed_layers, default=seed_layers[len(seed_layers) // 2])
spec = current_spec()
seeds, ready = run_sections(view, spec, ["seeds"], what="the seeds × seeds matrix")
if ready:
    st.caption("How much networks trained from different seeds agree at one layer (1 = the same representation "
               "up to the measure's invariances).")
    show_figure(figs.seeds_matrix(seeds, spec.params), "seeds_matrix")
