"""How much two relevance maps agree (Spearman rank correlation per row, ties averaged, over real
tokens only for text), two models' dataset relevance side by side, and relevance per hidden unit."""
from __future__ import annotations

import numpy as np

from ..errors import UserInputError


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks (1..d) along the last axis of a 2-D array, ties sharing their average rank (as
    scipy.stats.rankdata), vectorised over rows."""
    n, d = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, 1)
    pos = np.broadcast_to(np.arange(d), (n, d))
    starts = np.ones((n, d), bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones((n, d), bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, d)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, d))
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, 1)
    return ranks


def rank_agreement(ra: np.ndarray, rb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Spearman rank correlation between two relevance maps, per row (NaN for a constant row);
    ``mask`` (per row) restricts each row to its real entries (tokens)."""
    a = np.asarray(ra, dtype=np.float64).reshape(len(ra), -1)
    b = np.asarray(rb, dtype=np.float64).reshape(len(rb), -1)
    if a.shape != b.shape:
        raise UserInputError(f"The two relevance maps differ in shape ({a.shape[1:]} vs {b.shape[1:]}): "
                             "rank agreement needs the same inputs for both models.")
    if mask is None:
        return _pearson_rows(_average_ranks(a), _average_ranks(b))
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        keep = np.asarray(mask[i]).reshape(-1).astype(bool)
        out[i] = _pearson_rows(_average_ranks(a[i:i + 1, keep]), _average_ranks(b[i:i + 1, keep]))[0]
    return out


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (x * y).sum(1) / np.where(den > 0, den, 1), np.nan)


def pair_summary(a: dict, b: dict) -> dict:
    """Two models' dataset relevance (from :func:`dataset_relevance`) side by side: per-sample rank
    agreement, each model's per-sample relevance sums, and the median sum / explained output."""
    sums = [np.asarray(r["relevance"], np.float64).reshape(len(r["relevance"]), -1).sum(1) for r in (a, b)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = [float(np.nanmedian(s / r["output"])) for s, r in zip(sums, (a, b))]
    return {"agreement": rank_agreement(a["relevance"], b["relevance"]), "sums": sums, "conservation": ratio}


def unit_relevance(layer_relevance: np.ndarray, token_mask: np.ndarray | None = None) -> np.ndarray:
    """Relevance per unit of a layer, per row: (n, units). Channels of a convolution are summed over
    positions; token outputs (n, tokens, d) over real tokens."""
    r = np.asarray(layer_relevance, dtype=np.float64)
    if r.ndim == 2:
        return r
    if token_mask is not None and r.ndim == 3:  # (n, tokens, d): sum over real tokens
        return (r * np.asarray(token_mask)[..., None]).sum(1)
    return r.reshape(r.shape[0], r.shape[1], -1).sum(2)  # (n, channels, ...): sum over positions
