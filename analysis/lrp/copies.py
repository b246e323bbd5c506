"""The model an attribution runs on: the torch module behind a RepLens model (refusing what has no
network to explain), and a working copy of it, so the shared model is never touched."""
from __future__ import annotations

import copy

from ..errors import UserInputError


def unwrap(model):
    """(torch module, the RepLens Model or None)."""
    from ..models.base import Model

    if isinstance(model, Model):
        if getattr(model, "scripted", False):
            raise UserInputError(f"{model.ref} is TorchScript: its operations cannot be re-routed through LRP "
                                 "rules. Upload safetensors weights of a zoo architecture instead.")
        if model.module is None:
            raise UserInputError(f"{model.ref} holds precomputed embeddings: there is no network to explain. "
                                 "LRP needs a zoo model, a transformers model or safetensors weights.")
        return model.module, model
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        raise UserInputError("TorchScript modules cannot be explained with LRP rules; pass the Python module.")
    if not isinstance(model, torch.nn.Module):
        raise UserInputError(f"LRP needs a torch.nn.Module or a loaded RepLens model, not {type(model).__name__}.")
    return model, None


def check_model(model) -> None:
    """Raise UserInputError if ``model`` cannot be explained (no network, TorchScript)."""
    unwrap(model)


def working_copy(module, device=None, lock=None):
    """A copy of ``module`` to run attributions on: new module objects (so hooks and the training
    flag stay local) sharing the parameter and buffer tensors, which are only read. A different
    device gets a full copy, so the shared model is never moved."""
    import contextlib

    import torch

    tensors = list(module.parameters()) + list(module.buffers())
    here = tensors[0].device if tensors else torch.device("cpu")
    with lock if lock is not None else contextlib.nullcontext():
        if device is not None and torch.device(device) != here:
            clone = copy.deepcopy(module).to(device)
        else:
            clone = copy.deepcopy(module, {id(t): t for t in tensors})
    clone.eval()
    return clone
