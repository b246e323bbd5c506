"""The result store: files (arrays, uploads, documents) plus an index that points at them.

Writes are atomic on every backend: a file is written under a temporary name and moved into
place whole, and only then is its index row written. The row is the commit point: a crash
before it leaves an unindexed file (overwritten by the next write of that key), never a row
without its whole file. Reads check each result file against its own record; a file that is
unreadable, truncated or not the result it claims to be is dropped (and ``cached`` recomputes).

Every file says what it is (``records.py``), so a damaged, lost or new index is rebuilt from
the files; a store id kept in both (``store.json`` and the index) stops a database from being
used with another store's files.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import UserInputError
from . import codec, records
from .files import is_url, open_files
from .index import IndexDamaged, StoreUnavailableError, open_index
from .keys import HEX, NAME, check_key, check_name, digest, sha256_bytes

log = logging.getLogger("analysis.store")
STORE_ENV = "REPLENS_STORE"
DATABASE_ENV = "REPLENS_DATABASE_URL"
ID_FILE = "store.json"

_UPSERT_RESULT = ("INSERT INTO results (key, kind, path, meta, size, created) VALUES (?,?,?,?,?,?)"
                  " ON CONFLICT (key) DO UPDATE SET kind=excluded.kind, path=excluded.path,"
                  " meta=excluded.meta, size=excluded.size, created=excluded.created")
_UPSERT_BLOB = ("INSERT INTO blobs (sha256, kind, name, size, meta, created) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT (sha256, kind) DO UPDATE SET name=excluded.name, size=excluded.size,"
                " meta=excluded.meta, created=excluded.created")
_UPSERT_DOC = ("INSERT INTO documents (kind, id, name, body, created, updated) VALUES (?,?,?,?,?,?)"
               " ON CONFLICT (kind, id) DO UPDATE SET name=excluded.name, body=excluded.body,"
               " updated=excluded.updated")
_SET_ID = "INSERT INTO replens (name, value) VALUES ('store_id', ?) ON CONFLICT (name) DO NOTHING"


def default_root() -> Path | str:
    """The store: ``$REPLENS_STORE`` (a folder or an fsspec URL) if set, else the user's cache folder."""
    env = os.environ.get(STORE_ENV)
    if env:
        return env if is_url(env) else Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("replens", appauthor=False))


class Store:
    """A result store: files under ``root`` (a folder, or an fsspec URL such as ``s3://bucket/replens``)
    and an index in SQLite (``root/index.sqlite``, the default) or in the PostgreSQL database of
    ``database_url``. ``Store()`` reads both from ``$REPLENS_STORE`` and ``$REPLENS_DATABASE_URL``."""

    def __init__(self, root: str | os.PathLike | None = None, database_url: str | None = None):
        if root is None:
            root, database_url = default_root(), database_url or os.environ.get(DATABASE_ENV) or None
        self.root = root if is_url(root) else Path(root).expanduser()
        if is_url(self.root) and not database_url:
            raise UserInputError(f"The result store {self.root} is not a folder, so its index cannot live in it: "
                                 f"set {DATABASE_ENV} (postgresql://… for a shared store, or sqlite:////path/index.sqlite).")
        self.index = open_index(database_url, None if is_url(self.root) else self.root / "index.sqlite")
        self._stats_lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        try:
            self.files = open_files(self.root)
            self._open()
            self.files.clean_tmp()
        except BaseException as e:
            self.index.close()
            if isinstance(e, OSError):
                raise StoreUnavailableError(f"The result store in {self.root} cannot be opened ({e}). An administrator "
                                            "should check that the folder exists and that this account may write there.") from None
            raise

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, index={self.index.location!r})"

    def close(self) -> None:
        """Release the index's connections (PostgreSQL); the store can no longer be used."""
        self.index.close()

    # ------------------------------------------------------------------ opening and repair
    def _open(self) -> None:
        """Check that index and files belong together; build the index from the files where it is
        new, lost or damaged."""
        with self.index.exclusive():
            try:
                self.index.ensure_schema()
                if not self.index.healthy():
                    raise IndexDamaged("integrity check failed")
                index_id = self._index_id()
            except IndexDamaged as e:
                index_id, damage = None, e
            else:
                damage = None
            files_id = self._files_id()
            if index_id is None and (damage or files_id):
                self._rebuild(files_id or self._create_id(), f"damaged ({damage})" if damage else "missing or new")
            elif index_id is None:  # a new store, or one written before stores had an id
                self._adopt_old_rows(self._create_id())
            elif files_id != index_id:
                raise StoreUnavailableError(
                    f"The index {self.index.location} belongs to another result store (id {index_id[:12]}) than the "
                    f"files in {self.root} ({'id ' + files_id[:12] if files_id else 'no store there'}). Point "
                    f"{STORE_ENV} at that store's folder, or give this one its own database.")
        self.store_id = self._files_id()

    def _index_id(self) -> str | None:
        rows = self.index.run("SELECT value FROM replens WHERE name='store_id'")
        return rows[0][0] if rows else None

    def _files_id(self) -> str | None:
        try:
            return json.loads(self.files.read_bytes(ID_FILE))["store_id"]
        except FileNotFoundError:
            return None
        except records.DAMAGE as e:
            raise StoreUnavailableError(f"The result store's id file {self.files.location(ID_FILE)} is unreadable "
                                        f"({e}). An administrator should restore it: the index keeps the same id, in "
                                        "its table replens.") from None

    def _create_id(self) -> str:
        body = json.dumps({"store_id": uuid.uuid4().hex, "created": time.time()}).encode()
        self.files.create_once(ID_FILE, body)  # another process may have been first: read what is there
        return self._files_id()

    def _rebuild(self, store_id: str, reason) -> None:
        try:
            results, blobs, docs, skipped = records.scan(self.files)

            def fill(run):
                run(_UPSERT_RESULT, results, many=True)
                run(_UPSERT_BLOB, blobs, many=True)
                run(_UPSERT_DOC, docs, many=True)
                run(_SET_ID, (store_id,))

            self.index.replace(fill)
        except (OSError, IndexDamaged) as e:
            raise StoreUnavailableError(
                f"The result store's index {self.index.location} ({reason}) could not be rebuilt from the files in "
                f"{self.root} ({e}). An administrator should move the index away (or fix the folder's permissions); "
                "RepLens rebuilds it from the files at the next start.") from None
        log.warning("Rebuilt the result store's index %s (%s) from the files in %s: %d results, %d uploads, "
                    "%d documents (%d unreadable or older files left out).",
                    self.index.location, reason, self.root, len(results), len(blobs), len(docs), skipped)

    def _adopt_old_rows(self, store_id: str) -> None:
        """Give uploads and documents indexed before files carried their own records a sidecar
        file each, so that a later rebuild keeps them; then mark the index as this store's."""
        for sha, kind, name, size, meta, created in self.index.run(
                "SELECT sha256, kind, name, size, meta, created FROM blobs"):
            rel = f"blobs/{sha[:2]}/{sha}.{kind}.json"
            if not self.files.exists(rel):
                self.files.write_atomic(rel, lambda f: f.write(records.blob_sidecar(sha, kind, name, size, meta, created)))
        for row in self.index.run("SELECT kind, id, name, body, created, updated FROM documents"):
            rel = f"docs/{row[0]}/{row[1]}.json"
            if not self.files.exists(rel):
                self.files.write_atomic(rel, lambda f: f.write(records.doc_file(*row)))
        self.index.run(_SET_ID, (store_id,))

    def _run(self, sql: str, params=(), many: bool = False) -> list:
        """One index statement; a damaged index is rebuilt from the files once, then the statement retried."""
        try:
            return self.index.run(sql, params, many)
        except IndexDamaged as e:
            self._repair(e)
            return self.index.run(sql, params, many)

    def _repair(self, damage) -> None:
        with self.index.exclusive():
            try:
                if self.index.healthy() and self._index_id() == self.store_id:
                    return  # another process (or thread) repaired it meanwhile
            except IndexDamaged:
                pass
            self._rebuild(self.store_id, f"damaged ({damage})")

    def rebuild_index(self) -> None:
        """Rebuild the index from the files now (an administrator's tool; damage triggers it by itself)."""
        with self.index.exclusive():
            self._rebuild(self.store_id, "on request")

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
        check_key(key)
        clean = {name: np.asarray(a) for name, a in arrays.items()}
        for name, a in clean.items():
            if a.dtype == object:
                raise TypeError(f"array {name!r} has dtype object; the store keeps plain arrays only")
            if name == codec.RESERVED:
                raise ValueError(f"the array name {name!r} is reserved for the store's own record")
        self._write(key, kind, clean, meta)

    def _write(self, key: str, kind: str, arrays: dict, meta: Mapping[str, Any] | None, tree: Any = None) -> None:
        meta = json.loads(json.dumps(dict(meta or {}), default=str))
        now = time.time()
        record = records.result_record(key, kind, meta, now, arrays, tree)
        rel = f"objects/{key[:2]}/{key}.npz"
        size = self.files.write_atomic(rel, lambda f: records.write_npz(f, arrays, record))
        self._run(_UPSERT_RESULT, (key, kind, rel, json.dumps(meta), size, now))

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None (a miss; a damaged file is dropped and is a miss)."""
        check_key(key)
        found = self._load(key)
        self._count(found is not None)
        return None if found is None else found[0]

    def _load(self, key: str) -> tuple[dict, dict | None, float] | None:
        """(arrays, record, created) of the result under ``key``, None if there is none or its file is damaged."""
        rows = self._run("SELECT path, created FROM results WHERE key=?", (key,))
        if not rows:
            return None
        rel, created = rows[0]
        try:
            with self.files.open(rel) as f:
                return (*records.read_npz(f, key), created)
        except records.DAMAGE as e:
            self._drop(key, created, f"{type(e).__name__}: {e}")
            return None

    def _drop(self, key: str, created: float, why: str) -> None:
        """Forget a result whose file is damaged, unless it was rewritten meanwhile."""
        log.warning("Dropped the stored result %s in %s (%s); it will be computed again.", key[:16], self.root, why)
        self._run("DELETE FROM results WHERE key=? AND created=?", (key, created))
        if not self._run("SELECT 1 FROM results WHERE key=?", (key,)):
            self.files.delete(f"objects/{key[:2]}/{key}.npz")

    def meta(self, key: str) -> dict | None:
        check_key(key)
        rows = self._run("SELECT meta FROM results WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def __contains__(self, key: str) -> bool:
        return bool(self._run("SELECT 1 FROM results WHERE key=?", (key,)))

    def delete(self, key: str) -> None:
        rows = self._run("SELECT path FROM results WHERE key=?", (key,))
        self._run("DELETE FROM results WHERE key=?", (key,))
        if rows:
            self.files.delete(rows[0][0])

    def keys(self, kind: str | None = None) -> list[str]:
        if kind is None:
            rows = self._run("SELECT key FROM results ORDER BY created")
        else:
            rows = self._run("SELECT key FROM results WHERE kind=? ORDER BY created", (kind,))
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ the one caching mechanism
    def cached(self, kind: str, parts: Mapping[str, Any], compute: Callable[[], Any], *,
               meta: Mapping[str, Any] | None = None, check: Callable[[Any], bool] | None = None) -> Any:
        """The value of ``compute()`` for this description, from the store when it holds it.

        ``kind`` names the computation; ``parts`` is everything its numbers depend on (content hashes
        of models and data, parameters, arrays; see ``keys.digest``). ``compute()`` returns arrays,
        tables, numbers, strings, lists, dicts or a dataclass of those (see ``codec``). A stored value
        that cannot be read back, or for which ``check(value)`` returns False or raises ValueError,
        is dropped with a warning in the log and computed again. ``meta``: small JSON shown by
        ``meta(key)`` (what the result is, for people and listings)."""
        value = self.lookup(kind, parts, check)
        if value is not None:
            return value
        self._count(False)
        value = compute()
        arrays, tree = codec.encode(value)
        self._write(digest(kind, parts), kind, arrays, meta, tree)
        return value

    def lookup(self, kind: str, parts: Mapping[str, Any], check: Callable[[Any], bool] | None = None) -> Any:
        """What ``cached(kind, parts, ...)`` would return from the store, or None: never computes (a
        page asks this to draw what is ready while a job computes the rest)."""
        key = digest(kind, parts)
        found = self._load(key)
        if found is None:
            return None
        arrays, record, created = found
        try:
            if record is None or "value" not in record:
                raise codec.CodecError("not written by cached()")
            value = codec.decode(arrays, record["value"])
            if check is not None and check(value) is False:
                raise ValueError("it failed the caller's check")
        except ValueError as e:  # CodecError is one
            self._drop(key, created, str(e))
            return None
        self._count(True)
        return value

    # ------------------------------------------------------------------ blobs (uploads)
    def put_blob(self, data: bytes, name: str, kind: str, meta: Mapping[str, Any] | None = None) -> str:
        """Store uploaded bytes by their sha256, once per use (``kind``: model, data); returns the hex digest."""
        check_name(kind)
        sha = sha256_bytes(data)
        rel = f"blobs/{sha[:2]}/{sha}"
        if not self.files.exists(rel):
            self.files.write_atomic(rel, lambda f: f.write(data))
        row = (sha, kind, os.path.basename(name), len(data), json.dumps(dict(meta or {}), default=str), time.time())
        self.files.write_atomic(f"{rel}.{kind}.json", lambda f: f.write(records.blob_sidecar(*row)))
        self._run(_UPSERT_BLOB, row)
        return sha

    def find_blob(self, prefix: str, kind: str | None = None) -> dict | None:
        """The upload whose sha256 starts with ``prefix`` (hex, 8+ chars), or None. Without ``kind``,
        a file uploaded for several uses is described by its first use."""
        prefix = prefix.lower() if isinstance(prefix, str) else ""
        if not HEX.fullmatch(prefix):
            return None
        sql = "SELECT sha256, name, kind, size, meta FROM blobs WHERE sha256 LIKE ?"
        params: tuple = (prefix + "%",)
        if kind is not None:
            sql, params = sql + " AND kind=?", params + (kind,)
        rows = self._run(sql + " ORDER BY created", params)
        if len({r[0] for r in rows}) != 1:
            return None
        sha, name, k, size, meta = rows[0]
        rel = f"blobs/{sha[:2]}/{sha}"
        if not self.files.exists(rel):
            return None
        return {"sha256": sha, "name": name, "kind": k, "size": size, "meta": json.loads(meta),
                "path": self.files.location(rel)}

    def blobs(self, kind: str | None = None) -> list[dict]:
        if kind is None:
            rows = self._run("SELECT sha256, name, kind, size, created FROM blobs ORDER BY created")
        else:
            rows = self._run("SELECT sha256, name, kind, size, created FROM blobs WHERE kind=? ORDER BY created", (kind,))
        return [dict(zip(("sha256", "name", "kind", "size", "created"), r)) for r in rows]

    def read_blob(self, prefix: str, kind: str | None = None) -> tuple[bytes, dict]:
        info = self.find_blob(prefix, kind)
        if info is None:
            raise UserInputError(
                f"No uploaded file with id {prefix!r} on this server. Upload the file again "
                "(uploads are kept by content hash, so the same file gets the same id)."
            )
        return self.files.read_bytes(f"blobs/{info['sha256'][:2]}/{info['sha256']}"), info

    # ------------------------------------------------------------------ documents (specs, saved analyses, reports)
    def put_doc(self, kind: str, doc_id: str, body: Mapping[str, Any], name: str = "") -> None:
        """Keep a small JSON document (a share-link spec, a saved analysis, a report).
        Saving again under the same (kind, id) replaces the body and keeps the creation date."""
        check_key(doc_id)
        check_name(kind)
        text = json.dumps(dict(body), sort_keys=True, default=str)
        now = time.time()
        old = self._run("SELECT created FROM documents WHERE kind=? AND id=?", (kind, doc_id))
        row = (kind, doc_id, name, text, old[0][0] if old else now, now)
        self.files.write_atomic(f"docs/{kind}/{doc_id}.json", lambda f: f.write(records.doc_file(*row)))
        self._run(_UPSERT_DOC, row)

    def get_doc(self, kind: str, doc_id: str) -> dict | None:
        """The document's body, or None when there is none (or the id is not a hex digest)."""
        if not isinstance(doc_id, str) or not HEX.fullmatch(doc_id):
            return None
        rows = self._run("SELECT body FROM documents WHERE kind=? AND id=?", (kind, doc_id))
        self._count(bool(rows))
        return json.loads(rows[0][0]) if rows else None

    def docs(self, kind: str, search: str = "") -> list[dict]:
        """Documents of one kind, newest first: id, name, created, updated; ``search`` filters on the
        name and the body text (case-insensitive substring)."""
        pattern = f"%{search.strip().lower()}%"
        rows = self._run("SELECT id, name, created, updated FROM documents WHERE kind=?"
                         " AND (lower(name) LIKE ? OR lower(body) LIKE ?) ORDER BY updated DESC",
                         (kind, pattern, pattern))
        return [dict(zip(("id", "name", "created", "updated"), r)) for r in rows]

    def delete_doc(self, kind: str, doc_id: str) -> None:
        if isinstance(doc_id, str) and HEX.fullmatch(doc_id) and isinstance(kind, str) and NAME.fullmatch(kind):
            self.files.delete(f"docs/{kind}/{doc_id}.json")
        self._run("DELETE FROM documents WHERE kind=? AND id=?", (kind, doc_id))
