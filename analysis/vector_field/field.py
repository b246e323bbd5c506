"""The vector field V(z) = E(D(z)) - z on a grid: exact in a 2-D latent space, in the PCA plane of the
training latents otherwise."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from .access import array_sha, latent_access
from .attractors import find_attractors
from .dynamics import CACHE_VERSION, DEFAULTS, _f, iterate
from .pipeline import LatentDynamics


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


def field_view(model, dyn: LatentDynamics, m: int = 30, margin: float = 0.15, device=None, store=None,
               use_cache: bool = True) -> tuple[Plane, FieldGrid]:
    """The plane of ``dyn``'s training latents and the field and basins on an m x m grid over them
    (cached in the store)."""
    from ..store import default_store, make_key

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
