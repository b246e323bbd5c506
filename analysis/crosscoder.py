"""Crosscoders: one sparse dictionary for two models' activations on the same inputs (Lindsey et
al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing").

One sparse code f (m latents) is read from both models at once and decoded into each, by a
decoder per model:

    f = TopK(ReLU(sum_s (x_s - b_dec,s) W_enc,s + b_enc))          s in {A, B}
    x^_s = f W_dec,s + b_dec,s

A latent whose decoder direction has about the same norm in both models is a feature both models
represent ("shared"); one whose decoder in one model has shrunk to nothing is exclusive to the
other. The relative decoder norm (Minder et al. 2025, "Robustly identifying concepts introduced
during chat fine-tuning using crosscoders")

    r_i = 1/2 ((||d_B,i|| - ||d_A,i||) / max(||d_A,i||, ||d_B,i||) + 1)

is 0 for an A-only latent, 1/2 for one with equal norms and 1 for a B-only latent; ``classify``
calls r <= 0.1 "A-only", r >= 0.9 "B-only", 0.3 <= r <= 0.7 "shared" and the rest "in between".

Kinds: ``topk`` (Gao et al. 2024; unit joint decoder norm sqrt(||d_A||^2 + ||d_B||^2) = 1, so the
ratio is all that is free, AuxK revives dead latents), and ``relu`` (the original recipe:
ReLU, penalty l1 * sum_i f_i (||d_A,i|| + ||d_B,i||), which favours exclusive latents).

Training runs on activations scaled per model to the same mean squared norm (the mean of the two
widths), so neither model dominates the loss; the scales are part of the crosscoder and applied
by ``encode``/``decode``, which read and return raw activations. Decoder norms are measured in
the scaled units.

Files (``save`` / ``load``), after SAELens's SAE format (``cfg.json`` + a safetensors file with
``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc``, ``b_dec``): ``cfg.json`` with
``architecture`` ("crosscoder_topk" / "crosscoder_relu"), ``n_models``, ``d_in`` (one width per
model), ``d_sae``, ``k``, ``apply_b_dec_to_input``, ``normalize_activations``
("constant_scaling_factor") and ``scaling_factors`` (x_s is multiplied by its factor before
encoding, and a decoded x^_s divided by it), ``model_names``, ``hook_names``, ``dtype``,
``metadata``; and ``crosscoder_weights.safetensors`` with ``W_enc.<s>``, ``W_dec.<s>``,
``b_dec.<s>`` per model s = 0, 1 and one ``b_enc``. Stacked tensors as written by the public
crosscoder replications (``W_enc`` [n_models, d_in, d_sae], ``W_dec`` [d_sae, n_models, d_in],
``b_dec`` [n_models, d_in], equal widths only) are read too.
"""
from __future__ import annotations

import io
import json
import math
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import UserInputError
from .validation import as_matrix

KINDS = ("topk", "relu")
CFG, WEIGHTS = "cfg.json", "crosscoder_weights.safetensors"
DEFAULTS = {"kind": "topk", "d_sae": 256, "k": 8, "l1": 1.0, "steps": 2000, "lr": 1e-3, "batch_size": 256, "seed": 0}
A_ONLY, B_ONLY, SHARED, BETWEEN, DEAD = "A-only", "B-only", "shared", "in between", "dead"
CLASSES = (A_ONLY, SHARED, B_ONLY, BETWEEN, DEAD)
EXCLUSIVE_AT = 0.1  # r <= 0.1: A-only; r >= 0.9: B-only
SHARED_WITHIN = 0.2  # |r - 0.5| <= 0.2: shared
AUX_COEF = 1 / 32
FLOPS_PER_SECOND = 1.5e10  # this 2-core machine at the reference load (analysis.jobs.estimates), fused Adam
STEP_OVERHEAD_S = 4e-3  # per step: two encoders, two decoders, top-k, the norm projection, AuxK


class Crosscoder(nn.Module):
    """A crosscoder over ``len(d_in)`` models (SAELens-style names, one encoder and decoder per model)."""

    def __init__(self, d_in, d_sae: int, kind: str = "topk", k: int = 8):
        super().__init__()
        if kind not in KINDS:
            raise UserInputError(f"Unknown crosscoder kind {kind!r}; use one of {', '.join(KINDS)}.")
        self.d_in = tuple(int(d) for d in d_in)
        if len(self.d_in) < 2:
            raise UserInputError("A crosscoder reads at least two models' activations.")
        self.d_sae, self.kind, self.k = int(d_sae), kind, int(k)
        self.W_enc = nn.ParameterList([nn.Parameter(torch.zeros(d, d_sae)) for d in self.d_in])
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(d_sae, d)) for d in self.d_in])
        self.b_dec = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in self.d_in])
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.register_buffer("scales", torch.ones(len(self.d_in)))
        self.history: dict = {"step": [], "loss": [], "l0": [], "fve": []}
        self.train_info: dict = {}

    # -- the maps, on scaled activations (tensors)
    def pre_acts(self, xs) -> torch.Tensor:
        return sum((x - b) @ w for x, b, w in zip(xs, self.b_dec, self.W_enc)) + self.b_enc

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return torch.relu(z)
        top = torch.topk(z, min(self.k, z.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(z).scatter_(-1, top.indices, torch.relu(top.values))

    def decode_scaled(self, f: torch.Tensor) -> list[torch.Tensor]:
        return [f @ w + b for w, b in zip(self.W_dec, self.b_dec)]

    # -- raw activations in and out (numpy or tensors)
    def _scaled(self, xs) -> list[torch.Tensor]:
        if len(xs) != len(self.d_in):
            raise UserInputError(f"This crosscoder reads {len(self.d_in)} models' activations; got {len(xs)}.")
        out = []
        for s, (x, d) in enumerate(zip(xs, self.d_in)):
            t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if t.ndim != 2 or t.shape[1] != d:
                raise UserInputError(f"Model {s}'s activations must be (n x {d}); got {tuple(t.shape)}.")
            out.append(t.float() * self.scales[s])
        if len({len(t) for t in out}) != 1:
            raise UserInputError("The models' activations must have one row per input, the same rows for each.")
        return out

    @torch.no_grad()
    def encode(self, xs, batch_size: int = 4096) -> np.ndarray:
        """The sparse codes (n x d_sae) of raw activations ``xs`` = [x_A, x_B]."""
        scaled = self._scaled(xs)
        n = len(scaled[0])
        parts = [self.activate(self.pre_acts([x[i: i + batch_size] for x in scaled])).numpy()
                 for i in range(0, n, batch_size)]
        return np.concatenate(parts, 0) if parts else np.zeros((0, self.d_sae), np.float32)

    @torch.no_grad()
    def decode(self, f) -> list[np.ndarray]:
        """Raw reconstructions of each model's activations from codes ``f``."""
        t = f if isinstance(f, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))
        return [(x / self.scales[s]).numpy() for s, x in enumerate(self.decode_scaled(t))]

    def forward(self, xs):
        return self.decode(self.encode(xs))

    # -- what each latent is
    def decoder_norms(self) -> np.ndarray:
        """(d_sae x n_models) norms of each latent's decoder direction in each model (scaled units)."""
        return np.stack([w.detach().double().norm(dim=1).numpy() for w in self.W_dec], 1)

    def relative_norm(self) -> np.ndarray:
        """r_i in [0, 1]: 0 = only A's decoder, 1/2 = equal norms, 1 = only B's (first two models)."""
        return relative_norm(self.decoder_norms()[:, :2])

    def describe(self) -> str:
        sparsity = f"k={self.k}" if self.kind == "topk" else f"l1={self.train_info.get('params', {}).get('l1')}"
        return f"Crosscoder ({self.kind}) · {self.d_sae} latents · {sparsity} · widths {', '.join(map(str, self.d_in))}"

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"b_enc": self.b_enc.detach().numpy().copy(), "scales": self.scales.numpy().copy()}
        for s in range(len(self.d_in)):
            out[f"W_enc.{s}"] = self.W_enc[s].detach().numpy().copy()
            out[f"W_dec.{s}"] = self.W_dec[s].detach().numpy().copy()
            out[f"b_dec.{s}"] = self.b_dec[s].detach().numpy().copy()
        return out


def relative_norm(norms: np.ndarray) -> np.ndarray:
    """1/2 ((||d_B|| - ||d_A||) / max(||d_A||, ||d_B||) + 1) per row of (n x 2) decoder norms (1/2 when both are 0)."""
    norms = np.asarray(norms, dtype=np.float64)
    a, b = norms[:, 0], norms[:, 1]
    top = np.maximum(a, b)
    return np.where(top > 0, 0.5 * ((b - a) / np.where(top > 0, top, 1.0) + 1.0), 0.5)


def classify(ratio: np.ndarray, density: np.ndarray | None = None) -> np.ndarray:
    """Each latent's class from its relative decoder norm (and "dead" where ``density`` is 0)."""
    r = np.asarray(ratio, dtype=np.float64)
    out = np.full(len(r), BETWEEN, dtype=object)
    out[np.abs(r - 0.5) <= SHARED_WITHIN] = SHARED
    out[r <= EXCLUSIVE_AT] = A_ONLY
    out[r >= 1 - EXCLUSIVE_AT] = B_ONLY
    if density is not None:
        out[np.asarray(density) == 0] = DEAD
    return out.astype(str)


def from_arrays(arrays: dict, kind: str = "topk", k: int = 8) -> Crosscoder:
    n = sum(1 for name in arrays if name.startswith("W_dec."))
    d_in = [np.asarray(arrays[f"W_dec.{s}"]).shape[1] for s in range(n)]
    cc = Crosscoder(d_in, np.asarray(arrays["b_enc"]).shape[0], kind, k)
    with torch.no_grad():
        for s in range(n):
            for name, param in (("W_enc", cc.W_enc[s]), ("W_dec", cc.W_dec[s]), ("b_dec", cc.b_dec[s])):
                value = torch.as_tensor(np.array(arrays[f"{name}.{s}"], dtype=np.float32))
                if tuple(value.shape) != tuple(param.shape):
                    raise UserInputError(f"Crosscoder weight {name}.{s} has shape {tuple(value.shape)}, expected "
                                         f"{tuple(param.shape)}.")
                param.data = value
        cc.b_enc.data = torch.as_tensor(np.array(arrays["b_enc"], dtype=np.float32))
        if "scales" in arrays:
            cc.scales.copy_(torch.as_tensor(np.array(arrays["scales"], dtype=np.float32)))
    return cc


# --------------------------------------------------------------------------- training
def normalise_params(kind: str = "topk", d_sae: int = 256, k: int = 8, l1: float = 1.0, steps: int = 2000,
                     lr: float = 1e-3, batch_size: int = 256, seed: int = 0) -> dict:
    """The hyper-parameters that define a trained crosscoder, checked (only those its kind uses)."""
    if kind not in KINDS:
        raise UserInputError(f"Unknown crosscoder kind {kind!r}; use one of {', '.join(KINDS)}.")
    if int(d_sae) < 1 or int(steps) < 1 or int(batch_size) < 1 or not float(lr) > 0:
        raise UserInputError("Latents, steps and batch size are positive integers and the learning rate is positive.")
    out = {"kind": kind, "d_sae": int(d_sae), "steps": int(steps), "lr": float(lr), "batch_size": int(batch_size),
           "seed": int(seed)}
    if kind == "topk":
        if not 1 <= int(k) <= int(d_sae):
            raise UserInputError(f"k = {k} must lie between 1 and the number of latents ({d_sae}).")
        out["k"] = int(k)
    else:
        if not float(l1) >= 0:
            raise UserInputError("The sparsity penalty is zero or positive.")
        out["l1"] = float(l1)
    return out


def estimate_seconds(n: int, d_in, d_sae: int, steps: int, batch_size: int) -> float:
    """About how long :func:`train_crosscoder` takes on this machine's CPU (as analysis.sae's estimate:
    ~12 multiply-adds per weight and row for the encoders, decoders and their gradients)."""
    b = min(int(batch_size), int(n))
    return steps * (12.0 * b * sum(d_in) * d_sae / FLOPS_PER_SECOND + STEP_OVERHEAD_S) + 0.1


def train_crosscoder(acts_a, acts_b, kind: str = "topk", d_sae: int = 256, k: int = 8, l1: float = 1.0,
                     steps: int = 2000, lr: float = 1e-3, batch_size: int = 256, seed: int = 0, device=None,
                     progress: Callable[[float, str], None] | None = None) -> Crosscoder:
    """Train a crosscoder on two models' activations of the same inputs (rows aligned): ``acts_a``
    (n x d_A) and ``acts_b`` (n x d_B). See the module docstring for the kinds."""
    from .device import pick
    from .sae.training import _Adam, cpu_threads, geometric_median

    xa = as_matrix(acts_a, "activations of A", dtype=np.float32)
    xb = as_matrix(acts_b, "activations of B", dtype=np.float32)
    if len(xa) != len(xb):
        raise UserInputError(f"A has {len(xa)} rows and B {len(xb)}: a crosscoder reads both models on the same inputs.")
    params = normalise_params(kind, d_sae, k, l1, steps, lr, batch_size, seed)
    cc = Crosscoder((xa.shape[1], xb.shape[1]), params["d_sae"], kind, params.get("k", k))
    dev = pick(device)
    t0 = time.perf_counter()
    target = float(np.mean(cc.d_in))  # both models scaled to this mean squared norm
    xs, variances = [], []
    for s, x in enumerate((xa, xb)):
        mean_sq = float((x.astype(np.float64) ** 2).sum(1).mean())
        if mean_sq <= 0:
            raise UserInputError(f"Model {'AB'[s]}'s activations are all zero: there is nothing to decode.")
        cc.scales[s] = math.sqrt(target / mean_sq)
        t = torch.from_numpy(x).to(dev) * float(cc.scales[s])
        xs.append(t)
        variances.append(float(((t.double() - t.double().mean(0)) ** 2).sum(1).mean()) or 1.0)
    gen = torch.Generator().manual_seed(params["seed"])
    torch.manual_seed(params["seed"])
    cc.to(dev)
    _init(cc, xs, gen, geometric_median)
    opt = _Adam(list(cc.parameters()))
    n, batch = len(xa), min(params["batch_size"], len(xa))
    with cpu_threads(batch * sum(cc.d_in) * cc.d_sae):
        _loop(cc, xs, variances, params, opt, gen, n, batch, progress)
    cc.to("cpu")
    seconds = time.perf_counter() - t0
    cc.train_info = {"params": params, "seconds": seconds, "n": n, "device": str(dev),
                     "samples_per_second": params["steps"] * batch / max(seconds, 1e-9)}
    return cc


def _init(cc: Crosscoder, xs, gen, geometric_median) -> None:
    """Decoder rows random with unit joint norm (0.1 for relu), encoders their transposes, b_dec the
    geometric median of each model's data."""
    with torch.no_grad():
        w = torch.randn(cc.d_sae, sum(cc.d_in), generator=gen)
        w = w / w.norm(dim=1, keepdim=True) * (0.1 if cc.kind == "relu" else 1.0)
        parts = torch.split(w, list(cc.d_in), dim=1)
        dev = xs[0].device
        for s, part in enumerate(parts):
            cc.W_dec[s].data = part.clone().to(dev)
            cc.W_enc[s].data = part.T.clone().to(dev)
            sub = xs[s][torch.randperm(len(xs[s]), generator=gen)[:8192].to(dev)]
            cc.b_dec[s].data = geometric_median(sub).to(dev)
        cc.b_enc.data.zero_()


def _joint_norm(cc: Crosscoder) -> torch.Tensor:
    return torch.sqrt(sum(w.pow(2).sum(1) for w in cc.W_dec)).clamp_min(1e-12)


def _loop(cc: Crosscoder, xs, variances, params, opt, gen, n: int, batch: int, progress) -> None:
    steps, lr = params["steps"], params["lr"]
    penalty = params.get("l1", 0.0)
    dead_after = max(n, 10 * batch)
    since_fired = torch.zeros(cc.d_sae, device=xs[0].device)
    decay_from, log_every = int(0.8 * steps), max(1, steps // 20)
    order, pos = torch.randperm(n, generator=gen), 0
    run = {"loss": 0.0, "l0": 0.0, "sse": [0.0] * len(xs), "count": 0}
    cc.history = {"step": [], "loss": [], "l0": [], "fve": []}
    for step in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos: pos + batch].to(xs[0].device)
        pos += batch
        xb = [x[idx] for x in xs]
        z = cc.pre_acts(xb)
        f = cc.activate(z)
        errs = [x - xh for x, xh in zip(xb, cc.decode_scaled(f))]
        sse = [e.pow(2).sum(-1).mean() for e in errs]
        loss = sum(s / v for s, v in zip(sse, variances))
        if cc.kind == "topk":
            loss = loss + _aux_loss(cc, z, errs, variances, since_fired >= dead_after)
        else:
            warm = min(1.0, (step + 1) / max(1, int(0.05 * steps)))
            norms = sum(w.norm(dim=1) for w in cc.W_dec)
            loss = loss + warm * penalty * (f * norms).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        if cc.kind == "topk":  # keep only the gradient tangent to the unit joint-norm sphere
            dot = sum((w.grad * w.data).sum(1) for w in cc.W_dec if w.grad is not None)
            for w in cc.W_dec:
                if w.grad is not None:
                    w.grad -= dot[:, None] * w.data
        opt.step(lr if step < decay_from else lr * (steps - step) / max(1, steps - decay_from))
        with torch.no_grad():
            if cc.kind == "topk":
                norm = _joint_norm(cc)
                for w in cc.W_dec:
                    w.data /= norm[:, None]
            active = (f > 0).any(0)
            since_fired += batch
            since_fired[active] = 0
            run["loss"] += float(loss)
            run["l0"] += float((f > 0).sum(-1).float().mean())
            for s, v in enumerate(sse):
                run["sse"][s] += float(v)
            run["count"] += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            c = max(run["count"], 1)
            cc.history["step"].append(step + 1)
            cc.history["loss"].append(run["loss"] / c)
            cc.history["l0"].append(run["l0"] / c)
            cc.history["fve"].append([1.0 - run["sse"][s] / c / variances[s] for s in range(len(xs))])
            run = {"loss": 0.0, "l0": 0.0, "sse": [0.0] * len(xs), "count": 0}
            if progress:
                fve = ", ".join(f"{v:.3f}" for v in cc.history["fve"][-1])
                progress((step + 1) / steps, f"step {step + 1}/{steps} · L0 {cc.history['l0'][-1]:.1f} · "
                                             f"explained variance {fve}")


def _aux_loss(cc: Crosscoder, z, errs, variances, dead) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the top dead latents reconstruct the residual of both models."""
    n_dead = int(dead.sum())
    if not n_dead:
        return torch.zeros((), device=z.device)
    k_aux = min(max(sum(cc.d_in) // 2, 1), n_dead)
    aux_z = torch.where(dead[None], z, torch.full_like(z, -torch.inf))
    top = torch.topk(aux_z, k_aux, dim=-1)
    aux_f = torch.zeros_like(z).scatter_(-1, top.indices, torch.relu(top.values))
    num = sum((e.detach() - aux_f @ w).pow(2).sum(-1).mean() / v for e, w, v in zip(errs, cc.W_dec, variances))
    den = sum(e.detach().pow(2).sum(-1).mean() / v for e, v in zip(errs, variances)).clamp_min(1e-12)
    return AUX_COEF * min(n_dead / k_aux, 1.0) * num / den


# --------------------------------------------------------------------------- evaluation
@dataclass
class CrosscoderMetrics:
    n: int
    l0: float
    fve: list  # fraction of variance explained per model, over the whole set
    dead_fraction: float
    density: np.ndarray = field(repr=False)


def evaluate(cc: Crosscoder, acts_a, acts_b) -> CrosscoderMetrics:
    xs = [np.asarray(acts_a, np.float64), np.asarray(acts_b, np.float64)]
    f = cc.encode(xs)
    recon = cc.decode(f)
    fve = []
    for x, xh in zip(xs, recon):
        total = float(((x - x.mean(0)) ** 2).sum())
        fve.append(1.0 - float(((x - xh) ** 2).sum()) / total if total > 0 else float("nan"))
    density = (f > 0).mean(0)
    return CrosscoderMetrics(len(f), float((f > 0).sum(1).mean()), fve, float((density == 0).mean()), density)


# --------------------------------------------------------------------------- files
def config(cc: Crosscoder, model_names=None, hook_names=None, metadata: dict | None = None) -> dict:
    cfg = {"architecture": f"crosscoder_{cc.kind}", "n_models": len(cc.d_in), "d_in": list(cc.d_in),
           "d_sae": cc.d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "constant_scaling_factor",
           "scaling_factors": [float(s) for s in cc.scales], "model_names": list(model_names or []),
           "hook_names": list(hook_names or []), "metadata": dict(metadata or {})}
    if cc.kind == "topk":
        cfg["k"] = cc.k
    return cfg


def weights(cc: Crosscoder) -> dict[str, torch.Tensor]:
    out = {"b_enc": cc.b_enc.detach().cpu().contiguous()}
    for s in range(len(cc.d_in)):
        out[f"W_enc.{s}"] = cc.W_enc[s].detach().cpu().contiguous()
        out[f"W_dec.{s}"] = cc.W_dec[s].detach().cpu().contiguous()
        out[f"b_dec.{s}"] = cc.b_dec[s].detach().cpu().contiguous()
    return out


def save(cc: Crosscoder, folder, **names) -> Path:
    """Write ``cfg.json`` + ``crosscoder_weights.safetensors`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights(cc), str(folder / WEIGHTS))
    (folder / CFG).write_text(json.dumps(config(cc, **names), indent=2))
    return folder


def load(folder) -> Crosscoder:
    folder = Path(folder)
    for name in (CFG, WEIGHTS):
        if not (folder / name).exists():
            raise UserInputError(f"{folder} has no {name}: a crosscoder folder holds {CFG} and {WEIGHTS}.")
    return from_bytes((folder / CFG).read_bytes(), (folder / WEIGHTS).read_bytes())


def from_bytes(cfg_bytes: bytes, weights_bytes: bytes) -> Crosscoder:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    try:
        cfg = json.loads(cfg_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{CFG} is not valid JSON ({exc}).") from exc
    arch = str(cfg.get("architecture", ""))
    if not arch.startswith("crosscoder_") or arch.removeprefix("crosscoder_") not in KINDS:
        raise UserInputError(f"Crosscoder architecture {arch!r} is not supported; RepLens reads "
                             f"{', '.join('crosscoder_' + k for k in KINDS)}.")
    try:
        tensors = {n: t.numpy() for n, t in load_tensors(weights_bytes).items()}
    except (SafetensorError, ValueError, OSError) as exc:
        raise UserInputError(f"{WEIGHTS} is not a valid safetensors file ({exc}).") from exc
    if "W_enc" in tensors:  # stacked layout: W_enc [n, d, m], W_dec [m, n, d], b_dec [n, d]
        n = tensors["W_enc"].shape[0]
        tensors = {"b_enc": tensors["b_enc"],
                   **{f"W_enc.{s}": tensors["W_enc"][s] for s in range(n)},
                   **{f"W_dec.{s}": tensors["W_dec"][:, s] for s in range(n)},
                   **{f"b_dec.{s}": tensors["b_dec"][s] for s in range(n)}}
    if cfg.get("scaling_factors") is not None:
        tensors["scales"] = np.asarray(cfg["scaling_factors"], np.float32)
    cc = from_arrays(tensors, arch.removeprefix("crosscoder_"), int(cfg.get("k", 8)))
    if list(cfg.get("d_in", cc.d_in)) != list(cc.d_in) or int(cfg.get("d_sae", cc.d_sae)) != cc.d_sae:
        raise UserInputError("cfg.json's d_in / d_sae disagree with the weights' shapes.")
    cc.train_info = {"cfg": cfg}
    return cc


def to_zip(cc: Crosscoder, **names) -> bytes:
    """The two files in one zip (a download)."""
    from safetensors.torch import save as save_bytes

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(CFG, json.dumps(config(cc, **names), indent=2))
        zf.writestr(WEIGHTS, save_bytes(weights(cc)))
    return buf.getvalue()
