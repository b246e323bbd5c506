"""SQLite index (the default): one file next to the store's files, WAL mode, a connection per
statement, so several processes (Streamlit sessions, CLI runs, workers) read and write at once.

SQLite is not safe on network filesystems (its locks are not); a shared server uses PostgreSQL.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from .index import BLOBS_TABLE, SCHEMA, TABLES, IndexDamaged, Run

BUSY_TIMEOUT_S = 60.0


class SQLiteIndex:
    def __init__(self, path):
        self.path = Path(path)
        self.location = str(self.path)
        self._anchor: sqlite3.Connection | None = None

    def _connect(self, path: Path | None = None) -> sqlite3.Connection:
        con = sqlite3.connect(path or self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        return con

    def run(self, sql: str, params=(), many: bool = False) -> list:
        try:
            with contextlib.closing(self._connect()) as con:
                cur = con.executemany(sql, params) if many else con.execute(sql, params)
                return cur.fetchall()
        except sqlite3.DatabaseError as e:
            raise _damage(e) from e

    def ensure_schema(self) -> None:
        """Create the tables (and convert an index written before blobs were keyed per use)."""
        try:
            with contextlib.closing(self._connect()) as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("BEGIN IMMEDIATE")
                _upgrade_blobs(con)
                for statement in SCHEMA:
                    con.execute(statement)
                con.execute("COMMIT")
            self._hold_open()
        except sqlite3.DatabaseError as e:
            raise _damage(e) from e

    def _hold_open(self) -> None:
        """Keep one idle connection for the life of the store. The last connection to close a WAL
        database checkpoints it (an fsync of the whole file), and with a connection per statement
        every statement would be the last one."""
        if self._anchor is None:
            self._anchor = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            self._anchor.execute("SELECT 1 FROM replens LIMIT 1").fetchall()  # attach to the WAL

    def _let_go(self) -> None:
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """A lock file beside the index, held across processes while the store opens or repairs."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # another account's store: a read-only descriptor locks as well
            fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def healthy(self) -> bool:
        try:
            with contextlib.closing(self._connect()) as con:
                if con.execute("PRAGMA quick_check(1)").fetchone() != ("ok",):
                    return False
                names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            if _is_busy(e):
                raise
            return False
        return set(TABLES) <= names

    def replace(self, fill: Callable[[Run], None]) -> None:
        """Build a whole new index in a temporary file, then swap it in with one rename. A damaged
        index is kept beside it (``index.sqlite.damaged-<time>``) for the administrator."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.rebuild-")
        os.close(fd)
        try:
            with contextlib.closing(self._connect(Path(tmp))) as con:
                con.execute("BEGIN")
                for statement in SCHEMA:
                    con.execute(statement)
                fill(lambda sql, params=(), many=False: (con.executemany(sql, params) if many
                                                        else con.execute(sql, params)).fetchall())
                con.execute("COMMIT")
            self._let_go()  # the old file may be moved away: hold the new one after the swap
            if self._worth_keeping():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"))
            for suffix in ("-wal", "-shm", "-journal"):  # never replay the old file's log onto the new one
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.ensure_schema()

    def _worth_keeping(self) -> bool:
        """The current file, unless it is missing or an intact index with nothing in it."""
        if not self.path.exists():
            return False
        if not self.healthy():
            return True
        return any(self.run(f"SELECT 1 FROM {t} LIMIT 1") for t in ("results", "blobs", "documents"))

    def close(self) -> None:
        self._let_go()


def _is_busy(e: sqlite3.DatabaseError) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def _damage(e: sqlite3.DatabaseError) -> Exception:
    """Busy is not damage (the caller waited BUSY_TIMEOUT_S and may try again); the rest is."""
    return e if _is_busy(e) else IndexDamaged(f"{type(e).__name__}: {e}")


def _upgrade_blobs(con: sqlite3.Connection) -> None:
    """Indexes written before uploads were keyed per (sha256, kind) had sha256 alone as the key."""
    pk = [r[1] for r in sorted(con.execute("PRAGMA table_info(blobs)").fetchall(), key=lambda r: r[5]) if r[5]]
    if pk == ["sha256"]:
        con.execute("ALTER TABLE blobs RENAME TO blobs_by_sha")
        con.execute(BLOBS_TABLE)
        con.execute("INSERT INTO blobs (sha256, kind, name, size, meta, created)"
                    " SELECT sha256, kind, name, size, meta, created FROM blobs_by_sha")
        con.execute("DROP TABLE blobs_by_sha")
