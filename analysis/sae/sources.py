"""Where an SAE's training rows come from: an array in memory, or a layer's on-disk activation
cache read a few chunks at a time (memory does not grow with the number of rows).

Both give the trainer the same things: the row count and width, the moments it scales and scores
by (E||x||^2 and E||x - mean||^2, float64), rows drawn by index (for the initial b_dec and for
resampling dead latents), the first rows (BatchTopK's threshold) and shuffled minibatches without
end.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import UserInputError
from ..validation import as_matrix


class ArraySource:
    """Rows of an (n x d) array, kept on the training device; each epoch a fresh permutation drawn
    from the trainer's generator (the last incomplete batch of an epoch is skipped)."""

    def __init__(self, acts):
        self.x = as_matrix(acts, "activations", dtype=np.float32)
        self.n, self.d = self.x.shape
        self.xs = None

    def moments(self) -> tuple[float, float]:
        x = self.x.astype(np.float64)
        return float((x ** 2).sum(1).mean()), float(((x - x.mean(0)) ** 2).sum(1).mean())

    def on(self, device, scale: float) -> None:
        self.xs = torch.from_numpy(self.x).to(device) * scale

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return self.xs[rows.to(self.xs.device)]

    def first(self, rows: int) -> torch.Tensor:
        return self.xs[:rows]

    def batches(self, batch_size: int, gen: torch.Generator, seed: int) -> Iterator[torch.Tensor]:
        # the shuffle is drawn on the CPU (the generator's stream) and kept on the device: an index
        # copied from pageable memory every step would make the host wait for the GPU each step
        batch_size = min(batch_size, self.n)
        while True:
            order = torch.randperm(self.n, generator=gen).to(self.xs.device)
            for pos in range(0, self.n - batch_size + 1, batch_size):
                yield self.xs[order[pos: pos + batch_size]]


class CacheSource:
    """Rows of one layer's activation cache (:class:`analysis.activations.ActivationCache`): the
    moments from one pass over its chunks, minibatches from :func:`analysis.streaming.shuffled_batches`
    (``buffer_chunks`` chunks in memory at a time), each moved to the device and scaled there."""

    def __init__(self, cache, buffer_chunks: int = 4):
        cache._require_complete()
        self.cache, self.buffer_chunks = cache, buffer_chunks
        self.n, self.d = cache.shape
        if self.n == 0:
            raise UserInputError("The activation cache holds no rows.")
        self.device, self.scale = "cpu", 1.0

    def moments(self) -> tuple[float, float]:
        """E||x||^2 and E||x - mean||^2 in one pass: each chunk centred on its own mean and merged
        (Chan et al.), so no large terms cancel."""
        n, mean, m2, sq = 0, np.zeros(self.d), 0.0, 0.0
        for _, x in self.cache.iter_chunks():
            x = x.astype(np.float64)
            nb, mb = len(x), x.mean(0)
            delta = mb - mean
            m2 += float(((x - mb) ** 2).sum()) + float(delta @ delta) * n * nb / (n + nb)
            mean += delta * nb / (n + nb)
            sq += float((x ** 2).sum())
            n += nb
        return sq / n, m2 / n

    def on(self, device, scale: float) -> None:
        self.device, self.scale = device, scale

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device) * self.scale

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.cache.take(rows.cpu().numpy()))

    def first(self, rows: int) -> torch.Tensor:
        return self.take(torch.arange(min(rows, self.n)))

    def batches(self, batch_size: int, gen: torch.Generator, seed: int) -> Iterator[torch.Tensor]:
        """The order of ``shuffled_batches(cache, batch_size, seed, buffer_chunks, epochs=None)``."""
        from ..streaming import shuffled_batches

        for xb in shuffled_batches(self.cache, batch_size, seed, self.buffer_chunks, epochs=None):
            yield self._tensor(xb)


def source_of(acts):
    """The source for ``acts``: an ActivationCache streams from disk, anything else is an array."""
    from ..activations import ActivationCache

    if isinstance(acts, (ArraySource, CacheSource)):
        return acts
    return CacheSource(acts) if isinstance(acts, ActivationCache) else ArraySource(acts)
