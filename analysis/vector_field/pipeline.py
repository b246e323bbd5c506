"""The whole latent-dynamics analysis of one autoencoder (attractors, memorization, counts, rank),
cached in the result store, and its regimes across several models."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import UserInputError
from .access import array_sha, latent_access, map_rows, noise_inputs
from .attractors import find_attractors, jacobian_spectral_radius, merge_distance
from .dynamics import CACHE_VERSION, DEFAULTS, Trajectories, iterate, rms_norm
from .memorization import Memorization, chamfer_similarity, dictionary_rank, max_cosine


@dataclass
class LatentDynamics:
    """Everything the page shows about one autoencoder's dynamics (numpy arrays and numbers)."""

    train_latents: np.ndarray  # (n_train, k) E(x) of the reference (training) set
    start_index: np.ndarray  # rows of the training set used as starts
    endpoints: np.ndarray  # (n_starts, k)
    converged: np.ndarray
    steps: np.ndarray
    residuals: np.ndarray  # (T, n_starts) ||z_t - z_{t-1}||^2, NaN after stopping
    attractors: np.ndarray  # (m, k) from the training starts
    attractor_sizes: np.ndarray
    basin: np.ndarray
    spectral_radius: np.ndarray  # (m,)
    decoded: np.ndarray  # (m, p)
    similarity: np.ndarray  # (m,) cosine to the most similar training sample
    nearest: np.ndarray  # (m,) its row in the training set
    null_similarity: np.ndarray  # held-out samples vs the training set
    noise_attractors: np.ndarray
    noise_decoded: np.ndarray
    noise_spectral_radius: np.ndarray
    counts: np.ndarray  # distinct attractors from [train, test, noise] starts
    converged_fraction: np.ndarray  # [train, test, noise]
    rank: int
    merge_scale: float = float("nan")  # RMS norm of the training latents: the merge rule's distance scale
    params: dict = field(default_factory=dict)
    cached: bool = False

    @property
    def merge_rule(self) -> str:
        """The merge rule in words (for the page)."""
        cos = self.params.get("merge_cos", DEFAULTS["merge_cos"])
        return (f"cosine > {cos:g}, or closer than {merge_distance(cos, self.merge_scale):.3g} (that rule's chord "
                f"at the training latents' RMS norm {self.merge_scale:.3g}, so a fixed point at the origin is one "
                "attractor)")

    @property
    def memorization(self) -> Memorization:
        s = self.similarity
        return Memorization(float(s.mean()) if len(s) else float("nan"), float(s.std()) if len(s) else float("nan"),
                            s, self.nearest, float(self.null_similarity.mean()), float(self.null_similarity.std()),
                            self.null_similarity)

    @property
    def unstable(self) -> np.ndarray:
        return np.nonzero(~(self.spectral_radius < 1))[0]

    def summary(self) -> dict:
        m = self.memorization
        return {"memorization": m.coefficient, "memorization_sd": m.sd, "null": m.null_mean, "null_sd": m.null_sd,
                "attractors (train starts)": int(self.counts[0]), "attractors (test starts)": int(self.counts[1]),
                "attractors (noise starts)": int(self.counts[2]), "dictionary rank": int(self.rank),
                "unstable": int(len(self.unstable)), "converged": float(self.converged_fraction[0])}


_SCALARS = {"rank": int, "merge_scale": float}


def analyse(model, train_x, test_x, n_starts: int = 300, n_noise: int = 200, max_steps: int = DEFAULTS["max_steps"],
            tol: float = DEFAULTS["tol"], merge_cos: float = DEFAULTS["merge_cos"], seed: int = 0, device=None,
            progress: Callable[[float, str], None] | None = None, store=None, use_cache: bool = True
            ) -> LatentDynamics:
    """Trajectories from ``n_starts`` training rows, ``n_starts`` held-out rows and ``n_noise`` noise
    inputs; attractors (merge rule ``merge_cos``, with the distance rule at the RMS norm of the training
    latents, see :func:`find_attractors`) with their spectral radii; memorization against the
    training set with the held-out null; attractor counts; dictionary rank. Cached in the store."""
    from ..store import default_store, make_key

    train_x = np.asarray(train_x, dtype=np.float32)
    test_x = np.asarray(test_x, dtype=np.float32)
    if len(train_x) < 2 or len(test_x) < 2:
        raise UserInputError("The vector field needs at least 2 training and 2 held-out samples.")
    params = {"n_starts": int(n_starts), "n_noise": int(n_noise), "max_steps": int(max_steps), "tol": float(tol),
              "merge_cos": float(merge_cos), "seed": int(seed)}
    store = store or default_store()
    key = make_key("vector_field", model=model.sha256, train=array_sha(train_x), test=array_sha(test_x),
                   v=CACHE_VERSION, **params)
    if use_cache:
        hit = store.get(key)
        if hit is not None:
            if progress:
                progress(1.0, "loaded from the result store")
            return _from_arrays(hit, params)
    report = progress or (lambda f, m: None)
    rng = np.random.default_rng(seed)
    start_index = np.sort(rng.choice(len(train_x), min(n_starts, len(train_x)), replace=False))
    test_index = np.sort(rng.choice(len(test_x), min(n_starts, len(test_x)), replace=False))
    with latent_access(model, device) as (enc, dec):
        import torch

        report(0.02, "encoding the training set")
        z_train = map_rows(enc, train_x)
        z_test = map_rows(enc, test_x[test_index])
        z_noise = map_rows(enc, noise_inputs(train_x.shape[1:], n_noise, seed))
        runs = []
        for i, (name, z0) in enumerate((("training", z_train[start_index]), ("held-out", z_test), ("noise", z_noise))):
            sub = lambda f, m, i=i, name=name: report(0.05 + 0.28 * (i + f), f"{name} starts: {m}")
            runs.append(iterate(enc, dec, torch.from_numpy(z0), max_steps, tol, record_every=0, progress=sub))
        scale = rms_norm(z_train)
        atts = [find_attractors(r.endpoints, merge_cos, r.converged, scale=scale) for r in runs]
        report(0.9, "Jacobians at the attractors")
        rho = jacobian_spectral_radius(enc, dec, atts[0].points.astype(np.float32))
        rho_noise = jacobian_spectral_radius(enc, dec, atts[2].points.astype(np.float32))
        decoded = map_rows(dec, atts[0].points)
        noise_decoded = map_rows(dec, atts[2].points)
    flat_train = train_x.reshape(len(train_x), -1)
    if len(decoded):
        sim, nearest = max_cosine(decoded, flat_train)
    else:
        sim, nearest = np.zeros(0), np.zeros(0, dtype=np.int64)
    null, _ = max_cosine(test_x.reshape(len(test_x), -1), flat_train)
    tr = runs[0]
    result = LatentDynamics(
        train_latents=z_train, start_index=start_index, endpoints=tr.endpoints.astype(np.float32),
        converged=tr.converged, steps=tr.steps, residuals=tr.residuals.astype(np.float32),
        attractors=atts[0].points, attractor_sizes=atts[0].sizes, basin=atts[0].basin, spectral_radius=rho,
        decoded=decoded, similarity=sim, nearest=nearest, null_similarity=null,
        noise_attractors=atts[2].points, noise_decoded=noise_decoded, noise_spectral_radius=rho_noise,
        counts=np.array([a.count for a in atts]), converged_fraction=np.array([r.converged.mean() for r in runs]),
        rank=dictionary_rank(decoded), merge_scale=scale, params=params)
    if use_cache:
        store.put(key, _to_arrays(result), {"model": model.ref, **params}, kind="vector_field")
    report(1.0, "done")
    return result


def _to_arrays(r: LatentDynamics) -> dict:
    out = {}
    for f in r.__dataclass_fields__:
        if f in ("params", "cached"):
            continue
        out[f] = np.asarray(getattr(r, f))
    return out


def _from_arrays(arrays: dict, params: dict) -> LatentDynamics:
    kw = {k: (_SCALARS[k](v) if k in _SCALARS else v) for k, v in arrays.items()}
    return LatentDynamics(**kw, params=params, cached=True)


def trajectories_of(model, x, max_steps: int = DEFAULTS["max_steps"], tol: float = DEFAULTS["tol"],
                    device=None) -> Trajectories:
    """Full trajectories (every step recorded) from the inputs ``x``."""
    import torch

    with latent_access(model, device) as (enc, dec):
        z0 = map_rows(enc, x)
        return iterate(enc, dec, torch.from_numpy(z0), max_steps, tol, record_every=1)


def regime(models_by_label: dict, train_x, test_x, reference: str | None = None,
           progress: Callable[[float, str], None] | None = None, **params):
    """One row per model (label -> loaded autoencoder): memorization and its null, attractor counts,
    dictionary rank, and the Chamfer similarity of its decoded attractors to those of ``reference``
    (a label; default the last). Each model's analysis is cached in the store."""
    import pandas as pd

    labels = list(models_by_label)
    if not labels:
        raise UserInputError("No models to compare.")
    reference = reference or labels[-1]
    dyn = {}
    for i, label in enumerate(labels):
        sub = (lambda f, m, i=i, label=label: progress((i + f) / len(labels), f"{label}: {m}")) if progress else None
        dyn[label] = analyse(models_by_label[label], train_x, test_x, progress=sub, **params)
    rows = []
    for label in labels:
        row = {"model": label, **dyn[label].summary(),
               f"Chamfer similarity to {reference}": chamfer_similarity(dyn[label].decoded, dyn[reference].decoded)}
        rows.append(row)
    return pd.DataFrame(rows)


def is_cached(model, train_x, test_x, store=None, **params) -> bool:
    """Whether :func:`analyse` with these arguments would be a store lookup."""
    from ..store import default_store, make_key

    p = {"n_starts": 300, "n_noise": 200, "max_steps": DEFAULTS["max_steps"], "tol": DEFAULTS["tol"],
         "merge_cos": DEFAULTS["merge_cos"], "seed": 0, **params}
    p = {"n_starts": int(p["n_starts"]), "n_noise": int(p["n_noise"]), "max_steps": int(p["max_steps"]),
         "tol": float(p["tol"]), "merge_cos": float(p["merge_cos"]), "seed": int(p["seed"])}
    key = make_key("vector_field", model=model.sha256, train=array_sha(np.asarray(train_x, dtype=np.float32)),
                   test=array_sha(np.asarray(test_x, dtype=np.float32)), v=CACHE_VERSION, **p)
    return key in (store or default_store())
