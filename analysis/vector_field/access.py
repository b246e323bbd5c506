"""Latent access to a loaded autoencoder: encode/decode on one device, row maps in batches, noise inputs."""
from __future__ import annotations

import contextlib

import numpy as np

from ..errors import UserInputError


@contextlib.contextmanager
def latent_access(model, device=None):
    """(encode, decode) of a loaded autoencoder on ``device``, holding the model's lock (it may be
    shared between sessions); the model goes back to the CPU afterwards, even on error."""
    from ..device import pick

    if not getattr(model, "is_autoencoder", False):
        raise UserInputError(f"{getattr(model, 'ref', model)} is not an autoencoder: the vector field needs a "
                             "model with an encoder and a decoder (zoo:mlp-ae-b8, zoo:conv-ae-b2, a TorchScript "
                             "module exposing encode and decode, or any module with encoder/decoder submodules).")
    import torch

    dev = pick(device)
    # One CPU thread: the latent maps are small, and with two threads on a busy 2-core machine each
    # small product waits for a second core (a 30x slowdown seen under load).
    before = torch.get_num_threads()
    with model.lock:
        model.to(dev)
        if dev.type == "cpu":
            torch.set_num_threads(1)
        try:
            yield _on(model.encode, dev), _on(model.decode, dev)
        finally:
            torch.set_num_threads(before)
            model.to("cpu")


def _on(fn, dev):
    return lambda t: fn(t.to(dev))


def map_rows(fn, x, batch_size: int = 1024) -> np.ndarray:
    """``fn`` (encode or decode) on the rows of ``x`` in batches, without gradients; returns float32
    (n, d) with each output flattened per row ((0, 0) for no rows)."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(fn(torch.from_numpy(x[i: i + batch_size])).float().cpu().numpy())
    y = np.concatenate(out)
    return y.reshape(len(y), -1)


def noise_inputs(shape, n: int, seed: int = 0) -> np.ndarray:
    """Gaussian noise inputs N(0, 1) in the input layout: the data-free starts."""
    return np.random.default_rng(seed + 7919).standard_normal((n, *shape)).astype(np.float32)


def array_sha(*arrays) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
