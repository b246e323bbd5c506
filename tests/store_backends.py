"""The store's two index backends for tests: SQLite, and a real PostgreSQL started here.

``postgres_server`` (session) runs ``initdb`` and ``pg_ctl`` in a temporary folder on a free port
(as the ``postgres`` user when the tests run as root: PostgreSQL refuses to run as root), and
stops it at the end. Without PostgreSQL binaries the PostgreSQL cases are skipped, except under
``CI=true``, where they fail: CI installs Debian's ``postgresql`` package (``.ci/run``).

``store_backend`` parametrises a test over ``sqlite`` and ``postgresql``; ``backend.store(root)``
opens a store there (each root gets a database of its own), and the backend's database URL is in
``REPLENS_DATABASE_URL`` for code that uses ``default_store()`` or runs in a subprocess.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from analysis import store as store_mod

PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")


def postgres_bindir() -> Path | None:
    def version(d: str) -> int:  # /usr/lib/postgresql/15/bin -> 15: the newest first
        name = Path(d).parent.name
        return int(name) if name.isdigit() else 0

    for pattern in PG_BIN_GLOBS:
        for d in sorted(glob.glob(pattern), key=version, reverse=True):
            if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
                return Path(d)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "initdb").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port (trust auth)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="replens-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        self._ctl(f"{bindir}/initdb -D {self.data} -A trust -U postgres -E UTF8 --locale=C --no-sync")
        self.start()
        self._count = 0

    def _ctl(self, command: str) -> None:
        argv = ["su", "postgres", "-c", command] if self.as_postgres else ["bash", "-c", command]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{command}: {out.stdout[-2000:]}{out.stderr[-2000:]}")

    def start(self) -> None:
        # fsync off: test data need not survive a power cut, and 2 cores are shared
        opts = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -F -c max_connections=300"
        self._ctl(f"{self.bindir}/pg_ctl -D {self.data} -o '{opts}' -l {self.dir}/log start -w -t 60")

    def stop(self, mode: str = "fast") -> None:
        self._ctl(f"{self.bindir}/pg_ctl -D {self.data} stop -m {mode} -w -t 60")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._count += 1
        name = f"replens_t{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def require(what: str, present: bool) -> None:
    """Skip a PostgreSQL test when ``what`` is missing, but fail under CI, which installs it."""
    if present:
        return
    message = f"{what} not found: the PostgreSQL store tests cannot run"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI installs it: see .ci/run and requirements-cluster.txt)")
    pytest.skip(message)


def require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        require("psycopg (pip install -r requirements-cluster.txt)", False)


def start_postgres() -> PostgresServer:
    """A new server, or skip (fail under CI) when PostgreSQL or psycopg is missing."""
    require_psycopg()
    bindir = postgres_bindir()
    require("PostgreSQL binaries (initdb, pg_ctl)", bindir is not None)
    return PostgresServer(bindir)


@pytest.fixture(scope="session")
def postgres_server():
    server = start_postgres()
    yield server
    store_mod._close_default_stores()
    server.destroy()


@pytest.fixture
def own_postgres():
    """A server of this test's own, for tests that stop or restart it."""
    server = start_postgres()
    yield server
    server.destroy()


class Backend:
    """How a test opens stores on one backend; closes what it opened."""

    def __init__(self, name: str, server: PostgresServer | None):
        self.name, self.server = name, server
        self.database_url = server.new_database() if server else None
        self._urls: dict[str, str] = {}
        self._opened: list = []

    def url_for(self, root) -> str | None:
        """The database of ``root``'s store: the backend's own for the first root, a new one for each other."""
        if self.server is None:
            return None
        key = str(root)
        if key not in self._urls:
            self._urls[key] = self.database_url if not self._urls else self.server.new_database()
        return self._urls[key]

    def store(self, root):
        s = store_mod.Store(root, self.url_for(root))
        self._opened.append(s)
        return s

    def env(self, root) -> dict:
        """Environment variables for a subprocess whose default store is ``root`` on this backend."""
        url = self.url_for(root)
        return {"REPLENS_STORE": str(root), **({"REPLENS_DATABASE_URL": url} if url else {})}

    def activate(self, root, monkeypatch) -> None:
        """Make ``root`` this process's default store, on this backend."""
        for name, value in self.env(root).items():
            monkeypatch.setenv(name, value)

    def close(self) -> None:
        for s in self._opened:
            s.close()
        store_mod._close_default_stores()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request, monkeypatch, isolated_store):
    server = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    backend = Backend(request.param, server)
    if backend.database_url:
        backend.url_for(isolated_store)  # the default store gets the backend's database
        monkeypatch.setenv("REPLENS_DATABASE_URL", backend.database_url)
    else:
        monkeypatch.delenv("REPLENS_DATABASE_URL", raising=False)
    yield backend
    backend.close()
