"""Sparse autoencoders (SAEs) on one layer's activations: training, metrics, feature statistics,
matching features across two models, and SAELens-compatible files.

Notation (``../shared/reference/sae.md``): x in R^d one layer's activation, f in R^m the sparse code
(m = expansion * d), x^ = f W_dec + b_dec. Weights are named and laid out as SAELens names them:
``W_enc`` (d x m), ``W_dec`` (m x d, one feature direction per row), ``b_enc`` (m), ``b_dec`` (d),
plus ``threshold`` (m) for JumpReLU and BatchTopK.

Kinds (``SparseAutoencoder.kind``):

- ``topk`` (Gao et al. 2024): f = ReLU(TopK(z)), z = (x - b_dec) W_enc + b_enc; unit-norm decoder rows;
  AuxK loss (top-k_aux dead latents reconstruct the residual, coefficient 1/32) revives dead latents.
- ``batchtopk`` (Bussmann et al. 2024): the top n*k pre-activations across a batch of n during
  training; at inference one global threshold, the smallest kept activation when the whole
  training set (up to 8192 rows) is one batch, so the mean L0 there is k. Saved for SAELens as
  JumpReLU with that threshold for every latent, exactly as SAELens saves its own BatchTopK SAEs.
- ``relu`` (Anthropic 2023 with the April 2024 update): ReLU(z); loss ||x - x^||^2 +
  l1 * sum_i f_i ||W_dec,i|| (norm-weighted penalty, no norm constraint), decoder rows initialised
  with norm 0.1, penalty warmed up over the first 5% of steps; dead latents resampled (2023 recipe).
- ``jumprelu`` (Rajamanoharan et al. 2024): f = z H(z - theta); loss ||x - x^||^2 + l1 * L0 with
  straight-through pseudo-derivatives (rectangle kernel, bandwidth ``JUMPRELU_BANDWIDTH``);
  unit-norm decoder rows; dead latents resampled.

Every kind: the pre-encoder bias b_dec starts at the geometric median of the data (Weiszfeld), the
encoder starts as the decoder's transpose, Adam with the learning rate decayed linearly to 0 over
the last 20% of steps. Training runs on inputs scaled so that E||x||^2 = d (Anthropic 2024), which
makes ``lr`` and ``l1`` mean the same on every layer; the scale is folded back into b_enc, b_dec and
the threshold afterwards, so the saved SAE reads raw activations (decoder rows keep their norms).

``evaluate`` computes the fraction of variance explained over the whole set, not per batch.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import UserInputError
from .validation import as_matrix

KINDS = ("topk", "batchtopk", "relu", "jumprelu")
KIND_NAMES = {"topk": "TopK", "batchtopk": "BatchTopK", "relu": "ReLU + L1", "jumprelu": "JumpReLU"}
# Which hyper-parameter sets sparsity: k (a count) for the TopK family, a penalty for the others.
PENALTY_KINDS = ("relu", "jumprelu")
DEFAULT_L1 = {"relu": 3.0, "jumprelu": 0.1}
DEFAULTS = {"kind": "topk", "expansion": 8, "k": 16, "steps": 1000, "lr": 1e-3, "batch_size": 256, "seed": 0}
AUX_COEF = 1 / 32
JUMPRELU_BANDWIDTH = 0.05
JUMPRELU_INIT_THRESHOLD = 0.1
DENSE_FRACTION = 0.1  # a feature active on more than 10% of inputs is "dense"
QUANTILES = (0.5, 0.9, 0.99)
SAELENS_ARCHITECTURE = {"topk": "topk", "batchtopk": "jumprelu", "relu": "standard", "jumprelu": "jumprelu"}
SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
CACHE_VERSION = 1
# Sustained float32 FLOP/s of a training step (12 * batch * d * m FLOP) on this project's 2-core CPU:
# benchmarks/sae.py measured ~2.1e10 on a quiet machine; a lower figure covers a shared one. The
# estimate shown before training uses it.
FLOPS_PER_SECOND = 1.5e10
STEP_OVERHEAD_S = 1e-3
SMALL_WORK = 5e7  # multiply-adds of one encoder product below which one thread is faster


# --------------------------------------------------------------------------- the model
class _JumpReLU(torch.autograd.Function):
    """z * H(z - theta): the gradient to z is the plain one, to theta the rectangle-kernel estimate
    -(theta / eps) K((z - theta) / eps) (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        window = (((z - theta) / eps).abs() < 0.5).to(z.dtype)
        grad_theta = (-(theta / eps) * window * grad).sum(0)
        return grad * (z > theta).to(z.dtype), grad_theta, None


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
        return z * (z > self.threshold).to(z.dtype)

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


# --------------------------------------------------------------------------- training
def geometric_median(x: torch.Tensor, iters: int = 50, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / torch.clamp((x - m).norm(dim=1), min=1e-8)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * max(float(m.norm()), 1e-12):
            m = new
            break
        m = new
    return m.float()


def normalise_params(kind: str = "topk", expansion: int = 8, k: int = 16, l1: float | None = None, steps: int = 1000,
                     lr: float = 1e-3, batch_size: int = 256, seed: int = 0) -> dict:
    """The hyper-parameters that define a trained SAE, checked, with only those the kind uses (so
    the store key does not change when an unused one does)."""
    if kind not in KINDS:
        raise UserInputError(f"Unknown SAE kind {kind!r}; use one of {', '.join(KINDS)}.")
    if int(expansion) < 1:
        raise UserInputError("The expansion factor is at least 1 (latents = expansion x layer width).")
    if int(steps) < 1 or int(batch_size) < 1 or not float(lr) > 0:
        raise UserInputError("Steps and batch size are positive integers and the learning rate is positive.")
    out = {"kind": kind, "expansion": int(expansion), "steps": int(steps), "lr": float(lr),
           "batch_size": int(batch_size), "seed": int(seed)}
    if kind in PENALTY_KINDS:
        l1 = DEFAULT_L1[kind] if l1 is None else float(l1)
        if not l1 >= 0:
            raise UserInputError("The sparsity penalty is zero or positive.")
        out["l1"] = l1
    else:
        if int(k) < 1:
            raise UserInputError("k (active latents per input) is at least 1.")
        out["k"] = int(k)
    return out


def train_sae(acts, kind: str = "topk", expansion: int = 8, k: int = 16, l1: float | None = None, steps: int = 1000,
              lr: float = 1e-3, batch_size: int = 256, seed: int = 0, device=None,
              progress: Callable[[float, str], None] | None = None, on_log: Callable[[dict], None] | None = None,
              log_every: int | None = None, b_dec_init: str = "geometric_median") -> SparseAutoencoder:
    """Train an SAE of ``kind`` on ``acts`` (n x d). ``l1`` is the penalty of ``relu`` (L1) and
    ``jumprelu`` (L0) SAEs (default ``DEFAULT_L1``); ``k`` the active latents of TopK/BatchTopK.
    ``progress(fraction, message)`` and ``on_log(history)`` are called about 20 times."""
    x = as_matrix(acts, "activations", dtype=np.float32)
    params = normalise_params(kind, expansion, k, l1, steps, lr, batch_size, seed)
    sae = SparseAutoencoder(x.shape[1], params["expansion"] * x.shape[1], kind, params.get("k", k))
    _train(sae, x, **{key: v for key, v in params.items() if key not in ("kind", "expansion")}, device=device,
           progress=progress, on_log=on_log, log_every=log_every, b_dec_init=b_dec_init)
    sae.train_info["params"] = params
    return sae


def _init(sae: SparseAutoencoder, xs: torch.Tensor, gen: torch.Generator, b_dec_init: str) -> None:
    with torch.no_grad():
        w = torch.randn(sae.d_sae, sae.d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        if sae.kind == "relu":
            w = 0.1 * w  # Anthropic 2024: no norm constraint, small decoder norms at the start
        sae.W_dec.data = w.to(xs.device)
        sae.W_enc.data = w.T.clone().to(xs.device)
        sae.b_enc.data = torch.zeros(sae.d_sae, device=xs.device)
        sub = xs[torch.randperm(len(xs), generator=gen)[:8192].to(xs.device)]
        sae.b_dec.data = geometric_median(sub) if b_dec_init == "geometric_median" else sub.mean(0)
        if sae.kind == "jumprelu":
            sae.threshold.data = torch.full((sae.d_sae,), JUMPRELU_INIT_THRESHOLD, device=xs.device)


def _train(sae: SparseAutoencoder, acts, **params) -> None:
    with cpu_threads(min(int(params.get("batch_size", 256)), len(acts)) * sae.d_in * sae.d_sae):
        _train_loop(sae, acts, **params)


@contextlib.contextmanager
def cpu_threads(work: float):
    """One torch thread for small matrix products: with two threads on a busy 2-core machine a
    (512 x 32) @ (32 x 256) product took 20 ms instead of 0.2 ms (threads spin waiting for a core)."""
    before = torch.get_num_threads()
    if work < SMALL_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_loop(sae: SparseAutoencoder, acts, k: int | None = None, l1: float | None = None, steps: int = 1000,
           lr: float = 1e-3, batch_size: int = 256, seed: int = 0, device=None, progress=None, on_log=None,
           log_every: int | None = None, b_dec_init: str = "geometric_median") -> None:
    from .device import pick

    x = as_matrix(acts, "activations", dtype=np.float32)
    if x.shape[1] != sae.d_in:
        raise UserInputError(f"The activations have {x.shape[1]} dimensions; this SAE reads {sae.d_in}.")
    if k is not None:
        sae.k = int(k)
    if sae.kind in ("topk", "batchtopk") and not 1 <= sae.k <= sae.d_sae:
        raise UserInputError(f"k = {sae.k} must lie between 1 and the number of latents ({sae.d_sae}).")
    penalty = (DEFAULT_L1.get(sae.kind, 0.0) if l1 is None else float(l1)) if sae.kind in PENALTY_KINDS else 0.0
    dev = pick(device)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, d = x.shape
    mean_sq = float((x.astype(np.float64) ** 2).sum(1).mean())
    if mean_sq <= 0:
        raise UserInputError("The layer's activations are all zero: there is nothing to decompose.")
    scale = math.sqrt(d / mean_sq)  # train on inputs with E||x||^2 = d
    xs = torch.from_numpy(x).to(dev) * scale
    variance = float(((xs.double() - xs.double().mean(0)) ** 2).sum(1).mean()) or 1.0
    sae.to(dev)
    _init(sae, xs, gen, b_dec_init)
    unit_norm = sae.kind != "relu"
    opt = _Adam([p for p in sae.parameters() if p.requires_grad])
    batch_size = min(int(batch_size), n)
    dead_after = max(n, 10 * batch_size)  # samples without firing before a latent counts as dead
    since_fired = torch.zeros(sae.d_sae, device=dev)
    fired_window = torch.zeros(sae.d_sae, dtype=torch.bool, device=dev)
    resample_at = {int(steps * f) for f in (0.25, 0.5)} if sae.kind in PENALTY_KINDS and steps >= 200 else set()
    log_every = log_every or max(1, steps // 20)
    decay_from = int(0.8 * steps)
    order, pos = torch.randperm(n, generator=gen), 0
    sae.history = {"step": [], "loss": [], "l0": [], "fve": []}
    run = {"loss": 0.0, "l0": 0.0, "sse": 0.0, "count": 0}
    for step in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        xb = xs[order[pos: pos + batch_size].to(dev)]
        pos += batch_size
        z = sae.pre_acts(xb)
        f = sae.activate(z, training=True)
        err = xb - (f @ sae.W_dec + sae.b_dec)
        sse = err.pow(2).sum(-1).mean()
        warm = min(1.0, (step + 1) / max(1, int(0.05 * steps)))
        if sae.kind in ("topk", "batchtopk"):
            loss = sse / variance
            dead = since_fired >= dead_after
            n_dead = int(dead.sum())
            if n_dead:
                k_aux = min(max(d // 2, 1), n_dead)
                aux_z = torch.where(dead[None], z, torch.full_like(z, -torch.inf))
                top = torch.topk(aux_z, k_aux, dim=-1)
                aux_f = torch.zeros_like(z).scatter_(-1, top.indices, torch.relu(top.values))
                residual = err.detach()
                aux = (residual - aux_f @ sae.W_dec).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean().clamp_min(1e-12)
                loss = loss + AUX_COEF * min(n_dead / k_aux, 1.0) * aux
        elif sae.kind == "relu":
            loss = sse + warm * penalty * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
        else:
            loss = sse + warm * penalty * _Step.apply(z, sae.threshold, JUMPRELU_BANDWIDTH).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        if unit_norm and sae.W_dec.grad is not None:  # keep only the gradient tangent to the unit sphere
            w = sae.W_dec.data
            sae.W_dec.grad -= (sae.W_dec.grad * w).sum(1, keepdim=True) * w
        opt.step(lr if step < decay_from else lr * (steps - step) / max(1, steps - decay_from))
        with torch.no_grad():
            if unit_norm:
                sae.W_dec.data /= sae.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-12)
            if sae.kind == "jumprelu":
                sae.threshold.data.clamp_(min=1e-6)
            active = (f > 0).any(0)
            since_fired += batch_size
            since_fired[active] = 0
            fired_window |= active
            run["loss"] += float(loss)
            run["l0"] += float((f > 0).sum(-1).float().mean())
            run["sse"] += float(sse)
            run["count"] += 1
        if step + 1 in resample_at:
            _resample(sae, xs, ~fired_window, opt, gen)
            fired_window.zero_()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            c = max(run["count"], 1)
            sae.history["step"].append(step + 1)
            sae.history["loss"].append(run["loss"] / c)
            sae.history["l0"].append(run["l0"] / c)
            sae.history["fve"].append(1.0 - run["sse"] / c / variance)
            run = {"loss": 0.0, "l0": 0.0, "sse": 0.0, "count": 0}
            if on_log:
                on_log(sae.history)
            if progress:
                progress((step + 1) / steps, f"step {step + 1}/{steps} · L0 {sae.history['l0'][-1]:.1f} · "
                                             f"explained variance {sae.history['fve'][-1]:.3f}")
    with torch.no_grad():
        if sae.kind == "batchtopk":
            sae.threshold.data = torch.full((sae.d_sae,), _global_threshold(sae, xs), device=dev)
        sae.b_enc.data /= scale  # fold the input scale back: the SAE reads raw activations
        sae.b_dec.data /= scale
        if sae.kind in ("jumprelu", "batchtopk"):
            sae.threshold.data /= scale
    sae.to("cpu")
    seconds = time.perf_counter() - t0
    sae.train_info.update({"seconds": seconds, "samples_per_second": steps * batch_size / max(seconds, 1e-9),
                           "input_scale": scale, "device": str(dev), "n": n})


class _Adam:
    """Adam (Kingma & Ba) in a few tensor ops. torch.optim.Adam would do the same, but its first use
    imports torch._dynamo (~5 s on a 2-core machine), longer than a whole default training run."""

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.betas, self.eps, self.t = list(params), betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)

    def moments(self, p) -> list[torch.Tensor]:
        for q, m, v in zip(self.params, self.m, self.v):
            if q is p:
                return [m, v]
        return []


def _global_threshold(sae: SparseAutoencoder, xs: torch.Tensor) -> float:
    """BatchTopK's inference threshold: the smallest activation kept when the training set (up to
    8192 rows) is one batch, i.e. the (rows * k)-th largest positive pre-activation."""
    z = torch.relu(sae.pre_acts(xs[:8192])).flatten()
    kk = min(sae.k * min(len(xs), 8192), int((z > 0).sum()))
    if kk < 1:
        return 0.0
    return float(torch.topk(z, kk, sorted=False).values.min())


def _resample(sae: SparseAutoencoder, xs: torch.Tensor, dead: torch.Tensor, opt, gen) -> None:
    """Anthropic (2023): point each dead latent at an input it reconstructs badly (drawn with
    probability ~ squared error), encoder row scaled to 0.2 x the mean alive encoder norm, bias 0,
    and clear the optimiser's moments for those rows."""
    idx = torch.nonzero(dead).flatten()
    if len(idx) == 0:
        return
    with torch.no_grad():
        sample = xs[torch.randperm(len(xs), generator=gen)[:4096].to(xs.device)]
        err = sample - (sae.activate(sae.pre_acts(sample)) @ sae.W_dec + sae.b_dec)
        weight = err.pow(2).sum(1).cpu().double()
        if float(weight.sum()) <= 0:
            return
        pick = torch.multinomial(weight, len(idx), replacement=len(idx) > len(weight), generator=gen).to(xs.device)
        direction = err[pick] / err[pick].norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead
        enc_norm = float(sae.W_enc[:, alive].norm(dim=0).mean()) if alive.any() else 1.0
        dec_norm = 1.0 if sae.kind != "relu" else float(sae.W_dec[alive].norm(dim=1).mean()) if alive.any() else 0.1
        sae.W_dec.data[idx] = direction * dec_norm
        sae.W_enc.data[:, idx] = direction.T * 0.2 * enc_norm
        sae.b_enc.data[idx] = 0.0
        for p in (sae.W_dec, sae.b_enc):
            for moment in opt.moments(p):
                moment[idx] = 0.0
        for moment in opt.moments(sae.W_enc):
            moment[:, idx] = 0.0


def sweep_params(params: dict) -> list[dict]:
    """Variants of ``params`` along the sparsity axis, for the L0 vs explained-variance frontier:
    k in 4..64 (TopK family) or the penalty x 1/4..4 (ReLU, JumpReLU); the given one excluded."""
    params = normalise_params(**params)
    if "k" in params:
        return [{**params, "k": k} for k in (4, 8, 16, 32, 64) if k != params["k"]]
    return [{**params, "l1": round(params["l1"] * f, 6)} for f in (0.25, 0.5, 2.0, 4.0)]


def estimate_seconds(n: int, d_in: int, expansion: int, steps: int, batch_size: int) -> float:
    """About how long :func:`train_sae` takes on this machine's CPU (encoder, decoder and their
    gradients: ~12 * batch * d * m floating-point operations per step, plus a fixed cost per step)."""
    b = min(int(batch_size), int(n))
    m = int(expansion) * int(d_in)
    return steps * (12.0 * b * d_in * m / FLOPS_PER_SECOND + STEP_OVERHEAD_S) + 0.05


# --------------------------------------------------------------------------- evaluation
@dataclass
class SAEMetrics:
    n: int
    l0: float  # mean number of active latents per input
    mse: float  # mean squared error per dimension
    fve: float  # fraction of variance explained, over the whole set
    dead_fraction: float  # latents never active on the set
    dense_fraction: float  # latents active on more than DENSE_FRACTION of inputs
    norm_ratio: float  # mean ||x^|| / ||x||
    cosine: float  # mean cos(x, x^)
    density: np.ndarray = field(repr=False)  # per latent, fraction of inputs where it is active
    density_edges: np.ndarray = field(repr=False)  # log10 bins of the live latents' densities
    density_counts: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}


def evaluate(sae: SparseAutoencoder, acts, batch_size: int = 4096) -> SAEMetrics:
    """L0, MSE, fraction of variance explained (1 - sum||x - x^||^2 / sum||x - mean||^2 over the
    whole set), dead and dense fractions, the log10 density histogram and shrinkage."""
    x = as_matrix(acts, "activations", dtype=np.float32)
    if x.shape[1] != sae.d_in:
        raise UserInputError(f"The activations have {x.shape[1]} dimensions; this SAE reads {sae.d_in}.")
    n = len(x)
    mean = x.astype(np.float64).mean(0)
    sse = total = l0 = ratio = cos = 0.0
    nonzero = 0  # rows with ||x|| > 0: shrinkage is undefined on a zero input
    active = np.zeros(sae.d_sae, dtype=np.int64)
    for i in range(0, n, batch_size):
        xb = x[i: i + batch_size]
        f = sae.encode(xb)
        xh = sae.decode(f).astype(np.float64)
        xb64 = xb.astype(np.float64)
        sse += float(((xb64 - xh) ** 2).sum())
        total += float(((xb64 - mean) ** 2).sum())
        on = f > 0
        l0 += float(on.sum())
        active += on.sum(0)
        nx, nh = np.linalg.norm(xb64, axis=1), np.linalg.norm(xh, axis=1)
        ok = nx > 0
        nonzero += int(ok.sum())
        ratio += float((nh[ok] / nx[ok]).sum())
        cos += float(((xb64[ok] * xh[ok]).sum(1) / np.maximum(nx[ok] * nh[ok], 1e-300)).sum())
    density = active / n
    live = density[density > 0]
    edges = np.linspace(np.floor(np.log10(1.0 / n)), 0.0, 21)
    counts = np.histogram(np.log10(live), bins=edges)[0] if len(live) else np.zeros(20, dtype=np.int64)
    return SAEMetrics(n=n, l0=l0 / n, mse=sse / (n * x.shape[1]), fve=1.0 - sse / total if total > 0 else float("nan"),
                      dead_fraction=float((density == 0).mean()), dense_fraction=float((density > DENSE_FRACTION).mean()),
                      norm_ratio=ratio / max(nonzero, 1), cosine=cos / max(nonzero, 1), density=density, density_edges=edges, density_counts=counts)


@dataclass
class Downstream:
    metric: str  # "cross-entropy" (classifiers) or "reconstruction MSE" (autoencoders)
    clean: float
    spliced: float  # the SAE's reconstruction in place of the layer
    ablated: float  # the layer replaced by its mean over the data
    score: float  # (ablated - spliced) / (ablated - clean): 1 = as good as the model, 0 = as bad as ablation
    accuracy_clean: float | None = None
    accuracy_spliced: float | None = None
    accuracy_ablated: float | None = None


def downstream(sae: SparseAutoencoder, model, layer: str, data, batch_size: int = 256, device=None) -> Downstream:
    """Splice the SAE's reconstruction into ``model`` in place of ``layer``'s output and report the
    task loss (and accuracy) against the clean model and mean ablation. Needs a layer whose output
    is one vector per sample and a model with a task: a classifier (labels) or an autoencoder."""
    from .activations import extract
    from .device import pick

    if model.kind not in ("classifier", "autoencoder"):
        raise UserInputError(f"{model.ref} has no task loss ({model.kind}); the downstream check needs a classifier "
                             "or an autoencoder.")
    if model.kind == "classifier" and data.labels is None:
        raise UserInputError("The downstream check of a classifier needs labelled data.")
    mods = model.hookable()
    if layer not in mods:
        raise UserInputError(f"{model.ref} has no hookable layer {layer!r}.")
    mean = torch.from_numpy(extract(model, data, [layer])[layer].astype(np.float32).mean(0))
    dev = pick(device)
    sae_dev = _copy_to(sae, dev)
    results = {}
    for mode in ("clean", "spliced", "ablated"):
        def hook(module, inputs, out, mode=mode):
            if out.ndim != 2:
                raise UserInputError(f"Layer {layer} outputs shape {tuple(out.shape[1:])} per sample; splicing needs one "
                                     "vector per sample (the SAE was trained on pooled activations).")
            if mode == "spliced":
                return sae_dev(out.float()).to(out.dtype)
            return mean.to(out.device, out.dtype).expand_as(out).clone()

        loss_sum, correct, count = 0.0, 0, 0
        with model.lock:
            model.to(dev)
            handle = None if mode == "clean" else mods[layer].register_forward_hook(hook)
            try:
                with torch.no_grad():
                    for batch in model.batches(data, batch_size, dev):
                        out = model.run(batch).float()
                        rows = batch.rows
                        if model.kind == "classifier":
                            y = torch.from_numpy(np.asarray(data.labels[rows])).long().to(out.device)
                            loss_sum += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
                            correct += int((out.argmax(1) == y).sum())
                        else:
                            target = torch.from_numpy(np.asarray(data.inputs[rows], dtype=np.float32)).to(out.device)
                            loss_sum += float(((out.flatten(1) - target) ** 2).mean(1).sum())
                        count += out.shape[0]
            finally:
                if handle is not None:
                    handle.remove()
                model.to("cpu")
        results[mode] = (loss_sum / count, correct / count if model.kind == "classifier" else None)
    clean, spliced, ablated = (results[m][0] for m in ("clean", "spliced", "ablated"))
    gap = ablated - clean
    score = (ablated - spliced) / gap if abs(gap) > 1e-12 else float("nan")
    return Downstream("cross-entropy" if model.kind == "classifier" else "reconstruction MSE", clean, spliced, ablated,
                      score, results["clean"][1], results["spliced"][1], results["ablated"][1])


def _copy_to(sae: SparseAutoencoder, device) -> SparseAutoencoder:
    if str(device) == "cpu":
        return sae
    import copy

    return copy.deepcopy(sae).to(device)


# --------------------------------------------------------------------------- feature statistics
@dataclass
class FeatureStats:
    """Per-latent statistics on a set of inputs; ``codes`` is the (n x m) sparse activation matrix."""

    codes: object = field(repr=False)  # scipy.sparse.csc_matrix, float32
    density: np.ndarray = field(repr=False)
    max_act: np.ndarray = field(repr=False)
    mean_act: np.ndarray = field(repr=False)  # mean over the inputs where the latent is active
    quantiles: np.ndarray = field(repr=False)  # (m, len(QUANTILES)) of the non-zero activations
    class_mean: np.ndarray | None = field(default=None, repr=False)  # (m, classes) mean activation per class
    class_names: list | None = None

    @property
    def top_class(self) -> np.ndarray | None:
        if self.class_mean is None:
            return None
        return self.class_mean.argmax(1)

    def table(self):
        """One row per latent: density, max and mean activation, top class, dead/dense flag."""
        import pandas as pd

        m = len(self.density)
        status = np.where(self.density == 0, "dead", np.where(self.density > DENSE_FRACTION, "dense", ""))
        df = pd.DataFrame({"feature": np.arange(m), "density": self.density, "max activation": self.max_act,
                           "mean activation": self.mean_act, "status": status})
        if self.class_mean is not None:
            top = self.top_class
            names = self.class_names or [str(c) for c in range(self.class_mean.shape[1])]
            df["top class"] = [names[c] if self.density[i] > 0 else "" for i, c in enumerate(top)]
            share = self.class_mean.max(1) / np.maximum(self.class_mean.sum(1), 1e-12)
            df["top class share"] = np.where(self.density > 0, share, np.nan)
        return df


def sparse_codes(sae: SparseAutoencoder, acts, batch_size: int = 2048):
    """The SAE's activations on every row of ``acts`` as a scipy CSC matrix (n x m, float32)."""
    from scipy import sparse

    x = as_matrix(acts, "activations", dtype=np.float32, min_rows=1)
    blocks = [sparse.csr_matrix(sae.encode(x[i: i + batch_size])) for i in range(0, len(x), batch_size)]
    return sparse.vstack(blocks).tocsc().astype(np.float32)


def feature_stats(sae: SparseAutoencoder, acts, labels=None, class_names=None) -> FeatureStats:
    """Density, max, mean and quantile activations, and the mean activation per class, of every latent."""
    codes = sparse_codes(sae, acts)
    n, m = codes.shape
    nnz = np.diff(codes.indptr)
    density = nnz / n
    max_act = np.zeros(m, np.float32)
    mean_act = np.zeros(m, np.float32)
    quant = np.zeros((m, len(QUANTILES)), np.float32)
    for j in np.nonzero(nnz)[0]:
        vals = codes.data[codes.indptr[j]: codes.indptr[j + 1]]
        max_act[j], mean_act[j] = vals.max(), vals.mean()
        quant[j] = np.quantile(vals, QUANTILES)
    class_mean = None
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        n_classes = int(labels.max()) + 1 if class_names is None else len(class_names)
        onehot = np.zeros((n, n_classes))
        onehot[np.arange(n), labels] = 1.0
        counts = np.maximum(onehot.sum(0), 1.0)
        class_mean = np.asarray(codes.T @ onehot) / counts  # (m, classes)
    return FeatureStats(codes, density, max_act, mean_act, quant, class_mean,
                        list(class_names) if class_names is not None else None)


def feature_column(stats: FeatureStats, i: int) -> np.ndarray:
    """Latent ``i``'s activation on every input (dense, length n)."""
    col = np.zeros(stats.codes.shape[0], np.float32)
    lo, hi = stats.codes.indptr[i], stats.codes.indptr[i + 1]
    col[stats.codes.indices[lo:hi]] = stats.codes.data[lo:hi]
    return col


def feature_examples(stats: FeatureStats, i: int, n_top: int = 12, bands: int = 4, per_band: int = 6,
                     seed: int = 0) -> dict:
    """Top-activating inputs of latent ``i`` and a random few from each activation band (equal
    slices of (0, max]), as {"top": (rows, values), "bands": [(low, high, rows, values, count), ...]}."""
    _check_feature(stats, i)
    col = feature_column(stats, i)
    rows = np.nonzero(col > 0)[0]
    top = rows[np.argsort(-col[rows], kind="stable")][:n_top]
    out = {"top": (top, col[top]), "bands": []}
    if len(rows) == 0:
        return out
    rng = np.random.default_rng(seed)
    edges = np.linspace(0.0, float(col.max()), bands + 1)
    for b in range(bands):
        lo, hi = edges[b], edges[b + 1]
        inside = rows[(col[rows] > lo) & (col[rows] <= hi)]
        chosen = np.sort(rng.choice(inside, size=min(per_band, len(inside)), replace=False)) if len(inside) else inside
        chosen = chosen[np.argsort(-col[chosen], kind="stable")]
        out["bands"].append((float(lo), float(hi), chosen, col[chosen], int(len(inside))))
    out["bands"].reverse()  # highest band first
    return out


def active_features(stats: FeatureStats, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The latents active on input ``row`` and their activations, strongest first."""
    if not 0 <= row < stats.codes.shape[0]:
        raise UserInputError(f"Input {row} does not exist; pick 0 to {stats.codes.shape[0] - 1}.")
    r = stats.codes.getrow(row).tocoo()
    order = np.argsort(-r.data, kind="stable")
    return r.col[order].astype(np.int64), r.data[order]


def _check_feature(stats_or_sae, i: int) -> None:
    m = stats_or_sae.d_sae if isinstance(stats_or_sae, SparseAutoencoder) else stats_or_sae.codes.shape[1]
    if not 0 <= int(i) < m:
        raise UserInputError(f"Feature {i} does not exist; this SAE has features 0 to {m - 1}.")


def decoder_cosines(sae: SparseAutoencoder) -> np.ndarray:
    w = sae.W_dec.detach().cpu().double().numpy()
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return w @ w.T


def nearest_features(sae: SparseAutoencoder, i: int, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` latents whose decoder directions have the largest cosine with latent ``i``'s."""
    _check_feature(sae, i)
    w = sae.W_dec.detach().cpu().double().numpy()
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    cos = w @ w[i]
    cos[i] = -np.inf
    idx = np.argsort(-cos, kind="stable")[:n]
    return idx, cos[idx]


def decoder_map(sae: SparseAutoencoder, method: str = "umap", seed: int = 0):
    """A 2-D map of the decoder directions (rows of W_dec, unit-normalised): UMAP (cosine
    neighbourhoods) or PCA; cached in the result store by :func:`analysis.projection.project`."""
    from .projection import project

    w = sae.W_dec.detach().cpu().numpy().astype(np.float32)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    params = {"n_neighbors": min(15, len(w) - 1)} if method == "umap" else {}
    return project(w, method, 2, seed, **params).coords


def logit_effect(sae: SparseAutoencoder, model, layer: str, data, scale=None, n_inputs: int = 32,
                 batch_features: int = 256, device=None) -> np.ndarray | None:
    """Per latent, the change in each class logit when its decoder direction (times ``scale``, a
    per-latent activation size; default its mean activation on ``data``) is added to ``layer``'s
    output, pushed through the rest of the model, averaged over ``n_inputs`` inputs and centred
    across classes (softmax ignores a common shift). None when the model has no class logits."""
    from .device import pick

    if model.kind != "classifier":
        return None
    mods = model.hookable()
    if layer not in mods:
        raise UserInputError(f"{model.ref} has no hookable layer {layer!r}.")
    dev = pick(device)
    base = np.asarray(data.inputs[: min(n_inputs, len(data))], dtype=np.float32)
    if scale is None:
        scale = np.ones(sae.d_sae, np.float32)
    directions = sae.W_dec.detach().float() * torch.as_tensor(np.asarray(scale, np.float32))[:, None]
    state = {"delta": None}

    def hook(module, inputs, out):
        delta = state["delta"]
        if delta is None:
            return None
        if out.ndim == 2:
            return out + delta
        return out + delta.view(delta.shape[0], delta.shape[1], *([1] * (out.ndim - 2)))

    effects = []
    with model.lock:
        model.to(dev)
        handle = mods[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                xb = torch.from_numpy(base).to(dev)
                state["delta"] = None
                clean = model.module(xb).float()  # (b, classes)
                for s in range(0, sae.d_sae, batch_features):
                    dirs = directions[s: s + batch_features].to(dev)  # (f, d)
                    rows = xb.repeat(len(dirs), 1)  # (f*b, inputs)
                    state["delta"] = dirs.repeat_interleave(len(base), 0)
                    out = model.module(rows).float().view(len(dirs), len(base), -1)
                    eff = (out - clean[None]).mean(1)
                    effects.append((eff - eff.mean(1, keepdim=True)).cpu().numpy())
        finally:
            handle.remove()
            model.to("cpu")
    return np.concatenate(effects, 0)


def token_activations(sae: SparseAutoencoder, model, layer: str, texts: list[str], feature: int) -> list:
    """For text models: latent ``feature``'s activation on every token of each text (the SAE read
    pooled activations; applied per token it shows which tokens carry the feature).
    Returns [(tokens, values), ...], special tokens dropped."""
    from .activations import _first

    _check_feature(sae, feature)
    if getattr(model, "input_kind", "") != "text" or not hasattr(model, "tokenizer"):
        raise UserInputError("Token highlighting needs a text model.")
    mods = model.hookable()
    captured = {}

    def hook(module, inputs, out):
        captured["h"] = _first(out).detach().float()

    out = []
    with model.lock:
        model.to("cpu")
        handle = mods[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                for text in texts:
                    enc = model.tokenizer([text], truncation=True, max_length=128, return_tensors="pt")
                    model.module(**enc)
                    h = captured["h"][0]
                    if h.ndim != 2:
                        raise UserInputError(f"Layer {layer} has no per-token output.")
                    vals = sae.encode(h)[:, feature].detach().numpy()
                    toks = model.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
                    special = set(model.tokenizer.all_special_tokens)
                    keep = [j for j, t in enumerate(toks) if t not in special]
                    out.append(([toks[j] for j in keep], vals[keep]))
        finally:
            handle.remove()
    return out


# --------------------------------------------------------------------------- matching across models
@dataclass
class FeatureMatch:
    """Latents of SAE(A) paired one-to-one with latents of SAE(B) (Hungarian assignment on the
    correlation of their activations over the same inputs), best pairs first."""

    a: np.ndarray  # latent of A
    b: np.ndarray  # its partner in B
    correlation: np.ndarray  # Pearson correlation of the pair's activations (match quality)
    best_a: np.ndarray  # per live latent of A, the best correlation with any latent of B (no assignment)
    live_a: np.ndarray  # indices of A's latents active on the inputs (dead ones are not matched)
    live_b: np.ndarray
    threshold: float = 0.5  # pairs at or above it are "shared", the rest model-specific

    @property
    def shared(self) -> np.ndarray:
        return self.correlation >= self.threshold

    def table(self):
        import pandas as pd

        return pd.DataFrame({"feature A": self.a, "feature B": self.b, "correlation": self.correlation,
                             "shared": self.shared})


def correlation_matrix(codes_a, codes_b) -> np.ndarray:
    """Pearson correlation between every column of two (n x m) activation matrices (dense or
    scipy sparse), in float64; a constant column correlates 0 with everything."""
    from scipy import sparse

    def dense(c):
        return np.asarray(c.todense() if sparse.issparse(c) else c, dtype=np.float64)

    a, b = dense(codes_a), dense(codes_b)
    if len(a) != len(b):
        raise UserInputError(f"The two SAEs were applied to {len(a)} and {len(b)} inputs: matching needs the same inputs.")
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    corr = (a.T @ b) / np.maximum(np.outer(na, nb), 1e-300)
    corr[na == 0] = 0.0
    corr[:, nb == 0] = 0.0
    return corr


def match_features(sae_a: SparseAutoencoder, acts_a, sae_b: SparseAutoencoder, acts_b, threshold: float = 0.5,
                   codes_a=None, codes_b=None, min_active: int = 3) -> FeatureMatch:
    """Match SAE(A)'s latents to SAE(B)'s by the correlation of their activations on the same
    inputs (rows of ``acts_a`` and ``acts_b`` are the same samples): Hungarian assignment
    (scipy.optimize.linear_sum_assignment, maximising total correlation) among the latents active
    on at least ``min_active`` inputs (two latents that fire on one and the same input correlate
    perfectly, which says nothing)."""
    from scipy import sparse
    from scipy.optimize import linear_sum_assignment

    ca = sparse.csc_matrix(sparse_codes(sae_a, acts_a) if codes_a is None else codes_a)
    cb = sparse.csc_matrix(sparse_codes(sae_b, acts_b) if codes_b is None else codes_b)
    live_a = np.nonzero(np.diff(ca.indptr) >= min_active)[0]
    live_b = np.nonzero(np.diff(cb.indptr) >= min_active)[0]
    if len(live_a) == 0 or len(live_b) == 0:
        raise UserInputError(f"One of the SAEs has no feature active on {min_active} or more of these inputs: "
                             "nothing to match. Use more samples.")
    corr = correlation_matrix(ca[:, live_a], cb[:, live_b])
    ra, rb = linear_sum_assignment(corr, maximize=True)
    order = np.argsort(-corr[ra, rb], kind="stable")
    ra, rb = ra[order], rb[order]
    return FeatureMatch(live_a[ra], live_b[rb], corr[ra, rb], corr.max(1), live_a, live_b, float(threshold))


def permuted(sae: SparseAutoencoder, perm) -> SparseAutoencoder:
    """A copy of ``sae`` whose latent j is the original's latent perm[j] (same function, relabelled)."""
    perm = np.asarray(perm)
    arrays = sae.arrays()
    out = {"W_enc": arrays["W_enc"][:, perm], "W_dec": arrays["W_dec"][perm], "b_enc": arrays["b_enc"][perm],
           "b_dec": arrays["b_dec"]}
    if "threshold" in arrays:
        out["threshold"] = arrays["threshold"][perm]
    return from_arrays(out, sae.kind, sae.k, sae.apply_b_dec_to_input)


# --------------------------------------------------------------------------- SAELens files
def saelens_config(sae: SparseAutoencoder, metadata: dict | None = None) -> dict:
    """The cfg.json SAELens writes for this SAE (BatchTopK is saved as JumpReLU, as SAELens does)."""
    cfg = {"architecture": SAELENS_ARCHITECTURE[sae.kind], "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input), "normalize_activations": "none",
           "reshape_activations": "none", "metadata": {"replens_kind": sae.kind, **(metadata or {})}}
    if sae.kind == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    if sae.kind == "batchtopk":
        cfg["metadata"]["replens_k"] = sae.k
    return cfg


def saelens_weights(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    names = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if sae.kind in ("jumprelu", "batchtopk") else [])
    return {name: getattr(sae, name).detach().cpu().contiguous() for name in names}


def save_saelens(sae: SparseAutoencoder, folder, metadata: dict | None = None) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (what ``sae_lens.SAE.load_from_disk`` reads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(saelens_weights(sae), str(folder / SAELENS_WEIGHTS))
    (folder / SAELENS_CFG).write_text(json.dumps(saelens_config(sae, metadata), indent=2))
    return folder


def load_saelens(folder) -> SparseAutoencoder:
    """An SAE saved by SAELens (or by :func:`save_saelens`): standard, topk, jumprelu (and our
    batchtopk, stored as jumprelu)."""
    folder = Path(folder)
    for name in (SAELENS_CFG, SAELENS_WEIGHTS):
        if not (folder / name).exists():
            raise UserInputError(f"{folder} has no {name}: an SAELens SAE folder holds {SAELENS_CFG} and {SAELENS_WEIGHTS}.")
    return from_saelens_bytes((folder / SAELENS_CFG).read_bytes(), (folder / SAELENS_WEIGHTS).read_bytes())


def from_saelens_bytes(cfg_bytes: bytes, weights_bytes: bytes) -> SparseAutoencoder:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        cfg = json.loads(cfg_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{SAELENS_CFG} is not valid JSON ({exc}).") from exc
    arch = cfg.get("architecture", "standard")
    kinds = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
    if arch not in kinds:
        raise UserInputError(f"SAE architecture {arch!r} is not supported; RepLens reads standard, topk and jumprelu "
                             "(BatchTopK SAEs are saved as jumprelu).")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise UserInputError(f"This SAE expects normalised inputs ({cfg['normalize_activations']}); fold the "
                             "normalisation into its weights in SAELens before saving.")
    meta = cfg.get("metadata") or {}
    kind = kinds[arch]
    k = int(cfg.get("k", 16))
    if arch == "jumprelu" and meta.get("replens_kind") == "batchtopk":
        kind, k = "batchtopk", int(meta.get("replens_k", k))
    try:
        tensors = load(weights_bytes)
    except (SafetensorError, ValueError, OSError) as exc:
        raise UserInputError(f"{SAELENS_WEIGHTS} is not a valid safetensors file ({exc}).") from exc
    if "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    sae = from_arrays({n: t.numpy() for n, t in tensors.items()}, kind, k, bool(cfg.get("apply_b_dec_to_input", True)))
    if int(cfg.get("d_in", sae.d_in)) != sae.d_in or int(cfg.get("d_sae", sae.d_sae)) != sae.d_sae:
        raise UserInputError("cfg.json's d_in / d_sae disagree with the weights' shapes.")
    sae.train_info = {"saelens_cfg": cfg}
    return sae


def from_saelens_upload(files: dict[str, bytes], d_in: int | None = None) -> tuple[SparseAutoencoder, str]:
    """An SAE uploaded as its two SAELens files, or as one zip holding them (what the page's download
    gives); returns it and the sha256 of its weights file. ``d_in``: the layer width it must read."""
    import hashlib

    from . import tabular

    files = dict(files)
    for name, data in files.items():
        tabular.check_size(data, name)
    zips = [n for n in files if n.lower().endswith(".zip")]
    if zips:
        try:
            with zipfile.ZipFile(io.BytesIO(files[zips[0]])) as zf:
                if sum(i.file_size for i in zf.infolist()) > 4 * tabular.max_upload_bytes():
                    raise UserInputError(f"{zips[0]} unpacks to more than this server accepts.")
                files = {Path(n).name: zf.read(n) for n in zf.namelist() if Path(n).name in (SAELENS_CFG, SAELENS_WEIGHTS)}
        except zipfile.BadZipFile as exc:
            raise UserInputError(f"{zips[0]} is not a zip archive.") from exc
    cfg = next((d for n, d in files.items() if n.lower().endswith(".json")), None)
    weights = next((d for n, d in files.items() if n.lower().endswith(".safetensors")), None)
    if cfg is None or weights is None:
        raise UserInputError(f"An SAELens SAE is two files: {SAELENS_CFG} and {SAELENS_WEIGHTS} (or a zip of both).")
    sae = from_saelens_bytes(cfg, weights)
    if d_in is not None and sae.d_in != d_in:
        raise UserInputError(f"This SAE reads {sae.d_in}-dimensional activations but the layer has {d_in}: pick the "
                             "layer it was trained on.")
    return sae, hashlib.sha256(weights).hexdigest()


def saelens_zip(sae: SparseAutoencoder, metadata: dict | None = None) -> bytes:
    """The two SAELens files in one zip (for a download button)."""
    from safetensors.torch import save

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(SAELENS_CFG, json.dumps(saelens_config(sae, metadata), indent=2))
        zf.writestr(SAELENS_WEIGHTS, save(saelens_weights(sae)))
    return buf.getvalue()


# --------------------------------------------------------------------------- the result store
def store_key(model_sha: str, data_sha: str, layer: str, pooling: str, params: dict) -> str:
    from .store import make_key

    return make_key("sae", model=model_sha, data=data_sha, layer=layer, pooling=pooling, params=params, v=CACHE_VERSION)


def trained_sae(model, data, layer: str, pooling: str = "mean", store=None, use_cache: bool = True, device=None,
                progress=None, on_log=None, only_cached: bool = False, **params) -> SparseAutoencoder | None:
    """The SAE of ``layer`` of ``model`` on ``data`` with these hyper-parameters, from the result
    store if it was trained before (keyed by model and data hashes, layer, pooling and the
    hyper-parameters), else trained, evaluated and stored. ``only_cached=True`` returns None on a miss."""
    from .activations import extract
    from .store import default_store

    params = normalise_params(**params)
    store = store or default_store()
    key = store_key(model.sha256, data.sha256, layer, pooling, params)
    if use_cache:
        hit = store.get(key)
        if hit is not None:
            meta = store.meta(key) or {}
            sae = from_arrays({n: hit[n] for n in hit if not n.startswith("history_")}, params["kind"],
                              params.get("k", 16))
            sae.history = {name: hit[f"history_{name}"].tolist() for name in ("step", "loss", "l0", "fve")}
            sae.train_info = dict(meta.get("train_info", {}))
            sae.cached = True
            return sae
    if only_cached:
        return None
    acts = extract(model, data, [layer], pooling=pooling, device=device)[layer]
    sae = train_sae(acts, **params, device=device, progress=progress, on_log=on_log)
    metrics = evaluate(sae, acts)
    sae.train_info["metrics"] = metrics.summary()
    if use_cache:
        arrays = {**sae.arrays(), **{f"history_{n}": np.asarray(v, np.float64) for n, v in sae.history.items()}}
        store.put(key, arrays, {"model": model.ref, "model_sha": model.sha256, "data": data.name,
                                "data_sha": data.sha256, "layer": layer, "pooling": pooling, "params": params,
                                "train_info": sae.train_info}, kind="sae")
    return sae


def trained_list(model_sha: str, data_sha: str, layer: str | None = None, store=None) -> list[dict]:
    """Every SAE in the store for this model and data (optionally one layer): its metadata
    (model, layer, hyper-parameters, metrics), oldest first."""
    from .store import default_store

    store = store or default_store()
    out = []
    for key in store.keys("sae"):
        meta = store.meta(key) or {}
        if meta.get("model_sha") == model_sha and meta.get("data_sha") == data_sha and \
                (layer is None or meta.get("layer") == layer):
            out.append({"key": key, **meta})
    return out


# --------------------------------------------------------------------------- the page's parameters
# Choices and defaults of the SAE features page: fast enough on digits (500 rows) to train at once.
PAGE_EXPANSIONS = (2, 4, 8, 16, 32)
PAGE_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
PAGE_BATCHES = (64, 128, 256, 512, 1024, 4096)
PAGE_DEFAULTS = {"expansion": 4, "k": 16, "steps": 300, "lr": 3e-3, "batch_size": 128}


def _register_page() -> None:
    """Declare the SAE features page's URL parameters (share links, CLI) in analysis.spec."""
    from . import spec

    P = spec.Param
    spec.register("sae", (
        P("sae_model", "str", "A", choices=("A", "B"), help="model whose SAE is browsed"),
        P("sae_layer_a", "str", help="layer of A (default: the middle one)"),
        P("sae_layer_b", "str", help="layer of B (default: the middle one)"),
        P("sae_kind", "str", "topk", choices=KINDS, help="SAE kind"),
        P("sae_exp", "int", PAGE_DEFAULTS["expansion"], choices=PAGE_EXPANSIONS, help="expansion factor"),
        P("sae_k", "int", PAGE_DEFAULTS["k"], lo=1, hi=512, help="active latents (topk, batchtopk)"),
        P("sae_l1_relu", "float", DEFAULT_L1["relu"], lo=0.0, hi=1000.0, help="L1 penalty (relu)"),
        P("sae_l1_jumprelu", "float", DEFAULT_L1["jumprelu"], lo=0.0, hi=1000.0, help="L0 penalty (jumprelu)"),
        P("sae_steps", "int", PAGE_DEFAULTS["steps"], lo=50, hi=50000, help="training steps"),
        P("sae_lr", "float", PAGE_DEFAULTS["lr"], choices=PAGE_LRS, help="learning rate"),
        P("sae_bs", "int", PAGE_DEFAULTS["batch_size"], choices=PAGE_BATCHES, help="batch size"),
        P("sae_map", "str", "umap", choices=("umap", "pca"), help="decoder map"),
        P("sae_feature", "int", lo=0, hi=1_000_000, help="feature on show (default: the densest)"),
        P("sae_input", "int", 0, lo=0, hi=1_000_000, help="input whose active features are listed"),
        P("sae_match", "bool", True, help="match A's and B's features"),
        P("sae_pair", "int", 0, lo=0, hi=1_000_000, help="matched pair on show (rank)"),
    ))


_register_page()
from .crosscoder import train_crosscoder  # noqa: E402,F401  (re-exported: one dictionary across two models)
