"""Vector field page: the latent dynamics of one autoencoder (Fumero et al. 2025). Iterating
z -> E(D(z)) moves every code to an attractor; the page draws the field, trajectories, attractors
and basins, scores memorization against its null, compares regimes (bottleneck, training epochs),
tests the trajectory score for out-of-distribution detection against reconstruction error, and
probes the attractors reached from noise as a dictionary.

Which autoencoder: model A when it is one, else model B when it is one, else a zoo autoencoder
(zoo:mlp-ae-b2 by default: a 2-D latent, where the field is exact rather than a PCA view). The
"Autoencoder" box lists those choices; the page says when A is not an autoencoder."""
import numpy as np
import streamlit as st

from analysis import data as data_mod
from analysis import figures, models, zoo
from analysis import vector_field as vf
from analysis import vector_field_figures as vff
from analysis.errors import UserInputError
from analysis.safe_text import md, md_code
from pages._shell import Progress, load_dataset, load_model, selection, show_figure, show_table, user_errors

FALLBACK = vf.FALLBACK_MODEL
ZOO_AES = [f"zoo:{e['name']}" for e in models.manifest()["models"] if e["kind"] == "autoencoder"]


def is_autoencoder(ref: str) -> bool:
    if ref.startswith("hf:"):
        return False  # transformers encoders have no decoder; do not load MiniLM to find that out
    if ref.startswith("zoo:"):
        return ref in ZOO_AES
    try:
        return load_model(ref).is_autoencoder
    except UserInputError:
        return False


def reference_sets(model, sel):
    """(training set, held-out set, labels of the training set, label names, description). Zoo
    autoencoders read digits: their own training split and the test split. Any other autoencoder: the
    sidebar's dataset, first half as the reference set, second half held out."""
    if model.n_inputs == 64 or model.ref.startswith("zoo:"):
        tr, te = load_dataset("digits", None, 0, "train"), load_dataset("digits", None, 0, "test")
        return tr, te, "digits: the zoo's 1200 training images (reference) and 597 test images (held out)"
    ds = load_dataset(sel.dataset, sel.n, sel.seed, "test")
    model.check_data(ds)
    half = len(ds) // 2
    tr, te = _rows(ds, slice(0, half)), _rows(ds, slice(half, None))
    return tr, te, (f"{ds.describe()}: first {half} rows as the reference set, the rest held out "
                    "(the page cannot know this model's training data)")


def _rows(ds, rows):
    import copy

    out = copy.copy(ds)
    out.inputs = np.asarray(ds.inputs)[rows]
    out.indices = ds.indices[rows]
    out.labels = None if ds.labels is None else ds.labels[rows]
    out._sha = None
    return out


def pair_tile(a, b, shape):
    """A decoded attractor and a training image side by side, with a white gap."""
    ta, tb = tile(a, shape), tile(b, shape)
    gap = np.full((ta.shape[0], max(4, ta.shape[1] // 8)), 255, dtype=np.uint8)
    return np.hstack([ta, gap, tb])


def tile(vector, shape):
    img = np.asarray(vector, dtype=float)
    if shape is None or int(np.prod(shape)) != img.size:
        side = int(np.sqrt(img.size))
        shape = (side, img.size // side) if side * (img.size // side) == img.size else (1, img.size)
    return figures.pixel_tile(img.reshape(shape))


sel = selection()
st.title("Vector field")
st.caption("An autoencoder E, D maps its latent space to itself: f(z) = E(D(z)). Iterating z ← f(z) from "
           "z₀ = E(x) is a trajectory along the field V(z) = f(z) − z; it ends at an attractor, a fixed point where "
           "the Jacobian of f has spectral radius < 1 (Fumero et al., *Navigating the Latent Space Dynamics of "
           "Neural Models*, 2025). Attractors that decode to training images signal memorization.")

# ------------------------------------------------------------------ which autoencoder
own = [r for r in dict.fromkeys([sel.model_a, sel.model_b]) if is_autoencoder(r)]
options = own + [r for r in ZOO_AES if r not in own]
c1, c2 = st.columns([2, 3])
ref = c1.selectbox("Autoencoder", options, index=0, key="vf_model", bind="query-params",
                   help="Model A (or B) when it is an autoencoder, then the zoo's autoencoders: bottleneck 2, 8 "
                        "and 32 (MLP and conv), the one overfit on 10 images, and mlp-ae-b8's training checkpoints.")
if not own:
    c2.info(f"Model A ({md_code(sel.model_a)}) and model B ({md_code(sel.model_b)}) are not autoencoders, so this page analyses "
            f"a zoo autoencoder. Set model A in the sidebar to an autoencoder (a zoo `…-ae-…` model, or an uploaded "
            "TorchScript module with `encode` and `decode`) to analyse your own.")
else:
    c2.caption(f"Sidebar models that are autoencoders: {', '.join(md_code(r) for r in own)}.")

try:
    model = load_model(ref)
    train_ds, test_ds, about_data = reference_sets(model, sel)
except UserInputError as exc:
    st.error(md(exc))
    st.stop()
train_x = np.asarray(train_ds.inputs, dtype=np.float32)
test_x = np.asarray(test_ds.inputs, dtype=np.float32)
image_shape = train_ds.image_shape

# ------------------------------------------------------------------ parameters (visible: counts depend on them)
p1, p2, p3, p4, p5 = st.columns(5)
tol = p1.selectbox("Tolerance", list(vf.TOLERANCES), index=vf.TOLERANCES.index(vf.DEFAULTS["tol"]), key="vf_tol",
                   bind="query-params", help="A trajectory stops when ||z_t − z_{t−1}||² < tolerance (the paper: "
                                             "1e-6 for small conv autoencoders).")
max_steps = int(p2.number_input("Step cap", 10, 3000, vf.DEFAULTS["max_steps"], step=50, key="vf_steps",
                                bind="query-params", help="Trajectories still moving after this many steps count as "
                                                          "not converged and join no attractor."))
merge_cos = float(p3.number_input("Merge rule (cosine >)", 0.5, 0.99999, vf.DEFAULTS["merge_cos"], step=0.005,
                                  format="%.4f", key="vf_merge", bind="query-params",
                                  help="Two end points are one attractor when their cosine similarity exceeds "
                                       "this (the paper: 0.99). Attractor counts depend on it."))
n_starts = int(p4.number_input("Data starts", 20, 1200, 300, step=50, key="vf_starts", bind="query-params",
                               help="Training images (and as many held-out images) encoded as starts."))
n_noise = int(p5.number_input("Noise starts", 10, 2000, 200, step=50, key="vf_noise", bind="query-params",
                              help="Gaussian-noise inputs N(0, 1) encoded as starts (data-free)."))
st.caption(f"Data: {md(about_data)}. Seed {sel.seed} (sidebar) picks the starts.")

view = st.radio("Show", list(vf.VIEWS), horizontal=True, key="vf_view", bind="query-params",
                help="field: the field, trajectories and basins; attractors: gallery and memorization; regimes: "
                     "across bottlenecks and training epochs; ood: out-of-distribution scores; probing: noise "
                     "attractors as a dictionary.")
params = dict(n_starts=n_starts, n_noise=n_noise, max_steps=max_steps, tol=float(tol), merge_cos=merge_cos,
              seed=sel.seed)

bar = Progress(f"Trajectories of {ref}…")
try:
    dyn = vf.analyse(model, train_x, test_x, progress=bar, **params)
except UserInputError as exc:
    bar.done()
    st.error(md(exc))
    st.stop()
bar.done()

m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Attractors (training starts)", int(dyn.counts[0]),
          help=f"Distinct end points of {len(dyn.start_index)} training starts under the merge rule "
               f"cosine > {merge_cos:g}.")
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


# ------------------------------------------------------------------ views
def field_view():
    c1, c2, c3 = st.columns([1, 1, 3])
    background = c1.radio("Background", list(vf.BACKGROUNDS), horizontal=True, key="vf_bg", bind="query-params",
                          help="speed: ||V(z)|| = ||f(z) − z||; basins: which attractor each grid point reaches.")
    m = int(c2.selectbox("Grid", list(vf.GRID_SIZES), index=1, key="vf_grid", bind="query-params",
                         help="Grid points per axis (each is also iterated to find its basin)."))
    sample_opts = [str(i) for i in range(len(test_ds))]
    picked = c3.multiselect("Trajectories of held-out samples", sample_opts, default=["0", "1", "2"],
                            key="vf_samples", bind="query-params", max_selections=12,
                            help="Row numbers of the held-out set; hover the training latents to see theirs.")
    gbar = Progress("Field and basins on the grid…")
    with user_errors():
        plane, grid = vf.field_view(model, dyn, m=m)
        gbar.done()
        rows = [int(i) for i in picked]
        trajs = vf.trajectories_of(model, test_x[rows], max_steps, tol) if rows else None
        paths = [] if trajs is None else [
            (f"{test_ds.hover_text(r)}", plane.to_plane(trajs.path[: trajs.steps[k] + 1, k]))
            for k, r in enumerate(rows)]
        k_dim = dyn.train_latents.shape[1]
        where = ("the 2-D latent space itself" if not plane.is_pca else
                 f"the PCA plane of the training latents ({k_dim}-D latent; "
                 f"{100 * plane.explained.sum():.0f}% of their variance); field and points projected")
        labels = train_ds.labels
        title = f"{ref} · {where}"
        fig = vff.field_figure(plane, grid, plane.to_plane(dyn.train_latents), labels, train_ds.label_names,
                               plane.to_plane(dyn.attractors), dyn.unstable, paths, background, title,
                               hover=[train_ds.hover_text(i) for i in range(len(train_ds))])
        show_figure(fig, "vf_field_fig")
        if plane.is_pca:
            st.caption("PCA view: V is evaluated at points of the plane (the training latents' mean plus two "
                       "principal directions) and projected onto it; codes off the plane move differently, so "
                       "trajectories and attractors (projected) need not follow the streamlines. Basins: the "
                       "attractor each grid point reaches when iterated in the full latent space.")
        else:
            st.caption("Exact: the latent space is 2-D. Stars are attractors found from the training starts; "
                       "each trajectory starts at the open circle.")
        if trajs is not None:
            show_table({"sample": [p[0] for p in paths], "steps": trajs.steps.tolist(),
                        "converged": trajs.converged.tolist()}, "vf_traj_table")
    st.subheader("Convergence")
    show_figure(vff.convergence_figure(dyn.residuals, float(tol)), "vf_convergence_fig")
    st.caption(f"Residual of every training start's trajectory; a line ends where that start stopped. Median "
               f"{int(np.median(dyn.steps))} steps, {int((~dyn.converged).sum())} of {len(dyn.steps)} hit the cap.")


def attractors_view():
    mem = dyn.memorization
    c1, c2 = st.columns([2, 3])
    with c1:
        st.subheader("Memorization against its null")
        show_figure(vff.memorization_figure(dyn.similarity, dyn.null_similarity, mem.coefficient, mem.null_mean),
                    "vf_memorization_fig")
        a, b, c = st.columns(3)
        a.metric("Memorization", f"{mem.coefficient:.3f}", help=f"Mean over attractors; sd {mem.sd:.3f}.")
        b.metric("Null (held-out)", f"{mem.null_mean:.3f}", help=f"Mean over held-out images; sd {mem.null_sd:.3f}.")
        c.metric("Dictionary rank", int(dyn.rank),
                 help="Singular vectors of the decoded attractors explaining 90% of their energy.")
        verdict = ("above" if mem.coefficient > mem.null_mean + mem.null_sd else
                   "below" if mem.coefficient < mem.null_mean - mem.null_sd else "within one sd of")
        st.caption(f"The attractors' similarity to the training set is **{verdict}** the held-out null. Near 1: the "
                   "attractors are training images (memorization); at or below the null: they are prototypes "
                   "that generalise.")
    with c2:
        st.subheader("Attractor gallery")
        order = np.argsort(-dyn.attractor_sizes)[:16]
        st.caption(f"{dyn.attractors.shape[0]} attractors, largest basins first (up to 16): each decoded attractor "
                   "(left) beside its most similar training image (right).")
        if len(order):
            cols = st.columns(4)
            for j, i in enumerate(order):
                r = int(dyn.nearest[i])
                cols[j % 4].image(pair_tile(dyn.decoded[i], train_x[r], image_shape), width=120,
                                    caption=f"#{i} ({dyn.attractor_sizes[i]} starts) · cos {dyn.similarity[i]:.3f} "
                                          f"to train {md(train_ds.hover_text(r))}")
    show_table({"attractor": np.arange(len(dyn.attractors)), "starts in basin": dyn.attractor_sizes,
                "spectral radius": np.round(dyn.spectral_radius, 4),
                "attractor (radius < 1)": dyn.spectral_radius < 1,
                "cosine to nearest training image": np.round(dyn.similarity, 4),
                "nearest training image": [train_ds.hover_text(int(r)) for r in dyn.nearest]}, "vf_attractor_table")


def regimes_view():
    st.caption("Each model's memorization (with its null), distinct attractors from training, held-out and noise "
               "starts, and dictionary rank, under the parameters above. Zoo models; each analysis is cached.")
    family = "conv-ae" if ref.startswith("zoo:conv-ae") else "mlp-ae"
    groups = [("Across bottleneck sizes", "bottleneck", [(str(b), f"zoo:{family}-b{b}") for b in (2, 8, 32)]),
              ("Throughout training (mlp-ae-b8)", "epoch",
               [(str(e), f"zoo:{name}") for e, name in zoo.checkpoints("mlp-ae-b8")])]
    for title, x, items in groups:
        st.subheader(title)
        loaded = {label: load_model(r) for label, r in items}
        todo = [label for label, m in loaded.items() if not vf.is_cached(m, train_x, test_x, **params)]
        per = 12 if family == "conv-ae" and x == "bottleneck" else 3
        if todo:
            slot = st.empty()
            if not slot.button(f"Compute {len(todo)} model(s) (about {per * len(todo)} s)", key=f"vf_run_{x}"):
                st.info("Not computed yet for these parameters: "
                        f"{', '.join(r for label, r in items if label in todo)}.")
                continue
            slot.empty()  # the results replace the button
        rbar = Progress(f"{title}…")
        with user_errors():
            df = vf.regime(loaded, train_x, test_x, progress=rbar, **params)
            rbar.done()
            df.insert(0, x, [label for label, _ in items])
            df["model"] = [r for _, r in items]
            ref_col = [c for c in df.columns if c.startswith("Chamfer")][0]
            show_figure(vff.regime_figure(df, x, x, ref_col), f"vf_regime_{x}_fig")
            show_table(df.round(4), f"vf_regime_{x}_table")


def ood_view():
    c1, c2 = st.columns([1, 2])
    n_in = int(c1.number_input("In-distribution samples", 20, len(test_x), min(200, len(test_x)), step=20,
                               key="vf_ood_n", bind="query-params",
                               help="Held-out images; each OOD set is made from the same images."))
    upload = c2.file_uploader("Your own OOD set (.npy / .npz / .csv / .parquet, one input per row)",
                              key="vf_ood_upload")
    x_in = test_x[:n_in]
    sets = vf.ood_sets(x_in, seed=sel.seed)
    if upload is not None:
        with user_errors("Uploaded OOD set"):
            _, inputs, _, _ = data_mod.parse_upload(upload.getvalue(), upload.name)
            arr = np.asarray(inputs, dtype=np.float32).reshape(len(inputs), -1)
            if arr.shape[1] != x_in.shape[1]:
                raise UserInputError(f"it has {arr.shape[1]} values per row; this autoencoder reads {x_in.shape[1]}.")
            if not np.isfinite(arr).all():
                raise UserInputError("it contains NaN or inf.")
            sets[f"upload: {upload.name}"] = arr[:2000]
    obar = Progress("Trajectories of every set…")
    with user_errors():
        res = vf.ood_scores(model, dyn.attractors, x_in, sets, max_steps=max_steps, tol=float(tol), progress=obar)
        obar.done()
        st.markdown("**Which score wins on this data:** " + md(vf.ood_verdict(res)))
        show_figure(vff.ood_figure(res.scores), "vf_ood_fig")
        table = res.table.pivot(index="OOD set", columns="score", values=["AUROC", "FPR95"])
        table.columns = [f"{m} · {s}" for m, s in table.columns]
        show_table(table.reset_index().round(4), "vf_ood_table")
        st.caption("Trajectory score (the paper's): mean Euclidean distance from every point of the trajectory "
                   "z₀ … z* to the nearest training attractor. Reconstruction error: mean squared error of D(E(x)). "
                   "AUROC: out-of-distribution as positive, higher score = more unusual (0.5 is chance). FPR95: "
                   "the fraction of OOD inputs accepted at the threshold that keeps 95% of the in-distribution "
                   "inputs (lower is better).")


def probing_view():
    c1, _ = st.columns([1, 3])
    k = int(c1.number_input("Atoms per image", 1, 64, 5, key="vf_atoms", bind="query-params",
                            help="Orthogonal matching pursuit picks this many atoms to reconstruct each image."))
    if len(dyn.noise_decoded) == 0:
        st.error("No noise start converged: raise the step cap or loosen the tolerance.")
        return
    with user_errors():
        probe = vf.probe_dictionary(dyn.noise_decoded, test_x[:300], n_nonzero=k, seed=sel.seed)
        c1, c2 = st.columns([2, 3])
        with c1:
            show_figure(vff.probe_figure(probe), "vf_probe_fig")
        with c2:
            a, b = st.columns(2)
            a.metric("Noise attractors (dictionary)", probe.atoms)
            b.metric("Error ratio (attractors / random)", f"{probe.ratio:.2f}",
                     help="Mean relative reconstruction error of 300 held-out images; below 1: the attractors "
                          "reached from noise, without any data, carry structure of the data.")
            st.caption(f"Data-free probing: {n_noise} Gaussian-noise inputs are encoded and iterated; the "
                       f"{probe.atoms} distinct attractors, decoded, form a dictionary. Each held-out image is "
                       f"rebuilt from {probe.n_nonzero} of its atoms by orthogonal matching pursuit, and from as "
                       "many atoms of a random orthonormal basis of the same size (the baseline).")
            order = np.argsort(-np.linalg.norm(dyn.noise_decoded, axis=1))[:24]
            st.image([tile(dyn.noise_decoded[i], image_shape) for i in order], width=48,
                     caption=[f"#{i}" for i in order])


{"field": field_view, "attractors": attractors_view, "regimes": regimes_view, "ood": ood_view,
 "probing": probing_view}[view]()
