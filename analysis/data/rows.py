"""Rows read when they are needed: data sets larger than memory (image folders, HF datasets).

A :class:`LazyRows` is a sequence over chosen rows of a source; indexing with an int reads one row,
with a slice or an index array gives another LazyRows (nothing is read), and :meth:`fetch`
reads a batch at once (a source reads a batch faster than its rows one by one).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np


class LazyRows(Sequence):
    """``read(source_rows: list[int]) -> list`` of rows; ``rows``: which source rows, in order."""

    def __init__(self, read: Callable[[list[int]], list], rows: np.ndarray):
        self._read = read
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice) or isinstance(i, (np.ndarray, list)):
            return LazyRows(self._read, self.rows[i])
        return self._read([int(self.rows[i])])[0]

    def fetch(self, start: int = 0, stop: int | None = None) -> list:
        return self._read([int(r) for r in self.rows[start:stop]])

    def __iter__(self):
        step = 256
        for s in range(0, len(self), step):
            yield from self.fetch(s, s + step)


def take(inputs, start: int, stop: int):
    """Rows ``start:stop`` of a dataset's inputs: an array slice, a list slice, or a LazyRows batch."""
    if isinstance(inputs, LazyRows):
        return inputs.fetch(start, stop)
    return inputs[start:stop]


def select(inputs, rows):
    """The inputs at ``rows`` (a slice or an index array), of the same kind as ``inputs``."""
    if isinstance(inputs, (LazyRows, np.ndarray)):
        return inputs[rows]
    idx = range(len(inputs))[rows] if isinstance(rows, slice) else rows
    return [inputs[int(i)] for i in idx]
