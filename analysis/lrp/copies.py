"""The model an attribution runs on: the torch module behind a RepLens model (refusing what has no
network to explain), and a working copy of it, so the shared model is never touched.

Copying a model costs more than explaining a batch on a small one (a deep copy of every module
object), so :func:`borrowed_copy` keeps the copies it made in a pool per model and lends them out,
one call at a time: a copy is rebuilt when the model's modules, parameters or buffers are replaced."""
from __future__ import annotations

import contextlib
import copy
import threading
import weakref

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


_POOL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (fingerprint, [free copies])
_POOL_LOCK = threading.Lock()
_POOL_SIZE = 4  # idle copies kept per model (concurrent calls beyond it make and drop their own)


def _fingerprint(module) -> tuple:
    """What a pooled copy must still share with ``module``: its module objects, parameters and
    buffers (replacing any of them, or moving the model, makes the copies stale)."""
    return (tuple(map(id, module.modules())), tuple(map(id, module.parameters())),
            tuple(id(b) for b in module.buffers()))


@contextlib.contextmanager
def borrowed_copy(module, device=None, lock=None):
    """A working copy of ``module`` (see :func:`working_copy`) lent from a pool for the duration of
    a ``with`` block: never lent to two callers at once, put back in evaluation mode. A different
    device gets a fresh full copy each time (the pool never holds a second copy of the weights)."""
    import itertools

    import torch

    if device is not None:
        first = next(itertools.chain(module.parameters(), module.buffers()), None)
        if torch.device(device) != (first.device if first is not None else torch.device("cpu")):
            yield working_copy(module, device, lock)
            return
    key = _fingerprint(module)
    with _POOL_LOCK:
        entry = _POOL.get(module)
        free = entry[1] if entry is not None and entry[0] == key else []
        _POOL[module] = (key, free)
        clone = free.pop() if free else None
    if clone is None:
        clone = working_copy(module, None, lock)
    try:
        yield clone
    finally:
        if clone.training:  # nothing in an attribution trains it; a target callable could only reach it by force
            clone.eval()
        with _POOL_LOCK:
            entry = _POOL.get(module)
            if entry is not None and entry[0] == key and len(entry[1]) < _POOL_SIZE:
                entry[1].append(clone)
