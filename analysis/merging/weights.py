"""Models with other weights: a copy of a loaded model carrying a new state dict, the straight
line between two state dicts, and a content hash of weights.

A loaded model is shared by every session (see analysis.views.inputs), so nothing here changes
it: :func:`with_state` deep-copies the module first."""
from __future__ import annotations

import copy
import hashlib
import threading

import numpy as np

from ..errors import UserInputError


def state_of(model) -> dict:
    """The model's parameters and buffers (detached CPU tensors; the model is not changed)."""
    module = getattr(model, "module", None)
    if module is None:
        raise UserInputError(f"{model.ref} has no weights RepLens can read (a TorchScript upload runs in a "
                             "sandbox; an embeddings file has no network). Merging needs zoo, safetensors or "
                             "transformers models.")
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def weights_sha256(state: dict) -> str:
    """A content hash of a state dict (names, dtypes, shapes and bytes, in name order)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(state[key].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())  # raw bytes of any dtype (bfloat16 included)
    return h.hexdigest()


def with_state(model, state: dict, ref: str | None = None, name: str | None = None, sha256: str | None = None,
               copy_module: bool = True, **attributes):
    """A new Model like ``model`` (same class, layers, tokenizer) whose module holds ``state``.
    ``sha256`` defaults to the hash of ``state``, so activation caches never mix two weight sets."""
    module = getattr(model, "module", None)
    if module is None:
        state_of(model)  # raises the message
    out = copy.copy(model)
    out.module = copy.deepcopy(module) if copy_module else module
    missing, unexpected = out.module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserInputError(f"The weights do not fit {model.ref}'s architecture (missing {list(missing)[:3]}, "
                             f"unexpected {list(unexpected)[:3]}).")
    out.module.eval()
    for p in out.module.parameters():
        p.requires_grad_(False)
    out.lock = threading.RLock()
    out.layers = list(model.layers)
    out.info = dict(model.info)
    out.ref = ref or model.ref
    out.name = name or out.ref
    out.sha256 = sha256 or weights_sha256(state)
    for key, value in attributes.items():
        setattr(out, key, value)
    return out


def check_same_shapes(state_a: dict, state_b: dict, ref_a: str, ref_b: str) -> None:
    if set(state_a) != set(state_b) or any(state_a[k].shape != state_b[k].shape for k in state_a):
        diff = sorted(set(state_a) ^ set(state_b)) or [k for k in state_a if state_a[k].shape != state_b[k].shape]
        raise UserInputError(f"{ref_a} and {ref_b} do not have the same architecture ({diff[0]} differs): "
                             "interpolating weights needs two models with the same tensors. Use block swaps with "
                             "a translator to combine different architectures.")


def lerp(state_a: dict, state_b: dict, alpha: float) -> dict:
    """(1 - alpha) * A + alpha * B for floating-point tensors; integer buffers (BatchNorm's batch
    counter) are A's."""
    out = {}
    for k, a in state_a.items():
        b = state_b[k]
        out[k] = a * (1.0 - alpha) + b * alpha if a.is_floating_point() else a.clone()
    return out


def state_arrays(state: dict) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
