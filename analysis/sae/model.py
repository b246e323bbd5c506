"""The SAE itself: :class:`SparseAutoencoder` with SAELens's parameter names and layout, its four
kinds (TopK, BatchTopK, ReLU + L1, JumpReLU) and the JumpReLU straight-through functions, plus
:class:`SAEState`, the plain-array form in which an SAE is kept in the result store."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import UserInputError

KINDS = ("topk", "batchtopk", "relu", "jumprelu")
KIND_NAMES = {"topk": "TopK", "batchtopk": "BatchTopK", "relu": "ReLU + L1", "jumprelu": "JumpReLU"}
# Which hyper-parameter sets sparsity: k (a count) for the TopK family, a penalty for the others.
PENALTY_KINDS = ("relu", "jumprelu")
DEFAULT_L1 = {"relu": 3.0, "jumprelu": 0.1}
JUMPRELU_BANDWIDTH = 0.05
JUMPRELU_INIT_THRESHOLD = 0.1


def jumprelu(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """SAELens's JumpReLU: ReLU(z) * H(z - theta). The ReLU matters when a threshold is negative
    (SAEs trained elsewhere): a pre-activation between theta and 0 gives 0, not a negative code."""
    return torch.relu(z) * (z > theta).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """:func:`jumprelu`: the gradient to z is the plain one, to theta the rectangle-kernel estimate
    -(theta / eps) K((z - theta) / eps) (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return jumprelu(z, theta)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        window = (((z - theta) / eps).abs() < 0.5).to(z.dtype)
        grad_theta = (-(theta / eps) * window * grad).sum(0)
        return grad * ((z > theta) & (z > 0)).to(z.dtype), grad_theta, None


class _Step(torch.autograd.Function):
    """H(z - theta) for the L0 penalty: zero gradient to z, -(1/eps) K((z - theta)/eps) to theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        window = (((z - theta) / eps).abs() < 0.5).to(z.dtype)
        return torch.zeros_like(z), (-(1.0 / eps) * window * grad).sum(0), None


class SparseAutoencoder(nn.Module):
    """An SAE with SAELens's parameter names and layout.

    ``encode``/``decode``/``forward`` take torch tensors or numpy arrays (numpy in, numpy out, no
    gradient). ``fit(acts, **hyper_parameters)`` trains it in place (see :func:`train_sae`).
    After training, ``history`` holds the logged loss / L0 / explained-variance curve and
    ``train_info`` the hyper-parameters, seconds and throughput.
    """

    def __init__(self, d_in: int, d_sae: int, kind: str = "topk", k: int = 16, apply_b_dec_to_input: bool = True):
        super().__init__()
        if kind not in KINDS:
            raise UserInputError(f"Unknown SAE kind {kind!r}; use one of {', '.join(KINDS)}.")
        self.kind, self.k, self.d_in, self.d_sae = kind, int(k), int(d_in), int(d_sae)
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if kind in ("jumprelu", "batchtopk"):
            self.threshold = nn.Parameter(torch.zeros(d_sae), requires_grad=kind == "jumprelu")
        self.history: dict[str, list] = {"step": [], "loss": [], "l0": [], "fve": []}
        self.train_info: dict = {}
        self.cached = False

    # -- the maps
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, z: torch.Tensor, training: bool = False) -> torch.Tensor:
        if self.kind == "relu":
            return torch.relu(z)
        if self.kind == "topk" or (self.kind == "batchtopk" and training):
            if self.kind == "topk":
                k = min(self.k, z.shape[-1])
                top = torch.topk(z, k, dim=-1, sorted=False)
                return torch.zeros_like(z).scatter_(-1, top.indices, torch.relu(top.values))
            flat = torch.relu(z).flatten()
            kk = min(self.k * z.shape[0], flat.numel())
            top = torch.topk(flat, kk, sorted=False)
            return torch.zeros_like(flat).scatter_(0, top.indices, top.values).view_as(z)
        if training:  # jumprelu
            return _JumpReLU.apply(z, self.threshold, JUMPRELU_BANDWIDTH)
        return jumprelu(z, self.threshold)

    def _numpy_call(self, fn, x):
        if isinstance(x, torch.Tensor):
            return fn(x)
        arr = np.asarray(x, dtype=np.float32)
        dev = self.W_enc.device
        out = []
        with torch.no_grad():
            for i in range(0, max(len(arr), 1), 4096):
                out.append(fn(torch.from_numpy(np.ascontiguousarray(arr[i: i + 4096])).to(dev)).cpu().numpy())
        return np.concatenate(out, 0) if out else np.zeros((0, self.d_sae), np.float32)

    def encode(self, x):
        return self._numpy_call(lambda t: self.activate(self.pre_acts(t)), x)

    def decode(self, f):
        return self._numpy_call(lambda t: t @ self.W_dec + self.b_dec, f)

    def forward(self, x):
        return self._numpy_call(lambda t: self.activate(self.pre_acts(t)) @ self.W_dec + self.b_dec, x)

    def fit(self, acts, **params) -> "SparseAutoencoder":
        """Train in place on ``acts`` (n x d_in); keyword arguments as :func:`train_sae`."""
        from .training import _train

        _train(self, acts, **params)
        return self

    # -- description
    @property
    def l1(self) -> float | None:
        return self.train_info.get("params", {}).get("l1")

    def describe(self) -> str:
        sparsity = f"k={self.k}" if self.kind in ("topk", "batchtopk") else f"l1={self.l1}"
        return f"{KIND_NAMES[self.kind]} · {self.d_sae} latents ({self.d_sae // max(self.d_in, 1)}x) · {sparsity}"

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights as float32 numpy arrays (SAELens names)."""
        return {name: p.detach().cpu().numpy().copy() for name, p in self.named_parameters()}


def from_arrays(arrays: dict, kind: str, k: int = 16, apply_b_dec_to_input: bool = True) -> SparseAutoencoder:
    """An SAE from its weight arrays (W_enc, W_dec, b_enc, b_dec[, threshold]); dtypes kept."""
    w_dec = np.asarray(arrays["W_dec"])
    sae = SparseAutoencoder(w_dec.shape[1], w_dec.shape[0], kind, k, apply_b_dec_to_input)
    names = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if kind in ("jumprelu", "batchtopk") else [])
    with torch.no_grad():
        for name in names:
            if name not in arrays:
                raise UserInputError(f"The SAE weights lack {name!r} (a {kind} SAE has {', '.join(names)}).")
            value = torch.as_tensor(np.array(arrays[name]))
            param = getattr(sae, name)
            if tuple(value.shape) != tuple(param.shape):
                raise UserInputError(f"SAE weight {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}.")
            param.data = value
    return sae


def permuted(sae: SparseAutoencoder, perm) -> SparseAutoencoder:
    """A copy of ``sae`` whose latent j is the original's latent perm[j] (same function, relabelled)."""
    perm = np.asarray(perm)
    arrays = sae.arrays()
    out = {"W_enc": arrays["W_enc"][:, perm], "W_dec": arrays["W_dec"][perm], "b_enc": arrays["b_enc"][perm],
           "b_dec": arrays["b_dec"]}
    if "threshold" in arrays:
        out["threshold"] = arrays["threshold"][perm]
    return from_arrays(out, sae.kind, sae.k, sae.apply_b_dec_to_input)


@dataclass
class SAEState:
    """An SAE as plain values, the form the result store keeps (no pickle): its weights under
    SAELens's names, its kind and k, its training curve and what is known of its training."""

    kind: str
    k: int
    apply_b_dec_to_input: bool
    arrays: dict  # name -> float32 array (W_enc, W_dec, b_enc, b_dec[, threshold])
    history: dict = field(default_factory=dict)  # step, loss, l0, fve
    train_info: dict = field(default_factory=dict)

    @classmethod
    def of(cls, sae: SparseAutoencoder) -> "SAEState":
        history = {name: np.asarray(v, np.float64) for name, v in sae.history.items()}
        return cls(sae.kind, int(sae.k), bool(sae.apply_b_dec_to_input), sae.arrays(), history, dict(sae.train_info))

    def to_sae(self) -> SparseAutoencoder:
        sae = from_arrays(self.arrays, self.kind, self.k, self.apply_b_dec_to_input)
        sae.history = {name: np.asarray(v).tolist() for name, v in self.history.items()}
        sae.train_info = dict(self.train_info)
        return sae

    @property
    def d_in(self) -> int:
        return int(np.asarray(self.arrays["W_dec"]).shape[1])

    @property
    def d_sae(self) -> int:
        return int(np.asarray(self.arrays["W_dec"]).shape[0])
