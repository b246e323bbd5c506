"""Streamlines of a 2-D vector field sampled on a regular grid (the latent field on a plane, see
:mod:`analysis.vector_field`): bilinear interpolation of the grid and second-order Runge–Kutta
steps along the field's direction. Figures only draw the lines this returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Streamlines:
    """Lines traced through a field, for drawing.

    x, y : the lines' points, one line after another, separated by NaN (a gap in a plot)
    seeds_x, seeds_y : where each line was seeded
    dir_u, dir_v : the field's direction at each seed, in box-normalised coordinates (arrowheads)
    """

    x: np.ndarray
    y: np.ndarray
    seeds_x: np.ndarray
    seeds_y: np.ndarray
    dir_u: np.ndarray
    dir_v: np.ndarray


def bilinear(u, v, a, px, py) -> np.ndarray:
    """Values of the grid array ``a`` (rows: v, columns: u) at the points (px, py); NaN outside."""
    u, v, a = np.asarray(u, float), np.asarray(v, float), np.asarray(a, float)
    px, py = np.asarray(px, float), np.asarray(py, float)
    fx = (px - u[0]) / (u[-1] - u[0]) * (len(u) - 1)
    fy = (py - v[0]) / (v[-1] - v[0]) * (len(v) - 1)
    inside = (fx >= 0) & (fx <= len(u) - 1) & (fy >= 0) & (fy <= len(v) - 1)
    fx, fy = np.where(inside, fx, 0.0), np.where(inside, fy, 0.0)
    i = np.clip(np.floor(fx).astype(int), 0, len(u) - 2)
    j = np.clip(np.floor(fy).astype(int), 0, len(v) - 2)
    tx, ty = np.clip(fx - i, 0, 1), np.clip(fy - j, 0, 1)
    val = (a[j, i] * (1 - tx) * (1 - ty) + a[j, i + 1] * tx * (1 - ty) + a[j + 1, i] * (1 - tx) * ty
           + a[j + 1, i + 1] * tx * ty)
    return np.where(inside, val, np.nan)


def streamlines(u, v, vu, vv, seeds: int = 12, steps: int = 14) -> Streamlines:
    """Streamlines of the field (``vu``, ``vv`` on the grid ``u`` x ``v``), traced both ways from a
    ``seeds x seeds`` grid of seeds. Steps follow the unit direction in box-normalised coordinates,
    so lines look right on any aspect ratio, and each half line is about 0.9 seed spacings long; a
    line stops where it leaves the grid or the field vanishes."""
    u, v = np.asarray(u, float), np.asarray(v, float)
    su, sv = u[-1] - u[0], v[-1] - v[0]
    s = (np.arange(seeds) + 0.5) / seeds
    sx, sy = (a.ravel() for a in np.meshgrid(s, s))
    h = 0.9 / seeds / steps

    def direction(px, py):
        x, y = u[0] + px * su, v[0] + py * sv
        a, b = bilinear(u, v, vu, x, y) / su, bilinear(u, v, vv, x, y) / sv
        n = np.hypot(a, b)
        n = np.where(n > 1e-15, n, np.nan)
        return a / n, b / n

    halves = []
    for sign in (1.0, -1.0):
        px, py = sx.copy(), sy.copy()
        xs, ys = [px], [py]
        for _ in range(steps):
            dx, dy = direction(px, py)
            mx, my = direction(px + sign * 0.5 * h * dx, py + sign * 0.5 * h * dy)
            px, py = px + sign * h * mx, py + sign * h * my
            xs.append(px)
            ys.append(py)
        halves.append((np.array(xs), np.array(ys)))
    (fx, fy), (bx, by) = halves
    line_x, line_y = [], []
    for k in range(len(sx)):
        x = np.concatenate([bx[::-1, k], fx[1:, k]])
        y = np.concatenate([by[::-1, k], fy[1:, k]])
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.sum() < 2:
            continue
        line_x += [u[0] + x[ok] * su, [np.nan]]
        line_y += [v[0] + y[ok] * sv, [np.nan]]
    dx, dy = direction(sx, sy)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)
    return Streamlines(cat(line_x), cat(line_y), u[0] + sx * su, v[0] + sy * sv, dx, dy)
