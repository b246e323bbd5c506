"""What iterating an autoencoder's latent map costs, measured on the model itself, so that the
Vector field view can say "about N s" before it starts (and the server can refuse what is over its
ceiling).

The time of a run is (applications of f = E∘D) x (their cost). The cost of one application has a
part per call and a part per row (:func:`step_cost`, timed on a batch). How many applications a
run needs depends on how fast trajectories converge, which no formula knows: :func:`pilot`
iterates a handful of starts to find out. Both are measured once per model and parameters in a
process and remembered.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

PILOT_STARTS = 8  # data starts and as many noise starts
BATCH = 256
TIMED_STEPS = 5
JACOBIANS = 16
OVERHEAD_S = 0.3  # measured: reference set encoding, merging, nearest training images, storing the result
SCORE_S_PER_ELEMENT = 3e-8  # measured: numpy float64 broadcast, square, sum and min (a loaded 2-core machine)
TAIL = 2  # the slowest of hundreds of starts takes about twice the slowest of the pilot's (capped)
OOD_TAIL = 4  # inputs far from the data (inverted, shuffled, uniform noise) are slower still: measured
COSINE_S_PER_ELEMENT = 1e-9  # float64 products of the held-out set with the training set
OMP_S_PER_FIT = 6e-5  # measured: argmax over the atoms plus lstsq on a few of them (64 inputs)
_LOCK = threading.Lock()
_MEASURED: dict = {}


@dataclass(frozen=True)
class StepCost:
    """Seconds of one iteration step: ``per_call`` + ``per_row`` x rows; ``per_jacobian``: the
    Jacobian of f at one point; ``latent_dim`` k."""

    per_call: float
    per_row: float
    per_jacobian: float
    latent_dim: int

    def seconds(self, calls: float, row_steps: float) -> float:
        return calls * self.per_call + row_steps * self.per_row


@dataclass(frozen=True)
class Pilot:
    """How trajectories of this model converge: mean and largest number of steps over a few data
    starts and noise starts (each capped at the step cap)."""

    mean_steps: float
    max_steps: int


def _remember(key, measure):
    with _LOCK:
        if key in _MEASURED:
            return _MEASURED[key]
    value = measure()
    with _LOCK:
        _MEASURED[key] = value
    return value


def _typical_time(fn, repeats: int = 5) -> float:
    """The median of a few timings: the machine as it is now, load included (the run will share it)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def step_cost(model, x, device=None) -> StepCost:
    """The cost of one step of :func:`analysis.vector_field.iterate` on this machine (f and the
    loop's own bookkeeping), timed on one row and on a batch, and of one Jacobian of f. The first
    Jacobian in a process imports torch's tracing machinery (seconds): it is paid here, where the
    estimate is made, rather than inside the job whose time teaches later estimates."""
    def measure():
        import torch

        from . import iterate, jacobian_spectral_radius, latent_access, map_rows

        rows = np.resize(np.asarray(x, dtype=np.float32), (BATCH, *np.shape(x)[1:]))
        with latent_access(model, device) as (enc, dec):
            z = torch.from_numpy(map_rows(enc, rows))
            run = lambda n: iterate(enc, dec, z[:n], TIMED_STEPS, 1e-300, record_every=0)  # never converges
            run(1)  # the first call pays for lazy initialisation
            jacobian_spectral_radius(enc, dec, z[:2])
            one = _typical_time(lambda: run(1)) / TIMED_STEPS
            many = _typical_time(lambda: run(BATCH)) / TIMED_STEPS
            jac = _typical_time(lambda: jacobian_spectral_radius(enc, dec, z[:JACOBIANS]), 3) / JACOBIANS
        return StepCost(one, max(many - one, 0.0) / (BATCH - 1), jac, int(z.shape[1]))

    return _remember(("step", model.sha256, str(device)), measure)


def prepare_scoring() -> None:
    """AUROC ranks with scipy.stats, seconds to import the first time in a process: import it where
    the estimate is made (see :func:`step_cost`)."""
    import scipy.stats  # noqa: F401


def pilot(model, x, max_steps: int, tol: float, seed: int = 0, device=None) -> Pilot:
    """Iterate :data:`PILOT_STARTS` rows of ``x`` and as many noise starts to convergence."""
    def measure():
        import torch

        from ..vector_field import iterate, latent_access, map_rows, noise_inputs

        x_arr = np.asarray(x, dtype=np.float32)
        rows = np.random.default_rng(seed).choice(len(x_arr), min(PILOT_STARTS, len(x_arr)), replace=False)
        starts = np.concatenate([x_arr[rows], noise_inputs(x_arr.shape[1:], PILOT_STARTS, seed)])
        with latent_access(model, device) as (enc, dec):
            z0 = torch.from_numpy(map_rows(enc, starts))
            traj = iterate(enc, dec, z0, max_steps, tol, record_every=0)
        return Pilot(float(traj.steps.mean()), int(traj.steps.max()))

    return _remember(("pilot", model.sha256, int(max_steps), float(tol), int(seed), str(device)), measure)


def calls(pilot: Pilot, cap: int, tail: float = TAIL) -> int:
    """Steps until the slowest of many starts stops."""
    return int(min(cap, tail * pilot.max_steps))


def iteration_seconds(cost: StepCost, rows: int, mean_steps: float, n_calls: int) -> float:
    """Iterating ``rows`` starts as one batch: ``n_calls`` steps (until the slowest row stops),
    ``rows x mean_steps`` row applications."""
    return cost.seconds(n_calls, rows * mean_steps)


def cosine_seconds(rows: int, reference_rows: int, features: int) -> float:
    """The most similar training row of each of ``rows`` rows."""
    return COSINE_S_PER_ELEMENT * rows * reference_rows * features


def jacobian_seconds(cost: StepCost, points: int) -> float:
    """Jacobians of f at ``points`` attractors."""
    return cost.per_jacobian * points


def trajectory_score_seconds(steps: int, rows: int, attractors: int, latent_dim: int) -> float:
    """The trajectory score's distances (float64, every recorded point to every attractor)."""
    return SCORE_S_PER_ELEMENT * (steps + 1) * rows * max(attractors, 1) * latent_dim


def omp_seconds(rows: int, atoms: int) -> float:
    """Orthogonal matching pursuit of ``rows`` images with ``atoms`` atoms, from the attractors and
    from the random basis: one small least-squares fit per atom chosen."""
    return OMP_S_PER_FIT * 2 * rows * atoms


def trajectory_score_bytes(steps: int, rows: int, attractors: int, latent_dim: int) -> int:
    """Peak memory of the trajectory score: distances from every recorded point to every training
    attractor, in float64, with the difference tensor it is made from."""
    return int(2 * 8 * (steps + 1) * rows * max(attractors, 1) * latent_dim)


def forget() -> None:
    with _LOCK:
        _MEASURED.clear()
