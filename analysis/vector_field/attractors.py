"""Fixed points of the latent map: end points merged into attractors (cosine rule plus its chord at
the latent scale), and the Jacobian spectral radius that tells attractors from saddles."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from .dynamics import DEFAULTS, _f, _unit, rms_norm


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
