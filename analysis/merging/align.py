"""Permutation alignment of two models of one architecture (Ainsworth et al., "Git Re-Basin", 2023).

``align(model_a, model_b, ds, method)`` returns model B with each hidden layer's units reordered to
match A's. Reordering units (and every tensor that reads or writes them) changes nothing B
computes: the result's outputs equal B's. It changes which units sit at the same index as A's,
which is what averaging weights (see :mod:`analysis.merging.interpolate`) needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError
from . import matching
from .units import UnitGroup, check_same_groups, permute_state, unit_groups
from .weights import state_of, with_state

METHODS = ("activations", "weights")


@dataclass
class Alignment:
    """Per layer, ``perms[name][j]`` = the unit of B placed at index j (matched to A's unit j).
    ``before`` / ``after``: mean correlation of A's unit j with B's unit j, before and after the
    reordering, over the pairs whose units both fire on the data; ``silent``: how many units of A
    and of B never fire there (when activations were measured)."""

    method: str
    layers: list
    sizes: list
    perms: dict
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    sweeps: int = 0
    silent: dict = field(default_factory=dict)


def groups_of(model_a, model_b) -> list[UnitGroup]:
    ga, gb = unit_groups(model_a), unit_groups(model_b)
    check_same_groups(ga, gb, model_a.ref, model_b.ref)
    return ga


def _check_method(method: str, ds) -> None:
    if method not in METHODS:
        raise UserInputError(f"Unknown alignment method {method!r}; use one of {', '.join(METHODS)}.")
    if method == "activations" and ds is None:
        raise UserInputError("Matching by activations needs data: pass a dataset, or use method='weights'.")


def permutations(model_a, model_b, ds=None, method: str = "activations", seed: int = 0, batch_size: int = 128,
                 device=None, progress=None) -> Alignment:
    """The unit permutations that align B to A (see the module docstring)."""
    _check_method(method, ds)
    groups = groups_of(model_a, model_b)
    names, sizes = [g.name for g in groups], [g.size for g in groups]
    corr = None
    if ds is not None:
        model_a.check_data(ds)
        model_b.check_data(ds)
        sub = None if progress is None else (lambda f, m: progress(0.6 * f, m))
        corr = matching.unit_correlations([model_a, model_b], ds, groups, batch_size, device, sub)[(0, 1)]
    sweeps = 0
    if method == "activations":
        perms = matching.match_activations(corr)
    else:
        sub = None if progress is None else (lambda f, m: progress(0.6 + 0.4 * f, m))
        perms, sweeps = matching.weight_matching(state_of(model_a), state_of(model_b), groups, seed, progress=sub)
    before, after, silent = {}, {}, {}
    if corr is not None:
        for n in names:
            before[n], _ = _pair_quality(corr[n], np.arange(len(perms[n])))
            after[n], silent[n] = _pair_quality(corr[n], perms[n])
    if progress:
        progress(1.0, "aligned")
    return Alignment(method, names, sizes, {n: np.asarray(perms[n], dtype=np.int64) for n in names}, before, after,
                     sweeps, silent)


def _pair_quality(corr: np.ndarray, perm: np.ndarray) -> tuple[float, list]:
    """Mean correlation of the pairs (a, perm[a]) whose units both fire, and [silent units of A, of B]
    (a silent unit's row or column of correlations is all zero)."""
    live_a, live_b = corr.any(1), corr.any(0)
    both = live_a & live_b[perm]
    value = float(np.mean(corr[np.arange(len(perm)), perm][both])) if both.any() else float("nan")
    return value, [int((~live_a).sum()), int((~live_b).sum())]


def apply(model_b, alignment: Alignment, groups: list[UnitGroup] | None = None):
    """Model B with its units reordered by ``alignment`` (a new model; B is not changed)."""
    groups = groups or unit_groups(model_b)
    known = {g.name: g.size for g in groups}
    for name, size in zip(alignment.layers, alignment.sizes):
        if known.get(name) != size:
            raise UserInputError(f"This alignment was found for another architecture (layer {name}).")
    state = permute_state(state_of(model_b), groups, alignment.perms)
    return with_state(model_b, state, ref=model_b.ref, name=f"{model_b.name} (aligned)", alignment=alignment)


def align(model_a, model_b, ds=None, method: str = "activations", seed: int = 0, batch_size: int = 128,
          device=None, progress=None):
    """Model B with each hidden layer's units permuted to match model A's; the permutations are in
    the returned model's ``alignment`` attribute (:class:`Alignment`)."""
    found = permutations(model_a, model_b, ds, method, seed, batch_size, device, progress)
    return apply(model_b, found)
