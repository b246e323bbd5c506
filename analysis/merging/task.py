"""A model's task loss on a dataset, from its outputs: cross-entropy and accuracy for a classifier
with labelled data, mean squared reconstruction error for an autoencoder. Interpolation barriers
and block swaps are measured with it."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError


@dataclass
class TaskScore:
    metric: str  # "cross-entropy" or "reconstruction MSE"
    loss: float
    accuracy: float | None  # classifiers only


def task_of(model, ds) -> str:
    """"classifier" or "autoencoder"; a clear refusal for models without a task loss on this data."""
    if model.kind == "classifier":
        if ds.labels is None:
            raise UserInputError(f"{model.ref} is a classifier, but the dataset '{ds.name}' has no labels: its "
                                 "loss cannot be measured. Pick a labelled dataset (digits).")
        return "classifier"
    if model.kind == "autoencoder":
        return "autoencoder"
    raise UserInputError(f"{model.ref} is an {model.kind} without a task loss of its own (no classifier head, no "
                         "reconstruction): the loss along an interpolation is not defined for it. Pick classifiers "
                         "or autoencoders (e.g. zoo:mlp-s0 and zoo:mlp-s1).")


def subset(ds, rows: np.ndarray):
    """The same dataset restricted to ``rows`` (positions in ``ds``)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = copy.copy(ds)
    out.inputs = [ds.inputs[i] for i in rows] if isinstance(ds.inputs, list) else np.asarray(ds.inputs)[rows]
    out.indices = np.asarray(ds.indices)[rows]
    out.labels = None if ds.labels is None else np.asarray(ds.labels)[rows]
    out._sha = None
    return out


def outputs(model, ds, batch_size: int = 256, device=None, dtype=None):
    """The model's outputs on every row of ``ds`` as one tensor (CPU; float32, or ``dtype``, to which
    floating-point inputs are cast too: a float64 copy of a model gives float64 outputs)."""
    import torch

    from ..device import pick

    dev = pick(device)
    parts = []
    with model.lock, torch.no_grad():
        model.to(dev)
        try:
            for batch in model.batches(ds, batch_size, dev):
                if dtype is not None and isinstance(batch.inputs, torch.Tensor) and batch.inputs.is_floating_point():
                    batch.inputs = batch.inputs.to(dtype)
                parts.append(model.run(batch).to(dtype or torch.float32).cpu())
        finally:
            model.to("cpu")
    return torch.cat(parts, 0)


def max_output_gap(model_x, model_y, ds, batch_size: int = 256, device=None) -> float:
    """max |x(input) - y(input)| over the rows of ``ds``, both run in float64 (private copies), so
    that float32 rounding, which depends on the order of a sum, does not count as a difference."""
    import torch

    from .weights import state_of, with_state

    copies = [with_state(m, {k: v.double() if v.is_floating_point() else v for k, v in state_of(m).items()},
                         sha256=m.sha256).to("cpu") for m in (model_x, model_y)]
    for c in copies:
        c.module.double()
    ox, oy = (outputs(c, ds, batch_size, device, torch.float64) for c in copies)
    return float(torch.max(torch.abs(ox - oy)))


def score_outputs(out, ds, task: str) -> TaskScore:
    """The task loss (and accuracy) of outputs ``out`` (one row per row of ``ds``)."""
    import torch

    if task == "classifier":
        y = torch.from_numpy(np.asarray(ds.labels)).long()
        out = out.double()
        loss = float(torch.nn.functional.cross_entropy(out, y))
        return TaskScore("cross-entropy", loss, float((out.argmax(1) == y).double().mean()))
    target = torch.from_numpy(np.asarray(ds.inputs, dtype=np.float64))
    return TaskScore("reconstruction MSE", float(((out.flatten(1).double() - target) ** 2).mean()), None)


def score(model, ds, task: str | None = None, batch_size: int = 256, device=None) -> TaskScore:
    return score_outputs(outputs(model, ds, batch_size, device), ds, task or task_of(model, ds))
