"""Vector field page: widgets -> spec -> the view's sections (as jobs) -> figures. No numerics here:
the autoencoder, its reference set and every number come from analysis.views.vector_field."""
import numpy as np
import streamlit as st

from analysis import data as data_mod
from analysis.errors import UserInputError
from analysis.figures import vector_field as figs
from analysis.views import vector_field as V
from pages._jobs import run_sections
from analysis.safe_text import md
from pages._shell import halt, prepare, show_error, show_figure, show_table
from pages._share import current_spec
from pages._widgets import widget

view, ctx = prepare("vector-field", pair=False)
P = {p.key: p for p in view.params}
st.caption("An autoencoder E, D maps its latent space to itself: f(z) = E(D(z)). Iterating z ← f(z) from "
           "z₀ = E(x) is a trajectory along the field V(z) = f(z) − z; it ends at an attractor, a fixed point where "
           "the Jacobian of f has spectral radius < 1 (Fumero et al., *Navigating the Latent Space Dynamics of "
           "Neural Models*, 2025). Attractors that decode to training images signal memorization.")

# ------------------------------------------------------------------ which autoencoder, parameters
choice = V.choice(ctx)
c1, c2 = st.columns([2, 3])
widget(P["vf_model"], choice.options, container=c1)
if choice.own:
    c2.caption("Sidebar models that are autoencoders: " + ", ".join(md(r) for r in choice.options) +
               ". To analyse another autoencoder, set it as model A.")
cols = st.columns(5)
widget(P["vf_tol"], container=cols[0], kind="selectbox")
for col, key in zip(cols[1:], ("vf_steps", "vf_merge", "vf_starts", "vf_noise")):
    widget(P[key], container=col, **({"format": "%.4f"} if key == "vf_merge" else {}))
widget(P["vf_view"], kind="radio")
spec = current_spec()
ref = spec.params["vf_model"]
result, ready = run_sections(view, spec, ["dynamics"], what=f"the trajectories and attractors of {ref}")
if not ready:
    halt()
d = result.dynamics
dyn = d.dyn
st.caption(f"Autoencoder {md(d.model)} · data: {md(d.reference)} · seed {spec.params['seed']} (sidebar) "
           "picks the starts.")
m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Attractors (training starts)", int(dyn.counts[0]),
          help=f"Distinct end points of {len(dyn.start_index)} training starts under the merge rule "
               f"cosine > {spec.params['vf_merge']:g}.")
m2.metric("From held-out · noise starts", f"{int(dyn.counts[1])} · {int(dyn.counts[2])}")
m3.metric("Converged", f"{100 * dyn.converged_fraction[0]:.0f}%",
          help="Training starts that met the tolerance within the step cap (held-out, noise: "
               f"{100 * dyn.converged_fraction[1]:.0f}%, {100 * dyn.converged_fraction[2]:.0f}%).")
m4.metric("Largest spectral radius", f"{dyn.spectral_radius.max():.3f}" if len(dyn.spectral_radius) else "–",
          help="Of the Jacobian of f at each attractor (torch.func). Below 1: locally contracting.")
m5.metric(f"Memorization (null {dyn.memorization.null_mean:.3f})", f"{dyn.memorization.coefficient:.3f}",
          help="Mean cosine of each decoded attractor to its most similar training image; in brackets the same "
               "for held-out images.")
if len(dyn.unstable):
    st.warning(f"{len(dyn.unstable)} fixed point(s) have Jacobian spectral radius ≥ 1 (not attractors): "
               f"{', '.join(str(i) for i in dyn.unstable[:10])}. They are drawn as red crosses.")


# ------------------------------------------------------------------ the five views
def field_view():
    c1, c2, c3 = st.columns([1, 1, 3])
    background = widget(P["vf_bg"], container=c1, kind="radio")
    widget(P["vf_grid"], container=c2, kind="selectbox")
    widget(P["vf_samples"], [str(i) for i in range(len(d.held_out))], container=c3, max_selections=V.MAX_SAMPLES,
           on_change=_at_least_one_sample)
    out, ready = run_sections(view, current_spec(), ["dynamics", "field", "paths"], what=f"the field of {d.model} on a grid")
    if not ready:
        return
    show_figure(figs.field_figure(out, background), "vf_field_fig")
    if out.field.plane.is_pca:
        st.caption("PCA view: V is evaluated at points of the plane (the training latents' mean plus two principal "
                   "directions) and projected onto it; codes off the plane move differently, so trajectories and "
                   "attractors (projected) need not follow the streamlines. Basins: the attractor each grid point "
                   "reaches when iterated in the full latent space.")
    else:
        st.caption("Exact: the latent space is 2-D. Stars are attractors found from the training starts; each "
                   "trajectory starts at the open circle.")
    if len(out.paths.names):
        show_table(figs.trajectory_table(out), "vf_traj_table", title=f"Trajectories of held-out samples · {d.model}")
    st.subheader("Convergence")
    show_figure(figs.convergence_figure(result), "vf_convergence_fig")
    st.caption(f"Residual of every training start's trajectory; a line ends where that start stopped. Median "
               f"{int(np.median(dyn.steps))} steps, {int((~dyn.converged).sum())} of {len(dyn.steps)} hit the cap.")


def _at_least_one_sample():
    """An empty choice has no form in a link (it would reopen as the first three): keep one at least."""
    if not st.session_state.get("vf_samples"):
        st.session_state["vf_samples"] = list(V.FIRST_SAMPLES)
        st.toast("At least one trajectory is drawn: hide one by clicking it in the figure's legend.")


def attractors_view():
    mem = dyn.memorization
    c1, c2 = st.columns([2, 3])
    with c1:
        show_figure(figs.memorization_figure(result), "vf_memorization_fig")
        a, b, c = st.columns(3)
        a.metric("Memorization", f"{mem.coefficient:.3f}", help=f"Mean over attractors; sd {mem.sd:.3f}.")
        b.metric("Null (held-out)", f"{mem.null_mean:.3f}", help=f"Mean over held-out images; sd {mem.null_sd:.3f}.")
        c.metric("Dictionary rank", int(dyn.rank),
                 help="Singular vectors of the decoded attractors explaining 90% of their energy.")
        verdict = ("above" if mem.coefficient > mem.null_mean + mem.null_sd else
                   "below" if mem.coefficient < mem.null_mean - mem.null_sd else "within one sd of")
        st.caption(f"The attractors' similarity to the training set is **{verdict}** the held-out null. Near 1: the "
                   "attractors are training images (memorization); at or below the null: they are prototypes that "
                   "generalise.")
    with c2:
        st.subheader("Attractor gallery")
        st.caption(f"{len(dyn.attractors)} attractors of {md(d.model)}, largest basins first (up to 16): each "
                   "decoded attractor (left) beside its most similar training image (right).")
        gallery = figs.attractor_gallery(result)
        cols = st.columns(4)
        for j, (image, caption) in enumerate(gallery):
            cols[j % 4].image(image, width=120, caption=caption)
    show_table(figs.attractor_table(result).round(4), "vf_attractor_table", title=f"Attractors of {d.model}")


def regimes_view():
    st.caption("Each zoo model's memorization (with its null), distinct attractors from training, held-out and noise "
               "starts, dictionary rank, and the Chamfer similarity of its decoded attractors to the last model's, "
               "under the parameters above. Each model's analysis is kept in the result store.")
    for name, heading in (("regimes_bottleneck", "Across bottleneck sizes"),
                          ("regimes_epochs", f"Throughout training ({V.CHECKPOINTS_OF})")):
        st.subheader(heading)
        out, ready = run_sections(view, spec, [name], auto_s=0.5, what=heading.lower())
        if ready:
            fig = figs.regime_figure(getattr(out, name))
            show_figure(fig, f"vf_{name}_fig")
            show_table(figs.regime_table(getattr(out, name)), f"vf_{name}_table", title=fig.layout.title.text,
                       static=True)


def ood_view():
    c1, c2 = st.columns([1, 2])
    widget(P["vf_ood_n"], container=c1)
    _ood_upload(c2)
    out, ready = run_sections(view, current_spec(), ["dynamics", "ood"], what=f"the OOD scores of {d.model}")
    if not ready:
        return
    if out.ood.problem:
        show_error(out.ood.problem)
        return
    st.markdown("**Which score wins on this data:** " + md(out.ood.verdict))
    show_figure(figs.ood_figure(out), "vf_ood_fig")
    show_table(figs.ood_wide_table(out).round(4), "vf_ood_table", title=f"OOD detection by {d.model}: AUROC and FPR95")
    st.caption("Trajectory score (the paper's): mean Euclidean distance from every point of the trajectory z₀ … z* to "
               "the nearest training attractor. Reconstruction error: mean squared error of D(E(x)). AUROC: "
               "out-of-distribution as positive, higher score = more unusual (0.5 is chance). FPR95: the fraction "
               "of OOD inputs accepted at the threshold that keeps 95% of the in-distribution inputs (lower is "
               "better).")


def _ood_upload(container) -> None:
    """An uploaded OOD set becomes the spec's ``vf_ood_set``, in the session and the address (it is
    stored by content hash, so a link keeps it)."""
    current = current_spec().params["vf_ood_set"]
    if current:
        container.caption(f"Your OOD set: {md(current)}")
        if container.button("Remove it", key="vf_ood_remove"):
            st.session_state.pop("vf_ood_set", None)
            if "vf_ood_set" in st.query_params:
                del st.query_params["vf_ood_set"]
            st.rerun()
    file = container.file_uploader("Your own OOD set (.npy / .npz / .csv / .parquet, one input per row)",
                                   key="vf_ood_upload")
    if file is None or st.session_state.get("_vf_ood_done") == file.file_id:
        return
    try:
        uploaded = data_mod.upload(file.getvalue(), file.name)
        V.ood_upload(uploaded, d.n_features)
    except UserInputError as exc:
        show_error(f"Uploaded OOD set: {exc}")
        return
    st.session_state["_vf_ood_done"] = file.file_id
    st.session_state["vf_ood_set"] = st.query_params["vf_ood_set"] = uploaded
    st.rerun()


def probing_view():
    c1, _ = st.columns([1, 3])
    widget(P["vf_atoms"], container=c1)
    out, ready = run_sections(view, current_spec(), ["dynamics", "probing"], what="data-free probing")
    if not ready:
        return
    if out.probing.problem:
        show_error(out.probing.problem)
        return
    probe = out.probing.probe
    c1, c2 = st.columns([2, 3])
    with c1:
        show_figure(figs.probe_figure(out), "vf_probe_fig")
    with c2:
        a, b = st.columns(2)
        a.metric("Noise attractors (dictionary)", probe.atoms)
        b.metric("Error ratio (attractors / random)", f"{probe.ratio:.2f}",
                 help=f"Mean relative reconstruction error of {V.PROBE_ROWS} held-out images; below 1: the "
                      "attractors reached from noise, without any data, carry structure of the data.")
        st.caption(f"Data-free probing: {spec.params['vf_noise']} Gaussian-noise inputs are encoded and iterated; the "
                   f"{probe.atoms} distinct attractors, decoded, form a dictionary. Each held-out image is rebuilt "
                   f"from {probe.n_nonzero} of its atoms by orthogonal matching pursuit, and from as many atoms of a "
                   "random orthonormal basis of the same size (the baseline).")
        images, captions = figs.noise_gallery(out)
        st.image(images, width=48, caption=captions)


{"field": field_view, "attractors": attractors_view, "regimes": regimes_view, "ood": ood_view,
 "probing": probing_view}[spec.params["vf_view"]]()
