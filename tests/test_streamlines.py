"""Streamlines of a gridded 2-D field (analysis.vector_field.streamlines): interpolation and integration with
known answers, and the measured cost model of the Vector field view (analysis.vector_field.cost)."""
import threading

import numpy as np
import pytest
import torch

from analysis import vector_field as vf
from analysis.vector_field import cost
from analysis.vector_field.streamlines import bilinear, streamlines

U = np.linspace(-1.0, 1.0, 41)
V = np.linspace(-2.0, 2.0, 31)  # another scale on y: lines must still follow the field
UU, VV = np.meshgrid(U, V)


def lines(s):
    """The separate lines of a Streamlines (NaN between them)."""
    cuts = np.nonzero(np.isnan(s.x))[0]
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [(s.x[a:b], s.y[a:b]) for a, b in zip(starts, cuts)]


def test_bilinear_interpolation_is_exact_for_bilinear_functions_and_nan_outside():
    f = lambda x, y: 2 + 3 * x - y + 0.5 * x * y
    px, py = np.array([0.13, -0.71, 0.999, 1.2]), np.array([1.37, -0.2, -1.99, 0.0])
    got = bilinear(U, V, f(UU, VV), px, py)
    np.testing.assert_allclose(got[:3], f(px[:3], py[:3]), rtol=1e-12)
    assert np.isnan(got[3])


def test_a_uniform_field_gives_straight_lines_along_it():
    s = streamlines(U, V, np.full_like(UU, 1.0), np.full_like(UU, 2.0), seeds=6, steps=10)
    for x, y in lines(s):
        d = np.diff(np.stack([x, y], 1), axis=0)
        np.testing.assert_allclose(d[:, 1] / d[:, 0], 2.0, rtol=1e-9)  # the field's slope, on any aspect ratio
    np.testing.assert_allclose(np.arctan2(s.dir_v, s.dir_u), np.arctan2(2 / 4, 1 / 2), rtol=1e-12)


def test_a_rotation_field_gives_circles():
    """V = (-y, x) (on a square box): every streamline keeps its distance from the centre (RK2 error
    only, second order in the step)."""
    u = np.linspace(-1, 1, 81)
    uu, vv = np.meshgrid(u, u)
    s = streamlines(u, u, -vv, uu, seeds=8, steps=14)
    found = lines(s)
    assert len(found) == 64
    for x, y in found:
        r = np.hypot(x, y)
        assert r.max() - r.min() < 2e-3 * max(r.mean(), 0.05)


def test_a_line_stops_where_it_leaves_the_grid():
    s = streamlines(U, V, np.full_like(UU, 1.0), np.zeros_like(UU), seeds=4, steps=40)
    assert np.nanmax(s.x) <= U[-1] and np.nanmin(s.x) >= U[0]


# ------------------------------------------------------------------ the cost model, on a known map
class HalvingAE:
    """f(z) = z / 2 as an autoencoder (decode = identity, encode halves): a start z0 moves by
    ||z_t - z_{t-1}||^2 = ||z0||^2 / 4^t, so its number of steps is known in closed form."""

    is_autoencoder = True
    ref, sha256 = "test:halving", "f" * 64

    def __init__(self):
        self.lock = threading.Lock()

    def to(self, device):
        return self

    def encode(self, x):
        return x.reshape(len(x), -1).double() / 2

    def decode(self, z):
        return z


def test_the_pilot_counts_the_steps_trajectories_take():
    cost.forget()
    x = np.random.default_rng(3).uniform(0.2, 1.0, size=(50, 2)).astype(np.float32)
    tol, seed = 1e-6, 4
    pilot = cost.pilot(HalvingAE(), x, max_steps=500, tol=tol, seed=seed)
    rows = np.random.default_rng(seed).choice(len(x), cost.PILOT_STARTS, replace=False)
    z0 = np.concatenate([x[rows], vf.noise_inputs((2,), cost.PILOT_STARTS, seed)]).astype(np.float64) / 2
    # smallest t with ||z0||^2 / 4^t < tol
    expected = np.floor(np.log(np.sum(z0 ** 2, 1) / tol) / np.log(4)) + 1
    assert pilot.mean_steps == pytest.approx(expected.mean()) and pilot.max_steps == expected.max()
    assert cost.calls(pilot, 500) == min(500, cost.TAIL * expected.max())
    assert cost.calls(pilot, 5) == 5


def test_step_cost_is_measured_once_per_model():
    cost.forget()
    x = np.ones((4, 2), np.float32)
    first = cost.step_cost(HalvingAE(), x)
    assert first.per_call > 0 and first.per_row >= 0 and first.per_jacobian > 0 and first.latent_dim == 2
    assert cost.step_cost(HalvingAE(), x) is first


def test_trajectory_score_memory_is_its_distance_tensor():
    steps, rows, atts, k = 7, 5, 3, 4
    path = torch.zeros(steps + 1, rows, k).numpy()
    diff = path[..., None, :] - np.zeros((atts, k))[None, None]  # what vf.trajectory_score forms (float64)
    assert cost.trajectory_score_bytes(steps, rows, atts, k) == 2 * diff.astype(np.float64).nbytes
