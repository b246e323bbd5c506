"""The loss along the straight line between two models' weights, and its barrier.

theta(alpha) = (1 - alpha) theta_A + alpha theta_B for alpha on an even grid of ``steps`` points.
The barrier (Frankle et al. 2020; Entezari et al. 2022) is the largest excess of the loss over the
straight line between the endpoints' losses:

    B = max_alpha [ L(theta(alpha)) - ((1 - alpha) L(theta_A) + alpha L(theta_B)) ]

Averaged weights no longer produce the activation statistics that the models' BatchNorm layers
recorded, so where a model has any, they are recomputed at every alpha on the data before the loss
is measured (the "reset" of Jordan et al. 2023, "REPAIR", and Ainsworth et al. 2023), exactly over
all rows rather than as a running average over batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from . import task as task_mod
from .weights import check_same_shapes, lerp, state_of, with_state


@dataclass
class Interpolation:
    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None  # classifiers only
    metric: str  # "cross-entropy" or "reconstruction MSE"
    barrier: float
    barrier_alpha: float
    renormalised: bool  # BatchNorm statistics were recomputed at each alpha


def barrier(alphas, losses) -> tuple[float, float]:
    """(max over alpha of the loss above the endpoints' straight line, the alpha where it is)."""
    alphas, losses = np.asarray(alphas, np.float64), np.asarray(losses, np.float64)
    excess = losses - ((1 - alphas) * losses[0] + alphas * losses[-1])
    i = int(np.argmax(excess))
    return float(excess[i]), float(alphas[i])


def has_batchnorm(module) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def renormalise(model, ds, batch_size: int = 256, device=None) -> None:
    """Set every BatchNorm layer's running mean and (unbiased) variance to the exact statistics of
    its input over all rows of ``ds`` (and positions of a feature map), in place on ``model``'s own
    module (a copy made for this purpose). Layers are set in forward order, one pass each, so each
    one sees its input as the model in evaluation mode produces it (earlier layers already reset)."""
    import torch

    norms = [m for m in model.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        sums = {"n": 0, "s": 0.0, "ss": 0.0}

        def record(_m, inputs, sums=sums):
            x = inputs[0].detach().double()
            x = x.movedim(1, -1).reshape(-1, x.shape[1])  # channels last, one row per sample and position
            shift = sums.setdefault("shift", x[0].clone())  # sums around a provisional centre: no cancellation
            sums["n"] += x.shape[0]
            sums["s"] = sums["s"] + (x - shift).sum(0)
            sums["ss"] = sums["ss"] + ((x - shift) ** 2).sum(0)

        handle = norm.register_forward_pre_hook(record)
        try:
            task_mod.outputs(model, ds, batch_size, device)
        finally:
            handle.remove()
        n = sums["n"]
        mean = sums["s"] / n
        var = (sums["ss"] - n * mean ** 2) / max(n - 1, 1)
        with torch.no_grad():
            norm.running_mean.copy_((mean + sums["shift"]).to(norm.running_mean.dtype))
            norm.running_var.copy_(var.clamp_min(0).to(norm.running_var.dtype))


def interpolate(model_a, model_b, ds, steps: int = 11, renormalise_stats: bool | None = None,
                batch_size: int = 256, device=None, progress=None) -> Interpolation:
    """Loss (and accuracy) of theta(alpha) on ``ds`` for ``steps`` values of alpha in [0, 1]."""
    if int(steps) < 2:
        raise UserInputError("An interpolation needs at least 2 points (the two endpoints).")
    task = task_mod.task_of(model_a, ds)
    task_mod.task_of(model_b, ds)
    model_a.check_data(ds)
    model_b.check_data(ds)
    sa, sb = state_of(model_a), state_of(model_b)
    check_same_shapes(sa, sb, model_a.ref, model_b.ref)
    renorm = has_batchnorm(model_a.module) if renormalise_stats is None else bool(renormalise_stats)
    work = with_state(model_a, sa, sha256="interpolation")  # one private copy, reloaded at every alpha
    alphas = np.linspace(0.0, 1.0, int(steps))
    losses, accs = [], []
    for i, alpha in enumerate(alphas):
        work.module.load_state_dict(lerp(sa, sb, float(alpha)))
        if renorm:
            renormalise(work, ds, batch_size, device)
        s = task_mod.score(work, ds, task, batch_size, device)
        losses.append(s.loss)
        accs.append(s.accuracy)
        if progress:
            progress((i + 1) / len(alphas), f"alpha = {alpha:.2f}: {s.metric} {s.loss:.4f}")
    b, at = barrier(alphas, losses)
    return Interpolation(alphas, np.asarray(losses), None if task != "classifier" else np.asarray(accs, np.float64),
                         "cross-entropy" if task == "classifier" else "reconstruction MSE", b, at, renorm)
