"""Matching the hidden units of two or more models of one architecture.

- :func:`unit_correlations`: Pearson correlation of every unit of model i with every unit of model
  j on the same inputs (each position of a feature map and each valid token counts as a sample),
  accumulated batch by batch in float64 around a provisional mean (the first batch's), so the
  covariance never subtracts two large sums.
- :func:`match_activations`: per layer, the Hungarian assignment (scipy's linear_sum_assignment)
  maximising the summed correlation of matched units' activations (after their nonlinearity; Li
  et al. 2016; Ainsworth et al. 2023, §3.1). A unit that never fires on the data correlates with
  nothing, so all such units would tie; the correlation of the pre-activations, weighted by
  ``TIE_BREAK``, decides between them (it changes no choice between units that fire).
- :func:`weight_matching`: Ainsworth et al.'s weight matching: maximise sum_l <W_l^A, P_l W_l^B P_{l-1}^T>
  by coordinate descent, one layer's permutation at a time (a linear assignment given the others),
  in random order, until a whole sweep changes nothing.
"""
from __future__ import annotations

import numpy as np

from .units import UnitGroup, expand

MAX_SWEEPS = 100
TIE_BREAK = 1e-3


# ------------------------------------------------------------------ activations
class _Moments:
    """Running first and second moments of several models' units, shifted by a provisional centre."""

    def __init__(self, n_models: int):
        self.n = 0
        self.shift: list = [None] * n_models
        self.s: list = [None] * n_models
        self.ss: list = [None] * n_models
        self.cross: dict = {}

    def add(self, xs: list[np.ndarray]) -> None:
        if self.shift[0] is None:
            for i, x in enumerate(xs):
                self.shift[i] = x.mean(0)
                self.s[i] = np.zeros(x.shape[1])
                self.ss[i] = np.zeros(x.shape[1])
        centred = [x - self.shift[i] for i, x in enumerate(xs)]
        self.n += len(xs[0])
        for i, c in enumerate(centred):
            self.s[i] += c.sum(0)
            self.ss[i] += (c * c).sum(0)
            for j in range(i + 1, len(centred)):
                self.cross[(i, j)] = self.cross.get((i, j), 0.0) + c.T @ centred[j]

    def correlation(self, i: int, j: int) -> np.ndarray:
        n = max(self.n, 1)
        mi, mj = self.s[i] / n, self.s[j] / n
        cov = self.cross[(i, j)] / n - np.outer(mi, mj)
        sd_i = np.sqrt(np.maximum(self.ss[i] / n - mi * mi, 0.0))
        sd_j = np.sqrt(np.maximum(self.ss[j] / n - mj * mj, 0.0))
        corr = cov / np.maximum(np.outer(sd_i, sd_j), 1e-300)
        corr[sd_i <= 1e-12 * max(float(sd_i.max(initial=0.0)), 1e-300)] = 0.0  # a dead unit correlates with nothing
        corr[:, sd_j <= 1e-12 * max(float(sd_j.max(initial=0.0)), 1e-300)] = 0.0
        return corr


def _unit_rows(out, group: UnitGroup, mask, same_tokens: bool) -> np.ndarray:
    """One row per sample (and position / valid token) with the group's units as columns."""
    import torch

    out = out[0] if isinstance(out, (tuple, list)) else out
    out = out.detach().float()
    if group.tokens:
        if mask is not None and same_tokens:
            return out[mask.bool()].cpu().double().numpy()
        m = torch.ones(out.shape[:2], device=out.device) if mask is None else mask.to(out.dtype)
        return ((out * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)).cpu().double().numpy()
    if out.ndim > 2:
        out = out.movedim(1, -1).reshape(-1, out.shape[1])
    return out.cpu().double().numpy()


def _streams(groups: list[UnitGroup]) -> list[tuple[str, str, UnitGroup]]:
    """(stream key, module, group): each group's units after their nonlinearity, and before it."""
    out = [(g.name, g.probe, g) for g in groups]
    return out + [(f"{g.name}{PRE}", g.name, g) for g in groups if g.probe != g.name]


PRE = " (pre-activation)"


def unit_correlations(models: list, ds, groups: list[UnitGroup], batch_size: int = 128, device=None,
                      progress=None) -> dict:
    """{(i, j): {group name: (d x d) correlation of model i's units (rows) with model j's (columns)}}
    for every pair i < j, from one pass of all models over ``ds``; the same for the
    pre-activations under ``name + PRE`` where the units have a nonlinearity."""
    import torch

    from ..device import pick

    dev = pick(device)
    streams = _streams(groups)
    moments = {key: _Moments(len(models)) for key, _, _ in streams}
    iters = [m.batches(ds, batch_size, dev) for m in models]
    n = len(ds)
    for batches in zip(*iters):
        masks = [b.mask for b in batches]
        same_tokens = all(m is not None and masks[0] is not None and m.shape == masks[0].shape
                          and bool((m == masks[0]).all()) for m in masks)
        rows = {key: [] for key, _, _ in streams}
        for model, batch in zip(models, batches):
            captured = {}
            mods = model.hookable()
            with model.lock:  # a shared model: its hooks and its forward pass are this call's alone
                handles = [mods[module].register_forward_hook(
                    lambda _m, _i, out, key=key, g=g: captured.__setitem__(key, _unit_rows(out, g, batch.mask,
                                                                                           same_tokens)))
                    for key, module, g in streams]
                try:
                    with torch.no_grad():
                        model.to(dev)
                        model.run(batch)
                finally:
                    for h in handles:
                        h.remove()
                    model.to("cpu")
            for key in rows:
                rows[key].append(captured[key])
        for key in rows:
            moments[key].add(rows[key])
        if progress:
            progress(batches[0].rows.stop / n, f"unit activations: {batches[0].rows.stop}/{n} samples")
    pairs = [(i, j) for i in range(len(models)) for j in range(i + 1, len(models))]
    return {(i, j): {key: moments[key].correlation(i, j) for key in moments} for i, j in pairs}


def hungarian(score: np.ndarray) -> np.ndarray:
    """perm with perm[a] = the column matched to row a, maximising the summed score."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.empty(score.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def match_activations(correlations: dict) -> dict:
    """Per group, the permutation of B's units (columns) that best matches A's (rows)."""
    return {name: hungarian(c + TIE_BREAK * correlations.get(f"{name}{PRE}", 0.0))
            for name, c in correlations.items() if not name.endswith(PRE)}


# ------------------------------------------------------------------ weights
def _touching(groups: list[UnitGroup]) -> dict:
    """state-dict key -> [(group, member)] of every group that permutes an axis of that tensor."""
    out: dict = {}
    for g in groups:
        for m in g.members:
            out.setdefault(m.key, []).append((g, m))
    return out


def _as_rows(t, axis: int, size: int) -> np.ndarray:
    """The tensor with the units' axis first and everything else flattened: (units, rest)."""
    return t.movedim(axis, 0).reshape(size, -1).double().numpy()


def weight_matching(state_a: dict, state_b: dict, groups: list[UnitGroup], seed: int = 0,
                    max_sweeps: int = MAX_SWEEPS, progress=None) -> tuple[dict, int]:
    """Ainsworth et al.'s weight matching; returns (perms, sweeps used)."""
    import torch

    touching = _touching(groups)
    perms = {g.name: np.arange(g.size) for g in groups}
    rng = np.random.default_rng(seed)
    for sweep in range(1, max_sweeps + 1):
        changed = False
        for gi in rng.permutation(len(groups)):
            g = groups[gi]
            score = np.zeros((g.size, g.size))
            for m in g.members:
                wb = state_b[m.key]
                for other, om in touching[m.key]:  # B's tensor with every other group's order applied
                    if other.name != g.name:
                        wb = wb.index_select(om.axis, torch.as_tensor(expand(perms[other.name], om.repeat)))
                # a unit's entries along the axis are consecutive (``repeat`` of them), so one row each
                wa, wbr = _as_rows(state_a[m.key], m.axis, g.size), _as_rows(wb, m.axis, g.size)
                score += wa @ wbr.T
            new = hungarian(score)
            old_value = score[np.arange(g.size), perms[g.name]].sum()
            if score[np.arange(g.size), new].sum() > old_value + 1e-12 * max(abs(old_value), 1.0):
                perms[g.name], changed = new, True
        if progress:
            progress(min(sweep / 10, 0.95), f"weight matching: sweep {sweep}")
        if not changed:
            return perms, sweep
    return perms, max_sweeps
