"""The store's index: one small interface, two backends (SQLite, PostgreSQL), one set of SQL.

A backend creates its tables (``ensure_schema``), runs one statement at a time (``run``),
serialises start-up and repairs across processes (``exclusive``), says whether its storage is
intact (``healthy``) and swaps in a whole new index at once (``replace``). The statements are
written once, here and in ``core.py``, in the SQL both engines share (``INSERT … ON CONFLICT``),
with ``?`` placeholders and no literal ``?`` or ``%``; the PostgreSQL backend translates them.

The index only points at files: every row can be rebuilt from the files (see ``core.py``), so
losing or damaging the index loses nothing that was stored.
"""
from __future__ import annotations

from typing import Callable, ContextManager, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..errors import UserInputError

# One row per (bytes, use): the same file uploaded as a model and as data keeps both uses.
BLOBS_TABLE = ("CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,"
               " size BIGINT NOT NULL, meta TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, PRIMARY KEY (sha256, kind))")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL,"
    " meta TEXT NOT NULL, size BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS results_by_kind ON results (kind, created)",
    "CREATE TABLE IF NOT EXISTS documents (kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,"
    " body TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (kind, id))",
    BLOBS_TABLE,
    "CREATE TABLE IF NOT EXISTS replens (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
TABLES = ("results", "documents", "blobs", "replens")

Run = Callable[..., list]  # run(sql, params=(), many=False) -> rows


class StoreUnavailableError(UserInputError):
    """The store cannot be used (database unreachable, index damaged beyond repair): one message
    for the administrator, naming the folder or the database (never its password)."""


class IndexDamaged(Exception):
    """The index's own storage is damaged (SQLite: not a database, malformed, tables gone)."""


class Index(Protocol):
    location: str  # for messages: the SQLite file, or the database URL without its password

    def ensure_schema(self) -> None: ...

    def run(self, sql: str, params=(), many: bool = False) -> list: ...

    def exclusive(self) -> ContextManager[None]: ...

    def healthy(self) -> bool: ...

    def replace(self, fill: Callable[[Run], None]) -> None: ...

    def close(self) -> None: ...


def open_index(database_url: str | None, sqlite_path) -> Index:
    """PostgreSQL for ``postgresql://`` URLs, else SQLite at ``sqlite_path`` (or a ``sqlite:///`` URL)."""
    if database_url and database_url.startswith(("postgresql://", "postgres://")):
        from .postgres_index import PostgresIndex

        return PostgresIndex(database_url)
    from .sqlite_index import SQLiteIndex

    if database_url:
        if not database_url.startswith("sqlite:///"):
            raise UserInputError(f"REPLENS_DATABASE_URL must start with postgresql:// or sqlite:///, "
                                 f"not {redact(database_url)!r}.")
        sqlite_path = "/" + database_url[len("sqlite://"):].lstrip("/")  # sqlite:////abs/path or sqlite:///abs/path
    return SQLiteIndex(sqlite_path)


def redact(url: str) -> str:
    """The URL without its password and query (which may hold one): safe to show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return url.split("://", 1)[0] + "://…"
