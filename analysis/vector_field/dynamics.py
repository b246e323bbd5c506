"""Iterating z <- E(D(z)) from many starts at once, as one batch on one device."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import UserInputError

if TYPE_CHECKING:
    from .attractors import Attractors


CACHE_VERSION = 2  # 2: the scale-aware distance rule merges end points near the origin


DEFAULTS = {"max_steps": 500, "tol": 1e-6, "merge_cos": 0.99}


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
        from .attractors import find_attractors  # attractors build on trajectories, not the reverse

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
    # Bookkeeping stays on z's device; the only sync per step is whether a row stopped (the
    # active set then shrinks). Everything goes to the CPU once, at the end.
    active = torch.arange(n, device=z.device)
    steps = torch.full((n,), max_steps, dtype=torch.int64, device=z.device)
    converged = torch.zeros(n, dtype=torch.bool, device=z.device)
    residuals = torch.full((max_steps, n), float("nan"), dtype=torch.float64, device=z.device)
    path = [z.detach().clone()]
    recorded = [0]
    t = 0
    with torch.no_grad():
        for t in range(1, max_steps + 1):
            za = z[active]
            nxt = f(za)
            r = ((nxt.double() - za.double()) ** 2).sum(1)
            z[active] = nxt.to(z.dtype)
            residuals[t - 1, active] = r
            done = r < tol
            if bool(done.any()):
                stopped = active[done]
                steps[stopped] = t
                converged[stopped] = True
                active = active[~done]
            if record_every and t % record_every == 0:
                path.append(z.clone())
                recorded.append(t)
            if progress and t % 25 == 0:
                progress(t / max_steps, f"step {t}: {len(active)} of {n} trajectories still moving")
            if len(active) == 0:
                break
    if recorded[-1] != t:
        path.append(z.clone())
        recorded.append(t)
    return Trajectories(torch.stack(path).cpu().numpy(), np.asarray(recorded), z.cpu().numpy(),
                        converged.cpu().numpy(), steps.cpu().numpy(),
                        residuals[:t].cpu().numpy(), float(tol), int(max_steps))


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


def _unit(x: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(x, axis=1)
    return x / np.maximum(norm, eps)[:, None], norm


def rms_norm(z) -> float:
    z = np.asarray(z, dtype=np.float64)
    return float(np.sqrt((z * z).sum(-1).mean())) if z.size else 0.0
