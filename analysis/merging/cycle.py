"""Cycle-consistent alignment of three or more models.

Aligning models pairwise gives maps that need not agree: going from model 0 to 1, 1 to 2 and 2
back to 0 can land on another unit than the one started from. Here every model is mapped to one
shared "universe" ordering instead (the frame of model 0), so the map from j to i is
``universe -> i`` after ``j -> universe``, and any cycle of maps composes to the identity by
construction.

The maps to the universe come from permutation synchronisation (Pachauri, Kondor & Singh,
NeurIPS 2013): stack every pairwise permutation matrix P_ij in one symmetric block matrix, take its
top d eigenvectors U (md x d), and round U_0 U_i^T to a permutation with the Hungarian algorithm.
When the pairwise maps already agree this returns them exactly; when they disagree it uses all of
them, not those through one reference model only. (Crisostomi et al. 2024, "C2M3", optimise the
same kind of universe maps with Frank-Wolfe on the weights.)
"""
from __future__ import annotations

import numpy as np

from ..errors import UserInputError
from . import matching
from .align import Alignment, _check_method, groups_of
from .units import permute_state
from .weights import state_of, with_state


def pairwise_matrix(perm: np.ndarray) -> np.ndarray:
    """P with P[a, perm[a]] = 1: rows are the units of the first model, columns of the second."""
    d = len(perm)
    p = np.zeros((d, d))
    p[np.arange(d), perm] = 1.0
    return p


def synchronise(pairwise: dict, n_models: int, size: int) -> list[np.ndarray]:
    """Maps to the universe from pairwise permutations ``pairwise[(i, j)]`` (i < j; perm[a] = unit of
    j matched to unit a of i). Returns perms with perms[i][a] = the unit of model i at universe
    position a; perms[0] is the identity."""
    w = np.eye(n_models * size)
    for (i, j), perm in pairwise.items():
        p = pairwise_matrix(perm)
        w[i * size:(i + 1) * size, j * size:(j + 1) * size] = p
        w[j * size:(j + 1) * size, i * size:(i + 1) * size] = p.T
    _, vectors = np.linalg.eigh(w)
    u = vectors[:, -size:]
    blocks = [u[i * size:(i + 1) * size] for i in range(n_models)]
    out = [np.arange(size)]
    for i in range(1, n_models):
        out.append(matching.hungarian(blocks[0] @ blocks[i].T))
    return out


def relative_permutation(perms: list[np.ndarray], i: int, j: int) -> np.ndarray:
    """q with q[u] = the unit of model i that corresponds to unit u of model j (through the universe)."""
    q = np.empty(len(perms[j]), dtype=np.int64)
    q[perms[j]] = perms[i]
    return q


def consistent_permutations(models: list, ds=None, method: str = "activations", seed: int = 0,
                            batch_size: int = 128, device=None, progress=None) -> list[Alignment]:
    """One :class:`Alignment` per model mapping it into model 0's frame, cycle-consistent."""
    if len(models) < 2:
        raise UserInputError("Aligning needs at least two models.")
    _check_method(method, ds)
    groups = groups_of(models[0], models[1])
    for m in models[2:]:
        groups_of(models[0], m)
    pairs = [(i, j) for i in range(len(models)) for j in range(i + 1, len(models))]
    if method == "activations":
        corr = matching.unit_correlations(models, ds, groups, batch_size, device, progress)
        pairwise = {pair: matching.match_activations(corr[pair]) for pair in pairs}
    else:
        states = [state_of(m) for m in models]
        pairwise = {(i, j): matching.weight_matching(states[i], states[j], groups, seed)[0] for i, j in pairs}
    universe = {g.name: synchronise({p: pairwise[p][g.name] for p in pairs}, len(models), g.size) for g in groups}
    names, sizes = [g.name for g in groups], [g.size for g in groups]
    return [Alignment(method, names, sizes, {n: universe[n][i] for n in names}) for i in range(len(models))]


def align_many(models: list, ds=None, method: str = "activations", seed: int = 0, batch_size: int = 128,
               device=None, progress=None) -> list:
    """Every model with its units reordered into model 0's frame (model 0 itself unchanged), so that
    unit j of each returned model corresponds to unit j of every other one."""
    found = consistent_permutations(models, ds, method, seed, batch_size, device, progress)
    groups = groups_of(models[0], models[0])
    return [models[0]] + [with_state(m, permute_state(state_of(m), groups, a.perms), name=f"{m.name} (aligned)",
                                     alignment=a) for m, a in zip(models[1:], found[1:])]
