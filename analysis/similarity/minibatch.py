"""The minibatch CKA estimator (Nguyen, Raghu & Kornblith 2021): unbiased HSIC_1 per batch,
averaged; in memory (:func:`similarity_matrix` with a batch size) or streamed while the models run."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import UserInputError
from .kernels import _centred, _normalise


class MinibatchCKA:
    """Streaming minibatch CKA (Nguyen, Raghu & Kornblith 2021): HSIC_1 of each batch for the cross
    term and both self terms, averaged over batches, then the ratio. Memory does not grow with n.

    >>> acc = MinibatchCKA(["a1", "a2"], ["b1"])
    >>> for xa, xb in batches:            # dicts layer -> (batch x p) arrays, same rows
    ...     acc.update(xa, xb)
    >>> acc.result()                      # DataFrame, A layers x B layers
    """

    def __init__(self, layers_a, layers_b, device=None):
        import torch

        from ..device import pick

        self.layers_a, self.layers_b = list(layers_a), list(layers_b)
        self.device = pick(device)
        # sums over batches, kept on the device (float64) so that a batch costs no copy back
        self._cross = torch.zeros((len(self.layers_a), len(self.layers_b)), dtype=torch.float64, device=self.device)
        self._self_a = torch.zeros(len(self.layers_a), dtype=torch.float64, device=self.device)
        self._self_b = torch.zeros(len(self.layers_b), dtype=torch.float64, device=self.device)
        self.batches = 0
        self.samples = 0
        self._buffers: dict = {}
        self._exponents: dict = {}

    def _grams(self, acts, layers, which):
        """One batch's zero-diagonal Gram matrices (layers x b^2, in a buffer reused across batches),
        their row sums (layers x b) and totals (layers): the pieces of Song et al.'s HSIC_1 formula.

        Columns are centred first (in float64, see :func:`_centred`): HSIC_1 of a linear kernel is
        translation invariant, and centring keeps the formula from subtracting huge terms when
        features have large means."""
        import torch

        xs = []
        for name in layers:
            x = np.asarray(acts[name])
            if x.ndim != 2 or x.shape[0] < 4:
                raise UserInputError(f"Model {which}, layer '{name}': a batch needs shape (rows >= 4, features), "
                                     f"got {x.shape}.")
            xs.append(x)
        sizes = {x.shape[0] for x in xs}
        if len(sizes) != 1:
            raise UserInputError(f"Model {which}: layers of one batch have different numbers of rows {sizes}.")
        b = sizes.pop()
        buf = self._buffers.get(which)
        if buf is None or buf.shape[1:] != (b, b):
            buf = torch.empty((len(layers), b, b), dtype=torch.float64, device=self.device)
            self._buffers[which] = buf
        for i, (name, x) in enumerate(zip(layers, xs)):
            # one power of two per layer for every batch (the first batch's): per-batch scales would
            # weight the batches differently in the averaged HSIC terms
            xt, self._exponents[which, name] = _centred(x, self.device, self._exponents.get((which, name)))
            torch.matmul(xt, xt.T, out=buf[i])
        buf.diagonal(dim1=-2, dim2=-1).zero_()
        flat = buf.view(len(layers), b * b)
        rows = buf.sum(-1)
        totals = rows.sum(-1)
        finite = torch.isfinite(totals) & torch.isfinite(rows).all(-1)
        if not bool(finite.all()):
            bad = [layers[i] for i in range(len(layers)) if not bool(finite[i])]
            raise UserInputError(f"Model {which}, layer '{bad[0]}': NaN/inf values in this batch. Drop those "
                                 "samples or check the model for overflow.")
        return flat, rows, totals, b

    def update(self, acts_a: Mapping[str, np.ndarray], acts_b: Mapping[str, np.ndarray]) -> None:
        import torch

        ga, ra, sa, b = self._grams(acts_a, self.layers_a, "A")
        gb, rb, sb, b_b = self._grams(acts_b, self.layers_b, "B")
        if b != b_b:
            raise UserInputError(f"Batch rows differ between the models ({b} vs {b_b}).")
        scale = 1.0 / (b * (b - 3))
        self._cross += (ga @ gb.T + torch.outer(sa, sb) / ((b - 1) * (b - 2)) - 2.0 / (b - 2) * (ra @ rb.T)) * scale
        for g, r, tot, acc in ((ga, ra, sa, self._self_a), (gb, rb, sb, self._self_b)):
            sq = torch.linalg.vector_norm(g, dim=1) ** 2
            rr = torch.linalg.vector_norm(r, dim=1) ** 2
            acc += (sq + tot ** 2 / ((b - 1) * (b - 2)) - 2.0 / (b - 2) * rr) * scale
        self.batches += 1
        self.samples += b

    @property
    def cross(self) -> np.ndarray:
        """Sum over batches of the scaled HSIC_1 cross terms (A layers x B layers)."""
        return self._cross.cpu().numpy()

    @property
    def self_a(self) -> np.ndarray:
        return self._self_a.cpu().numpy()

    @property
    def self_b(self) -> np.ndarray:
        return self._self_b.cpu().numpy()

    def values(self) -> np.ndarray:
        if self.batches == 0:
            raise UserInputError("No batches were given to the minibatch CKA estimator.")
        return _normalise(self.cross, self.self_a, self.self_b)

    def result(self):
        import pandas as pd

        df = pd.DataFrame(self.values(), index=self.layers_a, columns=self.layers_b)
        df.index.name, df.columns.name = "model A layer", "model B layer"
        df.attrs.update({"measure": "minibatch_cka", "n": self.samples, "batches": self.batches})
        return df


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches; a last batch of fewer than 4 rows (HSIC_1 needs 4) joins the previous one."""
    if batch_size < 4:
        raise UserInputError(f"Minibatch size must be at least 4 (got {batch_size}).")
    starts = list(range(0, n, batch_size))
    slices = [slice(s, min(s + batch_size, n)) for s in starts]
    if len(slices) > 1 and slices[-1].stop - slices[-1].start < 4:
        slices[-2] = slice(slices[-2].start, n)
        slices.pop()
    if not slices or slices[-1].stop - slices[-1].start < 4:
        raise UserInputError(f"Minibatch CKA needs at least 4 samples (got {n}).")
    return slices


def _minibatch_matrix(a, b, batch_size, device, progress) -> np.ndarray:
    n = next(iter(a.values())).shape[0]
    acc = MinibatchCKA(list(a), list(b), device)
    slices = batch_slices(n, batch_size)
    for i, sl in enumerate(slices):
        acc.update({k: v[sl] for k, v in a.items()}, {k: v[sl] for k, v in b.items()})
        if progress:
            progress((i + 1) / len(slices), f"minibatch {i + 1}/{len(slices)}")
    return acc.values()


def streaming_cka(model_a, model_b, ds, layers_a=None, layers_b=None, batch_size: int = 256,
                  pooling: str = "mean", device=None, progress=None):
    """Minibatch CKA computed while both models run, one batch at a time: activations are never
    held for the whole dataset, so memory does not grow with n. Batches follow the dataset's row
    order, exactly as :func:`batch_slices` cuts them (a last batch under 4 rows joins the previous)."""
    from ..activations import iter_batches

    layers_a = list(model_a.layers if layers_a is None else layers_a)
    layers_b = list(model_b.layers if layers_b is None else layers_b)
    model_a.check_data(ds)
    model_b.check_data(ds)
    if batch_size < 4:
        raise UserInputError(f"Minibatch size must be at least 4 (got {batch_size}).")
    acc = MinibatchCKA(layers_a, layers_b, device)
    from contextlib import closing

    # closing(): a stream left unfinished still releases its model lock and hooks at once
    with closing(iter_batches(model_a, ds, layers_a, pooling, batch_size, device)) as stream_a, \
            closing(iter_batches(model_b, ds, layers_b, pooling, batch_size, device, progress)) as stream_b:
        # One batch is held back so that a last batch under 4 rows (HSIC_1 needs 4) joins it, as
        # batch_slices does for the in-memory estimator: both paths see the same batches.
        held = None
        for (rows, xa, _), (_, xb, _) in zip(stream_a, stream_b):
            if held is not None and rows.stop - rows.start < 4:
                held = ({k: np.concatenate([held[0][k], v]) for k, v in xa.items()},
                        {k: np.concatenate([held[1][k], v]) for k, v in xb.items()})
                continue
            if held is not None:
                acc.update(*held)
            held = (xa, xb)
        if held is not None:
            acc.update(*held)
    return acc.result()


