"""Hostile and benign TorchScript files for the sandbox tests (tests/test_sandbox.py and the browser
test). Each builder returns the bytes ``torch.jit.save`` writes; none of these run here except the
benign references, which the tests compare against."""
from __future__ import annotations

import io
from typing import List

import torch


def save(module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module), buf)
    return buf.getvalue()


class ReadFile(torch.nn.Module):
    """Returns the bytes of ``path`` as its 'reconstruction' (what the attackers did with /etc/passwd)."""

    def __init__(self, path: str, size: int):
        super().__init__()
        self.path, self.size = path, size

    def forward(self, x):
        data = torch.from_file(self.path, shared=False, size=self.size, dtype=torch.uint8).float()
        return x * 0 + data[: x.shape[1]]


class WriteFile(torch.nn.Module):
    """Creates (or overwrites) ``path`` through a shared mapping, then returns its input."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        mapped = torch.from_file(self.path, shared=True, size=64, dtype=torch.uint8)
        mapped.fill_(65)
        return x + mapped.float().sum() * 0  # used, so the compiler keeps it


class Prints(torch.nn.Module):
    def forward(self, x):
        print("hello from the model")
        return x


class Seeds(torch.nn.Module):
    def forward(self, x):
        torch.manual_seed(0)
        return x + torch.rand(x.shape)


class Loops(torch.nn.Module):
    """Allowed operators only, but a loop long enough to hold the server forever."""

    def forward(self, x):
        for _ in range(1000000000000):
            x = x * 1.0000001
        return x


class Allocates(torch.nn.Module):
    """Allowed operators only, but 3.2 GB per pass."""

    def forward(self, x):
        big = torch.ones(800_000_000)
        return x + big[: x.shape[1]]


class SlowOnRequest(torch.nn.Module):
    """Fast on the probe's zeros; loops x[0, 0] times: a call that can be interrupted."""

    def forward(self, x):
        n = int(x[0, 0].item())
        y = x
        for _ in range(n):
            y = torch.tanh(y @ torch.ones(x.shape[1], x.shape[1]) * 0.001)
        return y + x


@torch.jit.script
class Opened(object):
    """A scripted class whose ``__setstate__`` (run by torch.jit.load itself) maps a file."""

    def __init__(self, path: str):
        self.path = path
        self.data = torch.zeros(1)

    def __getstate__(self) -> List[str]:
        return [self.path]

    def __setstate__(self, state: List[str]) -> None:
        self.path = state[0]
        mapped = torch.from_file(state[0], shared=True, size=64, dtype=torch.uint8)
        mapped.fill_(66)
        self.data = mapped.float()


class OpensOnLoad(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.opened = Opened(path)

    def forward(self, x):
        return x + self.opened.data.sum() * 0


@torch.jit.script
class FailsOnLoad(object):
    """``__setstate__`` raises with text it computed: none of it may leave the sandbox."""

    def __init__(self, secret: str):
        self.secret = secret

    def __getstate__(self) -> List[str]:
        return [self.secret]

    def __setstate__(self, state: List[str]) -> None:
        raise RuntimeError("leaked:" + state[0])


class RaisesOnLoad(torch.nn.Module):
    def __init__(self, secret: str):
        super().__init__()
        self.held = FailsOnLoad(secret)

    def forward(self, x):
        return x


# --------------------------------------------------------------------------- benign
def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 20), torch.nn.ReLU(), torch.nn.Linear(20, 10)).eval()


class ExportedAE(torch.nn.Module):
    """An autoencoder with @torch.jit.export encode/decode (2-D latent), not encoder/decoder modules."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(64, 2)
        self.dec = torch.nn.Linear(2, 64)

    @torch.jit.export
    def encode(self, x):
        return torch.tanh(self.enc(x))

    @torch.jit.export
    def decode(self, z):
        return torch.sigmoid(self.dec(z))

    def forward(self, x):
        return self.decode(self.encode(x))


def exported_ae(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ExportedAE().eval()


@torch.jit.script
class Restored(object):
    """A benign scripted class whose ``__setstate__`` uses an operator nothing else uses (atan)."""

    def __init__(self):
        self.data = torch.zeros(1)

    def __getstate__(self) -> List[int]:
        return [1]

    def __setstate__(self, state: List[int]) -> None:
        self.data = torch.atan(torch.zeros(state[0]))


class UsesRestored(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.held = Restored()

    def forward(self, x):
        return x + self.held.data.sum()
