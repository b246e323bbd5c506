"""The chunked on-disk activation cache: one Zarr v3 array per (model, data, layer, pooling, dtype).

Why Zarr v3: chunked, optionally compressed, readable by other tools (``zarr.open_array(path)``,
xarray, dask), and fsspec-native, so the same code writes to a local folder, a shared filesystem
or object storage (``s3://`` with s3fs) under the result store's root.

Layout under the store root::

    activations/ab/<key>.zarr     the array: rows x d, chunks of ``chunk_rows`` rows x d
    activations/ab/<key>.json     its record: shape, dtype, rule, batch size, and the chunks done

Pooled rows ("mean", "first", "last", "flatten") give one row per sample, in the dataset's order;
``"tokens"`` gives one row per valid token: the array then has one group member per chunk of
samples (``x/<i>``, variable rows) and ``sample/<i>`` says which sample each row belongs to.

Chunks are independent and each is written whole by :func:`write_chunk` (the one writer, also
used by the Ray extraction), then marked done in the record, which is written atomically (temporary
file, rename) after the chunk's bytes are on disk: a killed extraction leaves complete chunks that
are marked and at most one unmarked chunk, which is computed again. A chunk is a whole number of
batches on the batch grid that started the extraction (row ``k * batch_size`` starts batch k), so a
resumed extraction runs exactly the forward passes an uninterrupted one would have run: the bytes
are the same.

``float16`` and ``bfloat16`` storage halve the disk and the reading time; bfloat16 is kept as its
16 bits in a uint16 array (numpy has no bfloat16; the record says how to read it), float16 as
float16. Reading gives float32 either way.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import UserInputError

STORAGE_DTYPES = ("float32", "float16", "bfloat16")
CHUNK_BYTES = 4 << 20  # float32 bytes of one chunk: big enough for fast I/O, small enough for many layers
MAX_CHUNK_ROWS = 1 << 16
FORMAT = 1
_LOCKS: dict = {}
_LOCKS_GUARD = threading.Lock()


def check_dtype(dtype: str) -> None:
    if dtype not in STORAGE_DTYPES:
        raise UserInputError(f"Unknown storage dtype {dtype!r}; use one of {', '.join(STORAGE_DTYPES)}.")


def chunk_rows_for(width: int, batch_size: int, n: int) -> int:
    """Rows per chunk: about CHUNK_BYTES of float32, a whole number of batches, at most n rounded up."""
    rows = max(1, CHUNK_BYTES // (4 * max(int(width), 1)))
    rows = min(rows, MAX_CHUNK_ROWS, max(n, 1))
    return max(batch_size, (rows // batch_size) * batch_size)


# --------------------------------------------------------------------------- storage conversions
def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 rows in the storage dtype (bfloat16: round to nearest even, kept as uint16 bits)."""
    if dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float16":
        return np.ascontiguousarray(x, dtype=np.float16)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (np.asarray(x, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(x, dtype=np.float32)


def _zarr_dtype(dtype: str) -> str:
    return "uint16" if dtype == "bfloat16" else dtype


# --------------------------------------------------------------------------- one layer's cache
@dataclass
class Record:
    """What the JSON beside the array says: enough to resume, to read, and to check the bytes."""

    key: str
    samples: int  # rows of the dataset
    width: int  # d
    dtype: str
    chunk_rows: int  # samples per chunk (rows per chunk when pooled)
    batch_size: int
    rule: str = ""
    tokens: bool = False
    done: list[int] = field(default_factory=list)  # chunk indices written whole
    token_rows: dict = field(default_factory=dict)  # tokens: rows in chunk i (str(i) -> count)
    meta: dict = field(default_factory=dict)
    format: int = FORMAT

    @property
    def chunks(self) -> int:
        return math.ceil(self.samples / self.chunk_rows)

    @property
    def complete(self) -> bool:
        return len(self.done) == self.chunks

    def chunk_slice(self, i: int) -> slice:
        return slice(i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.samples))

    def missing(self) -> list[int]:
        done = set(self.done)
        return [i for i in range(self.chunks) if i not in done]


class ActivationCache:
    """One layer's activations on disk (see the module docstring). Create with :func:`open_cache`."""

    def __init__(self, store, record: Record):
        self.store, self.record = store, record
        self._array = None

    # -- where
    @property
    def key(self) -> str:
        return self.record.key

    @staticmethod
    def rel(key: str, suffix: str) -> str:
        return f"activations/{key[:2]}/{key}{suffix}"

    @property
    def location(self) -> str:
        """The array's path or URL (open it with ``zarr.open_array`` / ``zarr.open_group``)."""
        return str(self.store.files.location(self.rel(self.key, ".zarr")))

    # -- reading
    @property
    def complete(self) -> bool:
        return self.record.complete

    @property
    def shape(self) -> tuple[int, int]:
        rows = sum(self.record.token_rows.values()) if self.record.tokens else self.record.samples
        return int(rows), int(self.record.width)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array once read (float32)."""
        rows, width = self.shape
        return rows * width * 4

    def _zarr(self):
        import zarr

        if self._array is None:
            opener = zarr.open_group if self.record.tokens else zarr.open_array
            self._array = opener(self.location, mode="r+")
        return self._array

    def chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` as float32 (pooled: its samples' rows; tokens: its samples' token rows)."""
        r = self.record
        if r.tokens:
            return from_storage(self._zarr()[f"x{i}"][:], r.dtype)
        return from_storage(self._zarr()[r.chunk_slice(i)], r.dtype)

    def chunk_samples(self, i: int) -> np.ndarray:
        """The dataset row of every row of chunk ``i``."""
        r = self.record
        if r.tokens:
            return np.asarray(self._zarr()[f"s{i}"][:], dtype=np.int64)
        return np.arange(r.chunk_slice(i).start, r.chunk_slice(i).stop)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a pooled cache as float32 (only the chunks they span are read)."""
        self._require_complete()
        return from_storage(self._zarr()[start:stop], self.record.dtype)

    def iter_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(dataset rows, float32 activations) one chunk at a time, in order: what streaming
        estimators read (memory is one chunk, whatever n is)."""
        self._require_complete()
        for i in range(self.record.chunks):
            yield self.chunk_samples(i), self.chunk(i)

    def read(self) -> np.ndarray:
        """The whole array as float32 (for data that fits in memory)."""
        self._require_complete()
        if self.record.tokens:
            parts = [self.chunk(i) for i in range(self.record.chunks)]
            return np.concatenate(parts) if parts else np.zeros((0, self.record.width), np.float32)
        return from_storage(self._zarr()[:], self.record.dtype)

    def sample_of_row(self) -> np.ndarray:
        """Tokens: the dataset row each row came from; pooled: 0..n-1."""
        if not self.record.tokens:
            return np.arange(self.record.samples)
        return np.concatenate([self.chunk_samples(i) for i in range(self.record.chunks)])

    def take(self, rows) -> np.ndarray:
        """Rows ``rows`` (indices into the array, any order) as float32, reading only their chunks."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.record.width), np.float32)
        if self.record.tokens:
            starts = np.cumsum([0] + [self.record.token_rows[str(i)] for i in range(self.record.chunks)])
            owner = np.searchsorted(starts, rows, side="right") - 1
        else:
            owner = rows // self.record.chunk_rows
            starts = np.arange(self.record.chunks + 1) * self.record.chunk_rows
        for i in np.unique(owner):
            pick = owner == i
            out[pick] = self.chunk(int(i))[rows[pick] - starts[i]]
        return out

    def _require_complete(self) -> None:
        if not self.complete:
            raise UserInputError(f"The activation cache {self.key[:12]} is incomplete "
                                 f"({len(self.record.done)} of {self.record.chunks} chunks); run the extraction "
                                 "again to finish it (it resumes where it stopped).")


# --------------------------------------------------------------------------- open, create, write
def _lock(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def load_record(store, key: str) -> Record | None:
    """The record of ``key``, or None when there is none, it is damaged or of another format."""
    try:
        raw = json.loads(store.files.read_bytes(ActivationCache.rel(key, ".json")))
        record = Record(**raw)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, OSError):
        return None  # damaged or written by another version: extracted again
    return record if record.format == FORMAT and record.key == key else None


def open_cache(store, key: str) -> ActivationCache | None:
    """The cache of ``key`` as it is on disk (complete or not), or None."""
    record = load_record(store, key)
    return None if record is None else ActivationCache(store, record)


def create_cache(store, key: str, samples: int, width: int, dtype: str, batch_size: int, rule: str,
                 tokens: bool = False, meta: dict | None = None, chunk_rows: int | None = None) -> ActivationCache:
    """A new, empty cache (an old one under the same key is replaced)."""
    import zarr

    check_dtype(dtype)
    chunk_rows = chunk_rows or chunk_rows_for(width, batch_size, samples)
    if chunk_rows % batch_size:
        raise ValueError(f"chunk_rows {chunk_rows} is not a multiple of the batch size {batch_size}")
    record = Record(key, int(samples), int(width), dtype, int(chunk_rows), int(batch_size), rule, tokens,
                    meta=json.loads(json.dumps(meta or {}, default=str)))
    cache = ActivationCache(store, record)
    location = cache.location
    if tokens:
        zarr.open_group(location, mode="w", attributes=_attributes(record))
    else:
        zarr.create_array(location, shape=(record.samples, record.width), chunks=(chunk_rows, record.width),
                          dtype=_zarr_dtype(dtype), compressors=None, fill_value=0, overwrite=True,
                          attributes=_attributes(record))
    _save_record(store, record)
    return cache


def _attributes(record: Record) -> dict:
    """What another tool needs to read the array without RepLens."""
    return {"replens": {"dtype": record.dtype, "rule": record.rule, "tokens": record.tokens,
                        "note": "bfloat16 rows are stored as their 16 bits (uint16): read x.astype(uint32) << 16 "
                                "as float32" if record.dtype == "bfloat16" else ""}}


def _save_record(store, record: Record) -> None:
    body = json.dumps(record.__dict__, sort_keys=True).encode()
    store.files.write_atomic(ActivationCache.rel(record.key, ".json"), lambda f: f.write(body))


def write_chunk(cache: ActivationCache, index: int, rows: np.ndarray, samples: np.ndarray | None = None) -> None:
    """Write chunk ``index`` whole (float32 rows, converted to the storage dtype) and mark it done.

    Pooled caches: ``rows`` are the chunk's samples, in order. Token caches: ``rows`` are the valid
    tokens of the chunk's samples and ``samples`` the dataset row of each. Chunks may arrive in any
    order (a Ray job returns them as they finish); writing one twice writes the same bytes."""
    r = cache.record
    sl = r.chunk_slice(index)
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != r.width:
        raise ValueError(f"chunk {index} has shape {rows.shape}; the cache holds rows of width {r.width}")
    if r.tokens:
        if samples is None or len(samples) != len(rows):
            raise ValueError("a token chunk needs the sample of every row")
        group = cache._zarr()
        group.create_array(f"x{index}", data=to_storage(rows, r.dtype), chunks=(max(len(rows), 1), r.width),
                           compressors=None, overwrite=True)
        group.create_array(f"s{index}", data=np.asarray(samples, dtype=np.int64), compressors=None, overwrite=True)
    else:
        if len(rows) != sl.stop - sl.start:
            raise ValueError(f"chunk {index} needs {sl.stop - sl.start} rows, got {len(rows)}")
        cache._zarr()[sl] = to_storage(rows, r.dtype)
    with _lock(r.key):  # one process's writers of one cache update the record one at a time
        fresh = load_record(cache.store, r.key) or r
        done = sorted(set(fresh.done) | set(r.done) | {int(index)})
        token_rows = {**fresh.token_rows, **r.token_rows}
        if r.tokens:
            token_rows[str(index)] = int(len(rows))
        r.done, r.token_rows = done, token_rows
        _save_record(cache.store, r)
