"""Content-addressed result store: array files, uploads and small documents, plus an index.

Layout under the root (a folder, or an fsspec URL such as ``s3://bucket/replens``)::

    store.json                   the store's id (also in the index: a database serves one store)
    index.sqlite                 the index, when it is SQLite (the default); else PostgreSQL
    objects/ab/<key>.npz         one result: its arrays plus a record (key, kind, meta, shapes)
    blobs/ab/<sha256>            uploaded bytes, by content
    blobs/ab/<sha256>.<kind>.json  one use of an upload (model, data): its name and meta
    docs/<kind>/<id>.json        share-link specs, saved views, reports
    tmp/                         files being written; moved into place whole

``cached(kind, parts, compute)`` is the one caching mechanism: the key is ``digest(kind, parts)``.
``make_key`` and ``put``/``get`` stay for code that builds its own keys. See docs/store.md.
"""
from __future__ import annotations

import io
import os
import threading
from typing import Any, Callable, Mapping

import numpy as np

from .codec import CodecError, decode, encode
from .core import DATABASE_ENV, STORE_ENV, Store, default_root
from .index import StoreUnavailableError
from .keys import CODE_VERSION, digest, make_key, sha256_bytes

ENV_VAR = STORE_ENV

__all__ = ["Store", "default_store", "default_root", "cached", "digest", "make_key", "sha256_bytes", "npz_bytes",
           "encode", "decode", "CodecError", "StoreUnavailableError", "CODE_VERSION", "ENV_VAR", "DATABASE_ENV"]

_STORES: dict[tuple[str, str], Store] = {}
_STORES_LOCK = threading.Lock()


def default_store() -> Store:
    """The process-wide store for the current ``$REPLENS_STORE`` and ``$REPLENS_DATABASE_URL``
    (re-read on every call)."""
    root = default_root()
    root = root if isinstance(root, str) else root.resolve()
    database_url = os.environ.get(DATABASE_ENV) or None
    with _STORES_LOCK:
        key = (str(root), database_url or "")
        if key not in _STORES:
            _STORES[key] = Store(root, database_url)
        return _STORES[key]


def _close_default_stores() -> None:
    """Close and forget every default store (tests that create and drop databases)."""
    with _STORES_LOCK:
        for store in _STORES.values():
            store.close()
        _STORES.clear()


def cached(kind: str, parts: Mapping[str, Any], compute: Callable[[], Any], **kwargs) -> Any:
    """:meth:`Store.cached` on the default store."""
    return default_store().cached(kind, parts, compute, **kwargs)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
