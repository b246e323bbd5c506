"""Pick the compute device: cuda, then mps, then cpu, unless the caller names one."""
from __future__ import annotations

from .errors import UserInputError


def pick(device: str | None = None):
    """Return a ``torch.device``; ``None`` or ``"auto"`` chooses the fastest available."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserInputError(f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:0' or 'mps'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("Device 'cuda' was asked for but no CUDA GPU is available here; use 'cpu'.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserInputError("Device 'mps' was asked for but Apple MPS is not available here; use 'cpu'.")
    return dev
