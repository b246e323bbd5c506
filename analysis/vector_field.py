"""Latent vector fields of autoencoders (Fumero et al., "Navigating the Latent Space Dynamics of
Neural Models", 2025).

An autoencoder with encoder E and decoder D defines a map on its latent space, f(z) = E(D(z)), and
a vector field V(z) = f(z) - z. Iterating z_{t+1} = f(z_t) from z_0 = E(x) gives a trajectory;
where it stops is a fixed point z* = f(z*), an attractor when the Jacobian of f at z* has spectral
radius < 1.

- :func:`iterate` runs every start as one batch on one device; a row stops once
  ``||z_t - z_{t-1}||^2 < tol`` (the paper's ``||f(z_t) - f(z_{t-1})||^2`` with z_t = f(z_{t-1})),
  later steps only touch the rows still moving.
- :func:`find_attractors` merges end points whose cosine similarity exceeds ``merge_cos`` (0.99 in
  the paper) or that lie closer than that rule's chord at the latent space's scale (the cosine says
  nothing near the origin); :func:`jacobian_spectral_radius` checks each with ``torch.func``.
- :func:`memorization_coefficient` (decoded attractors against the training set, with the
  held-out-vs-training null), :func:`dictionary_rank`, :func:`chamfer_similarity`.
- :func:`ood_scores`: the trajectory score (mean distance of the trajectory to the training
  attractors) and the reconstruction error, with AUROC and FPR95 for each out-of-distribution set.
- :func:`probe_dictionary`: attractors reached from Gaussian noise as an OMP dictionary for real
  data, against a random orthonormal basis of the same size.
- :func:`analyse` runs the whole pipeline for one model and caches it in the result store.

``encode`` / ``decode`` are callables on torch tensors: a loaded autoencoder's ``model.encode`` and
``model.decode`` (see :meth:`analysis.models.Model.encode`), or plain functions (tests use a
linear map).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import UserInputError

CACHE_VERSION = 2  # 2: the scale-aware distance rule merges end points near the origin
DEFAULTS = {"max_steps": 500, "tol": 1e-6, "merge_cos": 0.99}


# --------------------------------------------------------------------------- iteration
@dataclass
class Trajectories:
    """Trajectories of a batch of starts under z -> f(z).

    path : (r, n, k) the latent codes at the recorded steps (``recorded_steps``); a row that has
        converged keeps its end point in later records
    recorded_steps : (r,) step number of each record (0 = the start; the last record is the last step)
    endpoints : (n, k) where each row stopped
    converged : (n,) bool, the row met the tolerance within ``max_steps``
    steps : (n,) number of applications of f the row took (``max_steps`` if it did not converge)
    residuals : (T, n) ``||z_t - z_{t-1}||^2`` at step t = 1..T (NaN once the row has stopped)
    """

    path: np.ndarray
    recorded_steps: np.ndarray
    endpoints: np.ndarray
    converged: np.ndarray
    steps: np.ndarray
    residuals: np.ndarray
    tol: float
    max_steps: int

    @property
    def n(self) -> int:
        return len(self.endpoints)

    @property
    def scale(self) -> float:
        """RMS norm of the starts: the latent space's size for the merge rule's distance."""
        return rms_norm(self.path[0])

    def attractors(self, merge_cos: float = DEFAULTS["merge_cos"]) -> "Attractors":
        """:func:`find_attractors` of the converged end points, at the scale of the starts."""
        return find_attractors(self.endpoints, merge_cos, self.converged, scale=self.scale)


def _f(encode, decode):
    return lambda z: encode(decode(z))


def iterate(encode: Callable, decode: Callable, z0, max_steps: int = DEFAULTS["max_steps"],
            tol: float = DEFAULTS["tol"], record_every: int = 1, device=None,
            progress: Callable[[float, str], None] | None = None) -> Trajectories:
    """Iterate z_{t+1} = encode(decode(z_t)) from every row of ``z0`` at once.

    A row stops at the first step t with ``||z_t - z_{t-1}||^2 < tol``. ``record_every`` keeps every
    r-th step of the path (0 keeps the start and the end only); residuals are kept for every step.
    The computation runs in ``z0``'s dtype on ``device`` (default: where ``z0`` lives).
    """
    import torch

    if max_steps < 1:
        raise UserInputError("max_steps must be at least 1.")
    if not tol > 0:
        raise UserInputError("The tolerance must be positive.")
    z = torch.as_tensor(z0)
    if not z.is_floating_point():
        z = z.float()
    if z.ndim != 2 or len(z) == 0:
        raise UserInputError(f"Starts must be an (n, k) matrix of latent codes (got shape {tuple(z.shape)}).")
    if device is not None:
        z = z.to(device)
    f = _f(encode, decode)
    n = len(z)
    z = z.clone()
    active = torch.arange(n, device=z.device)
    steps = np.full(n, max_steps, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)
    residuals = np.full((max_steps, n), np.nan, dtype=np.float64)
    path = [z.detach().cpu().numpy().copy()]
    recorded = [0]
    t = 0
    with torch.no_grad():
        for t in range(1, max_steps + 1):
            za = z[active]
            nxt = f(za)
            r = ((nxt.double() - za.double()) ** 2).sum(1)
            z[active] = nxt.to(z.dtype)
            idx = active.cpu().numpy()
            residuals[t - 1, idx] = r.cpu().numpy()
            done = r < tol
            if bool(done.any()):
                d = done.cpu().numpy()
                steps[idx[d]] = t
                converged[idx[d]] = True
                active = active[~done]
            if record_every and t % record_every == 0:
                path.append(z.cpu().numpy().copy())
                recorded.append(t)
            if progress and t % 25 == 0:
                progress(t / max_steps, f"step {t}: {len(active)} of {n} trajectories still moving")
            if len(active) == 0:
                break
    if recorded[-1] != t:
        path.append(z.cpu().numpy().copy())
        recorded.append(t)
    return Trajectories(np.stack(path), np.asarray(recorded), z.cpu().numpy(), converged, steps,
                        residuals[:t], float(tol), int(max_steps))


def iterate_loop(encode, decode, z0, max_steps: int = DEFAULTS["max_steps"], tol: float = DEFAULTS["tol"]):
    """Reference implementation: one start at a time (what a per-sample loop does).
    Returns (endpoints, converged, steps); used by the tests and the benchmark."""
    import torch

    f = _f(encode, decode)
    z0 = torch.as_tensor(z0)
    ends, conv, steps = [], [], []
    with torch.no_grad():
        for row in z0:
            z, ok, t = row[None], False, max_steps
            for s in range(1, max_steps + 1):
                nxt = f(z)
                r = float(((nxt.double() - z.double()) ** 2).sum())
                z = nxt
                if r < tol:
                    ok, t = True, s
                    break
            ends.append(z[0].cpu().numpy())
            conv.append(ok)
            steps.append(t)
    return np.stack(ends), np.asarray(conv), np.asarray(steps)


# --------------------------------------------------------------------------- attractors
@dataclass
class Attractors:
    """Distinct end points. ``points`` (m, k); ``basin`` (n,) index of each start's attractor, -1 for a
    start that did not converge; ``sizes`` (m,) starts per attractor; ``merge_cos`` and
    ``merge_dist`` the rule used."""

    points: np.ndarray
    basin: np.ndarray
    sizes: np.ndarray
    merge_cos: float
    spectral_radius: np.ndarray | None = None
    merge_dist: float = 0.0

    @property
    def count(self) -> int:
        return len(self.points)

    @property
    def unstable(self) -> np.ndarray:
        """Indices of fixed points whose Jacobian has spectral radius >= 1 (not attractors)."""
        if self.spectral_radius is None:
            return np.zeros(0, dtype=int)
        return np.nonzero(~(self.spectral_radius < 1))[0]


def _unit(x: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(x, axis=1)
    return x / np.maximum(norm, eps)[:, None], norm


def rms_norm(z) -> float:
    z = np.asarray(z, dtype=np.float64)
    return float(np.sqrt((z * z).sum(-1).mean())) if z.size else 0.0


def merge_distance(merge_cos: float, scale: float) -> float:
    """The chord between two directions at cosine ``merge_cos``, at radius ``scale``:
    sqrt(2 (1 - merge_cos)) * scale. Points at the typical norm and within it are about as close as
    the cosine rule merges; near the origin, where the cosine says nothing, it is the only rule."""
    return float(np.sqrt(2.0 * (1.0 - merge_cos)) * scale)


def find_attractors(endpoints, merge_cos: float = DEFAULTS["merge_cos"], converged=None,
                    merge_dist: float | None = None, scale: float | None = None) -> Attractors:
    """Group end points into attractors: two points are one attractor when their cosine similarity
    exceeds ``merge_cos`` (the paper's rule) or their Euclidean distance is at most ``merge_dist``.

    The cosine says nothing near the origin: a contraction to 0 ends its trajectories in every
    direction around it, and the cosine alone splits that one fixed point into many. So by default
    (``merge_dist=None``) the distance rule is scale-aware, :func:`merge_distance` at ``scale``: the
    latent space's size, best the RMS norm of the starts (:meth:`Trajectories.attractors` and
    :func:`analyse` pass it); None takes the RMS norm of the end points, which is too small when
    every start contracts to the origin. ``merge_dist=0`` is the paper's cosine rule alone.

    Leader clustering in the order of the starts: the first unassigned end point opens a group and
    takes every unassigned point within the rule of it; each group is represented by its member
    nearest to the group mean, so every attractor reported is an end point actually reached. Starts
    that did not converge (``converged`` False) get basin -1.
    """
    e = np.asarray(endpoints, dtype=np.float64)
    if e.ndim != 2:
        raise UserInputError("End points must be an (n, k) matrix.")
    if not -1.0 <= merge_cos <= 1.0:
        raise UserInputError("The merge rule is a cosine similarity between -1 and 1 (the paper uses 0.99).")
    ok = np.ones(len(e), bool) if converged is None else np.asarray(converged, bool)
    if merge_dist is None:
        merge_dist = merge_distance(merge_cos, rms_norm(e[ok]) if scale is None else scale)
    unit, _ = _unit(e)
    basin = np.full(len(e), -1, dtype=np.int64)
    free = ok.copy()
    points, sizes = [], []
    while free.any():
        i = int(np.argmax(free))
        members = free & ((unit @ unit[i] > merge_cos) | (((e - e[i]) ** 2).sum(1) <= merge_dist ** 2))
        members[i] = True
        idx = np.nonzero(members)[0]
        basin[idx] = len(points)
        centre = e[idx].mean(0)
        points.append(e[idx[np.argmin(((e[idx] - centre) ** 2).sum(1))]])
        sizes.append(len(idx))
        free &= ~members
    k = e.shape[1]
    return Attractors(np.asarray(points).reshape(-1, k), basin, np.asarray(sizes, dtype=np.int64), float(merge_cos),
                      merge_dist=float(merge_dist))


def jacobian_spectral_radius(encode, decode, z, batch_size: int = 256, device=None) -> np.ndarray:
    """Spectral radius (largest |eigenvalue|) of the Jacobian of f = encode . decode at each row of
    ``z``: ``torch.func.vmap(jacrev(f))`` on batches. Modules ``vmap`` cannot trace (TorchScript) take
    the Jacobian of the batch sum instead (rows are independent), still one reverse pass per latent
    dimension."""
    return np.abs(_eigvals(jacobians(encode, decode, z, batch_size, device))).max(-1)


def jacobians(encode, decode, z, batch_size: int = 256, device=None) -> np.ndarray:
    """(n, k, k) Jacobians of f = encode . decode at the rows of ``z`` (float64 numpy)."""
    import torch
    from torch.func import jacrev, vmap

    z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z)
    if not z.is_floating_point():
        z = z.float()
    if device is not None:
        z = z.to(device)
    f = _f(encode, decode)
    out = []
    for i in range(0, len(z), batch_size):
        zb = z[i: i + batch_size].detach()
        try:
            jb = vmap(jacrev(lambda v: f(v[None])[0]))(zb)
        except Exception:  # TorchScript and other modules that functorch cannot trace
            with torch.enable_grad():
                jb = jacrev(lambda v: f(v).sum(0))(zb).permute(1, 0, 2)
        out.append(jb.detach().double().cpu().numpy())
    k = z.shape[1]
    return np.concatenate(out) if out else np.zeros((0, k, k))


def _eigvals(j: np.ndarray) -> np.ndarray:
    return np.linalg.eigvals(j) if len(j) else np.zeros((0, j.shape[-1]))


# --------------------------------------------------------------------------- memorization
@dataclass
class Memorization:
    """Each decoded attractor's cosine similarity to its most similar training sample
    (``per_item``, ``nearest``), their mean and sd (``coefficient``, ``sd``), and the null: the
    same score for held-out samples against the training set."""

    coefficient: float
    sd: float
    per_item: np.ndarray
    nearest: np.ndarray
    null_mean: float
    null_sd: float
    null_per_item: np.ndarray

    @property
    def above_null(self) -> float:
        return self.coefficient - self.null_mean


def max_cosine(x, ref, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x``: the largest cosine similarity to a row of ``ref`` and that row's index."""
    ux, _ = _unit(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    ur, _ = _unit(np.asarray(ref, dtype=np.float64).reshape(len(ref), -1))
    best, arg = np.empty(len(ux)), np.empty(len(ux), dtype=np.int64)
    for i in range(0, len(ux), chunk):
        s = ux[i: i + chunk] @ ur.T
        arg[i: i + chunk] = s.argmax(1)
        best[i: i + chunk] = s.max(1)
    return best, arg


def memorization_coefficient(decoded_attractors, train_x, heldout_x=None) -> Memorization:
    """The paper's memorization coefficient: mean (sd) over attractors of the largest cosine similarity
    between the decoded attractor and a training sample; the null is the same statistic for held-out
    samples (``heldout_x``) against the training set (NaN if none are given)."""
    d = np.asarray(decoded_attractors, dtype=np.float64)
    if len(d) == 0:
        raise UserInputError("No attractors to score: no start converged. Raise the step cap or the tolerance.")
    sims, nearest = max_cosine(d, train_x)
    if heldout_x is not None and len(heldout_x):
        null, _ = max_cosine(heldout_x, train_x)
    else:
        null = np.full(1, np.nan)
    return Memorization(float(sims.mean()), float(sims.std()), sims, nearest, float(np.mean(null)),
                        float(np.std(null)), null)


def dictionary_rank(decoded_attractors, fraction: float = 0.9) -> int:
    """How many singular vectors of the decoded attractors (uncentred: a single attractor has rank 1)
    it takes to explain ``fraction`` of their energy (sum of squared singular values)."""
    d = np.asarray(decoded_attractors, dtype=np.float64)
    if len(d) == 0:
        return 0
    s2 = np.linalg.svd(d.reshape(len(d), -1), compute_uv=False) ** 2
    if s2.sum() <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(s2) / s2.sum(), fraction - 1e-12) + 1)


def chamfer_similarity(a, b) -> float:
    """Symmetric Chamfer similarity of two point sets under cosine similarity: the mean over each set
    of its points' best match in the other, averaged over the two directions (1 = same set)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return 0.5 * (float(max_cosine(a, b)[0].mean()) + float(max_cosine(b, a)[0].mean()))


# --------------------------------------------------------------------------- OOD
def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve for telling ``out`` (positive, higher score) from ``in``; ties count 1/2."""
    from scipy.stats import rankdata

    a, b = np.asarray(in_scores, float), np.asarray(out_scores, float)
    ranks = rankdata(np.concatenate([a, b]))
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def fpr_at_95_tpr(in_scores, out_scores) -> float:
    """FPR95: with the threshold that keeps 95% of the in-distribution samples (score <= threshold),
    the fraction of out-of-distribution samples also kept (lower is better)."""
    thr = np.quantile(np.asarray(in_scores, float), 0.95)
    return float(np.mean(np.asarray(out_scores, float) <= thr))


def trajectory_score(traj: Trajectories, train_attractors) -> np.ndarray:
    """The paper's OOD score per start: mean Euclidean distance from each point of its trajectory
    [z_0, ..., z*] to the nearest training attractor. Needs the path recorded at every step."""
    if len(traj.recorded_steps) != traj.residuals.shape[0] + 1:
        raise UserInputError("The trajectory score needs every step: iterate with record_every=1.")
    att = np.asarray(train_attractors, dtype=np.float64)
    p = traj.path.astype(np.float64)  # (T+1, n, k)
    d = np.sqrt(np.maximum(((p[..., None, :] - att[None, None]) ** 2).sum(-1), 0)).min(-1)  # (T+1, n)
    valid = np.arange(len(p))[:, None] <= traj.steps[None, :]
    return (d * valid).sum(0) / valid.sum(0)


def reconstruction_error(encode, decode, x) -> np.ndarray:
    """Mean squared error per sample of decode(encode(x))."""
    import torch

    with torch.no_grad():
        xt = torch.as_tensor(x)
        rec = decode(encode(xt))
    return ((rec.double() - xt.double()) ** 2).reshape(len(xt), -1).mean(1).cpu().numpy()


def ood_table(in_scores: dict, out_scores: dict) -> "object":
    """AUROC and FPR95 per OOD set and score. ``in_scores``: score name -> array for the
    in-distribution set; ``out_scores``: set name -> {score name -> array}. Returns a DataFrame."""
    import pandas as pd

    rows = []
    for ood, scores in out_scores.items():
        for name, s in scores.items():
            rows.append({"OOD set": ood, "score": name, "AUROC": auroc(in_scores[name], s),
                         "FPR95": fpr_at_95_tpr(in_scores[name], s)})
    return pd.DataFrame(rows)


def ood_sets(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard out-of-distribution sets made from in-distribution images in [0, 1]: uniform noise,
    inverted images (1 - x), and pixel-shuffled images (one random permutation per image)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    shuffled = np.stack([row[rng.permutation(x.shape[1])] for row in x])
    return {"noise": rng.uniform(0, 1, size=x.shape).astype(np.float32), "inverted": 1 - x,
            "pixel-shuffled": shuffled}


# --------------------------------------------------------------------------- data-free probing
def omp(dictionary, x, n_nonzero: int) -> np.ndarray:
    """Orthogonal matching pursuit: reconstructions of the rows of ``x`` from at most ``n_nonzero``
    atoms (rows of ``dictionary``), each with least-squares coefficients on the atoms chosen."""
    d = np.asarray(dictionary, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    dn, norms = _unit(d)
    keep = norms > 1e-12
    dn = dn[keep]
    n_nonzero = int(min(n_nonzero, len(dn)))
    out = np.zeros_like(x)
    if n_nonzero == 0:
        return out
    for i, row in enumerate(x):
        residual, chosen = row.copy(), []
        for _ in range(n_nonzero):
            scores = np.abs(dn @ residual)
            scores[chosen] = -1
            chosen.append(int(scores.argmax()))
            atoms = dn[chosen]
            coef, *_ = np.linalg.lstsq(atoms.T, row, rcond=None)
            residual = row - atoms.T @ coef
            if residual @ residual < 1e-20:
                break
        out[i] = row - residual
    return out


@dataclass
class Probe:
    """Data-free probing: relative reconstruction errors (||x - x_hat||^2 / ||x||^2 per sample) of real
    data from the decoded noise attractors and from a random orthonormal basis of the same size."""

    atoms: int
    n_nonzero: int
    attractor_error: np.ndarray
    random_error: np.ndarray
    random_atoms: int = 0  # size of the random basis: the atoms, at most the input dimension

    @property
    def ratio(self) -> float:
        return float(self.attractor_error.mean() / max(self.random_error.mean(), 1e-300))


def random_orthonormal(p: int, m: int, seed: int = 0) -> np.ndarray:
    """``m`` orthonormal rows in R^p (m <= p), from the QR factorisation of a Gaussian matrix."""
    g = np.random.default_rng(seed).standard_normal((p, m))
    q, r = np.linalg.qr(g)
    return (q * np.sign(np.diag(r))).T


def probe_dictionary(decoded_attractors, x, n_nonzero: int = 5, seed: int = 0) -> Probe:
    """Reconstruct ``x`` with OMP (``n_nonzero`` atoms) from the decoded attractors and from a random
    orthonormal basis with as many atoms (capped at the input dimension)."""
    d = np.asarray(decoded_attractors, dtype=np.float64).reshape(len(decoded_attractors), -1)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    m = min(len(d), x.shape[1])
    if m == 0:
        raise UserInputError("No attractors to use as a dictionary.")

    def rel(rec):
        return ((x - rec) ** 2).sum(1) / np.maximum((x ** 2).sum(1), 1e-300)

    k = min(n_nonzero, m)
    return Probe(len(d), k, rel(omp(d, x, k)), rel(omp(random_orthonormal(x.shape[1], m, seed), x, k)), m)


# --------------------------------------------------------------------------- fields on a plane
@dataclass
class Plane:
    """A 2-D view of the latent space: the latent itself (k = 2) or the PCA plane of the training
    latents (``basis`` (2, k) orthonormal rows, ``origin`` (k,)); ``explained`` variance per axis."""

    origin: np.ndarray
    basis: np.ndarray
    explained: np.ndarray
    is_pca: bool

    def to_plane(self, z) -> np.ndarray:
        return (np.asarray(z, dtype=np.float64) - self.origin) @ self.basis.T

    def to_latent(self, uv) -> np.ndarray:
        return self.origin + np.asarray(uv, dtype=np.float64) @ self.basis

    def axis_titles(self) -> list[str]:
        if not self.is_pca:
            return ["z1", "z2"]
        return [f"PC{i + 1} of training latents ({100 * e:.0f}%)" for i, e in enumerate(self.explained)]


def latent_plane(train_latents) -> Plane:
    z = np.asarray(train_latents, dtype=np.float64)
    k = z.shape[1]
    if k == 2:
        return Plane(np.zeros(2), np.eye(2), np.full(2, np.nan), False)
    if k < 2:
        raise UserInputError("A latent space needs at least 2 dimensions to draw a field.")
    mean = z.mean(0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    return Plane(mean, vt[:2], (s[:2] ** 2) / max((s ** 2).sum(), 1e-300), True)


@dataclass
class FieldGrid:
    """V(z) = f(z) - z on an ``m x m`` grid of the plane: ``u``, ``v`` the plane coordinates of the
    grid, ``vu``, ``vv`` the field projected on the plane, ``speed`` ||V|| in the full latent space,
    ``basin`` the attractor each grid point reaches (index into ``attractor_points``, -1: not
    converged)."""

    u: np.ndarray
    v: np.ndarray
    vu: np.ndarray
    vv: np.ndarray
    speed: np.ndarray
    basin: np.ndarray
    attractor_points: np.ndarray


def field_on_plane(encode, decode, plane: Plane, bounds, m: int = 30, max_steps: int = DEFAULTS["max_steps"],
                   tol: float = DEFAULTS["tol"], merge_cos: float = DEFAULTS["merge_cos"], attractors=None,
                   device=None, scale: float | None = None) -> FieldGrid:
    """The field on a grid of the plane and each grid point's basin. ``bounds`` = (u0, u1, v0, v1).
    Grid points reach attractors by iterating in the full latent space; they are assigned to the
    given ``attractors`` (k-dim) by the merge rule at ``scale`` (None: the grid's RMS norm), or to
    new ones."""
    import torch

    u = np.linspace(bounds[0], bounds[1], m)
    v = np.linspace(bounds[2], bounds[3], m)
    uu, vv = np.meshgrid(u, v)
    z = plane.to_latent(np.stack([uu.ravel(), vv.ravel()], 1)).astype(np.float32)
    with torch.no_grad():
        fz = _f(encode, decode)(torch.from_numpy(z).to(device or "cpu")).double().cpu().numpy()
    vel = fz - z
    proj = vel @ plane.basis.T
    traj = iterate(encode, decode, torch.from_numpy(z), max_steps=max_steps, tol=tol, record_every=0, device=device)
    known = np.zeros((0, z.shape[1])) if attractors is None else np.asarray(attractors, dtype=np.float64)
    att = find_attractors(np.concatenate([known, traj.endpoints]), merge_cos,
                          converged=np.concatenate([np.ones(len(known), bool), traj.converged]),
                          scale=traj.scale if scale is None else scale)
    basin = att.basin[len(known):]
    return FieldGrid(u, v, proj[:, 0].reshape(m, m), proj[:, 1].reshape(m, m),
                     np.linalg.norm(vel, axis=1).reshape(m, m), basin.reshape(m, m), att.points)


# --------------------------------------------------------------------------- one model, end to end
@contextlib.contextmanager
def latent_access(model, device=None):
    """(encode, decode) of a loaded autoencoder on ``device``, holding the model's lock (it may be
    shared between sessions); the model goes back to the CPU afterwards, even on error."""
    from .device import pick

    if not getattr(model, "is_autoencoder", False):
        raise UserInputError(f"{getattr(model, 'ref', model)} is not an autoencoder: the vector field needs a "
                             "model with an encoder and a decoder (zoo:mlp-ae-b8, zoo:conv-ae-b2, a TorchScript "
                             "module exposing encode and decode, or any module with encoder/decoder submodules).")
    import torch

    dev = pick(device)
    # One CPU thread: the latent maps are small, and with two threads on a busy 2-core machine each
    # small product waits for a second core (a 30x slowdown seen under load).
    before = torch.get_num_threads()
    with model.lock:
        model.to(dev)
        if dev.type == "cpu":
            torch.set_num_threads(1)
        try:
            yield _on(model.encode, dev), _on(model.decode, dev)
        finally:
            torch.set_num_threads(before)
            model.to("cpu")


def _on(fn, dev):
    return lambda t: fn(t.to(dev))


def map_rows(fn, x, batch_size: int = 1024) -> np.ndarray:
    """``fn`` (encode or decode) on the rows of ``x`` in batches, without gradients; returns float32
    (n, d) with each output flattened per row ((0, 0) for no rows)."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(fn(torch.from_numpy(x[i: i + batch_size])).float().cpu().numpy())
    y = np.concatenate(out)
    return y.reshape(len(y), -1)


def noise_inputs(shape, n: int, seed: int = 0) -> np.ndarray:
    """Gaussian noise inputs N(0, 1) in the input layout: the data-free starts."""
    return np.random.default_rng(seed + 7919).standard_normal((n, *shape)).astype(np.float32)


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


def array_sha(*arrays) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def analyse(model, train_x, test_x, n_starts: int = 300, n_noise: int = 200, max_steps: int = DEFAULTS["max_steps"],
            tol: float = DEFAULTS["tol"], merge_cos: float = DEFAULTS["merge_cos"], seed: int = 0, device=None,
            progress: Callable[[float, str], None] | None = None, store=None, use_cache: bool = True
            ) -> LatentDynamics:
    """Trajectories from ``n_starts`` training rows, ``n_starts`` held-out rows and ``n_noise`` noise
    inputs; attractors (merge rule ``merge_cos``, with the distance rule at the RMS norm of the training
    latents, see :func:`find_attractors`) with their spectral radii; memorization against the
    training set with the held-out null; attractor counts; dictionary rank. Cached in the store."""
    from .store import default_store, make_key

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


def field_view(model, dyn: LatentDynamics, m: int = 30, margin: float = 0.15, device=None, store=None,
               use_cache: bool = True) -> tuple[Plane, FieldGrid]:
    """The plane of ``dyn``'s training latents and the field and basins on an m x m grid over them
    (cached in the store)."""
    from .store import default_store, make_key

    plane = latent_plane(dyn.train_latents)
    uv = plane.to_plane(dyn.train_latents)
    lo, hi = uv.min(0), uv.max(0)
    pad = (hi - lo) * margin
    bounds = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    p = dyn.params
    store = store or default_store()
    key = make_key("vector_field_grid", model=model.sha256, latents=array_sha(dyn.train_latents),
                   attractors=array_sha(dyn.attractors), m=int(m), margin=float(margin), v=CACHE_VERSION,
                   max_steps=p["max_steps"], tol=p["tol"], merge_cos=p["merge_cos"])
    hit = store.get(key) if use_cache else None
    if hit is not None:
        return plane, FieldGrid(**hit)
    with latent_access(model, device) as (enc, dec):
        grid = field_on_plane(enc, dec, plane, bounds, m, p["max_steps"], p["tol"], p["merge_cos"], dyn.attractors,
                              scale=dyn.merge_scale)
    if use_cache:
        store.put(key, {k: np.asarray(getattr(grid, k)) for k in grid.__dataclass_fields__},
                  {"model": model.ref, "m": m}, kind="vector_field")
    return plane, grid


@dataclass
class OODResult:
    """Per-sample scores of the in-distribution set and each OOD set, for both scores, and the table."""

    scores: dict  # set name -> {"trajectory": array, "reconstruction": array}
    table: object  # DataFrame: OOD set, score, AUROC, FPR95
    in_name: str = "digits (held-out)"

    def winner(self, ood: str) -> str:
        """The score with the higher AUROC on ``ood`` (ties: 'tie')."""
        t = self.table[self.table["OOD set"] == ood].set_index("score")["AUROC"]
        if abs(t["trajectory"] - t["reconstruction"]) < 1e-9:
            return "tie"
        return str(t.idxmax())


SCORE_NAMES = ("trajectory", "reconstruction")


def ood_scores(model, train_attractors, in_x, out_sets: dict, max_steps: int = DEFAULTS["max_steps"],
               tol: float = DEFAULTS["tol"], device=None, store=None, use_cache: bool = True,
               progress: Callable[[float, str], None] | None = None) -> OODResult:
    """The trajectory score (mean distance of each trajectory to the training attractors) and the
    reconstruction error for ``in_x`` and every set in ``out_sets``; AUROC and FPR95 of each score
    for in-distribution against each OOD set (higher score = more out of distribution)."""
    import torch

    from .store import default_store, make_key

    if len(train_attractors) == 0:
        raise UserInputError("No training attractors: no training start converged. Raise the step cap.")
    sets = {"in": np.asarray(in_x, dtype=np.float32), **{k: np.asarray(v, dtype=np.float32)
                                                          for k, v in out_sets.items()}}
    store = store or default_store()
    scores: dict = {}
    report = progress or (lambda f, m: None)
    for i, (name, x) in enumerate(sets.items()):
        key = make_key("vector_field_ood", model=model.sha256, x=array_sha(x), att=array_sha(train_attractors),
                       max_steps=int(max_steps), tol=float(tol), v=CACHE_VERSION)
        hit = store.get(key) if use_cache else None
        if hit is None:
            report(i / len(sets), f"trajectories of {name}")
            with latent_access(model, device) as (enc, dec):
                z0 = map_rows(enc, x)
                traj = iterate(enc, dec, torch.from_numpy(z0), max_steps, tol, record_every=1)
                hit = {"trajectory": trajectory_score(traj, train_attractors),
                       "reconstruction": reconstruction_error(enc, dec, torch.from_numpy(x))}
            if use_cache:
                store.put(key, hit, {"model": model.ref, "set": name}, kind="vector_field")
        scores[name] = hit
    report(1.0, "done")
    ins = scores.pop("in")
    return OODResult(scores={"in": ins, **scores}, table=ood_table(ins, scores))


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


def ood_verdict(result: OODResult) -> str:
    """One plain sentence per OOD set saying which score separates it from the in-distribution set
    better (AUROC), and by how much."""
    lines = []
    sets = list(result.table["OOD set"].unique())
    winners = {result.winner(o) for o in sets}
    if len(winners) == 1 and "tie" not in winners:
        name = "Reconstruction error" if winners == {"reconstruction"} else "The trajectory score"
        lines.append(f"{name} wins on {'every one' if len(sets) > 1 else 'the one'} of the {len(sets)} OOD set"
                     f"{'s' if len(sets) > 1 else ''}.")
    for ood in sets:
        t = result.table[result.table["OOD set"] == ood].set_index("score")
        a_t, a_r = float(t.loc["trajectory", "AUROC"]), float(t.loc["reconstruction", "AUROC"])
        w = result.winner(ood)
        if w == "tie":
            lines.append(f"{ood}: both scores tie (AUROC {a_t:.3f}).")
            continue
        best, other = (a_r, a_t) if w == "reconstruction" else (a_t, a_r)
        name = "reconstruction error" if w == "reconstruction" else "the trajectory score"
        note = " — below chance: that score ranks these inputs as *more* typical than the digits" if other < 0.5 else ""
        lines.append(f"{ood}: {name} wins (AUROC {best:.3f} vs {other:.3f}{note}).")
    return " ".join(lines)


def is_cached(model, train_x, test_x, store=None, **params) -> bool:
    """Whether :func:`analyse` with these arguments would be a store lookup."""
    from .store import default_store, make_key

    p = {"n_starts": 300, "n_noise": 200, "max_steps": DEFAULTS["max_steps"], "tol": DEFAULTS["tol"],
         "merge_cos": DEFAULTS["merge_cos"], "seed": 0, **params}
    p = {"n_starts": int(p["n_starts"]), "n_noise": int(p["n_noise"]), "max_steps": int(p["max_steps"]),
         "tol": float(p["tol"]), "merge_cos": float(p["merge_cos"]), "seed": int(p["seed"])}
    key = make_key("vector_field", model=model.sha256, train=array_sha(np.asarray(train_x, dtype=np.float32)),
                   test=array_sha(np.asarray(test_x, dtype=np.float32)), v=CACHE_VERSION, **p)
    return key in (store or default_store())
