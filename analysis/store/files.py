"""Where a store's files live: a local (or shared, NFS/Lustre) folder, or any fsspec URL.

Both write atomically: the bytes go to ``tmp/`` under a unique name and are moved into place
only once complete, so a reader (and the index) never sees half a file. On a local folder the
temporary file is fsynced before ``os.replace``; on fsspec the move is the filesystem's own
(a rename on local and shared filesystems, a whole-object copy on object stores such as S3,
where an object is never visible half-written).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

TMP_MAX_AGE_S = 3600.0
# Readable by every account that shares the store (app servers and workers under other users);
# never rewritten in place (a new version is a new file renamed over the old), so never writable.
FILE_MODE = 0o644


def is_url(root) -> bool:
    return isinstance(root, str) and "://" in root


def open_files(root) -> "LocalFiles | FsspecFiles":
    return FsspecFiles(root) if is_url(root) else LocalFiles(Path(root).expanduser())


class LocalFiles:
    """Files under a folder on this machine (or a shared filesystem mounted here)."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("objects", "blobs", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def location(self, rel: str) -> Path:
        return self.root / rel

    def write_atomic(self, rel: str, write: Callable[[BinaryIO], None]) -> int:
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix=final.name + ".")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            size = os.path.getsize(tmp)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return size

    def create_once(self, rel: str, data: bytes) -> bool:
        """Write ``data`` at ``rel`` unless a file is there already (never overwrites); True if written."""
        final = self.root / rel
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, final)  # fails if the name exists: the first writer wins
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def open(self, rel: str) -> BinaryIO:
        return open(self.root / rel, "rb")

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def delete(self, rel: str) -> None:
        with contextlib.suppress(OSError):
            (self.root / rel).unlink()

    def walk(self, sub: str) -> Iterator[str]:
        """Relative paths of the files under ``sub``."""
        for p in sorted((self.root / sub).rglob("*")):
            if p.is_file():
                yield p.relative_to(self.root).as_posix()

    def clean_tmp(self) -> None:
        """Remove leftovers of writes that crashed long ago (never a write in flight)."""
        now = time.time()
        for f in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > TMP_MAX_AGE_S:
                    f.unlink()


class FsspecFiles:
    """Files under an fsspec URL (``s3://bucket/replens`` where s3fs is installed, ``memory://``,
    ``file://``); the filesystem package for the scheme must be installed."""

    def __init__(self, url: str):
        import fsspec

        from ..errors import UserInputError

        try:
            self.fs, base = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise UserInputError(f"The result store {url} cannot be opened: {e}. Install the fsspec "
                                 "package for that scheme (s3fs for s3://), or use a folder.") from None
        self.url, self.base = url.rstrip("/"), base.rstrip("/")
        self.fs.makedirs(self._p("tmp"), exist_ok=True)

    def _p(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def location(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def write_atomic(self, rel: str, write: Callable[[BinaryIO], None]) -> int:
        final = self._p(rel)
        tmp = self._p(f"tmp/{rel.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}")
        try:
            with self.fs.open(tmp, "wb") as f:
                write(f)
                _fsync(f)
            size = self.fs.size(tmp)
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError, FileNotFoundError):
                self.fs.rm(tmp)
            raise
        return size

    def create_once(self, rel: str, data: bytes) -> bool:
        # Object stores have no exclusive create; the caller holds the index's lock around this.
        if self.fs.exists(self._p(rel)):
            return False
        self.write_atomic(rel, lambda f: f.write(data))
        return True

    def open(self, rel: str) -> BinaryIO:
        return self.fs.open(self._p(rel), "rb")

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._p(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._p(rel))

    def size(self, rel: str) -> int:
        return self.fs.size(self._p(rel))

    def delete(self, rel: str) -> None:
        with contextlib.suppress(OSError, FileNotFoundError):
            self.fs.rm(self._p(rel))

    def walk(self, sub: str) -> Iterator[str]:
        prefix = self.base + "/"
        for p in sorted(self.fs.find(self._p(sub))):
            if p.startswith(prefix):
                yield p[len(prefix):]

    def clean_tmp(self) -> None:
        now = time.time()
        for p in self.fs.find(self._p("tmp")):
            with contextlib.suppress(Exception):  # not every filesystem reports times
                if now - self.fs.modified(p).timestamp() > TMP_MAX_AGE_S:
                    self.fs.rm(p)


def _fsync(f) -> None:
    """fsync where the fsspec file is a real file (file://); object stores commit on close."""
    with contextlib.suppress(AttributeError, OSError, ValueError, NotImplementedError, TypeError):
        f.flush()
        os.fsync(f.fileno())
