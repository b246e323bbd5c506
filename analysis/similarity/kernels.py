"""Kernels and HSIC estimators on centred float64 features: Gram matrices (linear, RBF with the
median-distance bandwidth), centring and U-centring, biased and unbiased HSIC. Every product is
formed from column-centred features divided by a power of two, so offsets and extreme scales
change no value."""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserInputError
from ..validation import as_matrix, check_aligned


def _t(x, device=None):
    import torch

    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64, device=device)


def _exponent(t) -> int:
    """e with max|t| = m 2^e, 0.5 <= m < 1 (0 for an all-zero or empty tensor)."""
    peak = float(t.abs().max()) if t.numel() else 0.0
    return math.frexp(peak)[1] if peak > 0 and math.isfinite(peak) else 0


def _times_power_of_two(t, e: int):
    """t * 2^-e, a new tensor. Exact: only exponents change (outside the subnormal range)."""
    factor = math.ldexp(1.0, -e)
    return t * factor if factor > 0 and math.isfinite(factor) else t.clone()


def _centred(x, device=None, exponent: int | None = None, rescale: bool = True):
    """(X with centred columns as a new float64 tensor, the power of two it was divided by).

    Every Gram or covariance product of the CKA family is formed from this. Centring first keeps a
    constant offset out of the products: X X^T of features shifted by 1e8 holds 1e16-sized terms,
    and centring that Gram matrix afterwards subtracts them back with errors of their size (the
    heatmap read 0.056 where the centred value is 0.484). With ``rescale`` X is also divided by a
    power of two, before centring (so the mean cannot overflow) and after (so the largest centred
    entry lies in [0.5, 1)), or by 2^``exponent`` in all when it is given (the minibatch estimator
    keeps one per layer). Powers of two are exact and every CKA measure is scale-invariant, so
    values do not change; inputs scaled by 1e+-100 no longer overflow or underflow in the fourth
    powers HSIC forms."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x))
    t = t.to(device=device, dtype=torch.float64)
    first = _exponent(t) if rescale else 0
    t = _times_power_of_two(t, first)  # a copy: the caller's array is never written
    t -= t.mean(0, keepdim=True)
    if not rescale:
        return t, 0
    second = _exponent(t) if exponent is None else exponent - first
    return _times_power_of_two(t, second), first + second


def linear_gram(x):
    """K = Xc Xc^T with Xc the column-centred X (float64 torch tensor): H K H is the same as for
    X X^T, without the rounding errors a large constant offset would leave in it."""
    xc, _ = _centred(x, rescale=False)
    return xc @ xc.T


def _scaled_gram(x, device=None):
    """Xc Xc^T of the centred X divided by a power of two: the linear kernel of the ratio measures."""
    xc, _ = _centred(x, device)
    return xc @ xc.T


def _median(v):
    """np.median's convention, as in Kornblith et al.'s reference code: the mean of the two middle
    values when their count is even (torch.median returns the lower one)."""
    import torch

    m = v.numel()
    return (torch.kthvalue(v, (m + 1) // 2).values + torch.kthvalue(v, m // 2 + 1).values) / 2


def squared_distances(x):
    """Pairwise squared Euclidean distances of the rows (float64 torch), from the Gram matrix of the
    centred rows. A pair whose distance is at the rounding level of its squared norms
    (below 4 p eps (|xi|^2 + |xj|^2), e.g. duplicated rows, which give residues such as 7e-15
    instead of 0) counts as coincident: exactly 0."""
    import torch

    xc, _ = _centred(x)
    g = xc @ xc.T
    sq = torch.diagonal(g)
    scale = sq[:, None] + sq[None, :]
    d2 = (scale - 2 * g).clamp_min(0)
    tol = 4 * max(xc.shape[1], 1) * torch.finfo(torch.float64).eps
    return torch.where(d2 <= tol * scale, torch.zeros_like(d2), d2)


def rbf_gram(x, threshold: float = 1.0):
    """RBF kernel exp(-d^2 / (2 threshold^2 m)), with m the median squared distance over the full
    n x n matrix, zero diagonal included, and the two middle values averaged for an even count:
    exactly Kornblith et al.'s reference code (np.median). When over half the pairs coincide
    (duplicated rows, n = 2 with one point doubled) that median is 0 and the median of the
    non-zero distances is used instead; all points identical give a constant kernel (CKA: NaN)."""
    import torch

    d2 = squared_distances(x)
    med = _median(d2.flatten())
    if med <= 0:
        positive = d2[d2 > 0]
        if positive.numel() == 0:
            return torch.ones_like(d2)
        med = _median(positive)
    return torch.exp(-d2 / (2 * threshold ** 2 * med))


def center_gram(k):
    """H K H with H = I - 11^T/n."""
    k = k - k.mean(0, keepdim=True)
    return k - k.mean(1, keepdim=True)


def u_center_gram(k):
    """U-centring (Song et al. 2012): <u(K), u(L)>_F / (n (n-3)) is the unbiased HSIC_1."""
    n = k.shape[0]
    if n < 4:
        raise UserInputError(f"The unbiased HSIC needs at least 4 samples (got {n}).")
    k = k.clone()
    k.fill_diagonal_(0)
    m = k.sum(0) / (n - 2)
    m = m - m.sum() / (2 * (n - 1))
    k = k - m[:, None] - m[None, :]
    k.fill_diagonal_(0)
    return k


def _u_center_stack_(g) -> None:
    """U-centre a stack of Gram matrices (layers x n x n) in place; same result as u_center_gram."""
    n = g.shape[-1]
    diag = g.diagonal(dim1=-2, dim2=-1)
    diag.zero_()
    m = g.sum(-2) / (n - 2)
    m -= m.sum(-1, keepdim=True) / (2 * (n - 1))
    g -= m[..., :, None]
    g -= m[..., None, :]
    diag.zero_()


def hsic_biased(k, l):
    """tr(K H L H) / (n-1)^2 (Gretton et al. 2005)."""
    n = k.shape[0]
    return float((center_gram(k) * center_gram(l)).sum() / (n - 1) ** 2)


def hsic_unbiased(k, l):
    """HSIC_1 of Song et al. 2012, written out term by term (the reference formula)."""
    import torch

    n = k.shape[0]
    if n < 4:
        raise UserInputError(f"The unbiased HSIC needs at least 4 samples (got {n}).")
    kt, lt = k.clone(), l.clone()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    ones = torch.ones(n, dtype=kt.dtype, device=kt.device)
    term = (kt * lt).sum() + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (ones @ kt @ lt @ ones)
    return float(term / (n * (n - 3)))


def _linear_hsic_terms(x):
    """Per-layer pieces of the feature-space HSIC formulas, from column-centred features (float64
    torch, see :func:`_centred`): HSIC_1 of a linear kernel is translation invariant, and uncentred
    features would make the formula a small difference of huge terms."""
    n = x.shape[0]
    row_sq = (x * x).sum(1)  # diag(K)
    col_sum = x.sum(0)  # X^T 1
    k1 = x @ col_sum - row_sq  # K~ 1 (zero-diagonal K times ones)
    return {"x": x, "row_sq": row_sq, "k1": k1, "sum": float(col_sum @ col_sum - row_sq.sum()), "n": n}


def _self_hsic1(p) -> float:
    """n(n-3) HSIC_1 of a layer with itself; a rounding residue of the centring (the exact value is 0,
    e.g. one non-zero sample) counts as 0, as the Gram form computes it."""
    value = _hsic1_features(p, p)
    return value if value > 1e-9 * float(p["row_sq"].sum()) ** 2 else 0.0


def _hsic1_features(p, q) -> float:
    """n(n-3) HSIC_1 for linear kernels without forming n x n matrices (O(n p q))."""
    n = p["n"]
    xy = p["x"].T @ q["x"]
    tr = float((xy * xy).sum() - (p["row_sq"] * q["row_sq"]).sum())  # tr(K~ L~)
    return tr + p["sum"] * q["sum"] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(p["k1"] @ q["k1"])


def _fro2(a) -> float:
    return float((a * a).sum())


def _normalise(cross, self_a, self_b) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt(np.outer(self_a, self_b))
        out = np.where(denom > 0, cross / np.where(denom > 0, denom, 1), np.nan)
    return out


def _self_terms(g) -> np.ndarray:
    return (g * g).sum(1).cpu().numpy()


def _stack(rows):
    import torch

    return torch.stack(rows)


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_matrix(x, "X"), as_matrix(y, "Y")
    check_aligned(x, y)
    return x, y


def _is_constant(x: np.ndarray) -> bool:
    """Every sample identical: any similarity is 0/0 (rounding would leave a meaningless residue)."""
    return bool((x == x[:1]).all())
