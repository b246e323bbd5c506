"""Content-addressed result store on disk: an SQLite index plus array files.

Layout under the root folder::

    index.sqlite        results(key, kind, path, meta, ...) and blobs(sha256, name, kind, ...)
    objects/ab/<key>.npz  arrays of one result (numpy .npz, never pickled)
    blobs/ab/<sha256>   uploaded files, stored by the sha256 of their bytes
    tmp/                files being written; moved into place with os.replace

Writes are atomic: the file is written to tmp/, fsynced, renamed into place, and only then
indexed, so a crash at any point leaves either the whole result or nothing visible. The index
uses SQLite in WAL mode with a busy timeout, so several processes (Streamlit sessions, CLI runs)
can read and write at once. Two writers of the same key write the same content; the last rename
and the last index row win, both complete.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import UserInputError

ENV_VAR = "REPLENS_STORE"
_HEX = re.compile(r"[0-9a-f]{8,64}")
_TMP_MAX_AGE_S = 3600.0


def default_root() -> Path:
    """The store folder: ``$REPLENS_STORE`` if set, else the user's cache folder."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("replens", appauthor=False))


def make_key(kind: str, **parts: Any) -> str:
    """Stable sha256 of a result's description (kind + parameters), as hex."""
    payload = json.dumps({"kind": kind, **parts}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """A result store rooted at ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("objects", "blobs", "tmp"):
            (self.root / sub).mkdir(exist_ok=True)
        self._db_path = self.root / "index.sqlite"
        self._stats_lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT NOT NULL,"
                " path TEXT NOT NULL, meta TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL)"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS documents (kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,"
                " body TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (kind, id))"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL,"
                " kind TEXT NOT NULL, size INTEGER NOT NULL, meta TEXT NOT NULL, created REAL NOT NULL)"
            )
        self._clean_tmp()

    # ------------------------------------------------------------------ plumbing
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self._db_path, timeout=60.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout=60000")
        return con

    def _clean_tmp(self) -> None:
        """Remove leftovers of writes that crashed long ago (never a write in flight)."""
        now = time.time()
        for f in (self.root / "tmp").iterdir():
            try:
                if now - f.stat().st_mtime > _TMP_MAX_AGE_S:
                    f.unlink()
            except OSError:
                pass

    def _atomic_write(self, final: Path, write) -> int:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix=final.name + ".")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            size = os.path.getsize(tmp)
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return size

    def _count(self, hit: bool) -> None:
        with self._stats_lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    # ------------------------------------------------------------------ results
    def put(self, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None,
            kind: str = "result") -> None:
        """Store named arrays under ``key`` atomically."""
        _check_key(key)
        clean = {name: np.asarray(a) for name, a in arrays.items()}
        for name, a in clean.items():
            if a.dtype == object:
                raise TypeError(f"array {name!r} has dtype object; the store keeps plain arrays only")
        rel = f"objects/{key[:2]}/{key}.npz"
        size = self._atomic_write(self.root / rel, lambda f: np.savez(f, **clean))
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO results (key, kind, path, meta, size, created) VALUES (?,?,?,?,?,?)",
                (key, kind, rel, json.dumps(dict(meta or {}), default=str), size, time.time()),
            )

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None (a miss)."""
        _check_key(key)
        with self._connect() as con:
            row = con.execute("SELECT path FROM results WHERE key=?", (key,)).fetchone()
        if row is None:
            self._count(False)
            return None
        from .tabular import NPY_READ_LOCK

        try:
            with NPY_READ_LOCK, np.load(self.root / row[0], allow_pickle=False) as npz:
                out = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            # The file vanished or is damaged (disk trouble, manual deletion): forget it.
            self.delete(key)
            self._count(False)
            return None
        self._count(True)
        return out

    def meta(self, key: str) -> dict | None:
        _check_key(key)
        with self._connect() as con:
            row = con.execute("SELECT meta FROM results WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def __contains__(self, key: str) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM results WHERE key=?", (key,)).fetchone() is not None

    def delete(self, key: str) -> None:
        with self._connect() as con:
            row = con.execute("SELECT path FROM results WHERE key=?", (key,)).fetchone()
            con.execute("DELETE FROM results WHERE key=?", (key,))
        if row is not None:
            try:
                (self.root / row[0]).unlink()
            except OSError:
                pass

    def keys(self, kind: str | None = None) -> list[str]:
        with self._connect() as con:
            if kind is None:
                rows = con.execute("SELECT key FROM results ORDER BY created").fetchall()
            else:
                rows = con.execute("SELECT key FROM results WHERE kind=? ORDER BY created", (kind,)).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ blobs (uploads)
    def put_blob(self, data: bytes, name: str, kind: str, meta: Mapping[str, Any] | None = None) -> str:
        """Store uploaded bytes by their sha256; returns the full hex digest."""
        sha = sha256_bytes(data)
        final = self.root / "blobs" / sha[:2] / sha
        if not final.exists():
            self._atomic_write(final, lambda f: f.write(data))
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO blobs (sha256, name, kind, size, meta, created) VALUES (?,?,?,?,?,?)",
                (sha, os.path.basename(name), kind, len(data), json.dumps(dict(meta or {}), default=str), time.time()),
            )
        return sha

    def find_blob(self, prefix: str, kind: str | None = None) -> dict | None:
        """The blob whose sha256 starts with ``prefix`` (hex, 8+ chars), or None."""
        prefix = prefix.lower()
        if not _HEX.fullmatch(prefix):
            return None
        with self._connect() as con:
            rows = con.execute(
                "SELECT sha256, name, kind, size, meta FROM blobs WHERE sha256 >= ? AND sha256 < ? LIMIT 2",
                (prefix, prefix + "g"),
            ).fetchall()
        rows = [r for r in rows if kind is None or r[2] == kind]
        if len(rows) != 1:
            return None
        sha, name, k, size, meta = rows[0]
        path = self.root / "blobs" / sha[:2] / sha
        if not path.exists():
            return None
        return {"sha256": sha, "name": name, "kind": k, "size": size, "meta": json.loads(meta), "path": path}

    def blobs(self, kind: str | None = None) -> list[dict]:
        with self._connect() as con:
            rows = con.execute("SELECT sha256, name, kind, size, created FROM blobs ORDER BY created").fetchall()
        return [dict(zip(("sha256", "name", "kind", "size", "created"), r)) for r in rows
                if kind is None or r[2] == kind]

    def read_blob(self, prefix: str, kind: str | None = None) -> tuple[bytes, dict]:
        info = self.find_blob(prefix, kind)
        if info is None:
            raise UserInputError(
                f"No uploaded file with id {prefix!r} on this server. Upload the file again "
                "(uploads are kept by content hash, so the same file gets the same id)."
            )
        return info["path"].read_bytes(), info

    # ------------------------------------------------------------------ documents (specs, saved analyses, reports)
    def put_doc(self, kind: str, doc_id: str, body: Mapping[str, Any], name: str = "") -> None:
        """Keep a small JSON document (a share-link spec, a saved analysis, a report) in the index.
        Saving again under the same (kind, id) replaces the body and keeps the creation date."""
        _check_key(doc_id)
        text = json.dumps(dict(body), sort_keys=True, default=str)
        now = time.time()
        with self._connect() as con:
            con.execute(
                "INSERT INTO documents (kind, id, name, body, created, updated) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(kind, id) DO UPDATE SET name=excluded.name, body=excluded.body,"
                " updated=excluded.updated",
                (kind, doc_id, name, text, now, now),
            )

    def get_doc(self, kind: str, doc_id: str) -> dict | None:
        """The document's body, or None when there is none (or the id is not a hex digest)."""
        if not isinstance(doc_id, str) or not _HEX.fullmatch(doc_id):
            return None
        with self._connect() as con:
            row = con.execute("SELECT body FROM documents WHERE kind=? AND id=?", (kind, doc_id)).fetchone()
        self._count(row is not None)
        return None if row is None else json.loads(row[0])

    def docs(self, kind: str, search: str = "") -> list[dict]:
        """Documents of one kind, newest first: id, name, created, updated; ``search`` filters on the
        name and the body text (case-insensitive substring)."""
        pattern = f"%{search.strip().lower()}%"
        with self._connect() as con:
            rows = con.execute(
                "SELECT id, name, created, updated FROM documents WHERE kind=?"
                " AND (lower(name) LIKE ? OR lower(body) LIKE ?) ORDER BY updated DESC",
                (kind, pattern, pattern),
            ).fetchall()
        return [dict(zip(("id", "name", "created", "updated"), r)) for r in rows]

    def delete_doc(self, kind: str, doc_id: str) -> None:
        with self._connect() as con:
            con.execute("DELETE FROM documents WHERE kind=? AND id=?", (kind, doc_id))


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _HEX.fullmatch(key):
        raise UserInputError(f"Not a store key: {key!r} (expected a hex digest).")


_STORES: dict[Path, Store] = {}
_STORES_LOCK = threading.Lock()


def default_store() -> Store:
    """The process-wide store for the current ``$REPLENS_STORE`` (re-read on every call)."""
    root = default_root().resolve()
    with _STORES_LOCK:
        if root not in _STORES:
            _STORES[root] = Store(root)
        return _STORES[root]


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ------------------------------------------------------------------ one caching mechanism
CODE_VERSION = 1


def digest(kind: str, parts: Mapping[str, Any]) -> str:
    """The store key of a result: sha256 of the canonical JSON of its kind, its parts (content hashes
    of models and data, parameters) and the code version."""
    return make_key(kind, parts=parts, code=CODE_VERSION)


def _cached(self: "Store", kind: str, parts: Mapping[str, Any], compute):
    """The stored value of (kind, parts), else ``compute()``'s value, stored without pickle."""
    value = self.lookup(kind, parts)
    if value is not None:
        return value
    from . import codec

    value = compute()
    skeleton, arrays = codec.encode(value)
    self.put(digest(kind, parts), arrays, meta={"codec": skeleton}, kind=kind)
    return value


def _lookup(self: "Store", kind: str, parts: Mapping[str, Any]):
    from . import codec

    key = digest(kind, parts)
    meta = self.meta(key)
    if meta is None or "codec" not in meta:
        return None
    arrays = self.get(key)
    if arrays is None:
        return None
    try:
        return codec.decode(meta["codec"], arrays)
    except (KeyError, ValueError, TypeError, AttributeError):  # written by another version: recompute
        self.delete(key)
        return None


Store.cached = _cached
Store.lookup = _lookup
