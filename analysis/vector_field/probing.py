"""Data-free probing: attractors reached from noise as an OMP dictionary for real data, against a
random orthonormal basis of the same size."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from .dynamics import _unit


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
