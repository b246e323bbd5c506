"""Training an SAE on one layer's activations (every kind), its hyper-parameters, the sparsity
sweep of the frontier and the estimate of its run time shown before it starts."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import numpy as np
import torch

from ..errors import UserInputError
from .sources import CacheSource, source_of
from .sparse_step import sparse_step
from .model import DEFAULT_L1, JUMPRELU_BANDWIDTH, JUMPRELU_INIT_THRESHOLD, KINDS, PENALTY_KINDS, \
    SparseAutoencoder, _Step

DEFAULTS = {"kind": "topk", "expansion": 8, "k": 16, "steps": 1000, "lr": 1e-3, "batch_size": 256, "seed": 0}
# AuxK's coefficient on its normalised loss ||e - e^||^2 / ||e||^2 (Gao et al. 2024 use 1/32): with
# the weight-normalised decoder below, 1/32 left 20% of 128 latents dead on the page's default view
# (digits, 500 inputs) where 1 leaves 9%, as before, at about the same explained variance.
AUX_COEF = 1.0
# TopK family: the decoder's unit-norm directions u are optimised through weight normalisation
# (u = v / ||v||, Salimans & Kingma 2016) with ||v|| starting at 0.1, as SAELens's decoder_init_norm
# and rescale_acts_by_decoder_norm do. Adam moves v by ~lr per entry, so a direction turns ~1 / ||v||
# times as fast as a unit-norm row would, a boost that fades as ||v|| grows: on MiniLM
# (benchmarks/sae.py, 100 steps) explained variance rose from 0.70 to 0.79. The encoder starts as
# ENCODER_INIT_SCALE x the decoder's transpose (Gao et al.: 1, SAELens: 0.1); measured after 300
# steps, 1 gave 0.868, 0.1 gave 0.885 but twice the dead latents on digits, 0.3 gave 0.888.
DECODER_INIT_NORM = 0.1
ENCODER_INIT_SCALE = 0.3
# Sustained float32 FLOP/s of a training step (12 * batch * d * m FLOP) on this project's 2-core CPU:
# benchmarks/sae.py measured ~2.1e10 on a quiet machine; a lower figure covers a shared one. The
# estimate shown before training uses it.
FLOPS_PER_SECOND = 1.5e10
STEP_OVERHEAD_S = 1e-3
# The sparse TopK step's other work in floating-point operations' worth of time (benchmarks/sae.py,
# MiniLM, 4,096 latents, k = 32, batch 1,024, on the same machine as FLOPS_PER_SECOND): per
# pre-activation (top-k, masks), per active latent and dimension (the CSR products), per weight
# (fused Adam, the decoder's tangent projection and renormalisation).
SELECT_COST = 300.0
SPARSE_COST = 150.0
UPDATE_COST = 250.0
SMALL_WORK = 5e7  # multiply-adds of one encoder product below which one thread is faster


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


def tangent_grad(u: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient of a loss of unit rows u to v, where u = v / ||v|| (weight normalisation):
    (I - u u^T) grad / ||v|| per row, in place on ``grad``; ``norm`` None means ||v|| = 1."""
    grad -= (grad * u).sum(1, keepdim=True) * u
    return grad if norm is None else grad.div_(norm)


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
              log_every: int | None = None, b_dec_init: str = "geometric_median", batches=None) -> SparseAutoencoder:
    """Train an SAE of ``kind`` on ``acts``: an (n x d) array, or a layer's on-disk
    :class:`~analysis.activations.ActivationCache`, streamed a few chunks at a time (memory does
    not grow with n). ``l1`` is the penalty of ``relu`` (L1) and ``jumprelu`` (L0) SAEs (default
    ``DEFAULT_L1``); ``k`` the active latents of TopK/BatchTopK. ``batches``, an iterable of row
    batches, replaces the shuffle (the scale and initial b_dec still come from ``acts``).
    ``progress(fraction, message)`` and ``on_log(history)`` are called about 20 times."""
    src = source_of(acts)
    params = normalise_params(kind, expansion, k, l1, steps, lr, batch_size, seed)
    sae = SparseAutoencoder(src.d, params["expansion"] * src.d, kind, params.get("k", k))
    _train(sae, src, **{key: v for key, v in params.items() if key not in ("kind", "expansion")}, device=device,
           progress=progress, on_log=on_log, log_every=log_every, b_dec_init=b_dec_init, batches=batches)
    sae.train_info["params"] = params
    return sae


def _running(dev) -> dict:
    """Sums of loss, L0 and squared error since the last log, as float64 tensors on the device."""
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    return {"loss": zero.clone(), "l0": zero.clone(), "sse": zero.clone(), "count": 0}


def _init(sae: SparseAutoencoder, src, gen: torch.Generator, b_dec_init: str) -> None:
    dev = sae.W_dec.device
    with torch.no_grad():
        w = torch.randn(sae.d_sae, sae.d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        if sae.kind == "relu":
            w = 0.1 * w  # Anthropic 2024: no norm constraint, small decoder norms at the start
        sae.W_dec.data = w.to(dev)
        sae.W_enc.data = (w.T * (ENCODER_INIT_SCALE if sae.kind in ("topk", "batchtopk") else 1.0)).contiguous().to(dev)
        sae.b_enc.data = torch.zeros(sae.d_sae, device=dev)
        sub = src.take(torch.randperm(src.n, generator=gen)[:8192])
        sae.b_dec.data = geometric_median(sub) if b_dec_init == "geometric_median" else sub.mean(0)
        if sae.kind == "jumprelu":
            sae.threshold.data = torch.full((sae.d_sae,), JUMPRELU_INIT_THRESHOLD, device=dev)


def _train(sae: SparseAutoencoder, acts, **params) -> None:
    src = source_of(acts)
    with cpu_threads(min(int(params.get("batch_size", 256)), src.n) * sae.d_in * sae.d_sae):
        _train_loop(sae, src, **params)


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
                log_every: int | None = None, b_dec_init: str = "geometric_median", batches=None) -> None:
    from ..device import pick

    src = source_of(acts)
    if src.d != sae.d_in:
        raise UserInputError(f"The activations have {src.d} dimensions; this SAE reads {sae.d_in}.")
    if k is not None:
        sae.k = int(k)
    if sae.kind in ("topk", "batchtopk") and not 1 <= sae.k <= sae.d_sae:
        raise UserInputError(f"k = {sae.k} must lie between 1 and the number of latents ({sae.d_sae}).")
    penalty = (DEFAULT_L1.get(sae.kind, 0.0) if l1 is None else float(l1)) if sae.kind in PENALTY_KINDS else 0.0
    dev = pick(device)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, d = src.n, src.d
    mean_sq, spread = src.moments()
    if mean_sq <= 0:
        raise UserInputError("The layer's activations are all zero: there is nothing to decompose.")
    scale = math.sqrt(d / mean_sq)  # train on inputs with E||x||^2 = d
    variance = spread * scale ** 2 or 1.0
    src.on(dev, scale)
    sae.to(dev)
    _init(sae, src, gen, b_dec_init)
    unit_norm = sae.kind != "relu"
    sparse = sae.kind in ("topk", "batchtopk")
    # the norms ||v|| of the weight-normalised decoder rows (TopK family; None: plain unit rows)
    dec_norm = torch.full((sae.d_sae, 1), DECODER_INIT_NORM, device=dev) if sparse else None
    opt = _Adam([p for p in sae.parameters() if p.requires_grad])
    batch_size = min(int(batch_size), n)
    dead_after = max(n, 10 * batch_size)  # samples without firing before a latent counts as dead
    since_fired = torch.zeros(sae.d_sae, device=dev)
    fired_window = torch.zeros(sae.d_sae, dtype=torch.bool, device=dev)
    resample_at = {int(steps * f) for f in (0.25, 0.5)} if sae.kind in PENALTY_KINDS and steps >= 200 else set()
    log_every = log_every or max(1, steps // 20)
    decay_from = int(0.8 * steps)
    feed = src.batches(batch_size, gen, seed) if batches is None else \
        (torch.as_tensor(np.asarray(xb, np.float32)).to(dev) * scale for xb in batches)
    sae.history = {"step": [], "loss": [], "l0": [], "fve": []}
    run = _running(dev)
    seen = 0
    for step in range(steps):
        xb = next(feed, None)
        if xb is None:
            raise UserInputError(f"The batches ran out after {step} of {steps} steps.")
        seen += len(xb)
        if sparse:
            dead = since_fired >= dead_after
            # one host read per step: AuxK's k_aux is a shape (free on a CPU; a sync on a GPU)
            loss, sse, active, l0 = sparse_step(sae, xb, variance, dead, int(dead.sum()), AUX_COEF)
        else:
            loss, sse, active, l0 = _dense_step(sae, xb, step, steps, penalty, opt)
        if unit_norm:  # keep only the gradient tangent to the unit sphere (divided by ||v||: to v)
            sae.W_dec.grad = tangent_grad(sae.W_dec.data, sae.W_dec.grad, dec_norm)
            if dec_norm is not None:  # the step is taken on v = ||v|| u
                sae.W_dec.data *= dec_norm
        opt.step(lr if step < decay_from else lr * (steps - step) / max(1, steps - decay_from))
        with torch.no_grad():
            if unit_norm:
                norm = sae.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-12)
                sae.W_dec.data /= norm
                if dec_norm is not None:
                    dec_norm = norm
            if sae.kind == "jumprelu":
                sae.threshold.data.clamp_(min=1e-6)
            since_fired += len(xb)
            since_fired.masked_fill_(active, 0)
            fired_window |= active
            # running sums stay on the device (float64, as Python floats were): no sync per step
            run["loss"] += loss.detach().double()
            run["l0"] += l0.double() / len(xb)
            run["sse"] += sse.detach().double()
            run["count"] += 1
        if step + 1 in resample_at:
            _resample(sae, src, ~fired_window, opt, gen)
            fired_window.zero_()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            run = _log(sae, run, step, steps, variance, dev, on_log, progress)
    with torch.no_grad():
        if sae.kind == "batchtopk":
            sae.threshold.data = torch.full((sae.d_sae,), _global_threshold(sae, src), device=dev)
        sae.b_enc.data /= scale  # fold the input scale back: the SAE reads raw activations
        sae.b_dec.data /= scale
        if sae.kind in ("jumprelu", "batchtopk"):
            sae.threshold.data /= scale
    sae.to("cpu")
    seconds = time.perf_counter() - t0
    sae.train_info.update({"seconds": seconds, "samples_per_second": seen / max(seconds, 1e-9),
                           "input_scale": scale, "device": str(dev), "n": n,
                           "streamed": isinstance(src, CacheSource)})


def _dense_step(sae: SparseAutoencoder, xb: torch.Tensor, step: int, steps: int, penalty: float, opt):
    """ReLU + L1 and JumpReLU: every latent can be active, so the step is dense and autograd's."""
    z = sae.pre_acts(xb)
    f = sae.activate(z, training=True)
    sse = (xb - (f @ sae.W_dec + sae.b_dec)).pow(2).sum(-1).mean()
    warm = min(1.0, (step + 1) / max(1, int(0.05 * steps)))
    if sae.kind == "relu":
        loss = sse + warm * penalty * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    else:
        loss = sse + warm * penalty * _Step.apply(z, sae.threshold, JUMPRELU_BANDWIDTH).sum(-1).mean()
    opt.zero_grad()
    loss.backward()
    with torch.no_grad():
        on = f > 0
        return loss, sse, on.any(0), on.sum()


def _log(sae: SparseAutoencoder, run: dict, step: int, steps: int, variance: float, dev, on_log, progress) -> dict:
    c = max(run["count"], 1)
    sae.history["step"].append(step + 1)
    sae.history["loss"].append(float(run["loss"]) / c)
    sae.history["l0"].append(float(run["l0"]) / c)
    sae.history["fve"].append(1.0 - float(run["sse"]) / c / variance)
    if on_log:
        on_log(sae.history)
    if progress:
        progress((step + 1) / steps, f"step {step + 1}/{steps} · L0 {sae.history['l0'][-1]:.1f} · "
                                     f"explained variance {sae.history['fve'][-1]:.3f}")
    return _running(dev)


class _Adam:
    """Adam (Kingma & Ba) through torch's fused kernel (``torch._fused_adam_``, the one
    ``torch.optim.Adam(fused=True)`` calls): one pass over each parameter and its two moments, 20x
    faster on a CPU than the same update in separate tensor operations. torch.optim.Adam itself
    would do the same, but its first use imports torch._dynamo (~5 s on a 2-core machine), longer
    than a whole default training run."""

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.betas, self.eps = list(params), betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        pick = lambda xs: [xs[i] for i in live]  # noqa: E731
        steps = pick(self.t)
        torch._foreach_add_(steps, 1.0)
        # the fused kernel walks a parameter, its gradient and its moments as one flat array each:
        # they must share a layout (a transposed gradient of a row-major weight would be misread)
        grads = [_like(self.params[i], self.params[i].grad) for i in live]
        torch._fused_adam_(pick(self.params), grads, pick(self.m), pick(self.v), [],
                           steps, lr=float(lr), beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
                           eps=self.eps, amsgrad=False, maximize=False)

    def moments(self, p) -> list[torch.Tensor]:
        for q, m, v in zip(self.params, self.m, self.v):
            if q is p:
                return [m, v]
        return []


def _like(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)


def _global_threshold(sae: SparseAutoencoder, src) -> float:
    """BatchTopK's inference threshold: the smallest activation kept when the training set (up to
    8192 rows) is one batch, i.e. the (rows * k)-th largest positive pre-activation."""
    xs = src.first(8192)
    z = torch.relu(sae.pre_acts(xs)).flatten()
    kk = min(sae.k * len(xs), int((z > 0).sum()))
    if kk < 1:
        return 0.0
    return float(torch.topk(z, kk, sorted=False).values.min())


def _resample(sae: SparseAutoencoder, src, dead: torch.Tensor, opt, gen) -> None:
    """Anthropic (2023): point each dead latent at an input it reconstructs badly (drawn with
    probability ~ squared error), encoder row scaled to 0.2 x the mean alive encoder norm, bias 0,
    and clear the optimiser's moments for those rows."""
    idx = torch.nonzero(dead).flatten()
    if len(idx) == 0:
        return
    with torch.no_grad():
        sample = src.take(torch.randperm(src.n, generator=gen)[:4096])
        err = sample - (sae.activate(sae.pre_acts(sample)) @ sae.W_dec + sae.b_dec)
        weight = err.pow(2).sum(1).cpu().double()
        if float(weight.sum()) <= 0:
            return
        pick = torch.multinomial(weight, len(idx), replacement=len(idx) > len(weight), generator=gen).to(sample.device)
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


EXPANSIONS = (1, 2, 4, 8, 16, 32)
INPUTS_PER_LATENT = 4


def expansion_for(n_samples: int, d_in: int) -> int:
    """A dictionary scaled to the data: the largest expansion (a power of two up to 32) that keeps at
    most one latent per ``INPUTS_PER_LATENT`` inputs, and at least 1 (one latent per dimension).
    On 500 digits and a 128-wide layer this is 1x (128 latents, 9% dead after 300 TopK steps) where
    4x left 58% of 512 latents dead. When even 1x gives more latents than inputs, the SAE can spend a
    latent on each input: see :func:`latents_outnumber_inputs`."""
    fits = [e for e in EXPANSIONS if e * int(d_in) * INPUTS_PER_LATENT <= int(n_samples)]
    return max(fits) if fits else 1


def latents_outnumber_inputs(d_sae: int, n_samples: int) -> str:
    """A warning when an SAE has at least as many latents as training inputs (empty otherwise): it can
    then dedicate a latent to each input, so a high explained variance says nothing about features."""
    if int(d_sae) < int(n_samples):
        return ""
    return (f"{d_sae:,} latents for {n_samples:,} inputs: with at least as many latents as inputs the SAE can "
            "reconstruct each input with a latent of its own, so a high explained variance says little about "
            "features. Use more samples, or a smaller expansion.")


def estimate_seconds(n: int, d_in: int, expansion: int, steps: int, batch_size: int, kind: str = "topk",
                     k: int = 16) -> float:
    """About how long :func:`train_sae` takes on this machine's CPU, from the floating-point work of
    a step (plus a fixed cost per step) at ``FLOPS_PER_SECOND``:

    - ReLU and JumpReLU (dense, autograd): the encoder, the decoder and their gradients, ~12 * batch
      * d * m operations;
    - TopK and BatchTopK (:mod:`.sparse_step`): the encoder's product (2 * batch * d * m), the
      selection and the masks over every pre-activation (``SELECT_COST`` per one), the sparse
      products on the k active latents (``SPARSE_COST`` per active latent and dimension) and Adam
      with the unit-norm decoder over the weights (``UPDATE_COST`` per weight)."""
    b = min(int(batch_size), int(n))
    m = int(expansion) * int(d_in)
    if kind in ("topk", "batchtopk"):
        work = 2.0 * b * d_in * m + SELECT_COST * b * m + SPARSE_COST * b * min(int(k), m) * d_in \
            + UPDATE_COST * 2 * d_in * m
    else:
        work = 12.0 * b * d_in * m
    return steps * (work / FLOPS_PER_SECOND + STEP_OVERHEAD_S) + 0.05
