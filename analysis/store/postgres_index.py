"""PostgreSQL index (``REPLENS_DATABASE_URL=postgresql://user:password@host:port/db``), for several
app processes or machines sharing one store. psycopg 3 with its connection pool
(``pip install -r requirements-cluster.txt``).

Every statement the store sends is idempotent (upserts and deletes), so a statement that fails
because the connection dropped (the server restarted, a fail-over) is simply sent again on a
fresh connection, for up to ``REPLENS_DB_RETRY_S`` seconds (default 30), with a warning in the
log; after that the caller gets one clear message. A server that cannot be reached at start-up
is reported at once, naming the URL without its password.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Callable, Iterator

from ..errors import UserInputError
from .index import SCHEMA, Run, StoreUnavailableError, redact

log = logging.getLogger("analysis.store")
RETRY_ENV = "REPLENS_DB_RETRY_S"
CONNECT_TIMEOUT_S = 5
POOL_SIZE = 8
_LOCK_ID = 0x5265704C656E73  # "RepLens": the advisory lock that serialises start-up and repairs
_ABANDONED: list = []  # pools inherited through fork: never closed from the child (see _pool)


class PostgresIndex:
    def __init__(self, url: str):
        try:
            import psycopg
            import psycopg_pool  # noqa: F401
        except ImportError:
            raise UserInputError("REPLENS_DATABASE_URL names a PostgreSQL database, but psycopg is not "
                                 "installed: pip install -r requirements-cluster.txt") from None
        self.url = url
        self.location = redact(url)
        self._pid = os.getpid()
        try:  # one plain connection first: its error says why (refused, unknown host, bad password)
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
            self._pool_obj = self._new_pool()
        except psycopg.Error as e:
            raise StoreUnavailableError(
                f"Cannot reach the result store's database at {self.location} ({self._reason(e)}). "
                "Check REPLENS_DATABASE_URL and that PostgreSQL is running and accepts connections.") from None

    # ------------------------------------------------------------------ connections
    def _new_pool(self):
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(self.url, min_size=1, max_size=POOL_SIZE, open=False, name="replens-store",
                              kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                              timeout=CONNECT_TIMEOUT_S, max_idle=60)
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except BaseException:
            pool.close()
            raise
        return pool

    def _pool(self):
        if os.getpid() != self._pid:  # a forked child must not touch the parent's sockets
            _ABANDONED.append(self._pool_obj)
            self._pid, self._pool_obj = os.getpid(), self._new_pool()
        return self._pool_obj

    def _reason(self, e: Exception) -> str:
        text = " ".join(str(e).split()) or type(e).__name__
        password = _password(self.url)
        return text.replace(password, "***") if password else text

    def _retrying(self, work: Callable):
        """``work(connection)``, sent again on a fresh connection while the server is away."""
        import psycopg

        retry_s = float(os.environ.get(RETRY_ENV, "30"))
        deadline = time.monotonic() + retry_s
        delay, warned = 0.1, False
        while True:
            try:
                with self._pool().connection() as con:
                    result = work(con)
                if warned:
                    log.warning("The result store's database %s answers again.", self.location)
                return result
            except psycopg.OperationalError as e:  # connection lost, server starting or shutting down
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailableError(
                        f"The result store's database at {self.location} has not answered for "
                        f"{retry_s:g} s ({self._reason(e)}). Nothing was read or saved; try again when it "
                        "is back, or tell the server's administrator.") from None
                if not warned:
                    log.warning("Lost the result store's database %s (%s); retrying for up to %.0f s.",
                                self.location, self._reason(e), retry_s)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------ the interface
    def run(self, sql: str, params=(), many: bool = False) -> list:
        sql = sql.replace("?", "%s")

        def work(con):
            with con.cursor() as cur:
                if many:
                    cur.executemany(sql, list(params))
                    return []
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []

        return self._retrying(work)

    def ensure_schema(self) -> None:
        def work(con):  # called under exclusive(): CREATE TABLE IF NOT EXISTS races otherwise
            with con.transaction():
                for statement in SCHEMA:
                    con.execute(statement)

        self._retrying(work)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._pool().connection() as con:
            con.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # a lost connection has released it already
                    con.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))

    def healthy(self) -> bool:
        return True  # PostgreSQL keeps its own storage whole

    def replace(self, fill: Callable[[Run], None]) -> None:
        """Empty the tables and fill them again, in one transaction: readers see the old index or the new."""
        def work(con):
            with con.transaction(), con.cursor() as cur:
                for table in ("results", "blobs", "documents"):
                    cur.execute(f"DELETE FROM {table}")

                def run(sql, params=(), many=False):
                    sql = sql.replace("?", "%s")
                    if many:
                        cur.executemany(sql, list(params))
                        return []
                    cur.execute(sql, params)
                    return cur.fetchall() if cur.description else []

                fill(run)

        self._retrying(work)

    def close(self) -> None:
        if os.getpid() == self._pid:
            self._pool_obj.close()


def _password(url: str) -> str | None:
    from urllib.parse import parse_qs, urlsplit

    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        return parts.password or (parse_qs(parts.query).get("password") or [None])[0]
    return None
