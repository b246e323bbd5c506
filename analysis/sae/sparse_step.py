"""One training step of a TopK or BatchTopK SAE with its gradients written out on the active
latents only.

A TopK SAE reads its whole encoder (the (batch x d) @ (d x m) product that ranks the latents) but
uses only the k latents each input keeps: autograd's dense path pays that product five more times
(the decoder, its two gradients, the encoder's two gradients), each of them nearly all zeros. Here
everything after the encoder touches the k active latents per input (batch * k * d multiply-adds,
not batch * m * d):

- decoding is a sparse (batch x m) @ (m x d) product (CSR);
- the gradient to the kept activations is the dense product g @ W_dec^T sampled at the active
  entries only (``torch.sparse.sampled_addmm``);
- the gradients to W_dec and W_enc are the transposed sparse pattern times the residual's gradient
  and times the centred input;
- b_dec's gradient through the encoder (x - b_dec) is -W_enc @ (b_enc's gradient): the batch sum
  of the rows is taken first.

The AuxK loss (Gao et al. 2024: the top k_aux dead latents reconstruct the residual) runs through
the same sparse products. The gradients equal autograd's on the dense formulation: see
``tests/test_sae.py::test_sparse_step_gradients_equal_autograd``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

# CSR tensors are stable for the operations used here (matmul, sampled_addmm); the "beta" note
# torch prints once per process says nothing a user can act on.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class Pattern:
    """Which latents are active in which rows: a (rows x latents) sparsity pattern, held in CSR
    form (sorted by row) and, for the products with its transpose, sorted by latent."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]):
        self.rows, self.cols, self.shape = rows, cols, shape
        self.crow = _pointers(rows, shape[0])
        self.t_order = _argsort(cols)
        self.t_crow = _pointers(cols, shape[1])
        self.t_cols = rows[self.t_order]

    @classmethod
    def per_row(cls, idx: torch.Tensor, m: int) -> "Pattern":
        """k latents in every row (TopK): ``idx`` is (rows x k)."""
        b, k = idx.shape
        rows = torch.arange(b, device=idx.device).repeat_interleave(k)
        return cls(rows, idx.reshape(-1), (b, m))

    def _csr(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.cols, values, self.shape, check_invariants=False)

    def matmul(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(rows x latents, these values at the pattern) @ dense (latents x d)."""
        return self._csr(values) @ dense

    def t_matmul(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """The pattern's transpose (latents x rows) @ dense (rows x d): a scatter-add of rows."""
        t = torch.sparse_csr_tensor(self.t_crow, self.t_cols, values[self.t_order], self.shape[::-1], check_invariants=False)
        return t @ dense

    def sampled(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """(left @ right^T) at the pattern's entries only, in the pattern's order: left is
        (rows x d), right (latents x d)."""
        zeros = self._csr(torch.zeros(len(self.cols), dtype=left.dtype, device=left.device))
        return torch.sparse.sampled_addmm(zeros, left, right.T, beta=0.0).values()


def _argsort(keys: torch.Tensor) -> torch.Tensor:
    """torch.argsort, but numpy's on a CPU: torch's parallel sort of a few ten thousand keys took
    40 ms with two threads on a busy 2-core machine, numpy's (one thread) under 2 ms."""
    if keys.device.type == "cpu":
        return torch.from_numpy(np.argsort(keys.numpy(), kind="stable"))
    return torch.argsort(keys)


def _pointers(sorted_or_not: torch.Tensor, size: int) -> torch.Tensor:
    counts = torch.bincount(sorted_or_not, minlength=size)
    out = torch.zeros(size + 1, dtype=torch.int64, device=counts.device)
    out[1:] = counts.cumsum(0)
    return out


def topk_pattern(z: torch.Tensor, k: int) -> tuple[Pattern, torch.Tensor]:
    """TopK: the k largest pre-activations of each row (pattern, their pre-activations)."""
    top = torch.topk(z, min(k, z.shape[1]), dim=-1, sorted=False)
    return Pattern.per_row(top.indices, z.shape[1]), top.values.reshape(-1)


def batchtopk_pattern(z: torch.Tensor, k: int) -> tuple[Pattern, torch.Tensor]:
    """BatchTopK: the rows * k largest positive pre-activations of the whole batch."""
    b, m = z.shape
    flat = torch.relu(z).reshape(-1)
    kept = torch.topk(flat, min(k * b, flat.numel()), sorted=False).indices
    kept = torch.sort(kept).values  # row-major: sorted by row, as CSR wants
    return Pattern(kept // m, kept % m, (b, m)), z.reshape(-1)[kept]


def sparse_step(sae, xb: torch.Tensor, variance: float, dead: torch.Tensor | None, n_dead: int, aux_coef: float):
    """Loss of one batch and its gradients, written into the parameters' ``.grad``.

    Loss: ||x - x^||^2 / variance (mean over rows), plus, when ``n_dead`` latents are dead,
    aux_coef * min(n_dead / k_aux, 1) * ||e - e^||^2 / ||e||^2 with e = x - x^ (detached) and e^
    its reconstruction by the top k_aux = min(d / 2, n_dead) dead latents. Returns (loss, mean
    squared error per row, active latents (bool, m), active count per batch)."""
    W_enc, W_dec, b_enc, b_dec = sae.W_enc.detach(), sae.W_dec.detach(), sae.b_enc.detach(), sae.b_dec.detach()
    b, d = xb.shape
    m = W_dec.shape[0]
    xc = xb - b_dec
    z = torch.addmm(b_enc, xc, W_enc)
    pattern, pre = (topk_pattern if sae.kind == "topk" else batchtopk_pattern)(z, sae.k)
    acts = torch.relu(pre)
    err = pattern.matmul(acts, W_dec) + b_dec - xb
    sse = err.pow(2).sum() / b
    loss = sse / variance
    g = err * (2.0 / (b * variance))
    grad_b_dec = g.sum(0)
    grad_W_dec = pattern.t_matmul(acts, g)
    parts = [(pattern, pattern.sampled(g, W_dec) * (pre > 0))]
    if n_dead:
        aux, grad_aux_dec, aux_part = _auxk(z, err, W_dec, dead, n_dead, aux_coef)
        loss = loss + aux
        grad_W_dec += grad_aux_dec
        parts.append(aux_part)
    grad_b_enc = torch.zeros(m, dtype=xb.dtype, device=xb.device)
    grad_W_enc_t = torch.zeros(m, d, dtype=xb.dtype, device=xb.device)
    for p, dz in parts:
        grad_b_enc.index_add_(0, p.cols, dz)
        grad_W_enc_t += p.t_matmul(dz, xc)
    grad_b_dec -= W_enc @ grad_b_enc
    sae.W_enc.grad = grad_W_enc_t.T.contiguous()
    sae.W_dec.grad, sae.b_enc.grad, sae.b_dec.grad = grad_W_dec, grad_b_enc, grad_b_dec
    on = (acts > 0).to(xb.dtype)
    # a scatter, not a boolean mask: indexing by a mask would wait for the GPU every step
    active = torch.zeros(m, dtype=xb.dtype, device=xb.device).index_add_(0, pattern.cols, on) > 0
    return loss, sse, active, on.sum()


def _auxk(z, err, W_dec, dead, n_dead: int, aux_coef: float):
    """AuxK: (its loss, its gradient to W_dec, (pattern, gradient to those pre-activations))."""
    b, d = err.shape
    k_aux = min(max(d // 2, 1), n_dead)
    top = torch.topk(torch.where(dead[None], z, torch.full_like(z, -torch.inf)), k_aux, dim=-1, sorted=False)
    pattern, pre = Pattern.per_row(top.indices, z.shape[1]), top.values.reshape(-1)
    acts = torch.relu(pre)
    residual = -err  # x - x^, a constant here (no gradient flows into the main reconstruction)
    norm = (residual.pow(2).sum() / b).clamp_min(1e-12)
    aerr = pattern.matmul(acts, W_dec) - residual
    coef = aux_coef * min(n_dead / k_aux, 1.0)
    loss = coef * (aerr.pow(2).sum() / b) / norm
    ga = aerr * (2.0 * coef / (b * norm))
    return loss, pattern.t_matmul(acts, ga), (pattern, pattern.sampled(ga, W_dec) * (pre > 0))
