"""Vector field view: the latent dynamics of one autoencoder (Fumero et al., "Navigating the Latent
Space Dynamics of Neural Models", 2025). Iterating z -> E(D(z)) moves every code to an attractor:
the view computes the trajectories, attractors and memorization against its null, the field on a
grid of the latent plane with its streamlines and basins, the trajectories of chosen held-out
samples, out-of-distribution scores, data-free probing, and the same analysis across bottleneck
sizes and across training checkpoints (the regimes).

Which autoencoder (``vf_model``) follows the sidebar: model A when it is one, else model B, else a
zoo autoencoder (``FALLBACK_MODEL`` unless another zoo autoencoder is chosen), said in a note. A
value that no longer fits the sidebar falls back the same way, so the address reproduces the view.

The reference (training) set: a zoo autoencoder is compared with the zoo's own training split and
the test split held out; any other autoencoder with the first half of the chosen data (the second
half held out), since RepLens cannot know its training data (:func:`reference`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import vector_field as vf
from ..vector_field import cost as cost_model
from ..errors import UserInputError
from ..jobs import Cost
from ..spec import Param
from .base import Section

PAGE, TITLE, VERSION = "vector-field", "Vector field", 1
FALLBACK_MODEL = "zoo:mlp-ae-b2"  # a 2-D latent: the field is exact rather than a PCA view
VIEWS = ("field", "attractors", "regimes", "ood", "probing")
TOLERANCES = (1e-4, 1e-5, 1e-6, 1e-7)
GRID_SIZES = (20, 30, 40)
BACKGROUNDS = ("speed", "basins")
BOTTLENECKS = (2, 8, 32)
CHECKPOINTS_OF = "mlp-ae-b8"
FIRST_SAMPLES = ["0", "1", "2"]  # an empty choice has no link form: it means these
MAX_SAMPLES = 12
PROBE_ROWS = 300  # held-out images rebuilt from the noise attractors
OOD_UPLOAD_ROWS = 2000
GALLERY = 24  # noise attractors shown

PARAMS = (
    Param("vf_model", "str", label="Autoencoder",
          help="The autoencoder analysed: model A when it is one, else model B; when neither is, a zoo "
               "autoencoder (default zoo:mlp-ae-b2: a 2-D latent, where the field is exact)."),
    Param("vf_view", "str", "field", choices=VIEWS, label="Show",
          help="field: the field, trajectories and basins; attractors: gallery and memorization; regimes: across "
               "bottlenecks and training epochs; ood: out-of-distribution scores; probing: noise attractors as a "
               "dictionary."),
    Param("vf_tol", "float", vf.DEFAULTS["tol"], choices=TOLERANCES, label="Tolerance",
          help="A trajectory stops when ||z_t − z_{t−1}||² < tolerance (the paper: 1e-6 for small conv "
               "autoencoders)."),
    Param("vf_steps", "int", vf.DEFAULTS["max_steps"], lo=10, hi=3000, step=50, label="Step cap",
          help="Trajectories still moving after this many steps count as not converged and join no attractor."),
    Param("vf_merge", "float", vf.DEFAULTS["merge_cos"], lo=0.5, hi=0.99999, step=0.005,
          label="Merge rule (cosine >)",
          help="Two end points are one attractor when their cosine similarity exceeds this (the paper: 0.99). "
               "Attractor counts depend on it."),
    Param("vf_starts", "int", 300, lo=20, hi=1200, step=50, label="Data starts",
          help="Training images (and as many held-out images) encoded as starts."),
    Param("vf_noise", "int", 200, lo=10, hi=2000, step=50, label="Noise starts",
          help="Gaussian-noise inputs N(0, 1) encoded as starts (data-free)."),
    Param("vf_bg", "str", "speed", choices=BACKGROUNDS, label="Background",
          help="speed: ||V(z)|| = ||f(z) − z||; basins: which attractor each grid point reaches."),
    Param("vf_grid", "int", 30, choices=GRID_SIZES, label="Grid",
          help="Grid points per axis (each is also iterated to find its basin)."),
    Param("vf_samples", "list", FIRST_SAMPLES, label="Trajectories of held-out samples",
          help=f"Row numbers of the held-out set (1 to {MAX_SAMPLES}) whose trajectories are drawn; hover the "
               "training latents to see theirs. Hide a trajectory by clicking it in the legend."),
    Param("vf_ood_n", "int", 200, lo=20, hi=597, step=20, label="In-distribution samples",
          help="Held-out images scored as in-distribution; each built-in OOD set is made from the same images."),
    Param("vf_ood_set", "str", label="Your own OOD set",
          help="An uploaded data set (upload:<id>, one input per row) scored as one more OOD set."),
    Param("vf_atoms", "int", 5, lo=1, hi=64, label="Atoms per image",
          help="Orthogonal matching pursuit picks this many atoms to reconstruct each image."),
)
DYNAMICS_READS = ("vf_tol", "vf_steps", "vf_merge", "vf_starts", "vf_noise", "seed")


# ------------------------------------------------------------------ which autoencoder
@dataclass(frozen=True)
class Choice:
    """The autoencoder analysed, what the "Autoencoder" box offers, whether it is a sidebar model,
    and what to tell the user about it."""

    ref: str
    options: tuple
    own: bool
    note: str = ""


def zoo_autoencoders() -> list[str]:
    """The zoo's autoencoders, the fallback first."""
    from ..models import manifest

    refs = [f"zoo:{e['name']}" for e in manifest()["models"] if e["kind"] == "autoencoder"]
    return sorted(refs, key=lambda r: r != FALLBACK_MODEL)


def is_autoencoder(ref: str) -> bool:
    if not ref or ref.startswith("hf:"):
        return False  # transformers encoders have no decoder; do not load MiniLM to find that out
    if ref.startswith("zoo:"):
        return ref in zoo_autoencoders()
    try:
        from .inputs import load_model

        return bool(load_model(ref).is_autoencoder)
    except UserInputError:
        return False


def choose(p) -> Choice:
    """The autoencoder for the sidebar's models ``p["a"]``, ``p["b"]`` and the asked ``p["vf_model"]``:
    an asked autoencoder of the sidebar, else model A if it is one, else model B; when neither is,
    the asked zoo autoencoder or :data:`FALLBACK_MODEL`."""
    a, b, asked = p["a"], p["b"], p.get("vf_model")
    own = [r for r in dict.fromkeys((a, b)) if is_autoencoder(r)]
    if own:
        if asked in own:
            return Choice(asked, tuple(own), True)
        note = "" if asked is None else (f"Analysing model {'A' if own[0] == a else 'B'}, {own[0]}, the sidebar's "
                                         f"autoencoder, instead of {asked}, which is neither model A nor model B.")
        return Choice(own[0], tuple(own), True, note)
    zoo = zoo_autoencoders()
    said = (f"Model A ({a}) and model B ({b}) are not autoencoders, so this page analyses a zoo autoencoder. "
            "Set model A to an autoencoder (a zoo …-ae-… model, or an uploaded TorchScript module with encode and "
            "decode) to analyse your own.")
    if asked in zoo:
        return Choice(asked, tuple(zoo), False, said)
    if asked is not None:
        said += f" {asked} is not a zoo autoencoder: showing {FALLBACK_MODEL}."
    return Choice(FALLBACK_MODEL, tuple(zoo), False, said)


def _memo(ctx, name: str, make):
    """A value derived from the context once per context (models and data load once anyway)."""
    memo = ctx.__dict__.setdefault("_vector_field", {})
    if name not in memo:
        memo[name] = make()
    return memo[name]


def choice(ctx) -> Choice:
    return _memo(ctx, "choice", lambda: choose(ctx.p))


def autoencoder(ctx):
    def load():
        from .inputs import load_model

        model = load_model(choice(ctx).ref)
        if not model.is_autoencoder:
            raise UserInputError(f"{model.ref} is not an autoencoder: the vector field needs encode and decode.")
        return model

    return _memo(ctx, "model", load)


# ------------------------------------------------------------------ the reference set
@dataclass
class Reference:
    """The training (reference) set the attractors are compared with, the held-out set, and how
    they were chosen."""

    train: object  # analysis.data.Dataset
    test: object
    about: str


def _rows(ds, rows: slice):
    return dataclasses.replace(ds, inputs=np.asarray(ds.inputs)[rows], indices=ds.indices[rows],
                               labels=None if ds.labels is None else ds.labels[rows], _sha=None)


def reference(ctx) -> Reference:
    """Zoo autoencoders: the zoo's training split (reference) and its test split (held out). Any
    other autoencoder: the first half of the chosen data as the reference, the second half held out."""
    def make():
        from .inputs import load_dataset

        model = autoencoder(ctx)
        if model.ref.startswith("zoo:"):
            tr, te = load_dataset("digits", None, 0, "train"), load_dataset("digits", None, 0, "test")
            return Reference(tr, te, f"digits: the zoo's {len(tr)} training images (reference) and {len(te)} test "
                                     "images (held out)")
        ds = ctx.ds
        model.check_data(ds)
        half = len(ds) // 2
        if half < 2:
            raise UserInputError("The vector field needs at least 4 samples: raise Samples in the sidebar.")
        return Reference(_rows(ds, slice(0, half)), _rows(ds, slice(half, None)),
                         f"{ds.describe()}: the first {half} rows as the reference set, the other {len(ds) - half} "
                         "held out (RepLens cannot know this model's training data)")

    return _memo(ctx, "reference", make)


def _x(ds) -> np.ndarray:
    return np.asarray(ds.inputs, dtype=np.float32)


def dynamics_params(p) -> dict:
    return dict(n_starts=int(p["vf_starts"]), n_noise=int(p["vf_noise"]), max_steps=int(p["vf_steps"]),
                tol=float(p["vf_tol"]), merge_cos=float(p["vf_merge"]), seed=int(p["seed"]))


def sample_rows(p, n_held_out: int) -> list[int]:
    """The held-out rows whose trajectories are drawn (valid ones, at most MAX_SAMPLES)."""
    rows = [int(s) for s in (p["vf_samples"] or []) if str(s).isdigit() and int(s) < n_held_out]
    return list(dict.fromkeys(rows))[:MAX_SAMPLES]


def regime_models(ctx, axis: str) -> list[tuple[str, str]]:
    """(label, zoo reference) of the models a regime panel compares: the analysed autoencoder's family
    (MLP or conv) across bottleneck sizes, or mlp-ae-b8's training checkpoints by epoch."""
    if axis == "bottleneck":
        family = "conv-ae" if choice(ctx).ref.startswith("zoo:conv-ae") else "mlp-ae"
        return [(str(b), f"zoo:{family}-b{b}") for b in BOTTLENECKS]
    from ..models import manifest

    entries = manifest()["models"]
    early = sorted((e["epochs"], e["name"]) for e in entries if e.get("checkpoint_of") == CHECKPOINTS_OF)
    final = next(e for e in entries if e["name"] == CHECKPOINTS_OF)
    return [(str(epoch), f"zoo:{name}") for epoch, name in early + [(final["epochs"], final["name"])]]


def _zoo_shas(refs) -> list[str]:
    from ..models import zoo_entry

    return [zoo_entry(r.split(":", 1)[1])["sha256"] for r in refs]


# Inputs a section can depend on besides models A, B and the data (see base.Context.fingerprint)
INPUTS = {
    "m": lambda ctx: {"model": autoencoder(ctx).sha256, "train": reference(ctx).train.sha256,
                      "test": reference(ctx).test.sha256},
    "s": lambda ctx: _zoo_shas(r for _, r in regime_models(ctx, "bottleneck")),
    "t": lambda ctx: _zoo_shas(r for _, r in regime_models(ctx, "epoch")),
}


def ood_upload(ref: str, n_features: int) -> tuple[str, np.ndarray]:
    """An uploaded data set as OOD inputs for an autoencoder reading ``n_features`` values per row:
    (its name, up to OOD_UPLOAD_ROWS rows)."""
    from .inputs import load_dataset

    ds = load_dataset(ref, None, 0, "test")
    if ds.kind == "text":
        raise UserInputError(f"The OOD set {ds.description} holds text; this autoencoder reads numbers.")
    arr = np.asarray(ds.inputs, dtype=np.float32).reshape(len(ds), -1)
    if arr.shape[1] != n_features:
        raise UserInputError(f"The OOD set {ds.description} has {arr.shape[1]} values per row; this autoencoder "
                             f"reads {n_features}. Upload rows of {n_features} values.")
    if not np.isfinite(arr).all():
        raise UserInputError(f"The OOD set {ds.description} contains NaN or inf; remove those rows.")
    return ds.description.removeprefix("uploaded "), arr[:OOD_UPLOAD_ROWS]


def resolve(ctx) -> dict:
    """The autoencoder from the current sidebar (with a note when it is a zoo fallback or replaced
    a value), trajectory rows that exist in the held-out set, an uploaded OOD set this server has."""
    p, changes = ctx.p, {}
    c = choice(ctx)
    if c.note:
        ctx.notes.append(c.note)
    if p.get("vf_model") != c.ref:
        changes["vf_model"] = c.ref
    if p["vf_samples"]:
        try:
            n = len(reference(ctx).test)
        except UserInputError:  # the section says why; nothing to fit here
            n = None
        if n is not None:
            kept = [str(r) for r in sample_rows(p, n)]
            if kept != list(p["vf_samples"]):
                ctx.notes.append(f"The held-out set has rows 0 to {n - 1}: drawing the trajectories of "
                                 f"{', '.join(kept) or 'no sample'} (at most {MAX_SAMPLES}).")
                changes["vf_samples"] = kept or None
    upload = p.get("vf_ood_set")
    if upload and (not upload.startswith("upload:") or ctx.store.find_blob(upload[7:], "data") is None):
        ctx.notes.append(f"The OOD set {upload} is not on this server: upload the file again to score it.")
        changes["vf_ood_set"] = None
    return changes


def warm_up() -> None:
    """In a server or job worker, before its first job: import what the first Jacobian (torch's
    tracing machinery) and the first AUROC (scipy.stats) import lazily, seconds each, and load the
    default view's autoencoder and reference set. A first job that paid for them would run far over
    its estimate, and teach later estimates the wrong lesson."""
    import scipy.stats  # noqa: F401
    import torch._dynamo  # noqa: F401

    from .inputs import load_dataset, load_model

    load_model(FALLBACK_MODEL)
    _zoo_reference()
    load_dataset("digits", None, 0, "test")


# ------------------------------------------------------------------ results
@dataclass
class Dynamics:
    """Trajectories, attractors, memorization and its null for one autoencoder, with what the
    figures need to name the reference set's rows."""

    model: str
    reference: str  # how the reference and held-out sets were chosen
    dyn: vf.LatentDynamics
    labels: np.ndarray | None  # of the reference set
    label_names: list | None
    hover: list  # the reference set's rows, named
    held_out: list  # the held-out set's rows, named
    nearest_images: np.ndarray  # the training image most similar to each decoded attractor
    image_shape: tuple | None

    @property
    def latent_dim(self) -> int:
        return int(self.dyn.train_latents.shape[1])

    @property
    def n_features(self) -> int:
        """Values per input row the autoencoder reads."""
        return int(self.nearest_images.shape[1])


@dataclass
class FieldView:
    """The field on a grid of the latent plane, and where the training latents and attractors lie."""

    plane: vf.Plane
    grid: vf.FieldGrid
    train_uv: np.ndarray
    attractors_uv: np.ndarray
    lines: object  # analysis.vector_field.streamlines.Streamlines


@dataclass
class Paths:
    """Full trajectories of chosen held-out samples, in the plane's coordinates."""

    names: list
    paths: list  # (steps + 1, 2) arrays
    steps: np.ndarray
    converged: np.ndarray


@dataclass
class OOD:
    result: vf.OODResult | None
    verdict: str
    n_in: int
    problem: str = ""  # why nothing was scored


@dataclass
class Probing:
    probe: vf.Probe | None
    shown: np.ndarray  # the noise attractors shown, largest first
    problem: str = ""


@dataclass
class Regime:
    """One regime panel: a row per model (``axis`` the bottleneck size or the epoch)."""

    axis: str
    table: object  # DataFrame
    reference_column: str


@dataclass
class Result:
    dynamics: Dynamics | None = None
    field: FieldView | None = None
    paths: Paths | None = None
    ood: OOD | None = None
    probing: Probing | None = None
    regimes_bottleneck: Regime | None = None
    regimes_epochs: Regime | None = None


# ------------------------------------------------------------------ sections
def _dynamics(ctx, progress) -> Dynamics:
    model, ref = autoencoder(ctx), reference(ctx)
    train_x = _x(ref.train)
    dyn = vf.analyse(model, train_x, _x(ref.test), device=ctx.device, progress=progress, store=ctx.store,
                     **dynamics_params(ctx.p))
    names = lambda ds: [ds.hover_text(i) for i in range(len(ds))]
    return Dynamics(model.ref, ref.about, dyn, ref.train.labels, ref.train.label_names, names(ref.train),
                    names(ref.test), train_x.reshape(len(train_x), -1)[dyn.nearest], ref.train.image_shape)


def _field(ctx, progress) -> FieldView:
    from ..vector_field.streamlines import streamlines

    dyn, m = ctx.value("dynamics").dyn, int(ctx.p["vf_grid"])
    progress(0.05, f"the field on a {m} × {m} grid and each grid point's basin")
    plane, grid = vf.field_view(autoencoder(ctx), dyn, m=m, device=ctx.device, store=ctx.store, use_cache=False)
    progress(0.95, "streamlines")
    return FieldView(plane, grid, plane.to_plane(dyn.train_latents), plane.to_plane(dyn.attractors),
                     streamlines(grid.u, grid.v, grid.vu, grid.vv))


def _paths(ctx, progress) -> Paths:
    d = ctx.value("dynamics")
    rows = sample_rows(ctx.p, len(d.held_out))
    if not rows:
        return Paths([], [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    plane = vf.latent_plane(d.dyn.train_latents)
    traj = vf.trajectories_of(autoencoder(ctx), _x(reference(ctx).test)[rows], int(ctx.p["vf_steps"]),
                              float(ctx.p["vf_tol"]), device=ctx.device)
    paths = [plane.to_plane(traj.path[: traj.steps[k] + 1, k]) for k in range(len(rows))]
    return Paths([d.held_out[r] for r in rows], paths, traj.steps, traj.converged)


def _ood_inputs(ctx) -> tuple[np.ndarray, dict]:
    test_x = _x(reference(ctx).test)
    x_in = test_x[: min(int(ctx.p["vf_ood_n"]), len(test_x))]
    sets = vf.ood_sets(x_in, seed=int(ctx.p["seed"]))
    if ctx.p["vf_ood_set"]:
        name, arr = ood_upload(ctx.p["vf_ood_set"], x_in.reshape(len(x_in), -1).shape[1])
        sets[f"upload: {name}"] = arr.reshape(len(arr), *x_in.shape[1:])
    return x_in, sets


def _ood(ctx, progress) -> OOD:
    attractors = ctx.value("dynamics").dyn.attractors
    x_in, sets = _ood_inputs(ctx)
    if len(attractors) == 0:
        return OOD(None, "", len(x_in), "No training start converged, so there are no attractors to measure "
                                        "trajectories against: raise the step cap or loosen the tolerance.")
    res = vf.ood_scores(autoencoder(ctx), attractors, x_in, sets, max_steps=int(ctx.p["vf_steps"]),
                        tol=float(ctx.p["vf_tol"]), device=ctx.device, store=ctx.store, use_cache=False,
                        progress=progress)
    return OOD(res, vf.ood_verdict(res).replace("*", ""), len(x_in))  # plain text: set names may be a user's


def _probing(ctx, progress) -> Probing:
    decoded = ctx.value("dynamics").dyn.noise_decoded
    if len(decoded) == 0:
        return Probing(None, np.zeros(0, dtype=np.int64),
                       "No noise start converged: raise the step cap or loosen the tolerance.")
    progress(0.1, "orthogonal matching pursuit")
    probe = vf.probe_dictionary(decoded, _x(reference(ctx).test)[:PROBE_ROWS], n_nonzero=int(ctx.p["vf_atoms"]),
                                seed=int(ctx.p["seed"]))
    return Probing(probe, np.argsort(-np.linalg.norm(decoded, axis=1))[:GALLERY])


def _zoo_reference():
    from .inputs import load_dataset

    return _x(load_dataset("digits", None, 0, "train")), _x(load_dataset("digits", None, 0, "test"))


def _regime(ctx, progress, axis: str) -> Regime:
    from .inputs import load_model

    items = regime_models(ctx, axis)
    loaded = {label: load_model(ref) for label, ref in items}
    train_x, test_x = _zoo_reference()
    df = vf.regime(loaded, train_x, test_x, progress=progress, store=ctx.store, device=ctx.device,
                   **dynamics_params(ctx.p))
    df.insert(0, axis, [label for label, _ in items])
    df["model"] = [ref for _, ref in items]
    return Regime(axis, df, next(c for c in df.columns if c.startswith("Chamfer")))


# ------------------------------------------------------------------ estimates
STORE_S = 0.15  # measured: a section's value through the codec into the store, and back to the page
def _measured(ctx, model, train_x):
    p = ctx.p
    return (cost_model.step_cost(model, train_x, ctx.device),
            cost_model.pilot(model, train_x, int(p["vf_steps"]), float(p["vf_tol"]), int(p["seed"]), ctx.device))


def _dynamics_seconds(ctx, model, train_x, n_test: int) -> float:
    step, pilot = _measured(ctx, model, train_x)
    p = ctx.p
    rows = min(int(p["vf_starts"]), len(train_x)) + min(int(p["vf_starts"]), n_test) + int(p["vf_noise"])
    features = int(np.prod(train_x.shape[1:]))
    return (cost_model.OVERHEAD_S + len(train_x) * step.per_row
            + cost_model.iteration_seconds(step, rows, pilot.mean_steps, 3 * cost_model.calls(pilot, p["vf_steps"]))
            + 2 * cost_model.jacobian_seconds(step, min(int(p["vf_starts"]), 64))
            + cost_model.cosine_seconds(n_test + int(p["vf_starts"]), len(train_x), features))


def _dynamics_cost(ctx) -> Cost:
    ref = reference(ctx)
    return Cost(_dynamics_seconds(ctx, autoencoder(ctx), _x(ref.train), len(ref.test)), 0)


def _mean_steps(ctx, pilot) -> float:
    """Mean steps to convergence: of the training starts once they are known, else the pilot's."""
    d = ctx.stored("dynamics")
    return float(d.dyn.steps.mean()) if d is not None and len(d.dyn.steps) else pilot.mean_steps


def _field_cost(ctx) -> Cost:
    step, pilot = _measured(ctx, autoencoder(ctx), _x(reference(ctx).train))
    rows = int(ctx.p["vf_grid"]) ** 2
    n_calls = cost_model.calls(pilot, int(ctx.p["vf_steps"]))
    return Cost(STORE_S + cost_model.iteration_seconds(step, rows, 1.3 * _mean_steps(ctx, pilot), n_calls), 0)


def _paths_cost(ctx) -> Cost:
    step, pilot = _measured(ctx, autoencoder(ctx), _x(reference(ctx).train))
    rows = len(ctx.p["vf_samples"] or [])
    n_calls = cost_model.calls(pilot, int(ctx.p["vf_steps"]))
    return Cost(STORE_S + cost_model.iteration_seconds(step, rows, _mean_steps(ctx, pilot), n_calls), 0)


def _ood_cost(ctx) -> Cost:
    cost_model.prepare_scoring()
    step, pilot = _measured(ctx, autoencoder(ctx), _x(reference(ctx).train))
    n_in = min(int(ctx.p["vf_ood_n"]), len(reference(ctx).test))
    n_sets = 4 + bool(ctx.p["vf_ood_set"])
    d = ctx.stored("dynamics")
    m = len(d.dyn.attractors) if d is not None else max(1, int(ctx.p["vf_starts"]) // 10)
    n_calls = cost_model.calls(pilot, int(ctx.p["vf_steps"]), cost_model.OOD_TAIL)
    seconds = cost_model.iteration_seconds(step, n_sets * n_in, _mean_steps(ctx, pilot), n_sets * n_calls)
    seconds += n_sets * cost_model.trajectory_score_seconds(n_calls, n_in, m, step.latent_dim)
    return Cost(STORE_S + seconds, cost_model.trajectory_score_bytes(n_calls, n_in, m, step.latent_dim))


def _probing_cost(ctx) -> Cost:
    return Cost(STORE_S + cost_model.omp_seconds(PROBE_ROWS, int(ctx.p["vf_atoms"])), 0)


def _regime_cost(ctx, axis: str) -> Cost:
    from .inputs import load_model

    train_x, test_x = _zoo_reference()
    seconds = 0.05
    for _, ref in regime_models(ctx, axis):
        model = load_model(ref)
        if not vf.is_cached(model, train_x, test_x, store=ctx.store, **dynamics_params(ctx.p)):
            seconds += _dynamics_seconds(ctx, model, train_x, len(test_x))
    return Cost(seconds, 0)


FEWER = "Use fewer data or noise starts, a lower step cap or a looser tolerance."
SECTIONS = (
    Section("dynamics", _dynamics, DYNAMICS_READS, "m", _dynamics_cost, title="the trajectories and attractors",
            ways_around=FEWER),
    Section("field", _field, DYNAMICS_READS + ("vf_grid",), "m", _field_cost, title="the field on a grid",
            ways_around="Use a coarser grid. " + FEWER),
    Section("paths", _paths, DYNAMICS_READS + ("vf_samples",), "m", _paths_cost,
            title="the trajectories of the chosen samples"),
    Section("ood", _ood, DYNAMICS_READS + ("vf_ood_n", "vf_ood_set"), "m", _ood_cost, title="the OOD scores",
            ways_around="Use fewer in-distribution samples, a lower step cap or a looser tolerance."),
    Section("probing", _probing, DYNAMICS_READS + ("vf_atoms",), "m", _probing_cost, title="data-free probing"),
    Section("regimes_bottleneck", lambda ctx, progress: _regime(ctx, progress, "bottleneck"), DYNAMICS_READS, "s",
            lambda ctx: _regime_cost(ctx, "bottleneck"), wanted=lambda ctx: ctx.p["vf_view"] == "regimes",
            title="the regimes across bottleneck sizes", ways_around=FEWER),
    Section("regimes_epochs", lambda ctx, progress: _regime(ctx, progress, "epoch"), DYNAMICS_READS, "t",
            lambda ctx: _regime_cost(ctx, "epoch"), wanted=lambda ctx: ctx.p["vf_view"] == "regimes",
            title=f"the regimes across {CHECKPOINTS_OF}'s training", ways_around=FEWER),
)


def summary(result) -> dict:
    out = {}
    if result.dynamics is not None:
        d, dyn = result.dynamics, result.dynamics.dyn
        out.update({
            "autoencoder": d.model, "reference set": d.reference,
            "attractors (training, held-out, noise starts)": ", ".join(str(int(c)) for c in dyn.counts),
            "converged (training starts)": float(dyn.converged_fraction[0]),
            "largest spectral radius": float(dyn.spectral_radius.max()) if len(dyn.spectral_radius) else None,
            "memorization coefficient": float(dyn.memorization.coefficient),
            "memorization null": float(dyn.memorization.null_mean),
            "dictionary rank": int(dyn.rank),
            "unstable fixed points": int(len(dyn.unstable))})
    if result.ood is not None:
        out["which OOD score wins"] = result.ood.verdict or result.ood.problem
    if result.probing is not None:
        probe = result.probing.probe
        out["probing error ratio (noise attractors / random basis)"] = (
            probe.ratio if probe is not None else result.probing.problem)
    return out
