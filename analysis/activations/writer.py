"""One extraction pass that fills the missing chunks of several layers' caches at once.

The batch grid is fixed by the batch size: batch k is rows [k * B, (k + 1) * B). A chunk is a whole
number of batches, so the batches a chunk needs are the same whether the pass starts at row 0 or
resumes after a kill: the forward passes, and so the bytes, are the same. Only batches inside a
chunk some layer still misses are run; a layer whose chunk is already done drops that batch.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .cache import ActivationCache, chunk_rows_for, create_cache, write_chunk
from .hooks import iter_batches, rows_of
from .pooling import TOKENS


def fill(model, ds, keys: dict, existing: dict, pooling: str, dtype: str, batch_size: int, device, progress,
         store, meta: dict) -> dict[str, ActivationCache]:
    """Complete the caches of ``keys`` (layer -> key); ``existing`` holds the partial ones (or None).
    Layers are grouped by the batch size their partial cache was started with (new ones take
    ``batch_size``), one pass per group."""
    groups: dict[int, list[str]] = defaultdict(list)
    for layer in keys:
        part = existing.get(layer)
        groups[part.record.batch_size if part is not None else batch_size].append(layer)
    out = {}
    for b, layers in groups.items():
        out.update(_Pass(model, ds, {l: keys[l] for l in layers}, {l: existing.get(l) for l in layers}, pooling,
                         dtype, b, store, meta).run(device, progress))
    return out


class _Pass:
    def __init__(self, model, ds, keys, existing, pooling, dtype, batch_size, store, meta):
        self.model, self.ds, self.keys, self.pooling = model, ds, keys, pooling
        self.dtype, self.b, self.store, self.meta = dtype, batch_size, store, meta
        self.caches: dict[str, ActivationCache | None] = dict(existing)
        self.buffers: dict[str, dict[int, list]] = {l: defaultdict(list) for l in keys}
        self.n = len(ds)

    def needed_batches(self) -> list[int]:
        """Batch indices inside a chunk that some layer still misses (all, for a layer not started)."""
        total = -(-self.n // self.b)
        need: set[int] = set()
        for layer in self.keys:
            cache = self.caches[layer]
            if cache is None:
                return list(range(total))
            per_chunk = cache.record.chunk_rows // self.b
            for i in cache.record.missing():
                need.update(range(i * per_chunk, min((i + 1) * per_chunk, total)))
        return sorted(need)

    def run(self, device, progress) -> dict[str, ActivationCache]:
        batches = self.needed_batches()
        done = 0
        for start, stop in _runs(batches):
            rows = slice(start * self.b, min(stop * self.b, self.n))
            part = self.ds if (rows.start, rows.stop) == (0, self.n) else rows_of(self.ds, rows)
            for step in iter_batches(self.model, part, list(self.keys), self.pooling, self.b, device):
                local, acts, rules = step
                first = rows.start + local.start
                self._take(first, first + (local.stop - local.start), acts, rules, step.counts)
                done += 1
                if progress:
                    progress(done / len(batches), f"{self.model.name}: batch {done}/{len(batches)} "
                                                  f"({first + local.stop - local.start}/{self.n} samples)")
        return self.caches

    def _take(self, lo: int, hi: int, acts: dict, rules: dict, counts) -> None:
        owners = np.repeat(np.arange(lo, hi), counts) if counts is not None else None
        if any(self.caches[l] is None for l in acts):
            self._create(acts, rules)
        for layer, x in acts.items():
            cache = self.caches[layer]
            r = cache.record
            index = lo // r.chunk_rows
            if index in r.done:
                continue
            self.buffers[layer][index].append((lo, hi, x, owners))
            sl = r.chunk_slice(index)
            if hi >= sl.stop:  # the chunk's last batch: every batch of it is buffered (passes run in order)
                parts = self.buffers[layer].pop(index)
                rows = np.concatenate([p[2] for p in parts])
                samples = np.concatenate([p[3] for p in parts]) if r.tokens else None
                write_chunk(cache, index, rows, samples)

    def _create(self, acts: dict, rules: dict) -> None:
        """The new layers' caches, all with the chunk size of the widest layer: chunks of every layer
        then end on the same rows, so a resumed pass skips whatever all layers finished."""
        chunk_rows = chunk_rows_for(max(x.shape[1] for x in acts.values()), self.b, self.n)
        for layer, x in acts.items():
            if self.caches[layer] is None:
                self.caches[layer] = create_cache(self.store, self.keys[layer], self.n, x.shape[1], self.dtype, self.b,
                                                  rules[layer], tokens=self.pooling == TOKENS,
                                                  meta={**self.meta, "layer": layer}, chunk_rows=chunk_rows)


def _runs(indices: list[int]):
    """Consecutive runs [start, stop) of sorted integers."""
    start = prev = None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            yield start, prev + 1
            start = prev = i
    if start is not None:
        yield start, prev + 1
